#include "attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "cpu_features.h"
#include "vec_math.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace kvstash::engine {
namespace {

// Per-thread scratch for one (row, head): scores over the context, padded for vector tails.
std::vector<float>& ScoreBuffer(size_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < n + 8) buf.resize(n + 8);
  return buf;
}

void HeadScalar(const float* q, const float* k, const float* v, uint32_t hd, uint32_t len,
                float scale, float* scores, float* out) {
  for (uint32_t j = 0; j < len; ++j) {
    const float* kj = k + size_t{j} * hd;
    float s = 0.0f;
    for (uint32_t d = 0; d < hd; ++d) s += q[d] * kj[d];
    scores[j] = s * scale;
  }
  float m = scores[0];
  for (uint32_t j = 1; j < len; ++j) m = std::max(m, scores[j]);
  for (uint32_t j = 0; j < len; ++j) scores[j] -= m;
  ExpInPlace(scores, len);
  float sum = 0.0f;
  for (uint32_t j = 0; j < len; ++j) sum += scores[j];
  for (uint32_t d = 0; d < hd; ++d) out[d] = 0.0f;
  for (uint32_t j = 0; j < len; ++j) {
    const float* vj = v + size_t{j} * hd;
    for (uint32_t d = 0; d < hd; ++d) out[d] += scores[j] * vj[d];
  }
  float inv = 1.0f / sum;
  for (uint32_t d = 0; d < hd; ++d) out[d] *= inv;
  for (uint32_t j = 0; j < len; ++j) scores[j] *= inv;
}

#if defined(__x86_64__)
#define KVSTASH_AVX2 __attribute__((target("avx2,fma")))

KVSTASH_AVX2 inline float Hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// q . k for NK keys at once; each key's reduction is the same instruction sequence as NK == 1.
template <int NK>
KVSTASH_AVX2 inline void Dots(const float* q, const float* k, uint32_t hd, float scale,
                              float* out) {
  __m256 a[NK], b[NK];
  for (int i = 0; i < NK; ++i) a[i] = b[i] = _mm256_setzero_ps();
  uint32_t d = 0;
  for (; d + 16 <= hd; d += 16) {
    __m256 q0 = _mm256_loadu_ps(q + d), q1 = _mm256_loadu_ps(q + d + 8);
    for (int i = 0; i < NK; ++i) {
      const float* ki = k + static_cast<size_t>(i) * hd + d;
      a[i] = _mm256_fmadd_ps(q0, _mm256_loadu_ps(ki), a[i]);
      b[i] = _mm256_fmadd_ps(q1, _mm256_loadu_ps(ki + 8), b[i]);
    }
  }
  if (d < hd) {  // hd % 16 == 8
    __m256 q0 = _mm256_loadu_ps(q + d);
    for (int i = 0; i < NK; ++i) {
      a[i] = _mm256_fmadd_ps(q0, _mm256_loadu_ps(k + static_cast<size_t>(i) * hd + d), a[i]);
    }
  }
  for (int i = 0; i < NK; ++i) out[i] = Hsum8(_mm256_add_ps(a[i], b[i])) * scale;
}

// out[0, 8*NV) = sum_j p[j] * v[j][0, 8*NV), keys in order.
template <int NV>
KVSTASH_AVX2 inline void WeightedSum(const float* p, const float* v, uint32_t hd, uint32_t len,
                                     float* out) {
  __m256 acc[NV];
  for (int i = 0; i < NV; ++i) acc[i] = _mm256_setzero_ps();
  for (uint32_t j = 0; j < len; ++j) {
    __m256 pj = _mm256_set1_ps(p[j]);
    const float* vj = v + size_t{j} * hd;
    for (int i = 0; i < NV; ++i) acc[i] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8 * i), acc[i]);
  }
  for (int i = 0; i < NV; ++i) _mm256_storeu_ps(out + 8 * i, acc[i]);
}

KVSTASH_AVX2 void HeadAvx2(const float* q, const float* k, const float* v, uint32_t hd,
                           uint32_t len, float scale, float* scores, float* out) {
  uint32_t j = 0;
  for (; j + 4 <= len; j += 4) Dots<4>(q, k + size_t{j} * hd, hd, scale, scores + j);
  for (; j < len; ++j) Dots<1>(q, k + size_t{j} * hd, hd, scale, scores + j);
  __m256 mv = _mm256_set1_ps(scores[0]);
  j = 0;
  for (; j + 8 <= len; j += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(scores + j));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, mv);
  float m = lanes[0];  // max is exact: the order of comparisons cannot change it
  for (int i = 1; i < 8; ++i) m = std::max(m, lanes[i]);
  for (; j < len; ++j) m = std::max(m, scores[j]);
  __m256 mb = _mm256_set1_ps(m);
  for (j = 0; j + 8 <= len; j += 8) {
    _mm256_storeu_ps(scores + j, _mm256_sub_ps(_mm256_loadu_ps(scores + j), mb));
  }
  for (; j < len; ++j) scores[j] -= m;
  ExpInPlace(scores, len);
  __m256 sv = _mm256_setzero_ps();
  for (j = 0; j + 8 <= len; j += 8) sv = _mm256_add_ps(sv, _mm256_loadu_ps(scores + j));
  float sum = Hsum8(sv);
  for (; j < len; ++j) sum += scores[j];
  float inv = 1.0f / sum;
  for (uint32_t d0 = 0; d0 < hd; d0 += 64) {
    uint32_t nv = std::min<uint32_t>(64, hd - d0) / 8;
    const float* vd = v + d0;
    float* od = out + d0;
    switch (nv) {
      case 8:
        WeightedSum<8>(scores, vd, hd, len, od);
        break;
      case 7:
        WeightedSum<7>(scores, vd, hd, len, od);
        break;
      case 6:
        WeightedSum<6>(scores, vd, hd, len, od);
        break;
      case 5:
        WeightedSum<5>(scores, vd, hd, len, od);
        break;
      case 4:
        WeightedSum<4>(scores, vd, hd, len, od);
        break;
      case 3:
        WeightedSum<3>(scores, vd, hd, len, od);
        break;
      case 2:
        WeightedSum<2>(scores, vd, hd, len, od);
        break;
      default:
        WeightedSum<1>(scores, vd, hd, len, od);
        break;
    }
  }
  __m256 iv = _mm256_set1_ps(inv);
  for (uint32_t d = 0; d < hd; d += 8) {
    _mm256_storeu_ps(out + d, _mm256_mul_ps(_mm256_loadu_ps(out + d), iv));
  }
  for (j = 0; j < len; ++j) scores[j] *= inv;
}
#endif

}  // namespace

void Attention(ThreadPool* pool, const AttentionShape& shape, const float* q,
               std::span<const uint32_t> positions, const float* k, const float* v, float* out,
               const ProbsSink* probs) {
  const uint32_t hd = shape.head_dim;
  const uint32_t group = shape.num_heads / shape.num_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const size_t n = positions.size();
#if defined(__x86_64__)
  const bool vec = ActiveIsa() != Isa::kScalar && hd % 8 == 0;
#else
  const bool vec = false;
#endif
  const size_t tasks = n * shape.num_heads;
  auto run_task = [&](size_t task) {
    // Tasks go heavy rows first so the dynamic schedule below ends balanced.
    size_t row = n - 1 - task / shape.num_heads;
    uint32_t head = static_cast<uint32_t>(task % shape.num_heads);
    uint32_t len = positions[row] + 1;
    uint32_t kvh = head / group;
    const float* kh = k + size_t{kvh} * shape.context * hd;
    const float* vh = v + size_t{kvh} * shape.context * hd;
    const float* qh = q + (row * shape.num_heads + head) * hd;
    float* oh = out + (row * shape.num_heads + head) * hd;
    float* scores = ScoreBuffer(len).data();
#if defined(__x86_64__)
    if (vec) {
      HeadAvx2(qh, kh, vh, hd, len, scale, scores, oh);
    } else {
      HeadScalar(qh, kh, vh, hd, len, scale, scores, oh);
    }
#else
    HeadScalar(qh, kh, vh, hd, len, scale, scores, oh);
#endif
    if (probs != nullptr && *probs) (*probs)(row, head, std::span<const float>(scores, len));
  };
  if (pool == nullptr || tasks < 2) {
    for (size_t t = 0; t < tasks; ++t) run_task(t);
    return;
  }
  // Dynamic schedule: per-task results do not depend on which thread runs them.
  std::atomic<size_t> next{0};
  pool->ParallelFor(pool->size() + 1, 1, [&](size_t, size_t) {
    for (;;) {
      size_t t = next.fetch_add(1, std::memory_order_relaxed);
      if (t >= tasks) break;
      run_task(t);
    }
  });
}

}  // namespace kvstash::engine
