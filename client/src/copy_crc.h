// Copying a payload into the arena while computing its crc32c (the shared-memory put paths).
#ifndef KVSTASH_CLIENT_COPY_CRC_H_
#define KVSTASH_CLIENT_COPY_CRC_H_

#include <cstddef>
#include <cstdint>

namespace kvstash::client::internal {

// Copies src[0, n) to dst and returns Crc32c(src, n), reading src from memory once.
uint32_t CopyWithCrc(uint8_t* dst, const uint8_t* src, size_t n);

}  // namespace kvstash::client::internal

#endif  // KVSTASH_CLIENT_COPY_CRC_H_
