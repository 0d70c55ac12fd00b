// AVX-512 matmul kernels: matmul_tiles.h's tiles and scheduling, as matmul_avx2.cc, with
// 16-lane vectors and a taller tile. Every (row, output) pair is reduced with the same
// instruction sequence whatever the tile size, so results do not depend on the batch.
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

#include "matmul_tiles.h"

namespace kvstash::engine {
namespace {

using matmul_tiles::HalfAt;

struct F32W : matmul_tiles::F32Cols {
  static void Load(const uint8_t* row, uint32_t b, __m512 w[2]) {
    const float* p = reinterpret_cast<const float*>(row) + 32 * size_t{b};
    w[0] = _mm512_loadu_ps(p);
    w[1] = _mm512_loadu_ps(p + 16);
  }
};

struct F16W : matmul_tiles::F16Cols {
  static void Load(const uint8_t* row, uint32_t b, __m512 w[2]) {
    const uint8_t* p = row + 64 * size_t{b};
    w[0] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    w[1] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)));
  }
};

struct Q80W : matmul_tiles::BlockCols {
  static void Load(const uint8_t* row, uint32_t b, __m512 w[2]) {
    const uint8_t* blk = row + 34 * size_t{b};
    __m512 d = _mm512_set1_ps(HalfAt(blk));
    for (int i = 0; i < 2; ++i) {
      __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2 + 16 * i));
      w[i] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), d);
    }
  }
};

// The 32 nibbles of a Q4 block as floats 0..15 in weight order: one byte-to-dword widening,
// then low nibbles are weights 0..15 and high nibbles weights 16..31.
inline void Nibbles(const uint8_t* qs, __m512 q[2]) {
  __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  q[0] = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(0x0F)));
  q[1] = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
}

struct Q40W : matmul_tiles::BlockCols {
  static void Load(const uint8_t* row, uint32_t b, __m512 w[2]) {
    const uint8_t* blk = row + 18 * size_t{b};
    __m512 d = _mm512_set1_ps(HalfAt(blk));
    __m512 eight = _mm512_set1_ps(8.0f);
    Nibbles(blk + 2, w);
    for (int i = 0; i < 2; ++i) w[i] = _mm512_mul_ps(_mm512_sub_ps(w[i], eight), d);
  }
};

struct Q41W : matmul_tiles::BlockCols {
  static void Load(const uint8_t* row, uint32_t b, __m512 w[2]) {
    const uint8_t* blk = row + 20 * size_t{b};
    __m512 d = _mm512_set1_ps(HalfAt(blk));
    __m512 m = _mm512_set1_ps(HalfAt(blk + 2));
    Nibbles(blk + 4, w);
    for (int i = 0; i < 2; ++i) w[i] = _mm512_add_ps(_mm512_mul_ps(w[i], d), m);
  }
};

// 16-lane vectors, two per block; tiles of up to 16 rows, more outputs interleaved the shorter
// the tile.
struct Avx512 {
  using Vec = __m512;
  static constexpr int kVecs = 2;
  static constexpr int kRows = 16;
  static constexpr int Outputs(int rows) { return rows >= 8 ? 1 : (rows >= 4 ? 2 : 4); }
  static Vec Zero() { return _mm512_setzero_ps(); }
  static float Hsum(Vec v) {
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  template <int O, int R>
  static void Fma(const Vec (&w)[O][kVecs], const float* x, Vec (&acc)[O][R], int r) {
    Vec x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
    for (int j = 0; j < O; ++j) {
      acc[j][r] = _mm512_fmadd_ps(w[j][0], x0, acc[j][r]);
      acc[j][r] = _mm512_fmadd_ps(w[j][1], x1, acc[j][r]);
    }
  }
};

}  // namespace

void MatmulAvx512(const WeightMatrix& w, const float* x, size_t x_stride, size_t n, float* y,
                  size_t y_stride, uint32_t o_begin, uint32_t o_end) {
  matmul_tiles::Matmul<Avx512, F32W, F16W, Q80W, Q40W, Q41W>(w, x, x_stride, n, y, y_stride,
                                                             o_begin, o_end);
}

}  // namespace kvstash::engine

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // x86-64; elsewhere matmul.cc defines MatmulAvx512 (never selected by ActiveIsa())
