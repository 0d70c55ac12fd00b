// Quantisation of whole chunks (reference and delta modes) and per-chunk CDFs.
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "absl/strings/str_cat.h"
#include "chunk.h"
#include "cpu_features.h"
#include "kvstash/common/half.h"
#include "kvstash/kernels/cachegen_core.h"

namespace kvstash::codec::internal {
namespace cg = kernels::cachegen;

ChunkShape ChunkShape::Of(const KvLayout& layout) {
  ChunkShape s;
  s.layers = layout.num_layers;
  s.heads = layout.heads();
  s.head_dim = layout.head_dim;
  s.tokens = layout.num_tokens;
  s.dtype = layout.dtype;
  return s;
}

ChunkShape ChunkShape::Of(const ContainerInfo& info) {
  ChunkShape s;
  s.layers = info.num_layers;
  s.heads = info.num_heads;
  s.head_dim = info.head_dim;
  s.tokens = info.num_tokens;
  s.dtype = info.dtype;
  return s;
}

void ParallelFor(ThreadPool* pool, size_t n, size_t min_block,
                 const std::function<void(size_t, size_t)>& fn) {
  if (pool == nullptr) {
    if (n > 0) fn(0, n);
    return;
  }
  pool->ParallelFor(n, min_block, fn);
}

namespace {

// Converts n values of `dtype` at `src` (any alignment) to f32.
void LoadRow(const uint8_t* src, DType dtype, size_t n, std::vector<uint16_t>& tmp, float* dst) {
  if (dtype == DType::kF32) {
    std::memcpy(dst, src, n * 4);
    return;
  }
  tmp.resize(n);
  std::memcpy(tmp.data(), src, n * 2);
  if (dtype == DType::kF16) {
    F16ToF32(tmp.data(), dst, n);
  } else {
    BF16ToF32(tmp.data(), dst, n);
  }
}

#if defined(__x86_64__)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC bug 105593 in avx512 headers
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

KVSTASH_AVX512 float MaxAbsAvx512(const float* x, size_t n, bool* finite) {
  __m512 m = _mm512_setzero_ps();
  __mmask16 bad = 0;
  const __m512 fmax = _mm512_set1_ps(FLT_MAX);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 a = _mm512_abs_ps(_mm512_loadu_ps(x + i));
    bad |= _mm512_cmp_ps_mask(a, fmax, _CMP_NLE_UQ);  // NaN or inf
    m = _mm512_max_ps(m, a);
  }
  float r = _mm512_reduce_max_ps(m);
  bool ok = bad == 0;
  for (; i < n; ++i) {
    const float a = std::fabs(x[i]);
    ok &= a <= FLT_MAX;
    r = a > r ? a : r;
  }
  *finite = ok;
  return r;
}

// Same symbols as cg::QuantizeValue: mul, add (never fused), round half to even, clamp.
KVSTASH_AVX512 void QuantizeAvx512(const float* x, size_t n, float factor, int cq, uint8_t* sym) {
  const __m512 f = _mm512_set1_ps(factor);
  const __m512 fcq = _mm512_set1_ps(static_cast<float>(cq));
  const __m512i hi = _mm512_set1_epi32(2 * cq);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 y = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), f), fcq);
    const __m512 r = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512i s = _mm512_cvtps_epi32(r);
    s = _mm512_min_epi32(_mm512_max_epi32(s, _mm512_setzero_si512()), hi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(sym + i), _mm512_cvtepi32_epi8(s));
  }
  for (; i < n; ++i) sym[i] = static_cast<uint8_t>(cg::QuantizeValue(x[i], factor, cq));
}
#endif

// Max |x| of a vector and whether every value is finite.
float MaxAbs(const float* x, size_t n, bool* finite) {
#if defined(__x86_64__)
  if (CpuHasAvx512()) return MaxAbsAvx512(x, n, finite);
#endif
  float m = 0.0f;
  bool bad = false;
  for (size_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    bad |= !(a <= FLT_MAX);
    m = a > m ? a : m;
  }
  *finite = !bad;
  return m;
}

// Quantises x[0, n) with Cq; returns the stored scale.
float QuantizeInto(const float* x, size_t n, int cq, float m, uint8_t* sym) {
  const float factor = cg::QuantFactor(m, cq);
#if defined(__x86_64__)
  if (CpuHasAvx512()) {
    QuantizeAvx512(x, n, factor, cq, sym);
    return cg::StoredScale(m);
  }
#endif
  for (size_t i = 0; i < n; ++i) sym[i] = static_cast<uint8_t>(cg::QuantizeValue(x[i], factor, cq));
  return cg::StoredScale(m);
}

}  // namespace

Status QuantizeChunk(const ChunkShape& shape, std::span<const uint8_t> kv, const ChunkParams& p,
                     ThreadPool* pool, QuantizedChunk* out) {
  if (kv.size() != shape.raw_bytes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV payload is ", kv.size(), " bytes, layout needs ", shape.raw_bytes()));
  }
  const uint32_t rows = shape.rows();
  const uint32_t T = shape.tokens;
  const size_t C = shape.channels();
  const size_t esize = DTypeSize(shape.dtype);
  out->sym.assign(shape.elements(), 0);
  out->scales.assign(size_t{rows} * T, 0.0f);
  const uint32_t A = p.AnchorsPerRow(T);
  out->anchors.assign(size_t{rows} * A * C, 0);
  std::atomic<int> failure{0};  // 1: non-finite input, 2: non-finite delta

  if (p.mode == CacheGenMode::kReference) {
    ParallelFor(pool, size_t{rows} * T, 16, [&](size_t begin, size_t end) {
      std::vector<float> x(C);
      std::vector<uint16_t> tmp;
      for (size_t i = begin; i < end; ++i) {
        const uint32_t row = static_cast<uint32_t>(i / T);
        const uint32_t t = static_cast<uint32_t>(i % T);
        const size_t base = shape.RowOffset(row) + size_t{t} * C;
        LoadRow(kv.data() + base * esize, shape.dtype, C, tmp, x.data());
        bool finite;
        const float m = MaxAbs(x.data(), C, &finite);
        if (!finite) failure.store(1);
        out->scales[i] = QuantizeInto(x.data(), C, cg::QuantCq(p.row_bins[row]), m,
                                      out->sym.data() + size_t{row} * T * C + size_t{t} * C);
      }
    });
  } else {
    const uint32_t G = p.group_tokens;
    ParallelFor(pool, size_t{rows} * A, 4, [&](size_t begin, size_t end) {
      std::vector<float> x(C), anchor(C), delta(C);
      std::vector<uint16_t> tmp;
      constexpr int kAnchorCq = kAnchorBins / 2 - 1;
      for (size_t i = begin; i < end; ++i) {
        const uint32_t row = static_cast<uint32_t>(i / A);
        const uint32_t g = static_cast<uint32_t>(i % A);
        const int cq = cg::QuantCq(p.row_bins[row]);
        const uint32_t t0 = g * G;
        const uint32_t t1 = std::min(T, t0 + G);
        uint8_t* row_sym = out->sym.data() + size_t{row} * T * C;
        float* row_scales = out->scales.data() + size_t{row} * T;
        // Anchor: 8-bit symbols, reconstructed exactly as the decoder will.
        LoadRow(kv.data() + (shape.RowOffset(row) + size_t{t0} * C) * esize, shape.dtype, C, tmp,
                x.data());
        bool finite;
        float m = MaxAbs(x.data(), C, &finite);
        if (!finite) failure.store(1);
        uint8_t* anchor_sym = out->anchors.data() + (size_t{row} * A + g) * C;
        const float anchor_scale = QuantizeInto(x.data(), C, kAnchorCq, m, anchor_sym);
        row_scales[t0] = anchor_scale;
        for (size_t c = 0; c < C; ++c) {
          anchor[c] = cg::DequantizeValue(anchor_sym[c], kAnchorCq, anchor_scale);
          row_sym[size_t{t0} * C + c] = static_cast<uint8_t>(cq);
        }
        for (uint32_t t = t0 + 1; t < t1; ++t) {
          LoadRow(kv.data() + (shape.RowOffset(row) + size_t{t} * C) * esize, shape.dtype, C, tmp,
                  x.data());
          for (size_t c = 0; c < C; ++c) delta[c] = cg::SubRn(x[c], anchor[c]);
          m = MaxAbs(delta.data(), C, &finite);
          if (!finite) failure.store(2);
          row_scales[t] = QuantizeInto(delta.data(), C, cq, m, row_sym + size_t{t} * C);
        }
      }
    });
  }
  if (failure.load() == 1) return absl::InvalidArgumentError("KV contains NaN or infinity");
  if (failure.load() == 2) {
    return absl::InvalidArgumentError("delta to anchor overflows f32; use reference mode");
  }
  return OkStatus();
}

void CountRowSymbols(const ChunkShape& shape, const ChunkParams& p, const QuantizedChunk& q,
                     uint32_t row, uint64_t* counts) {
  const size_t C = shape.channels();
  const uint8_t* row_sym = q.sym.data() + size_t{row} * shape.tokens * C;
  for (uint32_t t = 0; t < shape.tokens; ++t) {
    if (p.IsAnchor(t)) continue;
    const uint8_t* s = row_sym + size_t{t} * C;
    for (size_t c = 0; c < C; ++c) ++counts[c * cg::kMaxLp + s[c]];
  }
}

std::vector<uint16_t> BuildChunkCdfs(const ChunkShape& shape, const ChunkParams& p,
                                     const QuantizedChunk& q, ThreadPool* pool) {
  const size_t C = shape.channels();
  const int lp = p.lp;
  const int mb = lp - 1;
  uint64_t coded = shape.tokens - p.AnchorsPerRow(shape.tokens);
  std::vector<uint16_t> cdf(size_t{shape.rows()} * C * lp);
  ParallelFor(pool, shape.rows(), 1, [&](size_t begin, size_t end) {
    std::vector<uint64_t> counts(C * cg::kMaxLp);
    for (size_t row = begin; row < end; ++row) {
      std::fill(counts.begin(), counts.end(), 0);
      CountRowSymbols(shape, p, q, static_cast<uint32_t>(row), counts.data());
      for (size_t c = 0; c < C; ++c) {
        uint16_t* out = cdf.data() + (row * C + c) * lp;
        const uint64_t* h = counts.data() + c * cg::kMaxLp;
        uint64_t cum = 0;
        for (int i = 0; i <= mb; ++i) {
          out[i] = cg::CdfValue(cum, coded, mb, i);
          if (i < mb) cum += h[i];
        }
      }
    }
  });
  return cdf;
}

}  // namespace kvstash::codec::internal
