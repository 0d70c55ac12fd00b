// The 64-byte header that precedes an object's payload wherever the bytes leave memory
// (SSD files, exports, network transfers). Versioned, little-endian, fixed fields first:
//
//   off size field                 off size field
//    0   4  magic "KVSO"            28   4  num_tokens
//    4   2  format version (1)      32   8  position_start (i64)
//    6   2  header bytes (64)       40   4  rope_theta (f32 bits)
//    8   4  num_layers              44   4  rotary_dim
//   12   4  layer_begin             48   8  payload_bytes
//   16   2  head_begin              56   4  payload crc32c
//   18   2  head_end                60   4  header crc32c over bytes [0, 60)
//   20   2  total_kv_heads
//   22   2  head_dim
//   24   1  dtype    25 1 rope convention    26 1 encoding    27 1 encoding level
//
// DecodeObjectHeader treats its input as untrusted: it never reads past `bytes`, and rejects a
// wrong magic, an unknown version, a header checksum mismatch and any field ObjectInfo::Validate
// refuses, with InvalidArgument (DataLoss for checksum mismatches).
#ifndef KVSTASH_COMMON_OBJECT_HEADER_H_
#define KVSTASH_COMMON_OBJECT_HEADER_H_

#include <array>
#include <cstdint>
#include <span>

#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"

namespace kvstash {

inline constexpr size_t kObjectHeaderBytes = 64;
inline constexpr uint16_t kObjectFormatVersion = 1;

// Fails (InvalidArgument) only if info.Validate() fails or a field does not fit its width.
Result<std::array<uint8_t, kObjectHeaderBytes>> EncodeObjectHeader(const ObjectInfo& info);

Result<ObjectInfo> DecodeObjectHeader(std::span<const uint8_t> bytes);

}  // namespace kvstash

#endif  // KVSTASH_COMMON_OBJECT_HEADER_H_
