#include "raw_call.h"

#include "absl/strings/str_cat.h"
#include "kvstash/proto/completion_poll.h"
#include "kvstash/proto/status_mapping.h"
#include "kvstash/v1/kvstash.grpc.pb.h"

namespace kvstash::client::internal {

RawCall::RawCall(grpc::GenericStub* stub, grpc::ClientContext* ctx, const std::string& method,
                 std::chrono::microseconds poll)
    : ctx_(ctx), poll_(poll) {
  // Headers leave with the first message (and the half-close, when it is the last).
  ctx->set_initial_metadata_corked(true);
  call_ = stub->PrepareCall(ctx, absl::StrCat("/", v1::KvStash::service_full_name(), "/", method),
                            &cq_);
  if (call_ == nullptr) return;
  call_->StartCall(nullptr);  // corked: completes nothing until the first write
  open_ = true;
}

RawCall::~RawCall() {
  if (call_ != nullptr && !finished_) (void)Finish();
  call_.reset();
  ShutdownAndDrain(&cq_);
}

bool RawCall::Wait() {
  void* tag = nullptr;
  bool ok = false;
  return NextEvent(&cq_, &tag, &ok, poll_) && ok;
}

bool RawCall::Write(const grpc::ByteBuffer& message, bool last) {
  if (!open_) return false;
  grpc::WriteOptions options;
  if (last) options.set_last_message();
  call_->Write(message, options, this);
  open_ = Wait();
  return open_;
}

Result<bool> RawCall::Read(uint32_t field_number, google::protobuf::MessageLite* rest,
                           BytesFieldView* field) {
  received_.Clear();
  if (call_ == nullptr || ended_) return false;
  call_->Read(received_.buffer(), this);
  if (!Wait()) {
    ended_ = true;
    return false;
  }
  KVSTASH_RETURN_IF_ERROR(received_.Split(field_number, rest, field));
  return true;
}

Status RawCall::Finish() {
  if (finished_) return absl::InternalError("RawCall::Finish called twice");
  finished_ = true;
  received_.Clear();
  if (call_ == nullptr) return absl::InternalError("gRPC could not set up the call");
  // Replies still coming are not wanted: cancelling lets Finish complete at once.
  if (!ended_) ctx_->TryCancel();
  grpc::Status status;
  call_->Finish(&status, this);
  (void)Wait();
  return FromGrpcStatus(status);
}

grpc::Slice BorrowedSlices::Lend(const uint8_t* data, size_t n) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++lent_;
  }
  // grpc::Slice takes a non-const pointer but only reads through it.
  return grpc::Slice(const_cast<uint8_t*>(data), n, &BorrowedSlices::Return, this);
}

void BorrowedSlices::Return(void* self) {
  auto* lender = static_cast<BorrowedSlices*>(self);
  std::lock_guard<std::mutex> lock(lender->mu_);
  if (--lender->lent_ == 0) lender->returned_.notify_all();
}

void BorrowedSlices::WaitUntilReturned() {
  std::unique_lock<std::mutex> lock(mu_);
  returned_.wait(lock, [this] { return lent_ == 0; });
}

}  // namespace kvstash::client::internal
