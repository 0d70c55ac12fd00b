// gRPC messages handled as raw ByteBuffers around one bulk bytes field, so the payload is neither
// copied into nor out of a protobuf message (split_bytes_field.h has the wire-format part). Used
// by both ends of the byte streams: KvClient's Put and Get, cachesvc's Put and Get.
//
// Not thread-safe; one thread uses a ReceivedMessage at a time.
#ifndef KVSTASH_PROTO_RAW_MESSAGE_H_
#define KVSTASH_PROTO_RAW_MESSAGE_H_

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <span>
#include <vector>

#include "kvstash/common/status.h"
#include "kvstash/proto/split_bytes_field.h"

namespace kvstash {

// A received message, split in place.
class ReceivedMessage {
 public:
  // Where gRPC writes the next message (Read(buffer(), ...)). Clear() first.
  grpc::ByteBuffer* buffer() { return &buffer_; }
  size_t bytes() const { return buffer_.Length(); }

  // Splits the received message at `field_number` (SplitBytesField); the pieces borrow it until
  // the next Clear(). InvalidArgument when it does not parse.
  Status Split(uint32_t field_number, google::protobuf::MessageLite* rest, BytesFieldView* field);
  // Drops the borrowed pieces; the buffer is then free for the next message.
  void Clear();

 private:
  grpc::ByteBuffer buffer_;
  std::vector<grpc::Slice> slices_;
  std::vector<std::span<const uint8_t>> spans_;
};

// A message made of `head_fields` serialized, then field `field_number` (length-delimited) whose
// bytes are `field_bytes`, sent as the slice it is (typically one that points at the sender's
// memory and tells its owner when gRPC drops it).
grpc::ByteBuffer MessageWithField(const google::protobuf::MessageLite& head_fields,
                                  uint32_t field_number, grpc::Slice field_bytes);

}  // namespace kvstash

#endif  // KVSTASH_PROTO_RAW_MESSAGE_H_
