// Copying a payload while computing its crc32c (the shared-memory put paths, stream gets).
#ifndef KVSTASH_CLIENT_COPY_CRC_H_
#define KVSTASH_CLIENT_COPY_CRC_H_

#include <cstddef>
#include <cstdint>
#include <span>

#include "kvstash/common/status.h"

namespace kvstash::client::internal {

// Copies src[0, n) to dst and returns Crc32cExtend(crc_so_far, src, n) (so Crc32c(src, n) for the
// default), reading src from memory once.
uint32_t CopyWithCrc(uint8_t* dst, const uint8_t* src, size_t n, uint32_t crc_so_far = 0);

// Copies a put's payload into the arena and returns the crc32c to commit. Payloads of 64 KiB and
// more are written with streaming (non-temporal) stores, fenced before returning: the writer does
// not read them back, and they do not evict the caller's working set. `declared` is the caller's
// ObjectInfo::payload_crc32c (0: none); InvalidArgument when it does not match the payload. The
// service checks committed bytes only after Commit returns, so a caller's wrong crc32c is
// reported here, where the put can still fail.
Result<uint32_t> CopyForPut(uint8_t* dst, const uint8_t* src, size_t n, uint32_t declared);
// The same for a payload given as consecutive segments (their concatenation) written to dst.
Result<uint32_t> CopyForPutGather(uint8_t* dst, std::span<const std::span<const uint8_t>> segments,
                                  uint32_t declared);

}  // namespace kvstash::client::internal

#endif  // KVSTASH_CLIENT_COPY_CRC_H_
