// Fixed-width little-endian fields of the socket protocols (arena handshake, local control
// frames), independent of the host's byte order.
#ifndef KVSTASH_PROTO_SRC_LITTLE_ENDIAN_H_
#define KVSTASH_PROTO_SRC_LITTLE_ENDIAN_H_

#include <cstdint>

namespace kvstash::internal {

inline void PutLe(uint8_t* out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}

inline uint64_t GetLe(const uint8_t* in, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t{in[i]} << (8 * i);
  return v;
}

}  // namespace kvstash::internal

#endif  // KVSTASH_PROTO_SRC_LITTLE_ENDIAN_H_
