// Reading a serialized message without copying its bulk `bytes` field twice.
//
// gRPC hands a receiver a message as a list of slices. Parsing it as a protobuf message copies a
// bytes field into a std::string, and the receiver then copies that string again to where the
// bytes belong. SplitBytesField instead walks the protobuf wire format over the slices: the one
// named field comes back as spans of the input (it may straddle slices), and every other field is
// parsed into `rest` as protobuf would. The receiver copies the spans once, to their destination.
// Used for v1::GetChunk (client) and v1::PutChunk (service), whose payload is field 2, `data`.
//
// Semantics follow protobuf's parser: fields in any order, unknown fields kept in `rest`, a
// repeated occurrence of the field replacing the earlier ones, repeated message fields merged.
// Input protobuf would reject is rejected, and groups too (wire types 3 and 4, which these
// messages never carry). Thread-safe; the spans borrow the input's memory and live only as long
// as it does.
#ifndef KVSTASH_PROTO_SPLIT_BYTES_FIELD_H_
#define KVSTASH_PROTO_SPLIT_BYTES_FIELD_H_

#include <google/protobuf/message_lite.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvstash/common/status.h"

namespace kvstash {

// The bytes of one field, in order, borrowed from the input.
struct BytesFieldView {
  std::vector<std::span<const uint8_t>> pieces;
  uint64_t bytes = 0;  // sum of the pieces' sizes
};

// Splits `slices` (one serialized message, cut anywhere) into the length-delimited field
// `field_number`, returned in `field`, and the rest, parsed into `rest` (cleared first). The field
// is empty when the message does not carry it; field_number 0 splits nothing off. InvalidArgument
// when the bytes do not parse.
Status SplitBytesField(std::span<const std::span<const uint8_t>> slices, uint32_t field_number,
                       google::protobuf::MessageLite* rest, BytesFieldView* field);

// Appends what precedes a length-delimited field `field_number` of `n` bytes in a serialized
// message (its tag and length), so a sender can follow it with the bytes as a slice of their own.
void AppendLengthDelimitedTag(std::string* out, uint32_t field_number, uint64_t n);

}  // namespace kvstash

#endif  // KVSTASH_PROTO_SPLIT_BYTES_FIELD_H_
