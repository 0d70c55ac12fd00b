#include "vec_math.h"

#include <cmath>

#include "cpu_features.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace kvstash::engine {
namespace {

bool UseAvx2() {
  static const bool use = ActiveIsa() != Isa::kScalar;
  return use;
}

#if defined(__x86_64__)
#define KVSTASH_AVX2 __attribute__((target("avx2,fma")))

// exp(x) = 2^n * p(r), n = round(x / ln 2), r = x - n ln 2 (two-part ln 2); p is the Cephes
// degree-6 polynomial.
KVSTASH_AVX2 inline __m256 Exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

KVSTASH_AVX2 inline float Hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

KVSTASH_AVX2 void RmsNormAvx2(const float* x, const float* weight, size_t n, float eps,
                              float* out) {
  __m256 acc = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    acc = _mm256_fmadd_ps(v, v, acc);
  }
  float ss = Hsum8(acc);
  for (; i < n; ++i) ss += x[i] * x[i];
  float scale = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  __m256 s = _mm256_set1_ps(scale);
  for (i = 0; i + 8 <= n; i += 8) {
    __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), s);
    _mm256_storeu_ps(out + i, _mm256_mul_ps(v, _mm256_loadu_ps(weight + i)));
  }
  for (; i < n; ++i) out[i] = x[i] * scale * weight[i];
}

KVSTASH_AVX2 void SwiGluAvx2(float* gate, const float* up, size_t n) {
  size_t i = 0;
  __m256 one = _mm256_set1_ps(1.0f);
  __m256 sign = _mm256_set1_ps(-0.0f);
  for (; i + 8 <= n; i += 8) {
    __m256 g = _mm256_loadu_ps(gate + i);
    __m256 e = Exp8(_mm256_xor_ps(g, sign));
    __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_storeu_ps(gate + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

KVSTASH_AVX2 void ExpAvx2(float* x, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, Exp8(_mm256_loadu_ps(x + i)));
  if (i < n) {  // tail through the same polynomial, so exp(v) never depends on v's index
    float buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (size_t j = i; j < n; ++j) buf[j - i] = x[j];
    _mm256_storeu_ps(buf, Exp8(_mm256_loadu_ps(buf)));
    for (size_t j = i; j < n; ++j) x[j] = buf[j - i];
  }
}
#endif

}  // namespace

void RmsNorm(const float* x, const float* weight, size_t n, float eps, float* out) {
#if defined(__x86_64__)
  if (UseAvx2()) return RmsNormAvx2(x, weight, n, eps, out);
#endif
  float ss = 0.0f;
  for (size_t i = 0; i < n; ++i) ss += x[i] * x[i];
  float scale = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (size_t i = 0; i < n; ++i) out[i] = x[i] * scale * weight[i];
}

void SwiGlu(float* gate, const float* up, size_t n) {
#if defined(__x86_64__)
  if (UseAvx2()) return SwiGluAvx2(gate, up, n);
#endif
  for (size_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void AddInPlace(float* y, const float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] += x[i];
}

void ExpInPlace(float* x, size_t n) {
#if defined(__x86_64__)
  if (UseAvx2()) return ExpAvx2(x, n);
#endif
  for (size_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}

}  // namespace kvstash::engine
