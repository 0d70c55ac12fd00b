// KvClient::PutMany: two-phase puts into the shared arena, pipelined.
//
// A single Put is serial: Reserve round trip, copy, Commit round trip (during which the service
// reads the whole object again to verify its crc32c). PutMany keeps up to max_in_flight objects
// between Reserve and the Commit answer, so while this thread copies object i, the Reserve of
// object i + depth - 1 and the Commit (verification included) of object i - 1 run in the
// service. Completions arrive on gRPC's callback threads and only set a flag; copying, arena
// mapping and every decision stay on the calling thread.
#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "client_core.h"
#include "copy_crc.h"
#include "kvstash/proto/status_mapping.h"

namespace kvstash::client {
namespace {

// One item's Reserve and Commit calls. The contexts and messages must outlive the calls.
struct PipelinedPut {
  grpc::ClientContext reserve_ctx;
  v1::ReserveRequest reserve_req;
  v1::ReserveResponse reserve_resp;
  grpc::ClientContext commit_ctx;
  v1::CommitRequest commit_req;
  v1::CommitResponse commit_resp;
  bool commit_sent = false;  // calling thread only
  // Set by the completion callbacks, under Pipeline::mu.
  bool reserve_answered = false;
  bool commit_answered = false;
  grpc::Status reserve_status;
  grpc::Status commit_status;
};

class Pipeline {
 public:
  void Complete(bool* answered, grpc::Status* where, grpc::Status status) {
    std::lock_guard<std::mutex> lock(mu_);
    *where = std::move(status);
    *answered = true;
    cv_.notify_all();
  }
  void Wait(const bool& answered) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return answered; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace

std::vector<Status> KvClient::PutMany(std::span<const PutItem> items, const PutOptions& options) {
  if (options.path != DataPath::kStream && shared_memory_attached()) {
    return PutManyShared(items, options);
  }
  // Stream path (or kSharedMemory without an arena: each Put says FailedPrecondition).
  std::vector<Status> out;
  out.reserve(items.size());
  for (const PutItem& item : items) out.push_back(Put(item.name, item.info, item.payload, options));
  return out;
}

std::vector<Status> KvClient::PutManyShared(std::span<const PutItem> items,
                                            const PutOptions& options) {
  const size_t n = items.size();
  const size_t depth = std::max<uint32_t>(1, options.max_in_flight);
  std::vector<Status> out(n);
  std::vector<std::unique_ptr<PipelinedPut>> calls(n);  // null: rejected before any RPC
  Pipeline pipe;

  auto send_reserve = [&](size_t i) {
    const PutItem& item = items[i];
    if (item.payload.size() != item.info.payload_bytes) {
      out[i] = absl::InvalidArgumentError(absl::StrCat(
          "payload is ", item.payload.size(), " bytes, info says ", item.info.payload_bytes));
      return;
    }
    calls[i] = std::make_unique<PipelinedPut>();
    PipelinedPut* call = calls[i].get();
    core_->SetRpcDeadline(&call->reserve_ctx);
    ToProto(item.name, call->reserve_req.mutable_key());
    ToProto(item.info, call->reserve_req.mutable_info());
    call->reserve_req.set_lease_ms(core_->options.lease_ms);
    call->reserve_req.set_overwrite(options.overwrite);
    core_->stub->async()->Reserve(
        &call->reserve_ctx, &call->reserve_req, &call->reserve_resp, [&pipe, call](grpc::Status s) {
          pipe.Complete(&call->reserve_answered, &call->reserve_status, std::move(s));
        });
  };
  auto wait_commit = [&](size_t i) {
    if (calls[i] != nullptr && calls[i]->commit_sent) pipe.Wait(calls[i]->commit_answered);
  };

  size_t next_reserve = 0;
  for (size_t i = 0; i < n; ++i) {
    // Items [i, i + depth) may have their Reserve out; item j's goes out only once the Commit of
    // item j - depth is answered, so at most `depth` objects are in flight.
    while (next_reserve < n && next_reserve < i + depth) {
      if (next_reserve >= depth) wait_commit(next_reserve - depth);
      send_reserve(next_reserve++);
    }
    PipelinedPut* call = calls[i].get();
    if (call == nullptr) continue;
    pipe.Wait(call->reserve_answered);
    Status reserved = FromGrpcStatus(call->reserve_status);
    if (!reserved.ok()) {
      out[i] = reserved;
      continue;
    }
    const PutItem& item = items[i];
    const uint64_t id = call->reserve_resp.reservation_id();
    auto mapping = core_->MappingFor(call->reserve_resp.arena_generation());
    Result<uint8_t*> at =
        mapping.ok() ? (*mapping)->At(call->reserve_resp.arena_offset(), item.payload.size())
                     : Result<uint8_t*>(mapping.status());
    if (!at.ok()) {
      (void)core_->AbortReservation(id);
      out[i] = at.status();
      continue;
    }
    uint32_t crc = item.info.payload_crc32c;
    if (crc == 0) {
      crc = internal::CopyWithCrc(*at, item.payload.data(), item.payload.size());
    } else {  // the caller vouches for the crc32c; the service checks it against what we copy
      std::memcpy(*at, item.payload.data(), item.payload.size());
    }
    core_->SetRpcDeadline(&call->commit_ctx);
    call->commit_req.set_reservation_id(id);
    call->commit_req.set_payload_crc32c(crc);
    call->commit_req.set_durable(options.durable);
    call->commit_sent = true;
    core_->stub->async()->Commit(
        &call->commit_ctx, &call->commit_req, &call->commit_resp, [&pipe, call](grpc::Status s) {
          pipe.Complete(&call->commit_answered, &call->commit_status, std::move(s));
        });
  }
  for (size_t i = 0; i < n; ++i) {
    PipelinedPut* call = calls[i].get();
    if (call == nullptr || !call->commit_sent) continue;
    pipe.Wait(call->commit_answered);
    out[i] = FromGrpcStatus(call->commit_status);
    // As WriteReservation::CommitWithCrc: free what a failed Commit may have left open now
    // instead of at expiry (harmless when the Commit already settled it).
    if (!out[i].ok()) (void)core_->AbortReservation(call->reserve_resp.reservation_id());
  }
  return out;
}

}  // namespace kvstash::client
