// Reading a serialized kvstash.v1.GetChunk without copying its payload twice.
//
// gRPC hands a client a received message as a list of slices. Parsing it as a v1::GetChunk copies
// the `data` field into a std::string, and the reader then copies that string again to where the
// object belongs. SplitGetChunk instead walks the protobuf wire format over the slices: `data`
// comes back as spans of the input (a field may straddle slices), every other field is parsed into
// `meta` as protobuf would. The reader copies the spans once, to their destination.
//
// Semantics follow protobuf's parser for GetChunk: fields in any order, unknown fields skipped,
// a repeated `data` field replaced by its last occurrence, repeated message fields merged. Input
// protobuf would reject is rejected, plus groups (wire types 3 and 4, which GetChunk never
// carries). Thread-safe; the spans borrow the input's memory and live only as long as it does.
#ifndef KVSTASH_PROTO_GET_CHUNK_VIEW_H_
#define KVSTASH_PROTO_GET_CHUNK_VIEW_H_

#include <cstdint>
#include <span>
#include <vector>

#include "kvstash/common/status.h"
#include "kvstash/v1/kvstash.pb.h"

namespace kvstash {

struct GetChunkView {
  v1::GetChunk meta;                           // every field but data (data stays empty)
  std::vector<std::span<const uint8_t>> data;  // the data field, in order, borrowed
  uint64_t data_bytes = 0;                     // sum of data's span sizes
};

// Splits `slices` (one serialized GetChunk, cut anywhere) into `out`, which is overwritten.
// InvalidArgument when the bytes are not a GetChunk.
Status SplitGetChunk(std::span<const std::span<const uint8_t>> slices, GetChunkView* out);

}  // namespace kvstash

#endif  // KVSTASH_PROTO_GET_CHUNK_VIEW_H_
