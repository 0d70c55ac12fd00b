// Engine kernels (private headers): matmul per ISA and type, batch invariance at kernel level.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "attention.h"
#include "cpu_features.h"
#include "gguf_builder.h"
#include "matmul.h"
#include "vec_math.h"

namespace kvstash::engine {
namespace {

struct Packed {
  WeightMatrix w;
  std::vector<uint8_t> bytes;
  std::vector<float> deq;  // exact dequantised weights [rows][cols]
};

Packed MakeWeights(uint32_t type, uint32_t rows, uint32_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.5f);
  std::vector<float> f(size_t{rows} * cols);
  for (auto& v : f) v = dist(rng);
  Packed p;
  p.deq = f;
  if (type == 0) {
    p.bytes = testing::AsF32(f.data(), f.size());
  } else if (type == 1) {
    p.bytes = testing::AsF16(f.data(), f.size());
    for (auto& v : p.deq) v = F16ToF32(F32ToF16(v));
  } else {
    p.bytes = testing::Quantize(type, f.data(), f.size(), p.deq.data());
  }
  p.w.type = GgmlTypeFromId(type);
  p.w.rows = rows;
  p.w.cols = cols;
  p.w.data = p.bytes.data();
  p.w.row_bytes = *GgmlRowBytes(p.w.type, cols);
  return p;
}

std::vector<std::pair<const char*, MatmulKernel>> Kernels() {
  std::vector<std::pair<const char*, MatmulKernel>> k = {{"scalar", MatmulScalar}};
  if (ActiveIsa() >= Isa::kAvx2) k.emplace_back("avx2", MatmulAvx2);
  if (ActiveIsa() >= Isa::kAvx512) k.emplace_back("avx512", MatmulAvx512);
  return k;
}

class MatmulTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(MatmulTest, MatchesDoublePrecisionAndIsBatchInvariant) {
  const uint32_t type = GetParam();
  for (uint32_t cols : {32u, 96u, 172u}) {
    if (type >= 2 && cols % 32 != 0) continue;
    const uint32_t rows = 37;
    Packed p = MakeWeights(type, rows, cols, cols + type);
    const size_t n = 70;  // > one token chunk, not a multiple of any tile
    std::mt19937 rng(3);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> x(n * cols);
    for (auto& v : x) v = dist(rng);
    for (auto [name, kernel] : Kernels()) {
      SCOPED_TRACE(name);
      std::vector<float> y(n * rows);
      kernel(p.w, x.data(), cols, n, y.data(), rows, 0, rows);
      for (size_t t = 0; t < n; ++t) {
        for (uint32_t o = 0; o < rows; ++o) {
          double ref = 0, mag = 0;
          for (uint32_t k = 0; k < cols; ++k) {
            ref += double{p.deq[size_t{o} * cols + k]} * x[t * cols + k];
            mag += std::fabs(double{p.deq[size_t{o} * cols + k]} * x[t * cols + k]);
          }
          ASSERT_NEAR(y[t * rows + o], ref, 1e-5 * mag + 1e-6) << t << " " << o;
        }
      }
      // Any single row, any batch prefix, any output sub-range: the same bits.
      for (size_t t : {size_t{0}, size_t{5}, size_t{63}, size_t{69}}) {
        std::vector<float> one(rows);
        kernel(p.w, x.data() + t * cols, cols, 1, one.data(), rows, 0, rows);
        // The same bits is the contract (batch invariance), not equal values: memcmp is meant.
        // NOLINTNEXTLINE(bugprone-suspicious-memory-comparison)
        EXPECT_EQ(std::memcmp(one.data(), y.data() + t * rows, rows * 4), 0) << t;
      }
      std::vector<float> split(n * rows);
      kernel(p.w, x.data(), cols, 13, split.data(), rows, 0, 11);
      kernel(p.w, x.data(), cols, 13, split.data(), rows, 11, rows);
      // NOLINTNEXTLINE(bugprone-suspicious-memory-comparison): the same bits, as above.
      EXPECT_EQ(std::memcmp(split.data(), y.data(), 13 * rows * 4), 0);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Types, MatmulTest, ::testing::Values(0u, 1u, 2u, 3u, 8u),
                         [](const auto& info) { return GgmlTypeName(info.param); });

TEST(MatmulTest, ThreadedJobsMatchSingleThread) {
  Packed a = MakeWeights(3, 96, 64, 1), b = MakeWeights(8, 40, 64, 2);
  const size_t n = 9;
  std::vector<float> x(n * 64);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(static_cast<float>(i));
  std::vector<float> ya(n * 96), yb(n * 40), za(n * 96), zb(n * 40);
  const MatmulJob one[] = {{&a.w, ya.data(), 96}, {&b.w, yb.data(), 40}};
  Matmul(nullptr, one, x.data(), 64, n);
  ThreadPool pool(3);
  const MatmulJob two[] = {{&a.w, za.data(), 96}, {&b.w, zb.data(), 40}};
  Matmul(&pool, two, x.data(), 64, n);
  EXPECT_EQ(ya, za);
  EXPECT_EQ(yb, zb);
}

TEST(VecMathTest, ExpAndNorm) {
  std::vector<float> x = {-100.0f, -20.0f, -1.0f, 0.0f, 0.5f, 1.0f, 10.0f, 80.0f, 3.0f};
  std::vector<float> e = x;
  ExpInPlace(e.data(), e.size());
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_NEAR(e[i], std::exp(x[i]), 3e-7 * std::exp(x[i]) + 1e-37) << x[i];
  }
  std::vector<float> v = {3.0f, 4.0f}, w = {1.0f, 2.0f}, out(2);
  RmsNorm(v.data(), w.data(), 2, 0.0f, out.data());
  float inv = 1.0f / std::sqrt(12.5f);
  EXPECT_NEAR(out[0], 3.0f * inv, 1e-6);
  EXPECT_NEAR(out[1], 8.0f * inv, 1e-6);
}

TEST(AttentionTest, MatchesReferenceAndReportsProbabilities) {
  AttentionShape s{4, 2, 16, 12};
  std::mt19937 rng(5);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> k(size_t{s.num_kv_heads} * s.context * s.head_dim), v(k.size());
  for (auto& f : k) f = dist(rng);
  for (auto& f : v) f = dist(rng);
  std::vector<uint32_t> pos = {0, 5, 11};
  std::vector<float> q(pos.size() * s.num_heads * s.head_dim);
  for (auto& f : q) f = dist(rng);
  std::vector<float> out(q.size());
  std::vector<int> calls(pos.size() * s.num_heads, 0);
  ProbsSink sink = [&](size_t row, uint32_t head, std::span<const float> p) {
    calls[row * s.num_heads + head]++;
    EXPECT_EQ(p.size(), pos[row] + 1);
    double sum = 0;
    for (float f : p) sum += f;
    EXPECT_NEAR(sum, 1.0, 1e-5);
  };
  ThreadPool pool(2);
  Attention(&pool, s, q.data(), pos, k.data(), v.data(), out.data(), &sink);
  for (int c : calls) EXPECT_EQ(c, 1);
  for (size_t r = 0; r < pos.size(); ++r) {
    for (uint32_t h = 0; h < s.num_heads; ++h) {
      const float* qh = q.data() + (r * s.num_heads + h) * s.head_dim;
      uint32_t kvh = h / 2;
      std::vector<double> sc(pos[r] + 1);
      double m = -1e30, sum = 0;
      for (uint32_t j = 0; j <= pos[r]; ++j) {
        double d = 0;
        for (uint32_t i = 0; i < s.head_dim; ++i) {
          d += double{qh[i]} * k[(size_t{kvh} * s.context + j) * s.head_dim + i];
        }
        sc[j] = d / std::sqrt(16.0);
        m = std::max(m, sc[j]);
      }
      for (auto& x : sc) sum += (x = std::exp(x - m));
      for (uint32_t i = 0; i < s.head_dim; ++i) {
        double o = 0;
        for (uint32_t j = 0; j <= pos[r]; ++j) {
          o += sc[j] / sum * v[(size_t{kvh} * s.context + j) * s.head_dim + i];
        }
        EXPECT_NEAR(out[(r * s.num_heads + h) * s.head_dim + i], o, 1e-5);
      }
    }
  }
}

}  // namespace
}  // namespace kvstash::engine
