// Fuzz target: the 64-byte object header decoder (common/object_header.h).
//
// Input: byte 0 holds flags, the rest is the header (plus anything after it).
//   bit 0: recompute the header crc32c (bytes 60..63) first, so mutations reach the field checks
// Invariants: no out-of-bounds reads; a header that decodes validates, encodes again, and the
// re-encoded header decodes to the same ObjectInfo.
#include <cstdint>
#include <vector>

#include "kvstash/common/crc32c.h"
#include "kvstash/common/object_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvstash;
  if (size < 1) return 0;
  std::vector<uint8_t> bytes(data + 1, data + size);
  if ((data[0] & 1) && bytes.size() >= kObjectHeaderBytes) {
    const uint32_t crc = Crc32c(bytes.data(), 60);
    for (int i = 0; i < 4; ++i) bytes[60 + i] = static_cast<uint8_t>(crc >> (8 * i));
  }
  auto info = DecodeObjectHeader(bytes);
  if (!info.ok()) return 0;
  if (!info->Validate().ok()) __builtin_trap();
  auto encoded = EncodeObjectHeader(*info);
  if (!encoded.ok()) __builtin_trap();
  auto back = DecodeObjectHeader(*encoded);
  if (!back.ok() || !(*back == *info)) __builtin_trap();
  return 0;
}
