#include "kvstash/common/crc32c.h"

#include <isa-l/crc.h>

namespace kvstash {

// ISA-L's crc32_iscsi neither pre- nor post-inverts; the standard CRC-32C does both.
uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t n) {
  uint32_t state = ~crc;
  const auto* bytes = static_cast<const unsigned char*>(data);
  // crc32_iscsi takes an int length; feed large buffers in slices.
  constexpr size_t kSlice = size_t{1} << 30;
  while (n > 0) {
    size_t len = n < kSlice ? n : kSlice;
    state = crc32_iscsi(const_cast<unsigned char*>(bytes), static_cast<int>(len), state);
    bytes += len;
    n -= len;
  }
  return ~state;
}

uint32_t Crc32c(const void* data, size_t n) { return Crc32cExtend(0, data, n); }

}  // namespace kvstash
