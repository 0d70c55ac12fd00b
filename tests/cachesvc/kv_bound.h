// Test helper: checks decoded f16 KV against the CacheGen reference-mode quantisation bound.
#ifndef KVSTASH_TESTS_CACHESVC_KV_BOUND_H_
#define KVSTASH_TESTS_CACHESVC_KV_BOUND_H_

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kvstash/codec/levels.h"
#include "kvstash/common/half.h"
#include "kvstash/common/layout.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {

// |x - x^| <= m / (2 Cq) per element (m = max |x| of its (row, token) vector, Cq = bins/2 - 1 of
// the row at `level`), plus the f16 rounding of the output (docs/codec.md). Also fails when the
// decoded bytes equal the input (nothing was quantised: the check would prove nothing).
inline void ExpectWithinQuantisationBound(const KvLayout& l, const std::vector<uint8_t>& original,
                                          const std::vector<uint8_t>& decoded, int level) {
  ASSERT_EQ(l.dtype, DType::kF16);
  ASSERT_EQ(decoded.size(), original.size());
  auto bins =
      codec::RowBinsForLevel(level, l.layer_begin + l.num_layers, l.layer_begin, l.num_layers);
  ASSERT_OK(bins);
  const size_t C = size_t{l.heads()} * l.head_dim;
  auto value = [](const std::vector<uint8_t>& b, size_t i) {
    uint16_t h;
    std::memcpy(&h, b.data() + 2 * i, 2);
    return F16ToF32(h);
  };
  bool any_error = false;
  for (uint32_t layer = 0; layer < l.num_layers; ++layer) {
    for (uint32_t half = 0; half < 2; ++half) {
      const int cq = (*bins)[half * l.num_layers + layer] / 2 - 1;
      for (uint32_t t = 0; t < l.num_tokens; ++t) {
        const size_t base = ((size_t{layer} * 2 + half) * l.num_tokens + t) * C;
        float m = 0;
        for (size_t c = 0; c < C; ++c) m = std::max(m, std::fabs(value(original, base + c)));
        const double bound = m / (2.0 * cq) * (1 + 1e-6);
        for (size_t c = 0; c < C; ++c) {
          const float x = value(original, base + c), y = value(decoded, base + c);
          const double ulp = std::ldexp(std::fabs(y), -11) + 1e-30;
          ASSERT_LE(std::fabs(x - y), bound + ulp) << "layer " << layer << " t " << t;
          any_error = any_error || x != y;
        }
      }
    }
  }
  EXPECT_TRUE(any_error) << "decoded bytes equal the input: nothing was quantised";
}

// Largest |x - x^| over the chunk.
inline double MaxAbsError(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  double worst = 0;
  for (size_t i = 0; i + 1 < std::min(a.size(), b.size()); i += 2) {
    uint16_t x, y;
    std::memcpy(&x, a.data() + i, 2);
    std::memcpy(&y, b.data() + i, 2);
    worst = std::max(worst, static_cast<double>(std::fabs(F16ToF32(x) - F16ToF32(y))));
  }
  return worst;
}

}  // namespace kvstash::testing

#endif  // KVSTASH_TESTS_CACHESVC_KV_BOUND_H_
