#include "kvstash/proto/raw_message.h"

#include <string>

#include "absl/status/status.h"

namespace kvstash {

Status ReceivedMessage::Split(uint32_t field_number, google::protobuf::MessageLite* rest,
                              BytesFieldView* field) {
  spans_.clear();
  slices_.clear();
  if (!buffer_.Dump(&slices_).ok()) return absl::InternalError("cannot read a received message");
  for (const grpc::Slice& s : slices_) spans_.emplace_back(s.begin(), s.size());
  return SplitBytesField(spans_, field_number, rest, field);
}

void ReceivedMessage::Clear() {
  spans_.clear();
  slices_.clear();
  buffer_.Clear();
}

grpc::ByteBuffer MessageWithField(const google::protobuf::MessageLite& head_fields,
                                  uint32_t field_number, grpc::Slice field_bytes) {
  std::string head = head_fields.SerializeAsString();
  AppendLengthDelimitedTag(&head, field_number, field_bytes.size());
  grpc::Slice slices[2] = {grpc::Slice(head), std::move(field_bytes)};
  return grpc::ByteBuffer(slices, slices[1].size() == 0 ? 1 : 2);
}

}  // namespace kvstash
