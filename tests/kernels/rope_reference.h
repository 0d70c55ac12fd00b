// An independent float64 statement of RoPE for the tests: x at absolute positions.
#ifndef KVSTASH_TESTS_KERNELS_ROPE_REFERENCE_H_
#define KVSTASH_TESTS_KERNELS_ROPE_REFERENCE_H_

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kvstash/common/half.h"
#include "kvstash/common/layout.h"

namespace kvstash::kernels::testing {

// x is [token][head][head_dim]; token t is rotated to position positions[t].
inline void RopeReference(std::vector<double>& x, uint32_t num_heads, uint32_t head_dim,
                          RopeConvention convention, uint32_t rotary_dim, double theta,
                          const std::vector<int64_t>& positions) {
  const uint32_t half = rotary_dim / 2;
  for (size_t t = 0; t < positions.size(); ++t) {
    for (uint32_t h = 0; h < num_heads; ++h) {
      double* head = x.data() + (t * num_heads + h) * head_dim;
      for (uint32_t i = 0; i < half; ++i) {
        const double freq = 1.0 / std::pow(theta, static_cast<double>(2 * i) / rotary_dim);
        const double angle = static_cast<double>(positions[t]) * freq;
        const uint32_t a = convention == RopeConvention::kNeox ? i : 2 * i;
        const uint32_t b = convention == RopeConvention::kNeox ? i + half : 2 * i + 1;
        const double xa = head[a];
        const double xb = head[b];
        head[a] = xa * std::cos(angle) - xb * std::sin(angle);
        head[b] = xa * std::sin(angle) + xb * std::cos(angle);
      }
    }
  }
}

inline std::vector<std::byte> Store(const std::vector<double>& x, DType dtype) {
  std::vector<std::byte> out(x.size() * DTypeSize(dtype));
  for (size_t i = 0; i < x.size(); ++i) {
    const float f = static_cast<float>(x[i]);
    if (dtype == DType::kF32) {
      std::memcpy(out.data() + 4 * i, &f, 4);
    } else {
      const uint16_t h = dtype == DType::kF16 ? F32ToF16(f) : F32ToBF16(f);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

inline double Load(const std::vector<std::byte>& data, DType dtype, size_t i) {
  if (dtype == DType::kF32) {
    float f;
    std::memcpy(&f, data.data() + 4 * i, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, data.data() + 2 * i, 2);
  return dtype == DType::kF16 ? F16ToF32(h) : BF16ToF32(h);
}

}  // namespace kvstash::kernels::testing

#endif  // KVSTASH_TESTS_KERNELS_ROPE_REFERENCE_H_
