// AVX2/FMA matmul kernels. Each weight block of 32 is unpacked to f32 once and applied to a
// tile of up to 8 activation rows; every (row, output) pair is reduced with the same
// instruction sequence whatever the tile size, so results do not depend on the batch. The tiles
// and their scheduling are matmul_tiles.h's; this file has the AVX2 vectors and unpackers.
#include "matmul.h"

#if defined(__x86_64__)
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#include "matmul_tiles.h"

namespace kvstash::engine {
namespace {

using matmul_tiles::HalfAt;

struct F32W : matmul_tiles::F32Cols {
  static void Load(const uint8_t* row, uint32_t b, __m256 w[4]) {
    const float* p = reinterpret_cast<const float*>(row) + 32 * b;
    for (int i = 0; i < 4; ++i) w[i] = _mm256_loadu_ps(p + 8 * i);
  }
};

struct F16W : matmul_tiles::F16Cols {
  static void Load(const uint8_t* row, uint32_t b, __m256 w[4]) {
    const uint8_t* p = row + 64 * size_t{b};
    for (int i = 0; i < 4; ++i) {
      w[i] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * i)));
    }
  }
};

struct Q80W : matmul_tiles::BlockCols {
  static void Load(const uint8_t* row, uint32_t b, __m256 w[4]) {
    const uint8_t* blk = row + 34 * size_t{b};
    __m256 d = _mm256_set1_ps(HalfAt(blk));
    for (int i = 0; i < 4; ++i) {
      __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 2 + 8 * i));
      w[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d);
    }
  }
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

struct Q40W : matmul_tiles::BlockCols {
  static void Load(const uint8_t* row, uint32_t b, __m256 w[4]) {
    const uint8_t* blk = row + 18 * size_t{b};
    __m256 d = _mm256_set1_ps(HalfAt(blk));
    __m256 eight = _mm256_set1_ps(8.0f);
    Nibbles(blk + 2, w);
    for (int i = 0; i < 4; ++i) w[i] = _mm256_mul_ps(_mm256_sub_ps(w[i], eight), d);
  }
};

struct Q41W : matmul_tiles::BlockCols {
  static void Load(const uint8_t* row, uint32_t b, __m256 w[4]) {
    const uint8_t* blk = row + 20 * size_t{b};
    __m256 d = _mm256_set1_ps(HalfAt(blk));
    __m256 m = _mm256_set1_ps(HalfAt(blk + 2));
    Nibbles(blk + 4, w);
    for (int i = 0; i < 4; ++i) w[i] = _mm256_add_ps(_mm256_mul_ps(w[i], d), m);
  }
};

// 8-lane vectors, four per block; tiles of up to 8 rows, two outputs interleaved below 4.
struct Avx2 {
  using Vec = __m256;
  static constexpr int kVecs = 4;
  static constexpr int kRows = 8;
  static constexpr int Outputs(int rows) { return rows >= 4 ? 1 : 2; }
  static Vec Zero() { return _mm256_setzero_ps(); }
  static float Hsum(Vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  template <int O, int R>
  static void Fma(const Vec (&w)[O][kVecs], const float* x, Vec (&acc)[O][R], int r) {
    for (int i = 0; i < kVecs; ++i) {
      Vec xv = _mm256_loadu_ps(x + 8 * i);
      for (int j = 0; j < O; ++j) acc[j][r] = _mm256_fmadd_ps(w[j][i], xv, acc[j][r]);
    }
  }
};

}  // namespace

void MatmulAvx2(const WeightMatrix& w, const float* x, size_t x_stride, size_t n, float* y,
                size_t y_stride, uint32_t o_begin, uint32_t o_end) {
  matmul_tiles::Matmul<Avx2, F32W, F16W, Q80W, Q40W, Q41W>(w, x, x_stride, n, y, y_stride, o_begin,
                                                           o_end);
}

}  // namespace kvstash::engine

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // x86-64; elsewhere matmul.cc defines MatmulAvx2 (never selected by ActiveIsa())
