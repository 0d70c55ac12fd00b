#include "kvstash/common/half.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace kvstash {
namespace {

#if defined(__x86_64__)
bool HasF16c() {
  // CPUID.1:ECX bit 29 is F16C. (clang < 16 does not know __builtin_cpu_supports("f16c").)
  static const bool has = [] {
    unsigned a, b, c, d;
    return __builtin_cpu_supports("avx") && __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
  }();
  return has;
}

__attribute__((target("avx,f16c"))) void F16ToF32F16c(const uint16_t* in, float* out, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) out[i] = F16ToF32(in[i]);
}

__attribute__((target("avx,f16c"))) void F32ToF16F16c(const float* in, uint16_t* out, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 f = _mm256_loadu_ps(in + i);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < n; ++i) out[i] = F32ToF16(in[i]);
}
#endif

}  // namespace

void F16ToF32(const uint16_t* in, float* out, size_t n) {
#if defined(__x86_64__)
  if (HasF16c()) return F16ToF32F16c(in, out, n);
#endif
  for (size_t i = 0; i < n; ++i) out[i] = F16ToF32(in[i]);
}

void F32ToF16(const float* in, uint16_t* out, size_t n) {
#if defined(__x86_64__)
  if (HasF16c()) return F32ToF16F16c(in, out, n);
#endif
  for (size_t i = 0; i < n; ++i) out[i] = F32ToF16(in[i]);
}

void BF16ToF32(const uint16_t* in, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = BF16ToF32(in[i]);
}

void F32ToBF16(const float* in, uint16_t* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = F32ToBF16(in[i]);
}

}  // namespace kvstash
