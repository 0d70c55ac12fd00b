// A gRPC call whose messages travel as raw ByteBuffers (grpc::GenericStub) instead of parsed
// protobuf messages, so payload bytes are not copied on their way in or out:
//   - a streaming Get splits each reply at its data field (kvstash/proto/split_bytes_field.h) and
//     copies the pieces once, from gRPC's received slices to the reader's buffer;
//   - a streaming Put sends slices that point at the caller's payload (BorrowedSlices).
// The service sees ordinary kvstash.v1 calls.
//
// One thread drives a call from construction to Finish(). Not copyable.
#ifndef KVSTASH_CLIENT_RAW_CALL_H_
#define KVSTASH_CLIENT_RAW_CALL_H_

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kvstash/common/status.h"
#include "kvstash/proto/raw_message.h"

namespace kvstash::client::internal {

class RawCall {
 public:
  // Starts the call `method` ("Get", "Put": a method of kvstash.v1.KvStash) on `stub` with `ctx`
  // (its deadline applies); both must outlive the call. Headers wait for the first Write. Each
  // wait for gRPC polls for up to `poll` before it blocks (ClientOptions::stream_poll).
  RawCall(grpc::GenericStub* stub, grpc::ClientContext* ctx, const std::string& method,
          std::chrono::microseconds poll);
  ~RawCall();  // cancels a call that was not finished and waits for gRPC to let go of it
  RawCall(const RawCall&) = delete;
  RawCall& operator=(const RawCall&) = delete;

  // Sends `message`; `last` half-closes the stream with it. False when the call is over (Finish
  // says why).
  bool Write(const grpc::ByteBuffer& message, bool last);

  // The next message, split at field `field_number`: that field in `field` (its pieces valid
  // until the next Read or Finish), the others in `rest`. False at the end of the stream or when
  // the call failed (Finish says which); InvalidArgument when the message does not parse.
  Result<bool> Read(uint32_t field_number, google::protobuf::MessageLite* rest,
                    BytesFieldView* field);

  // The call's status. A call whose replies did not all arrive is cancelled first. Call once.
  Status Finish();

 private:
  bool Wait();  // the ok bit of the next completion (one op is outstanding at a time)

  grpc::ClientContext* ctx_;
  const std::chrono::microseconds poll_;
  grpc::CompletionQueue cq_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call_;
  bool open_ = false;   // no op has failed yet
  bool ended_ = false;  // Read() saw the end of the stream
  bool finished_ = false;
  ReceivedMessage received_;
};

// Slices that point at memory the caller owns, and a wait for gRPC to drop them all: gRPC may
// hold a sent slice after the write that sent it completed. Thread-safe.
class BorrowedSlices {
 public:
  BorrowedSlices() = default;
  ~BorrowedSlices() { WaitUntilReturned(); }
  BorrowedSlices(const BorrowedSlices&) = delete;
  BorrowedSlices& operator=(const BorrowedSlices&) = delete;

  // A slice over [data, data + n), which must stay valid until WaitUntilReturned() returns.
  grpc::Slice Lend(const uint8_t* data, size_t n);
  void WaitUntilReturned();

 private:
  static void Return(void* self);

  std::mutex mu_;
  std::condition_variable returned_;
  int lent_ = 0;
};

}  // namespace kvstash::client::internal

#endif  // KVSTASH_CLIENT_RAW_CALL_H_
