#include "copy_crc.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kvstash/common/crc32c.h"

namespace kvstash::client::internal {

// Copies in blocks small enough to stay in L2, checksumming each block as it passes, so the
// source is read from memory once.
uint32_t CopyWithCrc(uint8_t* dst, const uint8_t* src, size_t n, uint32_t crc_so_far) {
  constexpr size_t kBlock = 256 << 10;
  uint32_t crc = crc_so_far;
  for (size_t off = 0; off < n; off += kBlock) {
    size_t len = std::min(kBlock, n - off);
    crc = Crc32cExtend(crc, src + off, len);
    std::memcpy(dst + off, src + off, len);
  }
  return crc;
}

Result<uint32_t> CopyForPut(uint8_t* dst, const uint8_t* src, size_t n, uint32_t declared) {
  const uint32_t crc = CopyWithCrc(dst, src, n);
  if (declared != 0 && declared != crc) {
    return absl::InvalidArgumentError(absl::StrCat("payload crc32c mismatch: ObjectInfo says ",
                                                   declared, ", the payload has ", crc));
  }
  return crc;
}

}  // namespace kvstash::client::internal
