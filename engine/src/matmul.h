// Matrix products of activations with (possibly quantised) weights.
//
// y[t][o] = sum_k W[o][k] * x[t][k]. Batch invariance: the sequence of floating-point operations
// that produces y[t][o] depends only on (W row o, x row t) and the process ISA, never on the
// number of rows n, on which other rows share a tile, or on how outputs are split over threads.
// Every kernel reduces over k in one fixed order; threads split output rows only.
#ifndef KVSTASH_ENGINE_SRC_MATMUL_H_
#define KVSTASH_ENGINE_SRC_MATMUL_H_

#include <cstddef>
#include <cstdint>
#include <span>

#include "kvstash/common/thread_pool.h"
#include "kvstash/engine/weights.h"

namespace kvstash::engine {

// Computes outputs [o_begin, o_end) for rows [0, n): y[t * y_stride + o].
using MatmulKernel = void (*)(const WeightMatrix& w, const float* x, size_t x_stride, size_t n,
                              float* y, size_t y_stride, uint32_t o_begin, uint32_t o_end);
void MatmulScalar(const WeightMatrix& w, const float* x, size_t x_stride, size_t n, float* y,
                  size_t y_stride, uint32_t o_begin, uint32_t o_end);
void MatmulAvx2(const WeightMatrix& w, const float* x, size_t x_stride, size_t n, float* y,
                size_t y_stride, uint32_t o_begin, uint32_t o_end);
void MatmulAvx512(const WeightMatrix& w, const float* x, size_t x_stride, size_t n, float* y,
                  size_t y_stride, uint32_t o_begin, uint32_t o_end);

// The kernel for the process ISA.
MatmulKernel ActiveMatmulKernel();

struct MatmulJob {
  const WeightMatrix* w;
  float* y;
  size_t y_stride;
};

// Runs every job on the same input x ([n][x_stride], x_stride >= cols), splitting the
// concatenated output rows of all jobs over the pool (nullptr: calling thread only). All jobs
// must share w->cols.
void Matmul(ThreadPool* pool, std::span<const MatmulJob> jobs, const float* x, size_t x_stride,
            size_t n);

// Tokens processed together per pass over a weight row (cache blocking only; no numeric effect).
inline constexpr size_t kMatmulTokenChunk = 64;

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_SRC_MATMUL_H_
