#include "kvstash/blend/selection.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace kvstash::blend {
namespace {
// Decimal ratios such as 0.29 are not exact in binary: 0.29 * 100 = 28.999999999999996. Counts
// are taken as if the product were exact.
constexpr double kSlack = 1e-9;
}  // namespace

std::vector<uint32_t> SelectTopK(std::span<const float> scores, size_t k) {
  k = std::min(k, scores.size());
  std::vector<uint32_t> idx(scores.size());
  std::iota(idx.begin(), idx.end(), 0u);
  auto key = [&](uint32_t i) {
    float s = scores[i];
    return std::isnan(s) ? -std::numeric_limits<float>::infinity() : s;
  };
  std::partial_sort(idx.begin(), idx.begin() + static_cast<ptrdiff_t>(k), idx.end(),
                    [&](uint32_t a, uint32_t b) {
                      float ka = key(a), kb = key(b);
                      return ka > kb || (ka == kb && a < b);
                    });
  idx.resize(k);
  std::sort(idx.begin(), idx.end());
  return idx;
}

size_t BlendRecomputeCount(double ratio, size_t candidates) {
  if (!(ratio > 0.0)) return 0;
  if (ratio >= 1.0) return candidates;
  return std::min(candidates, static_cast<size_t>(
                                  std::floor(ratio * static_cast<double>(candidates) + kSlack)));
}

size_t CraftRecomputeCount(double cfo, size_t chunk_tokens) {
  if (!(cfo > 0.0)) return 0;
  if (cfo >= 1.0) return chunk_tokens;
  return std::min(chunk_tokens,
                  static_cast<size_t>(std::ceil(cfo * static_cast<double>(chunk_tokens) - kSlack)));
}

}  // namespace kvstash::blend
