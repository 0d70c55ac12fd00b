#include "kvstash/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace kvstash::engine {

int32_t Sampler::Argmax(std::span<const float> logits) {
  size_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return static_cast<int32_t>(best);
}

double Sampler::NextUniform() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

int32_t Sampler::Sample(std::span<const float> logits) {
  if (!(temperature_ > 0.0f)) return Argmax(logits);
  const float m = logits[static_cast<size_t>(Argmax(logits))];
  std::vector<double> p(logits.size());
  double sum = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) {
    p[i] = std::exp(static_cast<double>(logits[i] - m) / temperature_);
    sum += p[i];
  }
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  size_t keep = order.size();
  if (top_p_ > 0.0f && top_p_ < 1.0f) {
    std::stable_sort(order.begin(), order.end(),
                     [&p](int32_t a, int32_t b) { return p[a] > p[b]; });
    double mass = 0.0;
    for (keep = 0; keep < order.size();) {
      mass += p[order[keep++]] / sum;
      if (mass >= top_p_) break;
    }
    sum = 0.0;
    for (size_t i = 0; i < keep; ++i) sum += p[order[i]];
  }
  double target = NextUniform() * sum;
  double acc = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    acc += p[order[i]];
    if (target < acc) return order[i];
  }
  return order[keep - 1];
}

}  // namespace kvstash::engine
