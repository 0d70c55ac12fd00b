// What the SIMD matmul kernels (matmul_avx2.cc, matmul_avx512.cc) share: the tile loop over
// weight blocks and its column tail, the scheduling of activation rows in tiles of Isa::kRows
// (a shorter last tile is an instantiation of its own height, never a masked tall one), the
// output rows interleaved per tile, and the dispatch on the weight type. Only the vector type,
// the per-row FMA step and the weight unpackers are per ISA.
//
// Include this only on x86-64, after the ISA's target pragma, so that everything it instantiates
// is compiled for that ISA (and inlines into one function per weight type). Its templates take
// the ISA's types from an unnamed namespace, so each kernel file gets its own copies.
//
// Isa provides:
//   using Vec;                                  the vector of floats
//   static constexpr int kVecs;                 Vecs per 32-weight block
//   static constexpr int kRows;                 the tallest tile
//   static constexpr int Outputs(int rows);     outputs interleaved in a tile of `rows` rows
//   static Vec Zero(); static float Hsum(Vec);
//   template <int O, int R>
//   static void Fma(const Vec (&w)[O][kVecs], const float* x, Vec (&acc)[O][R], int r);
//                                  acc[j][r] += w[j] . x[0, 32) for activation row r, each j
//
// and Matmul takes an unpacker per weight type (F32, F16, Q8_0, Q4_0, Q4_1), each with
//   static void Load(const uint8_t* row, uint32_t block, Vec w[kVecs]);   weights as f32
//   static float At(const uint8_t* row, uint32_t k);    weight k of a row's column tail
//
// Batch invariance (matmul.h): each (row, output) accumulator sees the same instruction sequence
// whatever the tile's height R and output count O; O > 1 only interleaves independent
// accumulators so that short tiles (decode) are not bound by one accumulator's FMA latency.
#ifndef KVSTASH_ENGINE_SRC_MATMUL_TILES_H_
#define KVSTASH_ENGINE_SRC_MATMUL_TILES_H_

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kvstash/engine/weights.h"

namespace kvstash::engine::matmul_tiles {

// F16C conversion: exact, so equal to the scalar F16ToF32 of weights.h's formulas.
inline float HalfAt(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// The column tails (weights past the last whole block of 32) of each weight type.
struct F32Cols {
  static float At(const uint8_t* row, uint32_t k) {
    float v;
    std::memcpy(&v, row + 4 * size_t{k}, 4);
    return v;
  }
};
struct F16Cols {
  static float At(const uint8_t* row, uint32_t k) { return HalfAt(row + 2 * size_t{k}); }
};
struct BlockCols {  // quantised rows are whole blocks: no tail
  static float At(const uint8_t*, uint32_t) { return 0.0f; }
};

// Outputs [o, o + O) of R activation rows: y[r * ys + j] for output o + j.
template <class Isa, class U, int R, int O>
inline void Tile(const WeightMatrix& w, uint32_t o, const float* x, size_t xs, float* y,
                 size_t ys) {
  using Vec = typename Isa::Vec;
  const uint32_t nb = w.cols / 32;
  Vec acc[O][R];
  for (int j = 0; j < O; ++j) {
    for (int r = 0; r < R; ++r) acc[j][r] = Isa::Zero();
  }
  for (uint32_t blk = 0; blk < nb; ++blk) {
    Vec wv[O][Isa::kVecs];
    for (int j = 0; j < O; ++j) U::Load(w.Row(o + j), blk, wv[j]);
    const float* xb = x + 32 * size_t{blk};
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) Isa::template Fma<O, R>(wv, xb + r * xs, acc, r);
  }
  for (int j = 0; j < O; ++j) {
    const uint8_t* wrow = w.Row(o + j);
    for (int r = 0; r < R; ++r) {
      float s = Isa::Hsum(acc[j][r]);
      const float* xr = x + r * xs;
      for (uint32_t k = nb * 32; k < w.cols; ++k) s += U::At(wrow, k) * xr[k];
      y[r * ys + j] = s;
    }
  }
}

// Outputs [o_begin, o_end) for R activation rows, Isa::Outputs(R) at a time.
template <class Isa, class U, int R>
inline void Rows(const WeightMatrix& w, uint32_t o_begin, uint32_t o_end, const float* x, size_t xs,
                 float* y, size_t ys) {
  constexpr int O = Isa::Outputs(R);
  uint32_t o = o_begin;
  for (; o + O <= o_end; o += O) Tile<Isa, U, R, O>(w, o, x, xs, y + o, ys);
  for (; o < o_end; ++o) Tile<Isa, U, R, 1>(w, o, x, xs, y + o, ys);
}

// The last tile, `left` rows (0 < left <= R): Rows<left>.
template <class Isa, class U, int R>
inline void RowsTail(size_t left, const WeightMatrix& w, uint32_t o_begin, uint32_t o_end,
                     const float* x, size_t xs, float* y, size_t ys) {
  if constexpr (R > 0) {
    if (left == R) return Rows<Isa, U, R>(w, o_begin, o_end, x, xs, y, ys);
    return RowsTail<Isa, U, R - 1>(left, w, o_begin, o_end, x, xs, y, ys);
  }
}

template <class Isa, class U>
void Run(const WeightMatrix& w, const float* x, size_t xs, size_t n, float* y, size_t ys,
         uint32_t o_begin, uint32_t o_end) {
  constexpr int kRows = Isa::kRows;
  // A tile of activation rows stays in L1 while this thread's weight rows stream past it.
  size_t t = 0;
  for (; t + kRows <= n; t += kRows) {
    Rows<Isa, U, kRows>(w, o_begin, o_end, x + t * xs, xs, y + t * ys, ys);
  }
  if (t < n) RowsTail<Isa, U, kRows - 1>(n - t, w, o_begin, o_end, x + t * xs, xs, y + t * ys, ys);
}

// The MatmulKernel of matmul.h for Isa and its unpackers; weight types without an unpacker
// leave y as it is.
template <class Isa, class F32, class F16, class Q8_0, class Q4_0, class Q4_1>
void Matmul(const WeightMatrix& w, const float* x, size_t x_stride, size_t n, float* y,
            size_t y_stride, uint32_t o_begin, uint32_t o_end) {
  switch (w.type) {
    case GgmlType::kF32:
      return Run<Isa, F32>(w, x, x_stride, n, y, y_stride, o_begin, o_end);
    case GgmlType::kF16:
      return Run<Isa, F16>(w, x, x_stride, n, y, y_stride, o_begin, o_end);
    case GgmlType::kQ8_0:
      return Run<Isa, Q8_0>(w, x, x_stride, n, y, y_stride, o_begin, o_end);
    case GgmlType::kQ4_0:
      return Run<Isa, Q4_0>(w, x, x_stride, n, y, y_stride, o_begin, o_end);
    case GgmlType::kQ4_1:
      return Run<Isa, Q4_1>(w, x, x_stride, n, y, y_stride, o_begin, o_end);
    default:
      return;
  }
}

}  // namespace kvstash::engine::matmul_tiles

#endif  // KVSTASH_ENGINE_SRC_MATMUL_TILES_H_
