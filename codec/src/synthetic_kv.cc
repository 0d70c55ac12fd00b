#include "kvstash/codec/synthetic_kv.h"

#include <cmath>
#include <cstring>

#include "kvstash/common/half.h"

namespace kvstash::codec {
namespace {

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in (0, 1).
  double Uniform() {
    return (static_cast<double>(Next() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  }
  double Normal() {
    double u1 = Uniform();
    double u2 = Uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  // Laplace with unit variance.
  double Laplace() {
    double u = Uniform() - 0.5;
    double mag = -std::log(1.0 - 2.0 * std::fabs(u)) / std::sqrt(2.0);
    return u < 0 ? -mag : mag;
  }

 private:
  uint64_t state_;
};

void Store(std::vector<uint8_t>& out, size_t index, DType dtype, float v) {
  switch (dtype) {
    case DType::kF16: {
      uint16_t h = F32ToF16(v);
      std::memcpy(out.data() + index * 2, &h, 2);
      break;
    }
    case DType::kBF16: {
      uint16_t h = F32ToBF16(v);
      std::memcpy(out.data() + index * 2, &h, 2);
      break;
    }
    case DType::kF32:
      std::memcpy(out.data() + index * 4, &v, 4);
      break;
  }
}

}  // namespace

std::vector<uint8_t> SyntheticKv(const KvLayout& layout, const SyntheticKvOptions& options) {
  const size_t C = size_t{layout.heads()} * layout.head_dim;
  const uint32_t T = layout.num_tokens;
  std::vector<uint8_t> out(layout.RawBytes());
  const double rho = options.token_correlation;
  const double innovation = std::sqrt(1.0 - rho * rho);
  SplitMix64 tokens_rng(options.seed * 0x2545F4914F6CDD1Dull + 1);
  for (uint32_t layer = 0; layer < layout.num_layers; ++layer) {
    const uint32_t model_layer = layout.layer_begin + layer;
    for (uint32_t half = 0; half < 2; ++half) {
      // Channel statistics depend on the model seed and absolute layer/head, not the chunk.
      std::vector<double> scale(C), offset(C), state(C);
      for (size_t c = 0; c < C; ++c) {
        const uint64_t head = layout.head_begin + c / layout.head_dim;
        const uint64_t d = c % layout.head_dim;
        SplitMix64 ch(options.model_seed ^ (uint64_t{model_layer} << 40) ^ (uint64_t{half} << 39) ^
                      (head << 20) ^ d);
        double s = std::exp(0.5 * ch.Normal()) * (1.0 + 0.5 * model_layer);
        if (half == 0 && ch.Uniform() < options.outlier_fraction) s *= 8.0;
        scale[c] = half == 0 ? s : 0.5 * s;
        offset[c] = half == 0 ? 0.7 * s * ch.Normal() : 0.0;
        state[c] = tokens_rng.Laplace();
      }
      const size_t base = (size_t{layer} * 2 + half) * T * C;
      for (uint32_t t = 0; t < T; ++t) {
        for (size_t c = 0; c < C; ++c) {
          if (t > 0) state[c] = rho * state[c] + innovation * tokens_rng.Laplace();
          Store(out, base + size_t{t} * C + c, layout.dtype,
                static_cast<float>(offset[c] + scale[c] * state[c]));
        }
      }
    }
  }
  return out;
}

}  // namespace kvstash::codec
