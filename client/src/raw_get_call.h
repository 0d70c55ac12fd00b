// A streaming Get whose replies arrive as gRPC's received slices (grpc::GenericStub) instead of
// parsed v1::GetChunk messages, so payload bytes are copied once: from the slices to wherever
// the reader wants them (see kvstash/proto/get_chunk_view.h).
//
// One thread drives a call from construction to Finish(). Not copyable.
#ifndef KVSTASH_CLIENT_RAW_GET_CALL_H_
#define KVSTASH_CLIENT_RAW_GET_CALL_H_

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <memory>
#include <vector>

#include "kvstash/common/status.h"
#include "kvstash/proto/get_chunk_view.h"
#include "kvstash/v1/kvstash.pb.h"

namespace kvstash::client::internal {

class RawGetCall {
 public:
  // Starts Get(request) on `stub` with `ctx` (its deadline applies); both must outlive the call.
  RawGetCall(grpc::GenericStub* stub, grpc::ClientContext* ctx, const v1::GetRequest& request);
  ~RawGetCall();  // cancels a call that was not finished and waits for gRPC to let go of it
  RawGetCall(const RawGetCall&) = delete;
  RawGetCall& operator=(const RawGetCall&) = delete;

  // The next reply message, split into `view`, whose data spans stay valid until the next call of
  // Next() or Finish(). False at the end of the stream or when the call failed (Finish() says
  // which); InvalidArgument when the message is not a GetChunk.
  Result<bool> Next(GetChunkView* view);

  // The call's status, once Next() returned false (or to give up early: it cancels the call
  // first). Call at most once.
  Status Finish();

 private:
  bool Wait();  // the next completion's ok bit; completions arrive in the order ops were issued

  grpc::ClientContext* ctx_;
  grpc::CompletionQueue cq_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call_;
  bool streaming_ = false;  // the call started and the request went out
  bool ended_ = false;      // Next() returned false
  bool finished_ = false;
  grpc::ByteBuffer received_;
  std::vector<grpc::Slice> slices_;
  std::vector<std::span<const uint8_t>> spans_;
};

}  // namespace kvstash::client::internal

#endif  // KVSTASH_CLIENT_RAW_GET_CALL_H_
