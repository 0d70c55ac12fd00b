// Built with -ffp-contract=off like rope.cc.
#include "rope_simd.h"

#include <atomic>
#include <cstring>

#include "kvstash/common/half.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace kvstash::kernels::internal {

namespace {
std::atomic<bool> force_scalar{false};
}  // namespace

void ForceRopeScalarForTesting(bool force) { force_scalar.store(force); }

#if defined(__x86_64__)

namespace {

#define KVSTASH_AVX2 __attribute__((target("avx2,f16c"), always_inline)) inline

template <DType kDtype>
KVSTASH_AVX2 __m256 Load8(const void* base, uint32_t i) {
  if constexpr (kDtype == DType::kF32) {
    return _mm256_loadu_ps(static_cast<const float*>(base) + i);
  } else if constexpr (kDtype == DType::kF16) {
    return _mm256_cvtph_ps(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i)));
  } else {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

template <DType kDtype>
KVSTASH_AVX2 void Store8(void* base, uint32_t i, __m256 v) {
  if constexpr (kDtype == DType::kF32) {
    _mm256_storeu_ps(static_cast<float*>(base) + i, v);
  } else if constexpr (kDtype == DType::kF16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(base) + i),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    // F32ToBF16 of common/half.h, eight at a time: round to nearest even, NaN -> quiet NaN.
    const __m256i x = _mm256_castps_si256(v);
    const __m256i high = _mm256_srli_epi32(x, 16);
    const __m256i lsb = _mm256_and_si256(high, _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_srli_epi32(
        _mm256_add_epi32(x, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb)), 16);
    const __m256i quiet = _mm256_or_si256(high, _mm256_set1_epi32(0x40));
    const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x7FFFFFFF)),
                                              _mm256_set1_epi32(0x7F800000));
    const __m256i bits = _mm256_blendv_epi8(rounded, quiet, is_nan);
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(bits, bits), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(base) + i),
                     _mm256_castsi256_si128(packed));
  }
}

template <DType kDtype>
float LoadOne(const void* base, uint32_t i) {
  if constexpr (kDtype == DType::kF32) {
    return static_cast<const float*>(base)[i];
  } else if constexpr (kDtype == DType::kF16) {
    return F16ToF32(static_cast<const uint16_t*>(base)[i]);
  } else {
    return BF16ToF32(static_cast<const uint16_t*>(base)[i]);
  }
}

template <DType kDtype>
void StoreOne(void* base, uint32_t i, float v) {
  if constexpr (kDtype == DType::kF32) {
    static_cast<float*>(base)[i] = v;
  } else if constexpr (kDtype == DType::kF16) {
    static_cast<uint16_t*>(base)[i] = F32ToF16(v);
  } else {
    static_cast<uint16_t*>(base)[i] = F32ToBF16(v);
  }
}

template <DType kDtype>
__attribute__((target("avx2,f16c"))) void Rotate(void* head, RopeConvention convention,
                                                 uint32_t half, const float* cos,
                                                 const float* sin) {
  if (convention == RopeConvention::kNeox) {
    uint32_t i = 0;
    for (; i + 8 <= half; i += 8) {
      const __m256 x0 = Load8<kDtype>(head, i);
      const __m256 x1 = Load8<kDtype>(head, half + i);
      const __m256 c = _mm256_loadu_ps(cos + i);
      const __m256 s = _mm256_loadu_ps(sin + i);
      Store8<kDtype>(head, i, _mm256_sub_ps(_mm256_mul_ps(x0, c), _mm256_mul_ps(x1, s)));
      Store8<kDtype>(head, half + i, _mm256_add_ps(_mm256_mul_ps(x0, s), _mm256_mul_ps(x1, c)));
    }
    for (; i < half; ++i) {
      const float x0 = LoadOne<kDtype>(head, i);
      const float x1 = LoadOne<kDtype>(head, half + i);
      StoreOne<kDtype>(head, i, x0 * cos[i] - x1 * sin[i]);
      StoreOne<kDtype>(head, half + i, x0 * sin[i] + x1 * cos[i]);
    }
    return;
  }
  // kGptj: lanes hold (x0, x1) pairs; addsub gives x0*c - x1*s in even lanes and x1*c + x0*s
  // (the same sum, addition commutes exactly) in odd lanes.
  const uint32_t n = 2 * half;
  uint32_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 x = Load8<kDtype>(head, j);
    const __m256 swapped = _mm256_permute_ps(x, 0xB1);
    const __m256 c = _mm256_loadu_ps(cos + j);
    const __m256 s = _mm256_loadu_ps(sin + j);
    Store8<kDtype>(head, j, _mm256_addsub_ps(_mm256_mul_ps(x, c), _mm256_mul_ps(swapped, s)));
  }
  for (; j < n; j += 2) {
    const float x0 = LoadOne<kDtype>(head, j);
    const float x1 = LoadOne<kDtype>(head, j + 1);
    StoreOne<kDtype>(head, j, x0 * cos[j] - x1 * sin[j]);
    StoreOne<kDtype>(head, j + 1, x0 * sin[j] + x1 * cos[j]);
  }
}

#undef KVSTASH_AVX2

}  // namespace

bool RopeAvx2Available() {
  // F16C through cpuid: clang 14 has no "f16c" name for __builtin_cpu_supports. The avx2 check
  // also confirms that the OS saves the YMM registers.
  static const bool available = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
    return f16c && __builtin_cpu_supports("avx2");
  }();
  return available && !force_scalar.load(std::memory_order_relaxed);
}

void RotateHeadAvx2(void* head, DType dtype, RopeConvention convention, uint32_t half,
                    const float* cos, const float* sin) {
  switch (dtype) {
    case DType::kF32:
      return Rotate<DType::kF32>(head, convention, half, cos, sin);
    case DType::kF16:
      return Rotate<DType::kF16>(head, convention, half, cos, sin);
    case DType::kBF16:
      return Rotate<DType::kBF16>(head, convention, half, cos, sin);
  }
}

#else

bool RopeAvx2Available() { return false; }
void RotateHeadAvx2(void*, DType, RopeConvention, uint32_t, const float*, const float*) {}

#endif

}  // namespace kvstash::kernels::internal
