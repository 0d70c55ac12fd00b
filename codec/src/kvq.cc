// KVQ codec (kvq.h, docs/codec.md §9): quantiser, encoder, CPU and GPU decoders. The container
// format and its parser are kvq_format.{h,cc}.
#include "kvstash/codec/kvq.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <numeric>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "absl/strings/str_cat.h"
#include "chunk.h"
#include "cpu_features.h"
#include "kvq_format.h"
#include "kvstash/codec/levels.h"
#include "kvstash/common/coding.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/common/half.h"
#include "kvstash/kernels/kvq_cuda.h"
#include "rans.h"

// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own temporaries (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace kvstash::codec {
namespace {

using namespace kvq_internal;
using internal::ParallelFor;
namespace rans = internal::rans;

std::atomic<bool> g_simd{true};

void LoadF32(const uint8_t* src, DType dtype, size_t n, float* dst) {
  if (dtype == DType::kF32) {
    std::memcpy(dst, src, n * 4);
    return;
  }
  std::vector<uint16_t> tmp(n);
  std::memcpy(tmp.data(), src, n * 2);
  if (dtype == DType::kF16) {
    F16ToF32(tmp.data(), dst, n);
  } else {
    BF16ToF32(tmp.data(), dst, n);
  }
}

void StoreF32(const float* src, DType dtype, size_t n, uint8_t* dst) {
  if (dtype == DType::kF32) {
    std::memcpy(dst, src, n * 4);
    return;
  }
  thread_local std::vector<uint16_t> tmp;
  tmp.resize(n);
  if (dtype == DType::kF16) {
    F32ToF16(src, tmp.data(), n);
  } else {
    F32ToBF16(src, tmp.data(), n);
  }
  std::memcpy(dst, tmp.data(), n * 2);
}

float RoundParam(float v, DType d) { return d == DType::kF16 ? F16ToF32(F32ToF16(v)) : v; }

// Dequantises tokens [t0, t0 + n) of row r from their symbols (`syms`, [n][C]) into `out`
// (the whole payload). mins/steps are the row's parameters in f32; outliers are copied.
#if defined(__x86_64__)
// f16 output, C % 16 == 0: symbols to f16 in one pass, 16 channels per step. The same f32
// arithmetic (multiply, then add, each rounded) and the same round-to-nearest-even conversion as
// the portable path, so the bytes are identical.
KVSTASH_AVX512 void DequantF16Avx512(const Geometry& g, uint32_t r, uint32_t t0, uint32_t n,
                                     const uint8_t* syms, const float* mins, const float* steps,
                                     uint8_t* dst) {
  const uint32_t C = g.C();
  const bool per_token = g.scale(r) == KvqScale::kPerToken;
  for (uint32_t i = 0; i < n; ++i) {
    const uint32_t t = t0 + i;
    const uint8_t* q = syms + size_t{i} * C;
    uint8_t* o = dst + size_t{i} * C * 2;
    const size_t base = per_token ? 0 : size_t{t / g.info.group_tokens} * C;
    for (uint32_t c = 0; c < C; c += 16) {
      const __m512 mn = per_token ? _mm512_set1_ps(mins[t]) : _mm512_loadu_ps(mins + base + c);
      const __m512 st = per_token ? _mm512_set1_ps(steps[t]) : _mm512_loadu_ps(steps + base + c);
      const __m512 f = _mm512_cvtepi32_ps(
          _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + c))));
      const __m512 v = _mm512_add_ps(mn, _mm512_mul_ps(f, st));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 2 * size_t{c}),
                          _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
  }
}

// Rotated rows, f16 output, head_dim D a power of two in [8, 256]: per (token, head) the D
// dequantised values sit in D/8 registers, the Walsh-Hadamard butterflies run stage by stage in
// the same order as Hadamard() (stages 1, 2 and 4 inside a register, the others between
// registers), then the power-of-two scaling and the f16 conversion of F32ToF16's F16C path.
// Every element sees the same f32 operations in the same order, so the bytes are identical to
// the portable path's.
KVSTASH_AVX2_F16C void DequantRotatedF16Avx2(const Geometry& g, uint32_t r, uint32_t t0, uint32_t n,
                                             const uint8_t* syms, const float* mins,
                                             const float* steps, uint8_t* dst) {
  const uint32_t C = g.C(), D = g.info.head_dim, H = g.info.num_heads, regs = D / 8;
  const bool per_token = g.scale(r) == KvqScale::kPerToken;
  const __m256 scale = _mm256_set1_ps(std::ldexp(1.0f, -(PowerOfTwoLog2(D) / 2)));
  __m256 v[32];
  for (uint32_t i = 0; i < n; ++i) {
    const uint32_t t = t0 + i;
    const uint8_t* q = syms + size_t{i} * C;
    uint8_t* o = dst + size_t{i} * C * 2;
    const size_t base = per_token ? 0 : size_t{t / g.info.group_tokens} * C;
    for (uint32_t h = 0; h < H; ++h) {
      const uint32_t c0 = h * D;
      for (uint32_t k = 0; k < regs; ++k) {
        const uint32_t c = c0 + 8 * k;
        const __m256 mn = per_token ? _mm256_set1_ps(mins[t]) : _mm256_loadu_ps(mins + base + c);
        const __m256 st = per_token ? _mm256_set1_ps(steps[t]) : _mm256_loadu_ps(steps + base + c);
        const __m256 f = _mm256_cvtepi32_ps(
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + c))));
        __m256 x = _mm256_add_ps(mn, _mm256_mul_ps(f, st));
        // Stage 1: (x0, x1) -> (x0 + x1, x0 - x1); the partner's value comes from a swap.
        __m256 s = _mm256_permute_ps(x, 0xB1);
        x = _mm256_blend_ps(_mm256_add_ps(x, s), _mm256_sub_ps(s, x), 0xAA);
        // Stage 2: pairs (0, 2), (1, 3) in each 128-bit half.
        s = _mm256_permute_ps(x, 0x4E);
        x = _mm256_blend_ps(_mm256_add_ps(x, s), _mm256_sub_ps(s, x), 0xCC);
        // Stage 4: pairs (j, j + 4) across the halves.
        s = _mm256_permute2f128_ps(x, x, 1);
        v[k] = _mm256_blend_ps(_mm256_add_ps(x, s), _mm256_sub_ps(s, x), 0xF0);
      }
      for (uint32_t step = 1; step < regs; step <<= 1) {  // stages 8, 16, ...
        for (uint32_t k = 0; k < regs; k += 2 * step) {
          for (uint32_t j = k; j < k + step; ++j) {
            const __m256 a = v[j], b = v[j + step];
            v[j] = _mm256_add_ps(a, b);
            v[j + step] = _mm256_sub_ps(a, b);
          }
        }
      }
      for (uint32_t k = 0; k < regs; ++k) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 2 * size_t{c0 + 8 * k}),
                         _mm256_cvtps_ph(_mm256_mul_ps(v[k], scale),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      }
    }
  }
}
#endif

// `vector`: allow the AVX-512 path (identical bytes); the encoder's reconstruction passes false,
// so tests compare the two paths.
void DequantRows(const Geometry& g, uint32_t r, uint32_t t0, uint32_t n, const uint8_t* syms,
                 const float* mins, const float* steps, const std::vector<uint16_t>& out_idx,
                 const uint8_t* out_values, uint8_t* out, bool vector) {
  const uint32_t C = g.C();
  const size_t es = DTypeSize(g.info.dtype);
  const size_t count = size_t{n} * C;
  const bool rotated = g.rotated(r);
#if defined(__x86_64__)
  const bool rotated_fast = rotated && g.info.head_dim >= 8 && g.info.head_dim <= 256 &&
                            internal::CpuHasAvx2() && internal::CpuHasF16c();
  if (vector && g.info.dtype == DType::kF16 &&
      (rotated ? rotated_fast : C % 16 == 0 && internal::CpuHasAvx512())) {
    uint8_t* dst = out + (g.RowOffset(r) + size_t{t0} * C) * es;
    if (rotated) {
      DequantRotatedF16Avx2(g, r, t0, n, syms, mins, steps, dst);
    } else {
      DequantF16Avx512(g, r, t0, n, syms, mins, steps, dst);
    }
    for (uint32_t i = 0; i < n && !out_idx.empty(); ++i) {
      for (size_t j = 0; j < out_idx.size(); ++j) {
        std::memcpy(dst + (size_t{i} * C + out_idx[j]) * es,
                    out_values + ((t0 + i) * out_idx.size() + j) * es, es);
      }
    }
    return;
  }
#else
  (void)vector;
#endif
  // Tokens [t0, t0 + n) of a row are contiguous in the payload: dequantise them as one block.
  thread_local std::vector<float> block;
  block.resize(count);
  for (uint32_t i = 0; i < n; ++i) {
    const uint32_t t = t0 + i;
    const uint8_t* q = syms + size_t{i} * C;
    float* dst = block.data() + size_t{i} * C;
    if (g.scale(r) == KvqScale::kPerToken) {
      const float mn = mins[t], st = steps[t];
      for (uint32_t c = 0; c < C; ++c) dst[c] = mn + static_cast<float>(q[c]) * st;
    } else {
      const size_t base = size_t{t / g.info.group_tokens} * C;
      const float* mn = mins + base;
      const float* st = steps + base;
      for (uint32_t c = 0; c < C; ++c) dst[c] = mn[c] + static_cast<float>(q[c]) * st[c];
    }
  }
  if (rotated) RotateBack(block.data(), size_t{n} * g.info.num_heads, g.info.head_dim);
  uint8_t* dst = out + (g.RowOffset(r) + size_t{t0} * C) * es;
  StoreF32(block.data(), g.info.dtype, count, dst);
  const size_t n_out = out_idx.size();
  for (uint32_t i = 0; i < n && n_out > 0; ++i) {
    const size_t t = t0 + i;
    for (size_t j = 0; j < n_out; ++j) {
      std::memcpy(dst + (size_t{i} * C + out_idx[j]) * es, out_values + (t * n_out + j) * es, es);
    }
  }
}

}  // namespace

void SetKvqSimdForTesting(bool enabled) { g_simd.store(enabled); }

namespace {

Result<std::vector<uint8_t>> EncodeWith(const KvLayout& layout, std::span<const uint8_t> kv,
                                        const KvqOptions& o, DType param_dtype) {
  KVSTASH_RETURN_IF_ERROR(layout.Validate());
  if (kv.size() != layout.RawBytes()) {
    return absl::InvalidArgumentError("KVQ encode: payload size does not match the layout");
  }
  if (!o.reconstruction.empty() && o.reconstruction.size() != kv.size()) {
    return absl::InvalidArgumentError("KVQ encode: reconstruction buffer has the wrong size");
  }
  Geometry g;
  KvqInfo& i = g.info;
  i.dtype = layout.dtype;
  i.num_layers = layout.num_layers;
  i.num_heads = layout.heads();
  i.head_dim = layout.head_dim;
  i.num_tokens = layout.num_tokens;
  i.key_scale = o.key_scale;
  i.value_scale = o.value_scale;
  i.subchunk_tokens = o.subchunk_tokens;
  i.key_outliers = o.key_outliers;
  i.rotate_keys = o.rotate_keys;
  i.rotate_values = o.rotate_values;
  KVSTASH_ASSIGN_OR_RETURN(i.exact_tokens, ExactTokens(layout, o));
  i.context_channels = o.context_channels == 0 ? layout.head_dim : o.context_channels;
  const bool channelwise =
      o.key_scale == KvqScale::kPerChannel || o.value_scale == KvqScale::kPerChannel;
  i.group_tokens = channelwise ? o.group_tokens : 0;
  const uint32_t C = i.channels();
  if (i.num_heads > kMaxDim || i.head_dim > kMaxDim || i.num_layers > kMaxDim ||
      i.num_tokens > kMaxTokens || i.num_tokens == 0) {
    return absl::InvalidArgumentError("KVQ encode: shape out of range");
  }
  if (uint64_t{i.num_tokens} * C > UINT32_MAX) {
    return absl::InvalidArgumentError("KVQ encode: more than 2^32 - 1 elements in a row");
  }
  if (o.subchunk_tokens < 1 || o.subchunk_tokens > 65535 ||
      (channelwise && (o.group_tokens < 1 || o.group_tokens > 65535))) {
    return absl::InvalidArgumentError("KVQ encode: sub-chunk and group tokens must be 1..65535");
  }
  if (o.key_outliers >= C || (o.key_outliers > 0 && C > 65536) || C % i.context_channels != 0 ||
      C / i.context_channels + (o.key_outliers > 0 ? 1 : 0) > 255) {
    return absl::InvalidArgumentError("KVQ encode: bad outlier count or context channels");
  }
  if ((o.rotate_keys || o.rotate_values) && PowerOfTwoLog2(i.head_dim) < 0) {
    return absl::InvalidArgumentError("KVQ encode: rotation needs a power-of-two head_dim");
  }
  if (o.rotate_keys && o.key_outliers > 0) {
    return absl::InvalidArgumentError("KVQ encode: rotated keys have no outlier channels");
  }
  if (!o.row_bits.empty()) {
    if (o.row_bits.size() != i.rows()) {
      return absl::InvalidArgumentError("KVQ encode: row_bits needs one entry per row");
    }
    for (uint8_t b : o.row_bits) {
      if (b < 1 || b > 8) return absl::InvalidArgumentError("KVQ encode: bits must be 1..8");
    }
    g.bits = o.row_bits;
    i.level = 0;
  } else if (o.avg_bits > 0) {
    KVSTASH_ASSIGN_OR_RETURN(g.bits, KvqAllocateBits(layout, kv, o));
    i.level = 0;
  } else {
    const uint32_t model_layers =
        o.model_layers ? o.model_layers : layout.layer_begin + layout.num_layers;
    KVSTASH_ASSIGN_OR_RETURN(
        g.bits, KvqRowBitsForLevel(o.level, model_layers, layout.layer_begin, layout.num_layers));
    i.level = static_cast<uint8_t>(o.level);
  }
  if (o.step_scale != 0 || o.value_step_ratio != 1 || o.step_per_unit) {
    if (!(o.step_scale > 0) || !std::isfinite(o.step_scale) || !(o.value_step_ratio > 0) ||
        !std::isfinite(o.value_step_ratio) || o.avg_bits > 0) {
      return absl::InvalidArgumentError(
          "KVQ encode: step_scale and value_step_ratio must be finite and > 0, without avg_bits");
    }
    if (!o.row_weights.empty()) {
      if (o.step_per_unit) {
        return absl::InvalidArgumentError("KVQ encode: step_per_unit takes no row weights");
      }
      if (o.row_weights.size() != i.rows()) {
        return absl::InvalidArgumentError("KVQ encode: row_weights needs one entry per row");
      }
      for (float w : o.row_weights) {
        if (!(w > 0) || !std::isfinite(w)) {
          return absl::InvalidArgumentError("KVQ encode: step weights must be finite and > 0");
        }
      }
    }
  }
  i.param_dtype = param_dtype;
  g.Derive();

  const uint32_t rows = g.rows(), T = g.T();
  const size_t es = DTypeSize(i.dtype);
  // Per row: parameters (f32, rounded to the parameter dtype), outliers, symbols [T][C].
  std::vector<float> params(i.params / g.psize());
  std::vector<std::vector<uint16_t>> out_idx(rows);
  std::vector<uint8_t> out_values(uint64_t{i.num_layers} * T * i.key_outliers * es);
  std::vector<uint8_t> syms(size_t{rows} * T * C);
  std::vector<uint16_t> freqs(i.freqs / 2);
  std::atomic<bool> bad_value{false}, param_overflow{false};
  // Exact (sink) tokens: checked like the rest, then copied as they are.
  const size_t exact_elems = size_t{i.exact_tokens} * C;
  for (uint32_t r = 0; r < rows && exact_elems > 0; ++r) {
    std::vector<float> x(exact_elems);
    LoadF32(kv.data() + g.ExactRowOffset(r) * es, i.dtype, x.size(), x.data());
    for (float v : x) {
      if (!std::isfinite(v)) {
        return absl::InvalidArgumentError("KVQ encode: NaN or infinite value in the KV");
      }
    }
  }

  auto quantise_row = [&](uint32_t r) {
    std::vector<float> x(size_t{T} * C);
    LoadF32(kv.data() + g.RowOffset(r) * es, i.dtype, x.size(), x.data());
    for (float v : x) {
      if (!std::isfinite(v)) {
        bad_value = true;
        return;
      }
    }
    if (g.rotated(r)) RotateForward(x.data(), size_t{T} * i.num_heads, i.head_dim);
    std::vector<uint8_t> is_out(C, 0);
    const uint32_t n_out = g.outliers(r);
    if (n_out > 0) {
      std::vector<float> peak(C, 0.f);
      for (uint32_t t = 0; t < T; ++t) {
        for (uint32_t c = 0; c < C; ++c)
          peak[c] = std::max(peak[c], std::fabs(x[size_t{t} * C + c]));
      }
      std::vector<uint16_t> order(C);
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(
          order.begin(), order.begin() + n_out, order.end(),
          [&](uint16_t a, uint16_t b) { return peak[a] != peak[b] ? peak[a] > peak[b] : a < b; });
      out_idx[r].assign(order.begin(), order.begin() + n_out);
      std::sort(out_idx[r].begin(), out_idx[r].end());
      for (uint16_t c : out_idx[r]) is_out[c] = 1;
      uint8_t* dst = out_values.data() + size_t{r} * T * n_out * es;
      const uint8_t* src = kv.data() + g.RowOffset(r) * es;
      for (uint32_t t = 0; t < T; ++t) {
        for (uint32_t j = 0; j < n_out; ++j) {
          std::memcpy(dst + (size_t{t} * n_out + j) * es,
                      src + (size_t{t} * C + out_idx[r][j]) * es, es);
        }
      }
    }
    const float top = static_cast<float>((1 << g.bits[r]) - 1);
    float* mins = params.data() + g.param_off[r];
    float* steps = mins + g.param_count[r];
    // Step-based quantisation (kvq.h KvqOptions::step_scale): the row's target step, or with
    // step_per_unit one per channel (per-channel rows) or token (per-token rows); 0 = off.
    const double ratio = g.is_key(r) ? 1.0 : o.value_step_ratio;
    auto capped = [](double want) { return static_cast<float>(std::min(want, 65504.0)); };
    float target = 0;
    std::vector<float> channel_target;  // step_per_unit, per-channel rows
    if (o.step_scale > 0 && !o.row_weights.empty()) {
      target = capped(ratio * o.step_scale / std::sqrt(static_cast<double>(o.row_weights[r])));
    } else if (o.step_scale > 0 && !(o.step_per_unit && g.scale(r) == KvqScale::kPerToken)) {
      // The spread around each channel's mean: key channels carry large offsets that
      // per-channel minimums remove, so the plain RMS would overstate the scale.
      std::vector<double> sum(C, 0), sq(C, 0);
      for (uint32_t t = 0; t < T; ++t) {
        const float* v = x.data() + size_t{t} * C;
        for (uint32_t c = 0; c < C; ++c) {
          sum[c] += v[c];
          sq[c] += double{v[c]} * v[c];
        }
      }
      double var = 0;
      if (o.step_per_unit) channel_target.resize(C);
      for (uint32_t c = 0; c < C; ++c) {
        const double vc = std::max(0.0, sq[c] - sum[c] * sum[c] / T);
        var += vc;
        if (o.step_per_unit) channel_target[c] = capped(ratio * o.step_scale * std::sqrt(vc / T));
      }
      target = capped(ratio * o.step_scale * std::sqrt(var / (static_cast<double>(T) * C)));
    }
    auto set_param = [&](uint32_t k, float mn, float mx, float mean, float want) {
      if (want > 0 && want * top > mx - mn) {
        // The target step, with the grid centred on the mean (symbol top / 2) as far as the
        // range allows: tokens and channels of different spread then share the centre of
        // their symbols' distribution, which one frequency table per head needs (a grid from
        // each minimum would spread narrow and wide channels over different symbols).
        mins[k] =
            RoundParam(std::clamp(mean - 0.5f * top * want, mx - top * want, mn), i.param_dtype);
        steps[k] = RoundParam(std::max((mx - mins[k]) / top, want), i.param_dtype);
      } else {
        mins[k] = RoundParam(mn, i.param_dtype);
        steps[k] = RoundParam((mx - mins[k]) / top, i.param_dtype);
      }
      if (!std::isfinite(mins[k]) || !std::isfinite(steps[k])) param_overflow = true;
    };
    uint8_t* q = syms.data() + size_t{r} * T * C;
    // Outlier columns are neutralised so they do not widen any range: per token they repeat a
    // regular channel, per channel they become 0 (an empty range); their symbols are 0.
    if (n_out > 0) {
      uint32_t regular = 0;
      while (is_out[regular]) ++regular;
      for (uint32_t t = 0; t < T; ++t) {
        float* v = x.data() + size_t{t} * C;
        for (uint16_t c : out_idx[r]) v[c] = g.scale(r) == KvqScale::kPerToken ? v[regular] : 0.f;
      }
    }
    // y = (v - min) / step, rounded half up and clamped; a zero step gives symbol 0.
    auto quant_row = [top](const float* v, const float* mn, const float* inv, size_t stride,
                           uint32_t n, uint8_t* out) {
      for (uint32_t c = 0; c < n; ++c) {
        const float y = std::clamp((v[c] - mn[c * stride]) * inv[c * stride], 0.f, top);
        // y >= 0 (clamped), so the cast floors: half up. std::lround differs only where y + 0.5f
        // rounds up in f32 (y = 0.5 - 2^-25); kept so the encoder's output does not change.
        const int sym = static_cast<int>(y + 0.5f);  // NOLINT(bugprone-incorrect-roundings)
        out[c] = static_cast<uint8_t>(sym);
      }
    };
    std::vector<float> inv(g.scale(r) == KvqScale::kPerToken ? 1 : C);
    if (g.scale(r) == KvqScale::kPerToken) {
      for (uint32_t t = 0; t < T; ++t) {
        const float* v = x.data() + size_t{t} * C;
        float mn = INFINITY, mx = -INFINITY;
        double sum = 0, sq = 0;
        for (uint32_t c = 0; c < C; ++c) {
          mn = std::min(mn, v[c]);
          mx = std::max(mx, v[c]);
        }
        float token_target = target;
        if (o.step_scale > 0) {
          for (uint32_t c = 0; c < C; ++c) {
            sum += v[c];
            sq += double{v[c]} * v[c];
          }
          if (o.step_per_unit && o.row_weights.empty()) {
            token_target =
                capped(ratio * o.step_scale * std::sqrt(std::max(0.0, sq - sum * sum / C) / C));
          }
        }
        set_param(t, mn, mx, static_cast<float>(sum / C), token_target);
        inv[0] = steps[t] > 0 ? 1.f / steps[t] : 0.f;
        quant_row(v, &mins[t], inv.data(), 0, C, q + size_t{t} * C);
      }
    } else {
      const uint32_t G = i.group_tokens;
      std::vector<float> mn(C), mx(C);
      std::vector<double> sum(C);
      for (uint32_t gi = 0; gi < g.groups(); ++gi) {
        const uint32_t t0 = gi * G, t1 = std::min(T, t0 + G);
        ChannelMinMax(x.data(), C, t0, t1, mn.data(), mx.data());
        std::fill(sum.begin(), sum.end(), 0.0);
        for (uint32_t t = t0; t < t1 && o.step_scale > 0; ++t) {
          for (uint32_t c = 0; c < C; ++c) sum[c] += x[size_t{t} * C + c];
        }
        for (uint32_t c = 0; c < C; ++c) {
          set_param(gi * C + c, mn[c], mx[c], static_cast<float>(sum[c] / (t1 - t0)),
                    channel_target.empty() ? target : channel_target[c]);
          inv[c] = steps[gi * C + c] > 0 ? 1.f / steps[gi * C + c] : 0.f;
        }
        for (uint32_t t = t0; t < t1; ++t) {
          quant_row(x.data() + size_t{t} * C, mins + size_t{gi} * C, inv.data(), 1, C,
                    q + size_t{t} * C);
        }
      }
    }
    for (uint32_t t = 0; t < T && n_out > 0; ++t) {
      for (uint16_t c : out_idx[r]) q[size_t{t} * C + c] = 0;
    }
    // Frequencies per context over the whole chunk.
    const int alphabet = 1 << g.bits[r];
    const std::vector<uint8_t> ctx = g.ContextMap(r, out_idx[r]);
    std::vector<uint64_t> counts(size_t{g.contexts[r]} * alphabet, 0);
    for (uint32_t t = 0; t < T; ++t) {
      for (uint32_t c = 0; c < C; ++c) ++counts[size_t{ctx[c]} * alphabet + q[size_t{t} * C + c]];
    }
    for (uint32_t k = 0; k < g.contexts[r]; ++k) {
      rans::NormalizeFreqs(counts.data() + size_t{k} * alphabet, alphabet,
                           freqs.data() + g.freq_off[r] + size_t{k} * alphabet);
    }
  };
  ParallelFor(o.pool, rows, 1, [&](size_t b, size_t e) {
    for (size_t r = b; r < e; ++r) quantise_row(static_cast<uint32_t>(r));
  });
  if (bad_value) return absl::InvalidArgumentError("KVQ encode: NaN or infinite value in the KV");
  if (param_overflow) {
    if (i.param_dtype == DType::kF32) {
      return absl::InvalidArgumentError("KVQ encode: value range overflows f32");
    }
    // A range too wide for f16 parameters (possible only at 1 bit): the caller retries with
    // f32 parameters.
    return absl::OutOfRangeError("f16 parameters overflow");
  }

  // Streams: one per (sub-chunk, row), coded in parallel into worst-case slots.
  const uint32_t subs = g.subs();
  std::vector<uint64_t> slot(size_t{subs} * rows + 1, 0);
  for (uint32_t s = 0; s < subs; ++s) {
    for (uint32_t r = 0; r < rows; ++r) {
      slot[size_t{s} * rows + r + 1] =
          slot[size_t{s} * rows + r] + rans::MaxStreamBytes(size_t{g.SubTokens(s)} * C);
    }
  }
  std::vector<uint8_t> scratch(slot.back());
  std::vector<uint32_t> lengths(size_t{subs} * rows);
  ParallelFor(o.pool, rows, 1, [&](size_t b, size_t e) {
    std::vector<rans::EncTable> tables;
    for (size_t r = b; r < e; ++r) {
      const int alphabet = 1 << g.bits[r];
      tables.resize(g.contexts[r]);
      for (uint32_t k = 0; k < g.contexts[r]; ++k) {
        rans::BuildEncTable(freqs.data() + g.freq_off[r] + size_t{k} * alphabet, alphabet,
                            &tables[k]);
      }
      const std::vector<uint8_t> ctx = g.ContextMap(static_cast<uint32_t>(r), out_idx[r]);
      for (uint32_t s = 0; s < subs; ++s) {
        const size_t item = size_t{s} * rows + r;
        const uint8_t* src = syms.data() + (r * T + size_t{s} * i.subchunk_tokens) * C;
        lengths[item] = static_cast<uint32_t>(rans::EncodeStream(
            src, size_t{g.SubTokens(s)} * C, ctx.data(), C, tables.data(), &scratch[slot[item]]));
      }
    }
  });
  for (uint32_t len : lengths) i.payload += len;

  std::vector<uint8_t> out(i.total());
  WriteHeader(g, out.data());
  std::memcpy(out.data() + g.BitsOffset(), g.bits.data(), rows);
  uint8_t* w = out.data() + g.OutlierIndexOffset();
  for (uint32_t r = 0; r < i.num_layers; ++r) {
    for (uint16_t c : out_idx[r]) {
      EncodeFixed16(w, c);
      w += 2;
    }
  }
  if (!out_values.empty()) {  // memcpy from an empty vector's null data() is undefined
    std::memcpy(out.data() + g.OutlierValueOffset(), out_values.data(), out_values.size());
  }
  for (uint32_t r = 0; r < rows && exact_elems > 0; ++r) {
    std::memcpy(out.data() + g.ExactOffset() + r * exact_elems * es,
                kv.data() + g.ExactRowOffset(r) * es, exact_elems * es);
    if (!o.reconstruction.empty()) {
      std::memcpy(o.reconstruction.data() + g.ExactRowOffset(r) * es,
                  kv.data() + g.ExactRowOffset(r) * es, exact_elems * es);
    }
  }
  w = out.data() + g.ParamsOffset();
  for (float v : params) {
    if (i.param_dtype == DType::kF16) {
      EncodeFixed16(w, F32ToF16(v));
      w += 2;
    } else {
      EncodeFixed32(w, std::bit_cast<uint32_t>(v));
      w += 4;
    }
  }
  w = out.data() + g.FreqsOffset();
  for (uint16_t f : freqs) {
    EncodeFixed16(w, f);
    w += 2;
  }
  w = out.data() + g.LengthsOffset();
  for (uint32_t len : lengths) {
    EncodeFixed32(w, len);
    w += 4;
  }
  w = out.data() + g.PayloadOffset();
  for (size_t item = 0; item < lengths.size(); ++item) {
    std::memcpy(w, &scratch[slot[item]], lengths[item]);
    w += lengths[item];
  }
  RefreshKvqChecksums(out);

  if (!o.reconstruction.empty()) {
    ParallelFor(o.pool, rows, 1, [&](size_t b, size_t e) {
      for (size_t r = b; r < e; ++r) {
        const float* mins = params.data() + g.param_off[r];
        DequantRows(g, static_cast<uint32_t>(r), 0, T, syms.data() + r * T * C, mins,
                    mins + g.param_count[r], out_idx[r],
                    out_values.data() + r * T * i.key_outliers * es, o.reconstruction.data(),
                    /*vector=*/false);
      }
    });
  }
  return out;
}

}  // namespace

Result<std::vector<uint8_t>> EncodeKvq(const KvLayout& layout, std::span<const uint8_t> kv,
                                       const KvqOptions& o) {
  // Parameters in f16 where the KV is f16 (they cost half); f32 when a range overflows f16.
  if (layout.dtype == DType::kF16) {
    auto r = EncodeWith(layout, kv, o, DType::kF16);
    if (r.ok() || r.status().code() != absl::StatusCode::kOutOfRange) return r;
  }
  return EncodeWith(layout, kv, o, DType::kF32);
}

Status DecodeKvq(std::span<const uint8_t> container, std::span<uint8_t> out, ThreadPool* pool) {
  KVSTASH_ASSIGN_OR_RETURN(Parsed p, Parse(container));
  const Geometry& g = p.g;
  if (out.size() != g.info.RawBytes()) {
    return absl::InvalidArgumentError("KVQ decode: output size does not match the container");
  }
  const uint32_t rows = g.rows(), C = g.C(), subs = g.subs();
  // Stream start offsets in the payload.
  std::vector<uint64_t> start(size_t{subs} * rows + 1, 0);
  for (uint32_t s = 0; s < subs; ++s) {
    for (uint32_t r = 0; r < rows; ++r) {
      const size_t item = size_t{s} * rows + r;
      start[item + 1] = start[item] + p.StreamLength(s, r);
    }
  }
  const uint8_t* payload = p.base + g.PayloadOffset();
  const bool simd = g_simd.load();
  const size_t es = DTypeSize(g.info.dtype), exact_bytes = size_t{g.info.exact_tokens} * C * es;
  for (uint32_t r = 0; r < rows && exact_bytes > 0; ++r) {
    std::memcpy(out.data() + g.ExactRowOffset(r) * es, p.Exact(r), exact_bytes);
  }
  std::atomic<bool> malformed{false};
  // Rows are decoded two at a time (their streams interleaved, DecodeStreamPair).
  struct RowState {
    uint32_t r = 0;
    std::vector<rans::DecTable> tables;
    std::vector<uint8_t> syms;
    std::vector<float> params;
    std::vector<uint16_t> idx;
    std::vector<uint8_t> ctx;
  };
  auto load_row = [&](uint32_t r, RowState& st) {
    st.r = r;
    const int alphabet = 1 << g.bits[r];
    st.tables.resize(g.contexts[r]);
    std::vector<uint16_t> f(alphabet);
    for (uint32_t k = 0; k < g.contexts[r]; ++k) {
      const uint8_t* src = p.Freqs(r) + size_t{k} * alphabet * 2;
      for (int s = 0; s < alphabet; ++s) f[s] = DecodeFixed16(src + 2 * s);
      rans::BuildDecTable(f.data(), alphabet, &st.tables[k]);
    }
    p.RowParams(r, &st.params);
    st.idx = p.OutlierIndex(r);
    st.ctx = g.ContextMap(r, st.idx);
    st.syms.resize(size_t{g.info.subchunk_tokens} * C);
  };
  auto job = [&](RowState& st, uint32_t s) {
    const size_t item = size_t{s} * rows + st.r;
    return rans::StreamJob{payload + start[item],
                           start[item + 1] - start[item],
                           size_t{g.SubTokens(s)} * C,
                           st.ctx.data(),
                           C,
                           st.tables.data(),
                           st.syms.data()};
  };
  auto dequant = [&](const RowState& st, uint32_t s) {
    DequantRows(g, st.r, s * g.info.subchunk_tokens, g.SubTokens(s), st.syms.data(),
                st.params.data(), st.params.data() + g.param_count[st.r], st.idx,
                p.OutlierValues(st.r), out.data(), simd);
  };
  ParallelFor(pool, rows, 1, [&](size_t b, size_t e) {
    RowState st[2];
    for (size_t rr = b; rr < e && !malformed; rr += 2) {
      const bool pair = rr + 1 < e;
      load_row(static_cast<uint32_t>(rr), st[0]);
      if (pair) load_row(static_cast<uint32_t>(rr + 1), st[1]);
      for (uint32_t s = 0; s < subs; ++s) {
        bool ok[2] = {true, true};
        if (pair) {
          rans::DecodeStreamPair(job(st[0], s), job(st[1], s), ok, simd);
        } else {
          ok[0] = rans::DecodeStream(job(st[0], s), simd);
        }
        if (!ok[0] || !ok[1]) {
          malformed = true;
          break;
        }
        dequant(st[0], s);
        if (pair) dequant(st[1], s);
      }
    }
  });
  if (malformed) return Bad("a stream does not decode");
  return absl::OkStatus();
}

Result<std::vector<uint8_t>> DecodeKvq(std::span<const uint8_t> container, ThreadPool* pool) {
  KVSTASH_ASSIGN_OR_RETURN(Parsed p, Parse(container));
  std::vector<uint8_t> out(p.g.info.RawBytes());
  KVSTASH_RETURN_IF_ERROR(DecodeKvq(container, out, pool));
  return out;
}

Status DecodeKvqGpu(std::span<const uint8_t> container, void* out, bool out_on_device) {
  KVSTASH_ASSIGN_OR_RETURN(Parsed p, Parse(container));
  const Geometry& g = p.g;
  if (g.info.rotate_keys || g.info.rotate_values || g.info.exact_tokens > 0) {
    return absl::UnimplementedError(
        "KVQ GPU decode: rotated rows and exact tokens are not implemented");
  }
  const uint32_t rows = g.rows(), C = g.C(), subs = g.subs();
  kernels::KvqCudaInputs in;
  in.num_layers = g.info.num_layers;
  in.channels = C;
  in.num_tokens = g.T();
  in.subchunk_tokens = g.info.subchunk_tokens;
  in.group_tokens = g.info.group_tokens;
  in.dtype = g.info.dtype;
  in.outliers = g.info.key_outliers;
  in.outlier_values = p.base + g.OutlierValueOffset();
  in.payload = p.base + g.PayloadOffset();
  in.payload_bytes = g.info.payload;
  in.outlier_slot.assign(size_t{rows} * C, -1);
  std::vector<uint16_t> f;
  std::vector<rans::DecTable> table(1);
  for (uint32_t r = 0; r < rows; ++r) {
    in.per_channel.push_back(g.scale(r) == KvqScale::kPerChannel ? 1 : 0);
    in.lut_base.push_back(static_cast<uint32_t>(in.luts.size() / rans::kProbScale));
    const int alphabet = 1 << g.bits[r];
    f.resize(alphabet);
    for (uint32_t k = 0; k < g.contexts[r]; ++k) {
      const uint8_t* src = p.Freqs(r) + size_t{k} * alphabet * 2;
      for (int s = 0; s < alphabet; ++s) f[s] = DecodeFixed16(src + 2 * s);
      rans::BuildDecTable(f.data(), alphabet, table.data());
      in.luts.insert(in.luts.end(), table[0].lut, table[0].lut + rans::kProbScale);
    }
    const std::vector<uint16_t> idx = p.OutlierIndex(r);
    const std::vector<uint8_t> ctx = g.ContextMap(r, idx);
    in.ctx.insert(in.ctx.end(), ctx.begin(), ctx.end());
    for (size_t j = 0; j < idx.size(); ++j) {
      in.outlier_slot[size_t{r} * C + idx[j]] = static_cast<int32_t>(j);
    }
    in.param_base.push_back(in.params.size());
    in.param_rows.push_back(g.param_count[r]);
    for (uint64_t k = 0; k < 2 * uint64_t{g.param_count[r]}; ++k) {
      in.params.push_back(p.Param(g.param_off[r] + k));
    }
  }
  uint64_t offset = 0;
  for (uint32_t s = 0; s < subs; ++s) {
    for (uint32_t r = 0; r < rows; ++r) {
      in.stream_offset.push_back(offset);
      in.stream_length.push_back(p.StreamLength(s, r));
      offset += p.StreamLength(s, r);
    }
  }
  return kernels::KvqDecodeCuda(in, out, out_on_device);
}

}  // namespace kvstash::codec
