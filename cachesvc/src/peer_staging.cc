#include "peer_staging.h"

#include <spdlog/spdlog.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/proto/convert.h"
#include "kvstash/proto/status_mapping.h"
#include "request_checks.h"

namespace kvstash::cachesvc {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kAlign = 4096;
// Keys one StageEncoded call may name (a peer's batch; a Get's Acquire takes as many).
constexpr int kMaxStagedKeys = 4096;

grpc::Status Refused(grpc::StatusCode code, const std::string& why) {
  return grpc::Status(code, why);
}

}  // namespace

Result<std::unique_ptr<PeerStaging>> PeerStaging::Create(transport::UcxTransport* transport,
                                                         uint64_t bytes,
                                                         storage::ObjectStore* store,
                                                         MetricsRegistry* metrics,
                                                         uint32_t hold_ms) {
  std::unique_ptr<PeerStaging> s(new PeerStaging);
  s->store_ = store;
  s->hold_ms_ = hold_ms;
  bytes = (bytes + kAlign - 1) / kAlign * kAlign;
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot map ", bytes, " bytes for the peer staging pool (peers.staging_mib)"));
  }
  s->base_ = static_cast<uint8_t*>(p);
  s->bytes_ = bytes;
  PeerStaging* raw = s.get();
  KVSTASH_ASSIGN_OR_RETURN(s->region_,
                           transport->RegisterRegion(p, bytes, transport::MemoryKind::kHost,
                                                     [raw](uint64_t offset, uint64_t length) {
                                                       return raw->Staged(offset, length);
                                                     }));
  s->in_use_gauge_ = metrics->GetGauge(
      "kvstash_peer_staging_bytes",
      "bytes of the staging pool held by encoded fetches peers pull over UCX", {});
  const char* help = "StageEncoded calls peers made here, by how they ended";
  s->done_ = metrics->GetCounter("kvstash_peer_staged_calls_total", help, {{"outcome", "done"}});
  s->ended_ =
      metrics->GetCounter("kvstash_peer_staged_calls_total", help, {{"outcome", "reader_gone"}});
  s->refused_ =
      metrics->GetCounter("kvstash_peer_staged_calls_total", help, {{"outcome", "refused"}});
  s->full_ = metrics->GetCounter("kvstash_peer_staging_full_total",
                                 "objects a peer asked to stage that did not fit the pool", {});
  return s;
}

PeerStaging::~PeerStaging() {
  if (base_ != nullptr) ::munmap(base_, bytes_);
}

uint64_t PeerStaging::bytes_in_use() const {
  MutexLock lock(&mu_);
  return in_use_;
}

std::optional<uint64_t> PeerStaging::Allocate(uint64_t bytes) {
  const uint64_t need = std::max<uint64_t>(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
  MutexLock lock(&mu_);
  uint64_t at = 0;
  for (const auto& [offset, length] : used_) {
    if (offset - at >= need) break;
    at = offset + length;
  }
  if (at > bytes_ || bytes_ - at < need) return std::nullopt;
  used_.emplace(at, need);
  in_use_ += need;
  in_use_gauge_->Set(static_cast<double>(in_use_));
  return at;
}

void PeerStaging::Free(uint64_t offset) {
  MutexLock lock(&mu_);
  auto it = used_.find(offset);
  if (it == used_.end()) return;
  in_use_ -= it->second;
  used_.erase(it);
  in_use_gauge_->Set(static_cast<double>(in_use_));
}

bool PeerStaging::Staged(uint64_t offset, uint64_t length) const {
  MutexLock lock(&mu_);
  auto it = used_.upper_bound(offset);
  if (it == used_.begin()) return false;
  --it;
  return offset - it->first <= it->second && length <= it->second - (offset - it->first);
}

grpc::Status PeerStaging::Serve(grpc::ServerContext* ctx, StageStream* stream) {
  // Whatever happens below, what this call staged is freed when it returns.
  std::vector<uint64_t> staged;
  struct FreeOnExit {
    PeerStaging* self;
    std::vector<uint64_t>* staged;
    ~FreeOnExit() {
      for (uint64_t offset : *staged) self->Free(offset);
    }
  } free_on_exit{this, &staged};
  auto refuse = [&](grpc::StatusCode code, const std::string& why) {
    refused_->Increment();
    return Refused(code, why);
  };
  if (!encoder_) return refuse(grpc::StatusCode::UNAVAILABLE, "the node is starting");
  v1::StageEncodedRequest req;
  if (!stream->Read(&req)) {
    ended_->Increment();
    return grpc::Status(grpc::StatusCode::CANCELLED, "no request");
  }
  if (req.done() || req.keys_size() == 0 || req.keys_size() > kMaxStagedKeys) {
    return refuse(grpc::StatusCode::INVALID_ARGUMENT,
                  absl::StrCat("StageEncoded: the first message names 1..", kMaxStagedKeys,
                               " keys and is not done"));
  }
  v1::StageEncodedResponse resp;
  const uint32_t lease_ms = hold_ms_;
  for (int k = 0; k < req.keys_size(); ++k) {
    v1::StagedObject* out = resp.add_objects();
    Result<ObjectName> name = ParseKey(req.keys(k), absl::StrCat("keys[", k, "]"));
    if (!name.ok()) {
      return refuse(grpc::StatusCode::INVALID_ARGUMENT, std::string(name.status().message()));
    }
    Result<storage::Lease> lease = store_->Acquire(name->storage_key, lease_ms);
    if (!lease.ok()) {
      ToItemStatus(lease.status(), out->mutable_status());
      continue;
    }
    const std::span<const uint8_t> payload(store_->arena_base() + lease->arena_offset,
                                           lease->info.payload_bytes);
    Result<std::optional<storage::TierCodec::Encoded>> encoded =
        encoder_(ctx, req.encoding(), lease->info, payload);
    if (!encoded.ok()) {
      (void)store_->Release(lease->id);
      return refuse(grpc::StatusCode::INVALID_ARGUMENT, std::string(encoded.status().message()));
    }
    const std::span<const uint8_t> bytes =
        *encoded ? std::span<const uint8_t>((*encoded)->bytes) : payload;
    std::optional<uint64_t> at = Allocate(bytes.size());
    if (!at) {
      (void)store_->Release(lease->id);
      full_->Increment();
      ToItemStatus(absl::ResourceExhaustedError(absl::StrCat(
                       "the peer's staging pool is full (", bytes_in_use(), " of ", bytes_,
                       " bytes in use; ", bytes.size(), " more asked): fetch over a stream")),
                   out->mutable_status());
      continue;
    }
    staged.push_back(*at);
    std::memcpy(base_ + *at, bytes.data(), bytes.size());
    if (*encoded) {
      ToProto((*encoded)->decoded_info, out->mutable_info());
      ToProto((*encoded)->stored_info, out->mutable_wire_info());
    } else {
      ToProto(lease->info, out->mutable_info());
    }
    (void)store_->Release(lease->id);
    out->set_staging_offset(*at);
    out->set_staging_bytes(bytes.size());
  }
  // The reader pulls now; this call holds the space until it says done, goes away, or the hold
  // (or its own deadline) ends: the watchdog cancels the call, which ends the Read below.
  std::unique_ptr<StreamWatchdog::Registration> watched =
      watchdog_.Watch(ctx, Clock::now() + std::chrono::milliseconds(hold_ms_));
  if (!stream->Write(resp)) {
    ended_->Increment();
    return grpc::Status(grpc::StatusCode::CANCELLED, "the reader went away");
  }
  v1::StageEncodedRequest next;
  if (!stream->Read(&next)) {
    ended_->Increment();
    return grpc::Status(grpc::StatusCode::CANCELLED, "the reader went away or its time ran out");
  }
  if (!next.done() || next.keys_size() != 0) {
    return refuse(grpc::StatusCode::INVALID_ARGUMENT,
                  "StageEncoded: the second message is done, with no keys");
  }
  done_->Increment();
  return grpc::Status::OK;
}

// --- reading -----------------------------------------------------------------

Result<std::vector<StagedArrival>> PullStaged(const StagedPull& pull,
                                              const std::vector<ObjectName>& names,
                                              const std::vector<size_t>& which,
                                              const v1::GetRequest& encoding) {
  grpc::ClientContext ctx;
  pull.prepare(&ctx);
  auto stream = pull.stub->StageEncoded(&ctx);
  v1::StageEncodedRequest req;
  for (size_t i : which) ToProto(names[i], req.add_keys());
  *req.mutable_encoding() = encoding;
  v1::StageEncodedResponse resp;
  if (!stream->Write(req) || !stream->Read(&resp)) {
    Status s = FromGrpcStatus(stream->Finish());
    return s.ok() ? absl::InternalError("StageEncoded ended without an answer") : s;
  }
  // Whatever happens next, the peer frees its staging once told (or once this call ends).
  auto finish = [&stream]() {
    v1::StageEncodedRequest done;
    done.set_done(true);
    (void)stream->Write(done);
    (void)stream->WritesDone();
    (void)stream->Finish();
  };
  if (resp.objects_size() != static_cast<int>(which.size())) {
    finish();
    return absl::InternalError("peer answered StageEncoded with the wrong number of objects");
  }
  std::vector<StagedArrival> out(which.size());
  std::vector<transport::ReadOp> ops;
  std::vector<size_t> pulled;  // indexes into `out`, one per op
  for (size_t k = 0; k < which.size(); ++k) {
    const v1::StagedObject& o = resp.objects(static_cast<int>(k));
    StagedArrival& a = out[k];
    a.index = which[k];
    a.status = FromItemStatus(o.status());
    if (!a.status.ok()) {
      a.fallback = a.status.code() == absl::StatusCode::kResourceExhausted;
      continue;
    }
    Result<ObjectInfo> info = FromProto(o.info());
    if (!info.ok()) {
      a.status = info.status();
      continue;
    }
    a.info = *info;
    a.wire_bytes = o.staging_bytes();
    a.encoded = o.has_wire_info();
    if (a.encoded) {
      Result<ObjectInfo> wire = FromProto(o.wire_info());
      if (!wire.ok() || wire->encoding != Encoding::kCacheGen ||
          wire->payload_bytes != o.staging_bytes() || wire->payload_bytes >= info->payload_bytes) {
        a.status = absl::InvalidArgumentError("peer staged a container that does not fit its info");
        continue;
      }
    } else if (o.staging_bytes() != info->payload_bytes) {
      a.status = absl::InvalidArgumentError("peer staged a payload of the wrong size");
      continue;
    }
    if (o.staging_offset() > pull.staging_bytes ||
        o.staging_bytes() > pull.staging_bytes - o.staging_offset() || o.staging_bytes() == 0) {
      a.status = absl::InvalidArgumentError("peer staged an object outside its staging region");
      continue;
    }
    Result<storage::Reservation> local = pull.store->Reserve(
        ToStoredName(names[a.index]), a.info, pull.reservation_ms, /*overwrite=*/false);
    if (!local.ok()) {
      a.status =
          local.status().code() == absl::StatusCode::kAlreadyExists ? OkStatus() : local.status();
      continue;
    }
    a.local = *local;
    // The container lands where its reconstruction goes (it is smaller), then decodes from a copy.
    ops.push_back(
        {o.staging_offset(), pull.store->arena_base() + local->arena_offset, o.staging_bytes()});
    pulled.push_back(k);
  }
  Status moved = OkStatus();
  if (!ops.empty()) {
    moved = pull.fetch ? pull.transport->Fetch(pull.staging_peer, ops, pull.deadline)
                       : pull.transport->Read(pull.staging_peer, ops, pull.deadline);
  }
  finish();
  if (!moved.ok()) {
    for (StagedArrival& a : out) {
      if (a.local) (void)pull.store->Abort(a.local->id);
    }
    return moved;
  }
  for (size_t n = 0; n < pulled.size(); ++n) {
    StagedArrival& a = out[pulled[n]];
    const v1::StagedObject& o = resp.objects(static_cast<int>(pulled[n]));
    if (!a.encoded) continue;  // raw bytes: the caller checks them against info's crc32c
    uint8_t* landing = static_cast<uint8_t*>(ops[n].local);
    Result<ObjectInfo> wire = FromProto(o.wire_info());
    std::vector<uint8_t> container(landing, landing + a.wire_bytes);
    if (Crc32c(container.data(), container.size()) != wire->payload_crc32c) {
      a.status = absl::DataLossError("container failed its crc32c on arrival; not served");
    } else {
      Status decoded = pull.decoder->Decode(*wire, container, {landing, a.info.payload_bytes});
      if (!decoded.ok()) {
        a.status = absl::DataLossError(
            absl::StrCat("container does not decode: ", std::string(decoded.message())));
      }
    }
    if (!a.status.ok()) {
      (void)pull.store->Abort(a.local->id);
      a.local.reset();
    }
  }
  return out;
}

}  // namespace kvstash::cachesvc
