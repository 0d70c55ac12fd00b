// KvStashService's byte streams, Put and Get, served from raw ByteBuffers (kv_service.h).
#include <google/protobuf/descriptor.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kv_service.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/proto/convert.h"
#include "kvstash/proto/raw_message.h"
#include "kvstash/proto/status_mapping.h"
#include "request_checks.h"

namespace kvstash::cachesvc {
namespace {

using Clock = std::chrono::steady_clock;

// How much longer than a stream's deadline a Get holds its lease (see StartGet).
constexpr uint32_t kLeaseMarginMs = 10'000;

// The position of `method` among the service's methods: the generated code registers them in the
// order of the .proto file, which the descriptor keeps.
int MethodIndex(const std::string& method) {
  const google::protobuf::ServiceDescriptor* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
          v1::KvStash::service_full_name());
  const google::protobuf::MethodDescriptor* found =
      service == nullptr ? nullptr : service->FindMethodByName(method);
  if (found == nullptr) {
    spdlog::critical("event=method_missing method={}", method);
    std::abort();
  }
  return found->index();
}

}  // namespace

// Keeps a leased object's bytes (and an encoded copy, if one is sent instead) alive while anyone
// still points at them: the Get handler, and gRPC for every slice it has not sent yet. The lease
// is released when the last of them lets go, on whichever thread that is.
class HeldObject {
 public:
  HeldObject(storage::ObjectStore* store, uint64_t lease_id) : store_(store), lease_id_(lease_id) {}
  HeldObject(const HeldObject&) = delete;
  HeldObject& operator=(const HeldObject&) = delete;

  // A slice over [data, data + n), which must lie in the leased object or in `encoded`.
  grpc::Slice Borrow(const uint8_t* data, size_t n) {
    refs_.fetch_add(1, std::memory_order_relaxed);
    // grpc::Slice takes a non-const pointer but only reads through it.
    return grpc::Slice(const_cast<uint8_t*>(data), n, &HeldObject::Unref, this);
  }
  static void Unref(void* self) {
    auto* held = static_cast<HeldObject*>(self);
    if (held->refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete held;
  }

  std::vector<uint8_t> encoded;

 private:
  ~HeldObject() {
    Status s = store_->Release(lease_id_);
    if (!s.ok()) {
      spdlog::warn("event=get_release_failed lease={} error=\"{}\"", lease_id_,
                   std::string(s.message()));
    }
  }

  storage::ObjectStore* store_;
  uint64_t lease_id_;
  std::atomic<int> refs_{1};  // the handler's
};

void KvStashService::UseRawStreamHandlers() {
  // Put and Get are served from completion queues by the service's own threads
  // (async_streams.h), as raw ByteBuffers. On the wire they are the same client- and
  // server-streaming calls.
  MarkMethodRaw(MethodIndex("Put"));
  MarkMethodRaw(MethodIndex("Get"));
}

void KvStashService::RequestPutCall(grpc::ServerContext* ctx, RawAsyncReader* reader,
                                    grpc::ServerCompletionQueue* cq, void* tag) {
  static const int put_index = MethodIndex("Put");
  RequestAsyncClientStreaming(put_index, ctx, reader, cq, cq, tag);
}

void KvStashService::RequestGetCall(grpc::ServerContext* ctx, grpc::ByteBuffer* request,
                                    RawAsyncWriter* writer, grpc::ServerCompletionQueue* cq,
                                    void* tag) {
  static const int get_index = MethodIndex("Get");
  RequestAsyncServerStreaming(get_index, ctx, request, writer, cq, cq, tag);
}

// ---- Streaming put ----------------------------------------------------------

Result<std::unique_ptr<KvStashService::IncomingPut>> KvStashService::StartPut(
    grpc::ServerContext* ctx, grpc::ByteBuffer* first, RpcScope& scope) {
  const Clock::time_point start = Clock::now();
  std::unique_ptr<IncomingPut> put(new IncomingPut);
  put->service_ = this;
  KVSTASH_RETURN_IF_ERROR(put->Receive(first, scope));
  if (!put->chunk_.has_header()) return Invalid("the first PutChunk must carry the header");
  const v1::PutHeader& header = put->chunk_.header();
  if (!header.has_key()) return Invalid("header.key: missing");
  KVSTASH_ASSIGN_OR_RETURN(Caller caller, Who(ctx));
  KVSTASH_RETURN_IF_ERROR(CheckWrite(caller, "Put"));
  KVSTASH_ASSIGN_OR_RETURN(ObjectName name, CallerKey(caller, header.key(), "header.key"));
  KVSTASH_ASSIGN_OR_RETURN(put->info_, ParseInfo(header.info(), header.has_info(), "header.info"));
  KVSTASH_RETURN_IF_ERROR(CheckQuota(caller, put->info_.payload_bytes));
  put->durable_ = header.durable();
  // The reservation outlives the stream's own deadline, so bytes copied in are always still ours.
  KVSTASH_ASSIGN_OR_RETURN(storage::Reservation r,
                           store_->Reserve(ToStoredName(name), put->info_,
                                           config_.stream_timeout_ms, header.overwrite()));
  put->reservation_ = r.id;
  KVSTASH_RETURN_IF_ERROR(CheckArenaRange(*store_, r.arena_offset, put->info_.payload_bytes));
  put->dest_ = store_->arena_base() + r.arena_offset;
  put->deadline_ = StreamDeadline(start, config_.stream_timeout_ms);
  // A client that stalls mid-stream is cancelled at the deadline: its pending Read fails and the
  // reservation is aborted then, not left to expire.
  put->watched_ = watchdog_.Watch(ctx, put->deadline_);
  KVSTASH_RETURN_IF_ERROR(put->CopyChunk());
  return put;
}

KvStashService::IncomingPut::~IncomingPut() {
  watched_.reset();  // before the call's context can go away
  if (reservation_ == 0 || committed_) return;
  Status a = service_->store_->Abort(reservation_);
  if (!a.ok() && !absl::IsNotFound(a) && !absl::IsFailedPrecondition(a)) {
    spdlog::warn("event=put_abort_failed reservation={} error=\"{}\"", reservation_,
                 std::string(a.message()));
  }
}

Status KvStashService::IncomingPut::Receive(grpc::ByteBuffer* message, RpcScope& scope) {
  received_.Clear();
  received_.buffer()->Swap(message);
  scope.AddReceived(received_.bytes());
  return Annotate(received_.Split(v1::PutChunk::kDataFieldNumber, &chunk_, &data_),
                  absl::StrCat("PutChunk #", index_));
}

Status KvStashService::IncomingPut::Accept(grpc::ByteBuffer* message, RpcScope& scope) {
  KVSTASH_RETURN_IF_ERROR(Receive(message, scope));
  if (chunk_.has_header()) {
    return Invalid(absl::StrCat("PutChunk #", index_, " repeats the header"));
  }
  return CopyChunk();
}

Status KvStashService::IncomingPut::CopyChunk() {
  const ServiceConfig& config = service_->config_;
  if (data_.bytes > config.max_chunk_bytes) {
    return Invalid(absl::StrCat("PutChunk #", index_, " carries ", data_.bytes,
                                " bytes; the limit is ", config.max_chunk_bytes));
  }
  if (data_.bytes > info_.payload_bytes - written_) {
    return Invalid(
        absl::StrCat("Put stream carries more than payload_bytes (", info_.payload_bytes, ")"));
  }
  KVSTASH_RETURN_IF_ERROR(CheckDeadline());
  // Checksummed as it is copied (the piece is then in cache), so Commit need not read it again.
  for (std::span<const uint8_t> piece : data_.pieces) {
    crc_ = Crc32cExtend(crc_, piece.data(), piece.size());
    std::memcpy(dest_ + written_, piece.data(), piece.size());
    written_ += piece.size();
  }
  ++index_;
  received_.Clear();  // the pieces point into it
  return OkStatus();
}

Status KvStashService::IncomingPut::CheckDeadline() const {
  if (Clock::now() <= deadline_) return OkStatus();
  return absl::DeadlineExceededError(absl::StrCat(
      "Put stream took longer than ", service_->config_.stream_timeout_ms, " ms; aborted"));
}

Status KvStashService::IncomingPut::Complete() {
  // A stream that ends short may be a client that went away: either way nothing is stored.
  if (written_ != info_.payload_bytes) {
    KVSTASH_RETURN_IF_ERROR(CheckDeadline());
    return Invalid(absl::StrCat("Put stream ended after ", written_, " of ", info_.payload_bytes,
                                " bytes; reservation aborted"));
  }
  if (crc_ != info_.payload_crc32c) {
    return Invalid(absl::StrCat("payload crc32c mismatch: client says ", info_.payload_crc32c,
                                ", the stream carried ", crc_, "; reservation aborted"));
  }
  // Some failures (durable without an SSD tier) leave the reservation open; the destructor
  // aborts it, as nobody else can commit it.
  Status committed = service_->store_->CommitChecked(reservation_, info_.payload_crc32c, durable_);
  committed_ = committed.ok();
  return committed;
}

// ---- Streaming get ----------------------------------------------------------

Result<std::optional<storage::TierCodec::Encoded>> KvStashService::EncodeForTransfer(
    const grpc::ServerContext* ctx, const v1::GetRequest& req, const ObjectInfo& info,
    std::span<const uint8_t> payload) {
  using Encoded = storage::TierCodec::Encoded;
  switch (req.accept_encoding()) {
    case v1::ENCODING_RAW:
      // accept_level applies only to encoded transfers: a raw reader's is not looked at.
      return std::optional<Encoded>();
    case v1::ENCODING_CACHEGEN:
      break;
    default:
      return Invalid(absl::StrCat("accept_encoding: unknown value ", req.accept_encoding()));
  }
  // The codec: the request's accept_codec when it names one, else a peer's metadata, else the
  // transfer policy's. Everything is checked before the policy is looked at, so a raw-policy
  // service refuses the same requests as the others.
  bool kvq = config_.transfer_encoding.kvq;
  uint32_t max_level = 3;
  switch (req.accept_codec()) {
    case v1::CODEC_UNSPECIFIED:
      break;
    case v1::CODEC_CACHEGEN:
      kvq = false;
      break;
    case v1::CODEC_KVQ:
      kvq = true;
      max_level = 4;
      break;
    default:
      return Invalid(absl::StrCat("accept_codec: unknown value ", req.accept_codec()));
  }
  if (req.accept_level() > max_level) {
    return Invalid(absl::StrCat("accept_level: ", req.accept_level(), " is not 0 (the service's",
                                " level) or a ", max_level == 4 ? "KVQ level 1..4" : "level 1..3"));
  }
  int level = req.accept_level() != 0 ? static_cast<int>(req.accept_level())
                                      : config_.transfer_encoding.level;
  // A peer that decodes KVQ may ask for it (remote_tier.h kPeerCodecHeader): "kvq" at this
  // node's level, or "kvq-N" at level N (1..4).
  if (ctx != nullptr) {
    auto it = ctx->client_metadata().find(kPeerCodecHeader);
    if (it != ctx->client_metadata().end()) {
      const std::string_view v(it->second.data(), it->second.size());
      int peer_level = 0;
      if (v == "kvq") {
        peer_level = config_.transfer_encoding.level;
      } else if (v.size() == 5 && v.substr(0, 4) == "kvq-" && v[4] >= '1' && v[4] <= '4') {
        peer_level = v[4] - '0';
      } else {
        return Invalid(
            absl::StrCat(kPeerCodecHeader, ": '", std::string(v), "' is not kvq or kvq-1..kvq-4"));
      }
      if (req.accept_codec() == v1::CODEC_UNSPECIFIED) {
        kvq = true;
        level = peer_level;
      }
    }
  }
  if (cachegen_transfer_codecs_[0] == nullptr) return std::optional<Encoded>();  // policy: raw
  storage::TierCodec* codec =
      kvq ? kvq_transfer_codecs_[level - 1].get() : cachegen_transfer_codecs_[level - 1].get();
  Result<std::optional<Encoded>> encoded = codec->EncodeForTier(info, payload);
  if (!encoded.ok()) {
    // The stored bytes are still good: send them as they are.
    spdlog::warn("event=transfer_encode_failed error=\"{}\"",
                 std::string(encoded.status().message()));
    return std::optional<Encoded>();
  }
  return encoded;
}

Result<std::unique_ptr<KvStashService::OutgoingGet>> KvStashService::StartGet(
    grpc::ServerContext* ctx, grpc::ByteBuffer* request_bytes) {
  const Clock::time_point start = Clock::now();
  v1::GetRequest req;
  if (!grpc::SerializationTraits<v1::GetRequest>::Deserialize(request_bytes, &req).ok()) {
    return Invalid("Get call carried bytes that are not a GetRequest");
  }
  if (!req.has_key()) return Invalid("key: missing");
  KVSTASH_ASSIGN_OR_RETURN(Caller caller, Who(ctx));
  KVSTASH_ASSIGN_OR_RETURN(ObjectName name, CallerKey(caller, req.key(), "key"));
  // The lease outlasts the call's deadline by a margin: gRPC may still hold slices of a call the
  // watchdog just cancelled, until its transport drops them.
  const uint32_t lease_ms = config_.stream_timeout_ms + kLeaseMarginMs;
  Result<storage::Lease> acquired = store_->Acquire(name.storage_key, lease_ms);
  if (acquired.status().code() == absl::StatusCode::kNotFound && UsesPeers(ctx)) {
    acquired = AcquireFromPeers(name, lease_ms, remote_->Fetch({name})[0]);
  }
  KVSTASH_ASSIGN_OR_RETURN(storage::Lease lease, std::move(acquired));
  std::unique_ptr<OutgoingGet> get(new OutgoingGet);
  get->service_ = this;
  get->held_ = new HeldObject(store_, lease.id);
  get->total_ = lease.info.payload_bytes;
  KVSTASH_RETURN_IF_ERROR(CheckArenaRange(*store_, lease.arena_offset, get->total_));
  get->deadline_ = StreamDeadline(start, config_.stream_timeout_ms);
  get->watched_ = watchdog_.Watch(ctx, get->deadline_);
  get->src_ = store_->arena_base() + lease.arena_offset;
  // Timed here so the reader can tell this request's encode from its link (GetChunk.encode_micros):
  // under load the encode runs slower than the client's calibration predicts.
  const Clock::time_point encode_start = Clock::now();
  KVSTASH_ASSIGN_OR_RETURN(std::optional<storage::TierCodec::Encoded> encoded,
                           EncodeForTransfer(ctx, req, lease.info, {get->src_, get->total_}));
  // Fields of the first reply; the others carry data only.
  if (encoded) {
    const auto micros =
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - encode_start).count();
    get->first_.set_encode_micros(static_cast<uint64_t>(std::max<int64_t>(micros, 1)));
    ToProto(encoded->decoded_info, get->first_.mutable_info());
    ToProto(encoded->stored_info, get->first_.mutable_wire_info());
    get->held_->encoded = std::move(encoded->bytes);
    get->src_ = get->held_->encoded.data();
    get->total_ = get->held_->encoded.size();
  } else {
    ToProto(lease.info, get->first_.mutable_info());
  }
  get->first_.set_served_from(ToProtoTier(lease.served_from));
  return get;
}

KvStashService::OutgoingGet::~OutgoingGet() {
  watched_.reset();  // before the call's context can go away
  if (held_ != nullptr) HeldObject::Unref(held_);
}

Status KvStashService::OutgoingGet::CheckDeadline() const {
  if (Clock::now() <= deadline_) return OkStatus();
  return absl::DeadlineExceededError(
      absl::StrCat("Get stream took longer than ", service_->config_.stream_timeout_ms, " ms"));
}

Status KvStashService::OutgoingGet::WriteFailed() const {
  // The watchdog cancels a call stuck past its deadline; otherwise the client left.
  Status late = CheckDeadline();
  if (!late.ok()) return late;
  return absl::CancelledError("client went away during Get");
}

grpc::ByteBuffer KvStashService::OutgoingGet::NextMessage(RpcScope& scope) {
  const uint64_t n = std::min<uint64_t>(service_->config_.stream_chunk_bytes, total_ - sent_);
  grpc::ByteBuffer message =
      MessageWithField(sent_ == 0 ? first_ : v1::GetChunk::default_instance(),
                       v1::GetChunk::kDataFieldNumber, held_->Borrow(src_ + sent_, n));
  scope.AddSent(message.Length());
  sent_ += n;
  return message;
}

}  // namespace kvstash::cachesvc
