// AVX2/FMA matmul kernels. Each weight block of 32 is unpacked to f32 once and applied to a
// tile of up to kRows activation rows; every (row, output) pair is reduced with the same
// instruction sequence whatever the tile size, so results do not depend on the batch.
#include <algorithm>
#include <cstring>

#include "kvstash/common/half.h"
#include "matmul.h"

#if defined(__x86_64__)
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

namespace kvstash::engine {
namespace {

constexpr int kRows = 8;

// F16C conversion: exact, so equal to the scalar F16ToF32 of weights.h's formulas.
inline float HalfAt(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

inline float Hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

struct F32W {
  static void Load(const uint8_t* row, uint32_t b, __m256 w[4]) {
    const float* p = reinterpret_cast<const float*>(row) + 32 * b;
    for (int i = 0; i < 4; ++i) w[i] = _mm256_loadu_ps(p + 8 * i);
  }
  static float At(const uint8_t* row, uint32_t k) {
    float v;
    std::memcpy(&v, row + 4 * size_t{k}, 4);
    return v;
  }
};

struct F16W {
  static void Load(const uint8_t* row, uint32_t b, __m256 w[4]) {
    const uint8_t* p = row + 64 * size_t{b};
    for (int i = 0; i < 4; ++i) {
      w[i] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * i)));
    }
  }
  static float At(const uint8_t* row, uint32_t k) { return HalfAt(row + 2 * size_t{k}); }
};

struct Q80W {
  static void Load(const uint8_t* row, uint32_t b, __m256 w[4]) {
    const uint8_t* blk = row + 34 * size_t{b};
    __m256 d = _mm256_set1_ps(HalfAt(blk));
    for (int i = 0; i < 4; ++i) {
      __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 2 + 8 * i));
      w[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d);
    }
  }
  static float At(const uint8_t*, uint32_t) { return 0.0f; }  // rows are whole blocks
};

// The 32 nibbles of a Q4 block as floats 0..15 in weight order: bytes widened to dwords once,
// low nibbles are weights 0..15 and high nibbles weights 16..31.
inline void Nibbles(const uint8_t* qs, __m256 q[4]) {
  __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs)));
  __m256i b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs + 8)));
  __m256i mask = _mm256_set1_epi32(0x0F);
  q[0] = _mm256_cvtepi32_ps(_mm256_and_si256(b0, mask));
  q[1] = _mm256_cvtepi32_ps(_mm256_and_si256(b1, mask));
  q[2] = _mm256_cvtepi32_ps(_mm256_srli_epi32(b0, 4));
  q[3] = _mm256_cvtepi32_ps(_mm256_srli_epi32(b1, 4));
}

struct Q40W {
  static void Load(const uint8_t* row, uint32_t b, __m256 w[4]) {
    const uint8_t* blk = row + 18 * size_t{b};
    __m256 d = _mm256_set1_ps(HalfAt(blk));
    __m256 eight = _mm256_set1_ps(8.0f);
    Nibbles(blk + 2, w);
    for (int i = 0; i < 4; ++i) w[i] = _mm256_mul_ps(_mm256_sub_ps(w[i], eight), d);
  }
  static float At(const uint8_t*, uint32_t) { return 0.0f; }
};

struct Q41W {
  static void Load(const uint8_t* row, uint32_t b, __m256 w[4]) {
    const uint8_t* blk = row + 20 * size_t{b};
    __m256 d = _mm256_set1_ps(HalfAt(blk));
    __m256 m = _mm256_set1_ps(HalfAt(blk + 2));
    Nibbles(blk + 4, w);
    for (int i = 0; i < 4; ++i) w[i] = _mm256_add_ps(_mm256_mul_ps(w[i], d), m);
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
  __m256 acc[O][R];
  for (int j = 0; j < O; ++j) {
    for (int r = 0; r < R; ++r) acc[j][r] = _mm256_setzero_ps();
  }
  for (uint32_t blk = 0; blk < nb; ++blk) {
    __m256 wv[O][4];
    for (int j = 0; j < O; ++j) U::Load(w.Row(o + j), blk, wv[j]);
    const float* xb = x + 32 * size_t{blk};
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float* xr = xb + r * xs;
      for (int i = 0; i < 4; ++i) {
        __m256 xv = _mm256_loadu_ps(xr + 8 * i);
        for (int j = 0; j < O; ++j) acc[j][r] = _mm256_fmadd_ps(wv[j][i], xv, acc[j][r]);
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
  constexpr int O = R >= 4 ? 1 : 2;
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

void MatmulAvx2(const WeightMatrix& w, const float* x, size_t x_stride, size_t n, float* y,
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
void MatmulAvx2(const WeightMatrix& w, const float* x, size_t x_stride, size_t n, float* y,
                size_t y_stride, uint32_t o_begin, uint32_t o_end) {
  MatmulScalar(w, x, x_stride, n, y, y_stride, o_begin, o_end);
}
}  // namespace kvstash::engine
#endif
