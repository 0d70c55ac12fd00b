// Helpers shared by the codec tests.
#ifndef KVSTASH_TESTS_CODEC_TEST_UTIL_H_
#define KVSTASH_TESTS_CODEC_TEST_UTIL_H_

#include <cstring>
#include <vector>

#include "kvstash/common/half.h"
#include "kvstash/common/layout.h"

namespace kvstash::codec::testing {

inline KvLayout MakeLayout(uint32_t layers, uint32_t heads, uint32_t head_dim, uint32_t tokens,
                           DType dtype = DType::kF16, uint32_t layer_begin = 0) {
  KvLayout l;
  l.num_layers = layers;
  l.layer_begin = layer_begin;
  l.total_kv_heads = heads;
  l.head_begin = 0;
  l.head_end = heads;
  l.head_dim = head_dim;
  l.num_tokens = tokens;
  l.dtype = dtype;
  return l;
}

// Element i of a payload in `dtype`, as f32.
inline float ValueAt(const std::vector<uint8_t>& payload, DType dtype, size_t i) {
  if (dtype == DType::kF32) {
    float f;
    std::memcpy(&f, payload.data() + i * 4, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, payload.data() + i * 2, 2);
  return dtype == DType::kF16 ? F16ToF32(h) : BF16ToF32(h);
}

inline void SetValue(std::vector<uint8_t>& payload, DType dtype, size_t i, float v) {
  if (dtype == DType::kF32) {
    std::memcpy(payload.data() + i * 4, &v, 4);
    return;
  }
  uint16_t h = dtype == DType::kF16 ? F32ToF16(v) : F32ToBF16(v);
  std::memcpy(payload.data() + i * 2, &h, 2);
}

}  // namespace kvstash::codec::testing

#endif  // KVSTASH_TESTS_CODEC_TEST_UTIL_H_
