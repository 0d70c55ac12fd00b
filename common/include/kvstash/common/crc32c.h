// CRC-32C (Castagnoli), the checksum of every stored payload and header.
// Backed by ISA-L's crc32_iscsi; matches the standard definition (CRC32C("123456789") ==
// 0xE3069283). Thread-safe, no allocation.
#ifndef KVSTASH_COMMON_CRC32C_H_
#define KVSTASH_COMMON_CRC32C_H_

#include <cstddef>
#include <cstdint>

namespace kvstash {

// Returns the CRC-32C of data[0, n).
uint32_t Crc32c(const void* data, size_t n);

// Extends `crc` (a value returned by Crc32c/Crc32cExtend) with data[0, n):
// Crc32cExtend(Crc32c(a), b) == Crc32c(a || b).
uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t n);

}  // namespace kvstash

#endif  // KVSTASH_COMMON_CRC32C_H_
