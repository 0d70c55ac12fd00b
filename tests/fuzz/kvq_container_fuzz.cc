// Fuzz target: the KVQ container parser and decoder (codec/kvq.h).
//
// Input: byte 0 holds flags, the rest is the container.
//   bit 0: recompute the container's checksums first, so mutations reach past the crc checks
// Invariants: parsing never reads out of bounds; a container that parses has exactly the
// parsed section sizes; decoding either succeeds or fails with InvalidArgument, and the portable
// and vector rANS decoders agree on the status and on every output byte.
#include <cstdint>
#include <vector>

#include "kvstash/codec/kvq.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvstash;
  if (size < 1) return 0;
  const uint8_t flags = data[0];
  std::vector<uint8_t> bytes(data + 1, data + size);
  if (flags & 1) codec::RefreshKvqChecksums(bytes);
  auto info = codec::ParseKvq(bytes);
  if (!info.ok()) return 0;
  if (info->total() != bytes.size()) __builtin_trap();
  if (info->RawBytes() > (uint64_t{32} << 20)) return 0;  // keep memory bounded
  std::vector<uint8_t> vec(info->RawBytes()), scalar(info->RawBytes());
  codec::SetKvqSimdForTesting(true);
  const Status a = codec::DecodeKvq(bytes, vec);
  codec::SetKvqSimdForTesting(false);
  const Status b = codec::DecodeKvq(bytes, scalar);
  codec::SetKvqSimdForTesting(true);
  if (!a.ok() && a.code() != absl::StatusCode::kInvalidArgument) __builtin_trap();
  if (a.code() != b.code()) __builtin_trap();
  if (a.ok() && vec != scalar) __builtin_trap();
  return 0;
}
