// Fuzz target: the CacheGen CDF-profile parser (codec/profile.h).
//
// Input: byte 0 holds flags, the rest is the profile. bit 0: recompute the crc32c trailer first.
// Invariants: no out-of-bounds reads; a profile that parses is canonical (its bytes are the
// input) and parses again to the same id; every table has valid CDFs of the declared shape.
#include <cstdint>
#include <cstring>
#include <vector>

#include "kvstash/codec/coder.h"
#include "kvstash/codec/profile.h"
#include "kvstash/common/crc32c.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvstash;
  if (size < 1) return 0;
  std::vector<uint8_t> bytes(data + 1, data + size);
  if ((data[0] & 1) && bytes.size() >= 4) {
    const uint32_t crc = Crc32c(bytes.data(), bytes.size() - 4);
    for (int i = 0; i < 4; ++i) bytes[bytes.size() - 4 + i] = static_cast<uint8_t>(crc >> (8 * i));
  }
  auto profile = codec::CdfProfile::Parse(bytes);
  if (!profile.ok()) return 0;
  if (profile->bytes() != bytes) __builtin_trap();
  auto again = codec::CdfProfile::Parse(profile->bytes());
  if (!again.ok() || !(again->id() == profile->id())) __builtin_trap();
  const auto& shape = profile->shape();
  for (const auto& t : profile->tables()) {
    const size_t columns = size_t{shape.rows()} * shape.channels();
    if (t.cdf.size() != columns * t.lp) __builtin_trap();
    for (size_t i = 0; i < columns; ++i) {
      if (!codec::ValidateCdf(std::span<const uint16_t>(t.cdf).subspan(i * t.lp, t.lp)).ok()) {
        __builtin_trap();
      }
    }
  }
  return 0;
}
