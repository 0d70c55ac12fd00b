// AVX-512 matmul kernels: same structure as matmul_avx2.cc with 16-lane vectors and a taller
// tile. Every (row, output) pair is reduced with the same instruction sequence whatever the
// tile size, so results do not depend on the batch.
#include <algorithm>
#include <cstring>

#include "kvstash/common/half.h"
#include "matmul.h"

#if defined(__x86_64__)
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
// GCC 12's AVX-512 conversion intrinsics start from _mm512_undefined_*(), which its
// uninitialised-use analysis flags spuriously.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace kvstash::engine {
namespace {

constexpr int kRows = 16;

// F16C conversion: exact, so equal to the scalar F16ToF32 of weights.h's formulas.
inline float HalfAt(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

inline float Hsum(__m512 v) {
  __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                           _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

struct F32W {
  static void Load(const uint8_t* row, uint32_t b, __m512 w[2]) {
    const float* p = reinterpret_cast<const float*>(row) + 32 * size_t{b};
    w[0] = _mm512_loadu_ps(p);
    w[1] = _mm512_loadu_ps(p + 16);
  }
  static float At(const uint8_t* row, uint32_t k) {
    float v;
    std::memcpy(&v, row + 4 * size_t{k}, 4);
    return v;
  }
};

struct F16W {
  static void Load(const uint8_t* row, uint32_t b, __m512 w[2]) {
    const uint8_t* p = row + 64 * size_t{b};
    w[0] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    w[1] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)));
  }
  static float At(const uint8_t* row, uint32_t k) { return HalfAt(row + 2 * size_t{k}); }
};

struct Q80W {
  static void Load(const uint8_t* row, uint32_t b, __m512 w[2]) {
    const uint8_t* blk = row + 34 * size_t{b};
    __m512 d = _mm512_set1_ps(HalfAt(blk));
    for (int i = 0; i < 2; ++i) {
      __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2 + 16 * i));
      w[i] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), d);
    }
  }
  static float At(const uint8_t*, uint32_t) { return 0.0f; }
};

// The 32 nibbles of a Q4 block as floats 0..15 in weight order: one byte-to-dword widening,
// then low nibbles are weights 0..15 and high nibbles weights 16..31.
inline void Nibbles(const uint8_t* qs, __m512 q[2]) {
  __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  q[0] = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(0x0F)));
  q[1] = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
}

struct Q40W {
  static void Load(const uint8_t* row, uint32_t b, __m512 w[2]) {
    const uint8_t* blk = row + 18 * size_t{b};
    __m512 d = _mm512_set1_ps(HalfAt(blk));
    __m512 eight = _mm512_set1_ps(8.0f);
    Nibbles(blk + 2, w);
    for (int i = 0; i < 2; ++i) w[i] = _mm512_mul_ps(_mm512_sub_ps(w[i], eight), d);
  }
  static float At(const uint8_t*, uint32_t) { return 0.0f; }
};

struct Q41W {
  static void Load(const uint8_t* row, uint32_t b, __m512 w[2]) {
    const uint8_t* blk = row + 20 * size_t{b};
    __m512 d = _mm512_set1_ps(HalfAt(blk));
    __m512 m = _mm512_set1_ps(HalfAt(blk + 2));
    Nibbles(blk + 4, w);
    for (int i = 0; i < 2; ++i) w[i] = _mm512_add_ps(_mm512_mul_ps(w[i], d), m);
  }
  static float At(const uint8_t*, uint32_t) { return 0.0f; }
};

// O output rows x R activation rows. Each (row, output) accumulator sees the same instruction
// sequence whatever R and O are; O > 1 only interleaves independent accumulators so that short
// tiles (decode) are not bound by one accumulator's FMA latency.
template <class U, int R, int O>
inline void Tile(const WeightMatrix& w, uint32_t o, const float* x, size_t xs, float* y,
                 size_t ys) {
  const uint32_t nb = w.cols / 32;
  __m512 acc[O][R];
  for (int j = 0; j < O; ++j) {
    for (int r = 0; r < R; ++r) acc[j][r] = _mm512_setzero_ps();
  }
  for (uint32_t blk = 0; blk < nb; ++blk) {
    __m512 wv[O][2];
    for (int j = 0; j < O; ++j) U::Load(w.Row(o + j), blk, wv[j]);
    const float* xb = x + 32 * size_t{blk};
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const float* xr = xb + r * xs;
      __m512 x0 = _mm512_loadu_ps(xr), x1 = _mm512_loadu_ps(xr + 16);
      for (int j = 0; j < O; ++j) {
        acc[j][r] = _mm512_fmadd_ps(wv[j][0], x0, acc[j][r]);
        acc[j][r] = _mm512_fmadd_ps(wv[j][1], x1, acc[j][r]);
      }
    }
  }
  for (int j = 0; j < O; ++j) {
    const uint8_t* wrow = w.Row(o + j);
    for (int r = 0; r < R; ++r) {
      float s = Hsum(acc[j][r]);
      const float* xr = x + r * xs;
      for (uint32_t k = nb * 32; k < w.cols; ++k) s += U::At(wrow, k) * xr[k];
      y[r * ys + j] = s;
    }
  }
}

// Outputs [o_begin, o_end) for R activation rows, O at a time.
template <class U, int R>
inline void Rows(const WeightMatrix& w, uint32_t o_begin, uint32_t o_end, const float* x, size_t xs,
                 float* y, size_t ys) {
  constexpr int O = R >= 8 ? 1 : (R >= 4 ? 2 : 4);
  uint32_t o = o_begin;
  for (; o + O <= o_end; o += O) Tile<U, R, O>(w, o, x, xs, y + o, ys);
  for (; o < o_end; ++o) Tile<U, R, 1>(w, o, x, xs, y + o, ys);
}

template <class U, int R>
inline void RowsTail(size_t left, const WeightMatrix& w, uint32_t o_begin, uint32_t o_end,
                     const float* x, size_t xs, float* y, size_t ys) {
  if constexpr (R > 0) {
    if (left == R) return Rows<U, R>(w, o_begin, o_end, x, xs, y, ys);
    return RowsTail<U, R - 1>(left, w, o_begin, o_end, x, xs, y, ys);
  }
}

template <class U>
void Run(const WeightMatrix& w, const float* x, size_t xs, size_t n, float* y, size_t ys,
         uint32_t o_begin, uint32_t o_end) {
  // A tile of activation rows stays in L1 while this thread's weight rows stream past it.
  size_t t = 0;
  for (; t + kRows <= n; t += kRows) {
    Rows<U, kRows>(w, o_begin, o_end, x + t * xs, xs, y + t * ys, ys);
  }
  if (t < n) RowsTail<U, kRows - 1>(n - t, w, o_begin, o_end, x + t * xs, xs, y + t * ys, ys);
}

}  // namespace

void MatmulAvx512(const WeightMatrix& w, const float* x, size_t x_stride, size_t n, float* y,
                  size_t y_stride, uint32_t o_begin, uint32_t o_end) {
  switch (w.type) {
    case GgmlType::kF32:
      return Run<F32W>(w, x, x_stride, n, y, y_stride, o_begin, o_end);
    case GgmlType::kF16:
      return Run<F16W>(w, x, x_stride, n, y, y_stride, o_begin, o_end);
    case GgmlType::kQ8_0:
      return Run<Q80W>(w, x, x_stride, n, y, y_stride, o_begin, o_end);
    case GgmlType::kQ4_0:
      return Run<Q40W>(w, x, x_stride, n, y, y_stride, o_begin, o_end);
    case GgmlType::kQ4_1:
      return Run<Q41W>(w, x, x_stride, n, y, y_stride, o_begin, o_end);
    default:
      return;
  }
}

}  // namespace kvstash::engine

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else  // not x86-64: never selected by ActiveIsa()
namespace kvstash::engine {
void MatmulAvx512(const WeightMatrix& w, const float* x, size_t x_stride, size_t n, float* y,
                  size_t y_stride, uint32_t o_begin, uint32_t o_end) {
  MatmulScalar(w, x, x_stride, n, y, y_stride, o_begin, o_end);
}
}  // namespace kvstash::engine
#endif
