// Human-readable byte sizes for configuration and command lines ("512MiB", "4GiB").
// Pure functions, thread-safe.
#ifndef KVSTASH_COMMON_BYTE_SIZE_H_
#define KVSTASH_COMMON_BYTE_SIZE_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "kvstash/common/status.h"

namespace kvstash {

// "4096", "512MiB", "4GiB", "1.5G", "100MB": binary units for K/M/G/T, Ki/Mi/Gi/Ti and
// KiB..TiB; decimal for KB..TB; an optional trailing "B" alone means bytes. Case-insensitive,
// whitespace ignored. InvalidArgument for anything else or a value that overflows 64 bits.
Result<uint64_t> ParseByteSize(std::string_view text);

// 1536 -> "1.5 KiB"; exact bytes below 1 KiB ("512 B").
std::string FormatByteSize(uint64_t bytes);

}  // namespace kvstash

#endif  // KVSTASH_COMMON_BYTE_SIZE_H_
