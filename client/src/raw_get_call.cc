#include "raw_get_call.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "kvstash/proto/status_mapping.h"
#include "kvstash/v1/kvstash.grpc.pb.h"

namespace kvstash::client::internal {
namespace {

const std::string& GetMethodPath() {
  static const std::string* path =
      new std::string(absl::StrCat("/", v1::KvStash::service_full_name(), "/Get"));
  return *path;
}

}  // namespace

RawGetCall::RawGetCall(grpc::GenericStub* stub, grpc::ClientContext* ctx,
                       const v1::GetRequest& request)
    : ctx_(ctx) {
  // Headers, the request and the half-close leave in one write.
  ctx->set_initial_metadata_corked(true);
  call_ = stub->PrepareCall(ctx, GetMethodPath(), &cq_);
  if (call_ == nullptr) return;
  call_->StartCall(nullptr);  // corked: completes nothing until the write below
  grpc::ByteBuffer bytes;
  bool own_buffer = false;
  if (!grpc::SerializationTraits<v1::GetRequest>::Serialize(request, &bytes, &own_buffer).ok()) {
    return;
  }
  call_->Write(bytes, grpc::WriteOptions().set_last_message(), this);
  streaming_ = Wait();
}

RawGetCall::~RawGetCall() {
  if (call_ != nullptr && !finished_) (void)Finish();
  call_.reset();
  cq_.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq_.Next(&tag, &ok)) {
  }
}

bool RawGetCall::Wait() {
  void* tag = nullptr;
  bool ok = false;
  return cq_.Next(&tag, &ok) && ok;
}

Result<bool> RawGetCall::Next(GetChunkView* view) {
  spans_.clear();
  slices_.clear();
  if (!streaming_ || ended_) return false;
  call_->Read(&received_, this);
  if (!Wait()) {
    ended_ = true;
    return false;
  }
  if (!received_.Dump(&slices_).ok()) return absl::InternalError("cannot read a received message");
  for (const grpc::Slice& s : slices_) spans_.emplace_back(s.begin(), s.size());
  KVSTASH_RETURN_IF_ERROR(SplitGetChunk(spans_, view));
  return true;
}

Status RawGetCall::Finish() {
  if (finished_) return absl::InternalError("RawGetCall::Finish called twice");
  finished_ = true;
  spans_.clear();
  slices_.clear();
  if (call_ == nullptr) return absl::InternalError("gRPC could not set up the Get call");
  // A call that still has replies coming is given up: cancelling lets Finish complete at once.
  if (!ended_) ctx_->TryCancel();
  grpc::Status status;
  call_->Finish(&status, this);
  (void)Wait();
  return FromGrpcStatus(status);
}

}  // namespace kvstash::client::internal
