#include "matmul.h"

#include <algorithm>
#include <vector>

#include "cpu_features.h"

namespace kvstash::engine {

// Portable kernel: dequantises one weight row at a time (exactly, see weights.h) and reduces
// each dot product left to right.
void MatmulScalar(const WeightMatrix& w, const float* x, size_t x_stride, size_t n, float* y,
                  size_t y_stride, uint32_t o_begin, uint32_t o_end) {
  std::vector<float> row(w.cols);
  for (size_t t0 = 0; t0 < n; t0 += kMatmulTokenChunk) {
    size_t t1 = std::min(n, t0 + kMatmulTokenChunk);
    for (uint32_t o = o_begin; o < o_end; ++o) {
      DequantizeRow(w, o, row.data());
      for (size_t t = t0; t < t1; ++t) {
        const float* xt = x + t * x_stride;
        float s = 0.0f;
        for (uint32_t k = 0; k < w.cols; ++k) s += row[k] * xt[k];
        y[t * y_stride + o] = s;
      }
    }
  }
}

#if !defined(__x86_64__)
// The SIMD kernels (matmul_avx2.cc, matmul_avx512.cc) are x86-64 only; ActiveIsa() never selects
// them elsewhere, and these keep their symbols defined.
void MatmulAvx2(const WeightMatrix& w, const float* x, size_t x_stride, size_t n, float* y,
                size_t y_stride, uint32_t o_begin, uint32_t o_end) {
  MatmulScalar(w, x, x_stride, n, y, y_stride, o_begin, o_end);
}
void MatmulAvx512(const WeightMatrix& w, const float* x, size_t x_stride, size_t n, float* y,
                  size_t y_stride, uint32_t o_begin, uint32_t o_end) {
  MatmulScalar(w, x, x_stride, n, y, y_stride, o_begin, o_end);
}
#endif

MatmulKernel ActiveMatmulKernel() {
  switch (ActiveIsa()) {
    case Isa::kAvx512:
      return MatmulAvx512;
    case Isa::kAvx2:
      return MatmulAvx2;
    default:
      return MatmulScalar;
  }
}

void Matmul(ThreadPool* pool, std::span<const MatmulJob> jobs, const float* x, size_t x_stride,
            size_t n) {
  if (jobs.empty() || n == 0) return;
  static const MatmulKernel kernel = ActiveMatmulKernel();
  size_t total = 0;
  for (const auto& j : jobs) total += j.w->rows;
  size_t cols = jobs[0].w->cols;
  auto run = [&](size_t begin, size_t end) {
    size_t base = 0;
    for (const auto& j : jobs) {
      size_t lo = std::max(begin, base), hi = std::min(end, base + j.w->rows);
      if (lo < hi) {
        kernel(*j.w, x, x_stride, n, j.y, j.y_stride, static_cast<uint32_t>(lo - base),
               static_cast<uint32_t>(hi - base));
      }
      base += j.w->rows;
    }
  };
  if (pool == nullptr) {
    run(0, total);
    return;
  }
  // Enough multiply-adds per part to pay for the hand-off to a worker.
  size_t min_block = std::max<size_t>(8, (size_t{1} << 17) / std::max<size_t>(1, n * cols));
  pool->ParallelFor(total, min_block, run);
}

}  // namespace kvstash::engine
