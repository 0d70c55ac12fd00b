// KvClient::PutMany: batched, pipelined two-phase puts into the shared arena.
//
// A single Put is serial: Reserve round trip, copy, Commit round trip. PutMany groups the objects
// into batches of one ReserveMany and one CommitMany call each, and keeps up to three batches
// open: while this thread copies a batch, the next batch's ReserveMany and the previous batch's
// CommitMany run in the service. Over the local control channel the calls are pipelined on one
// connection (answers come in order); over gRPC they are async calls on a completion queue of this
// PutMany's own, which the calling thread drives while it awaits an answer. Copying, arena mapping
// and every decision stay on the calling thread, and no other thread polls gRPC for it (gRPC's
// callback API would start polling threads that live as long as the channel, and that slow down
// every later call on it: docs/benchmarks-service.md).
#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>

#include "absl/strings/str_cat.h"
#include "client_core.h"
#include "copy_crc.h"
#include "kvstash/proto/completion_poll.h"
#include "kvstash/proto/convert.h"
#include "kvstash/proto/status_mapping.h"

namespace kvstash::client {
namespace {

// One async unary call on a Pipeline; its address is the call's completion-queue tag.
struct PendingCall {
  grpc::Status status;
  bool answered = false;
};

// One batch's ReserveMany and CommitMany calls. Contexts and messages must outlive the calls.
struct Batch {
  std::vector<size_t> items;       // indices into PutMany's items, in request order
  std::vector<size_t> committing;  // indices whose CommitRequest is in commit_req, same order
  grpc::ClientContext reserve_ctx;
  v1::ReserveManyRequest reserve_req;
  v1::ReserveManyResponse reserve_resp;
  grpc::ClientContext commit_ctx;
  v1::CommitManyRequest commit_req;
  v1::CommitManyResponse commit_resp;
  bool reserve_sent = false;
  bool commit_sent = false;
  // Local control channel: the tickets to await.
  uint32_t reserve_ticket = 0;
  uint32_t commit_ticket = 0;
  // gRPC: the calls in flight.
  std::unique_ptr<grpc::ClientAsyncResponseReader<v1::ReserveManyResponse>> reserve_reader;
  std::unique_ptr<grpc::ClientAsyncResponseReader<v1::CommitManyResponse>> commit_reader;
  PendingCall reserve_call;
  PendingCall commit_call;
  // What the awaits gave, either way.
  std::optional<Status> reserve_result;
  std::optional<Status> commit_result;
};

// The completion queue of one PutMany's gRPC calls, driven by the calling thread only. Declared
// after the batches it serves: on the way out it cancels and reaps every call still out before
// their contexts go.
class Pipeline {
 public:
  explicit Pipeline(std::chrono::microseconds poll) : poll_(poll) {}
  ~Pipeline() {
    for (auto& [ctx, call] : out_) {
      if (!call->answered) ctx->TryCancel();
    }
    for (auto& [ctx, call] : out_) Await(call);
    ShutdownAndDrain(&cq_);
  }
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  grpc::CompletionQueue* cq() { return &cq_; }
  // Records a started call whose Finish() was given `call` as its tag.
  void Started(grpc::ClientContext* ctx, PendingCall* call) { out_.emplace_back(ctx, call); }
  // Reaps completions until `call` has its answer.
  void Await(PendingCall* call) {
    void* tag = nullptr;
    bool ok = false;
    while (!call->answered && NextEvent(&cq_, &tag, &ok, poll_)) {
      static_cast<PendingCall*>(tag)->answered = true;
    }
  }

 private:
  const std::chrono::microseconds poll_;
  grpc::CompletionQueue cq_;
  std::vector<std::pair<grpc::ClientContext*, PendingCall*>> out_;
};

}  // namespace

std::vector<Status> KvClient::PutMany(std::span<const PutItem> items, const PutOptions& options) {
  if (options.path != DataPath::kStream && shared_memory_writable()) {
    return PutManyShared(items, options);
  }
  // Stream path (or kSharedMemory without an arena: each Put says FailedPrecondition).
  std::vector<Status> out;
  out.reserve(items.size());
  std::vector<uint8_t> gathered;
  for (const PutItem& item : items) {
    if (item.segments.empty()) {
      out.push_back(Put(item.name, item.info, item.payload, options));
      continue;
    }
    if (!item.payload.empty()) {
      out.push_back(absl::InvalidArgumentError("a PutItem has both a payload and segments"));
      continue;
    }
    gathered.clear();
    for (std::span<const uint8_t> seg : item.segments) {
      gathered.insert(gathered.end(), seg.begin(), seg.end());
    }
    out.push_back(Put(item.name, item.info, gathered, options));
  }
  return out;
}

size_t PutItem::PayloadSize() const {
  if (segments.empty()) return payload.size();
  size_t n = 0;
  for (std::span<const uint8_t> seg : segments) n += seg.size();
  return n;
}

std::vector<Status> KvClient::PutManyShared(std::span<const PutItem> items,
                                            const PutOptions& options) {
  std::vector<Status> out(items.size());
  // Group the well-formed items into batches.
  std::vector<std::unique_ptr<Batch>> batches;
  const size_t max_batch = std::max<uint32_t>(1, options.max_batch);
  uint64_t batch_bytes = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const PutItem& item = items[i];
    if (!item.segments.empty() && !item.payload.empty()) {
      out[i] = absl::InvalidArgumentError("a PutItem has both a payload and segments");
      continue;
    }
    const size_t size = item.PayloadSize();
    if (size != item.info.payload_bytes) {
      out[i] = absl::InvalidArgumentError(
          absl::StrCat("payload is ", size, " bytes, info says ", item.info.payload_bytes));
      continue;
    }
    if (batches.empty() || batches.back()->items.size() >= max_batch ||
        batch_bytes + size > options.max_batch_bytes) {
      if (batches.empty() || !batches.back()->items.empty()) {
        batches.push_back(std::make_unique<Batch>());
      }
      batch_bytes = 0;
    }
    batches.back()->items.push_back(i);
    batch_bytes += size;
  }

  Pipeline pipe(core_->options.stream_poll);
  // `channel` outlives `local`, whose connection it owns.
  std::shared_ptr<internal::LocalControl> channel = core_->CurrentLocal();
  std::unique_ptr<internal::LocalControl::Pipeline> local;
  if (channel != nullptr) {
    auto opened = channel->OpenPipeline();
    if (opened.ok()) local = std::move(*opened);  // else the gRPC calls below do the same work
  }
  auto send_reserve = [&](Batch* batch) {
    core_->SetRpcDeadline(&batch->reserve_ctx);
    for (size_t i : batch->items) {
      v1::ReserveRequest* req = batch->reserve_req.add_items();
      ToProto(items[i].name, req->mutable_key());
      ToProto(items[i].info, req->mutable_info());
      req->set_lease_ms(core_->options.lease_ms);
      req->set_overwrite(options.overwrite);
    }
    batch->reserve_sent = true;
    if (local != nullptr) {
      Result<uint32_t> ticket = local->Send(LocalMethod::kReserveMany, batch->reserve_req);
      if (ticket.ok()) {
        batch->reserve_ticket = *ticket;
      } else {
        batch->reserve_result = ticket.status();
      }
      return;
    }
    batch->reserve_reader =
        core_->stub->AsyncReserveMany(&batch->reserve_ctx, batch->reserve_req, pipe.cq());
    batch->reserve_reader->Finish(&batch->reserve_resp, &batch->reserve_call.status,
                                  &batch->reserve_call);
    pipe.Started(&batch->reserve_ctx, &batch->reserve_call);
  };
  auto send_commit = [&](Batch* batch) {
    batch->commit_sent = true;
    if (local != nullptr) {
      Result<uint32_t> ticket = local->Send(LocalMethod::kCommitMany, batch->commit_req);
      if (ticket.ok()) {
        batch->commit_ticket = *ticket;
      } else {
        batch->commit_result = ticket.status();
      }
      return;
    }
    core_->SetRpcDeadline(&batch->commit_ctx);
    batch->commit_reader =
        core_->stub->AsyncCommitMany(&batch->commit_ctx, batch->commit_req, pipe.cq());
    batch->commit_reader->Finish(&batch->commit_resp, &batch->commit_call.status,
                                 &batch->commit_call);
    pipe.Started(&batch->commit_ctx, &batch->commit_call);
  };
  // The outcome of a sent call (waits for it once; later calls return the same).
  auto await_reserve = [&](Batch* batch) -> Status {
    if (!batch->reserve_result.has_value()) {
      if (local != nullptr) {
        batch->reserve_result = local->Await(batch->reserve_ticket, &batch->reserve_resp);
      } else {
        pipe.Await(&batch->reserve_call);
        batch->reserve_result = FromGrpcStatus(batch->reserve_call.status);
      }
    }
    return *batch->reserve_result;
  };
  auto await_commit = [&](Batch* batch) -> Status {
    if (!batch->commit_result.has_value()) {
      if (local != nullptr) {
        batch->commit_result = local->Await(batch->commit_ticket, &batch->commit_resp);
      } else {
        pipe.Await(&batch->commit_call);
        batch->commit_result = FromGrpcStatus(batch->commit_call.status);
      }
    }
    return *batch->commit_result;
  };
  // Copies one reserved item into the arena and queues its commit; returns the item's error.
  auto copy_in = [&](Batch* batch, size_t i, const v1::ReserveResponse& reservation) -> Status {
    const PutItem& item = items[i];
    auto mapping = core_->MappingFor(reservation.arena_generation());
    Result<uint8_t*> at = mapping.ok()
                              ? (*mapping)->AtWrite(reservation.arena_offset(), item.PayloadSize())
                              : Result<uint8_t*>(mapping.status());
    if (!at.ok()) {
      (void)core_->AbortReservation(reservation.reservation_id());
      return at.status();
    }
    Result<uint32_t> crc =
        item.segments.empty()
            ? internal::CopyForPut(*at, item.payload.data(), item.payload.size(),
                                   item.info.payload_crc32c)
            : internal::CopyForPutGather(*at, item.segments, item.info.payload_crc32c);
    if (!crc.ok()) {
      (void)core_->AbortReservation(reservation.reservation_id());
      return crc.status();
    }
    v1::CommitRequest* commit = batch->commit_req.add_items();
    commit->set_reservation_id(reservation.reservation_id());
    commit->set_payload_crc32c(*crc);
    commit->set_durable(options.durable);
    batch->committing.push_back(i);
    return OkStatus();
  };

  for (size_t b = 0; b < batches.size(); ++b) {
    Batch* batch = batches[b].get();
    if (!batch->reserve_sent) send_reserve(batch);
    // Open the next batch now, so its reservations arrive while this one is copied. First let
    // batch b - 2 finish, so at most three batches hold arena space; the commit of batch b - 1,
    // sent just before, is not waited for: it runs in the service while this batch is copied.
    if (b + 1 < batches.size()) {
      if (b > 1 && batches[b - 2]->commit_sent) (void)await_commit(batches[b - 2].get());
      send_reserve(batches[b + 1].get());
    }
    Status rpc = await_reserve(batch);
    if (rpc.ok() &&
        static_cast<size_t>(batch->reserve_resp.results_size()) != batch->items.size()) {
      rpc = absl::InternalError("ReserveMany answered with a wrong number of results");
      // Reservations it did make expire at their lease; we cannot tell which item they belong to.
    }
    for (size_t k = 0; k < batch->items.size(); ++k) {
      const size_t i = batch->items[k];
      if (!rpc.ok()) {
        out[i] = rpc;
        continue;
      }
      const v1::ReserveResult& result = batch->reserve_resp.results(static_cast<int>(k));
      out[i] = FromItemStatus(result.status());
      if (out[i].ok()) out[i] = copy_in(batch, i, result.reservation());
    }
    if (batch->committing.empty()) continue;
    send_commit(batch);
  }

  for (const std::unique_ptr<Batch>& batch : batches) {
    if (!batch->commit_sent) continue;
    Status rpc = await_commit(batch.get());
    if (rpc.ok() &&
        static_cast<size_t>(batch->commit_resp.results_size()) != batch->committing.size()) {
      rpc = absl::InternalError("CommitMany answered with a wrong number of results");
    }
    for (size_t k = 0; k < batch->committing.size(); ++k) {
      const size_t i = batch->committing[k];
      out[i] = rpc.ok() ? FromItemStatus(batch->commit_resp.results(static_cast<int>(k))) : rpc;
      // As WriteReservation::CommitWithCrc: free what a failed Commit may have left open now
      // instead of at expiry (harmless when the Commit already settled it).
      if (!out[i].ok()) {
        (void)core_->AbortReservation(
            batch->commit_req.items(static_cast<int>(k)).reservation_id());
      }
    }
  }
  return out;
}

}  // namespace kvstash::client
