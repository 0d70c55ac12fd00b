// Private to codec/: the KVQ container's geometry (section sizes and offsets derived from the
// header) and its hardened parser, shared by the encoder, the CPU decoder and the GPU decoder
// (kvq.cc). Byte layout: kvq.h and docs/codec.md §9.
#ifndef KVSTASH_CODEC_SRC_KVQ_FORMAT_H_
#define KVSTASH_CODEC_SRC_KVQ_FORMAT_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvstash/codec/kvq.h"
#include "kvstash/common/coding.h"
#include "kvstash/common/half.h"
#include "kvstash/common/status.h"

namespace kvstash::codec::kvq_internal {

inline constexpr uint32_t kMaxDim = 1024;
inline constexpr uint32_t kMaxTokens = 1u << 20;
inline constexpr uint64_t kMaxDecodedBytes = uint64_t{16} << 30;
inline constexpr uint8_t kMagic[4] = {'K', 'V', 'Q', 'R'};
inline constexpr size_t kBodyCrcOffset = 56;
inline constexpr size_t kHeaderCrcOffset = 60;

Status Bad(const std::string& what);

// Everything derived from the header: shapes, per-row parameters and section offsets.
struct Geometry {
  KvqInfo info;
  std::vector<uint8_t> bits;          // per row
  std::vector<uint64_t> param_off;    // per row: first parameter (element index)
  std::vector<uint32_t> param_count;  // per row: number of (min) entries; steps follow
  std::vector<uint64_t> freq_off;     // per row: first u16 of its tables
  std::vector<uint32_t> contexts;     // per row

  uint32_t rows() const { return info.rows(); }
  uint32_t C() const { return info.channels(); }
  // Quantised tokens: all but the leading exact ones.
  uint32_t T() const { return info.num_tokens - info.exact_tokens; }
  uint32_t subs() const { return (T() + info.subchunk_tokens - 1) / info.subchunk_tokens; }
  uint32_t groups() const { return (T() + info.group_tokens - 1) / info.group_tokens; }
  bool is_key(uint32_t r) const { return r < info.num_layers; }
  KvqScale scale(uint32_t r) const { return is_key(r) ? info.key_scale : info.value_scale; }
  uint32_t outliers(uint32_t r) const { return is_key(r) ? info.key_outliers : 0; }
  bool rotated(uint32_t r) const { return is_key(r) ? info.rotate_keys : info.rotate_values; }
  size_t psize() const { return DTypeSize(info.param_dtype); }
  // Element offset of row r's first token in the payload, and of its first quantised token.
  size_t ExactRowOffset(uint32_t r) const {
    const uint32_t layer = r < info.num_layers ? r : r - info.num_layers;
    return (size_t{layer} * 2 + (r < info.num_layers ? 0 : 1)) * info.num_tokens * C();
  }
  size_t RowOffset(uint32_t r) const { return ExactRowOffset(r) + size_t{info.exact_tokens} * C(); }
  uint32_t SubTokens(uint32_t s) const {
    return std::min(info.subchunk_tokens, T() - s * info.subchunk_tokens);
  }

  // Fills everything but info's section sizes for bits/freqs from `bits`.
  void Derive() {
    const uint32_t n = rows();
    param_off.resize(n);
    param_count.resize(n);
    freq_off.resize(n);
    contexts.resize(n);
    uint64_t p = 0, f = 0;
    for (uint32_t r = 0; r < n; ++r) {
      param_off[r] = p;
      param_count[r] = scale(r) == KvqScale::kPerToken ? T() : groups() * C();
      p += 2 * uint64_t{param_count[r]};
      contexts[r] = C() / info.context_channels + (outliers(r) > 0 ? 1 : 0);
      freq_off[r] = f;
      f += uint64_t{contexts[r]} << bits[r];
    }
    info.header = kKvqHeaderBytes;
    info.bits = n;
    info.outliers =
        uint64_t{info.num_layers} * info.key_outliers * (2 + uint64_t{T()} * DTypeSize(info.dtype));
    info.exact = uint64_t{n} * info.exact_tokens * C() * DTypeSize(info.dtype);
    info.params = p * psize();
    info.freqs = f * 2;
    info.lengths = uint64_t{subs()} * n * 4;
  }
  uint64_t BitsOffset() const { return info.header; }
  uint64_t OutlierIndexOffset() const { return BitsOffset() + info.bits; }
  uint64_t OutlierValueOffset() const {
    return OutlierIndexOffset() + uint64_t{info.num_layers} * info.key_outliers * 2;
  }
  uint64_t ExactOffset() const { return OutlierIndexOffset() + info.outliers; }
  uint64_t ParamsOffset() const { return ExactOffset() + info.exact; }
  uint64_t FreqsOffset() const { return ParamsOffset() + info.params; }
  uint64_t LengthsOffset() const { return FreqsOffset() + info.freqs; }
  uint64_t PayloadOffset() const { return LengthsOffset() + info.lengths; }
  // Context of each channel of row r: channel group, or the last context for outliers.
  std::vector<uint8_t> ContextMap(uint32_t r, const std::vector<uint16_t>& out_idx) const {
    std::vector<uint8_t> ctx(C());
    for (uint32_t c = 0; c < C(); ++c) ctx[c] = static_cast<uint8_t>(c / info.context_channels);
    for (uint16_t c : out_idx) ctx[c] = static_cast<uint8_t>(contexts[r] - 1);
    return ctx;
  }
};

// Header byte 15: rotation flags (bits 0-1) and exact leading tokens (bits 2-7).
inline constexpr uint8_t kRotateKeys = 1, kRotateValues = 2;
inline constexpr uint32_t kMaxSinkTokens = 63;

// Exact leading tokens of a chunk at `layout` under `o` (KvqOptions::sink_tokens).
inline Result<uint32_t> ExactTokens(const KvLayout& layout, const KvqOptions& o) {
  if (o.sink_tokens > kMaxSinkTokens) {
    return absl::InvalidArgumentError("KVQ: sink_tokens must be 0..63");
  }
  if (layout.position_start < 0 || layout.position_start >= int64_t{o.sink_tokens} ||
      layout.num_tokens < 2) {
    return 0u;
  }
  return std::min<uint32_t>(o.sink_tokens - static_cast<uint32_t>(layout.position_start),
                            layout.num_tokens - 1);
}

// log2 of a power of two; -1 otherwise.
inline int PowerOfTwoLog2(uint32_t d) {
  if (d == 0 || (d & (d - 1)) != 0) return -1;
  int m = 0;
  while ((1u << m) < d) ++m;
  return m;
}

// In place: each of the n vectors of d floats (d = 2^m) := H x * 2^-shift, H the Sylvester
// Walsh-Hadamard matrix of order d (H H = d I). The butterflies run in one fixed order and the
// scaling is by a power of two, so every caller computes identical values. The encoder rotates
// with shift ceil(m/2) (RotateForward), the decoder back with floor(m/2) (RotateBack): together
// 2^-m, the exact inverse; for m even the rotation is orthonormal.
inline void Hadamard(float* x, size_t n, uint32_t d, int shift) {
  const float scale = std::ldexp(1.0f, -shift);
  for (size_t v = 0; v < n; ++v) {
    float* p = x + v * d;
    for (uint32_t h = 1; h < d; h <<= 1) {
      for (uint32_t i = 0; i < d; i += 2 * h) {
        for (uint32_t j = i; j < i + h; ++j) {
          const float a = p[j], b = p[j + h];
          p[j] = a + b;
          p[j + h] = a - b;
        }
      }
    }
    for (uint32_t j = 0; j < d; ++j) p[j] *= scale;
  }
}
inline void RotateForward(float* x, size_t n, uint32_t d) {
  Hadamard(x, n, d, (PowerOfTwoLog2(d) + 1) / 2);
}
inline void RotateBack(float* x, size_t n, uint32_t d) { Hadamard(x, n, d, PowerOfTwoLog2(d) / 2); }

// Per-channel minimum and maximum over tokens [t0, t1) of x ([T][C] f32) into mn/mx (C each).
inline void ChannelMinMax(const float* x, uint32_t C, uint32_t t0, uint32_t t1, float* mn,
                          float* mx) {
  std::fill(mn, mn + C, INFINITY);
  std::fill(mx, mx + C, -INFINITY);
  for (uint32_t t = t0; t < t1; ++t) {
    const float* v = x + size_t{t} * C;
    for (uint32_t c = 0; c < C; ++c) {
      mn[c] = std::min(mn[c], v[c]);
      mx[c] = std::max(mx[c], v[c]);
    }
  }
}

// Parsed, validated container: geometry plus section pointers.
struct Parsed {
  Geometry g;
  const uint8_t* base = nullptr;
  uint32_t StreamLength(uint32_t sub, uint32_t r) const {
    return DecodeFixed32(base + g.LengthsOffset() + (size_t{sub} * g.rows() + r) * 4);
  }
  float Param(uint64_t index) const {
    const uint8_t* p = base + g.ParamsOffset() + index * g.psize();
    if (g.info.param_dtype == DType::kF16) return F16ToF32(DecodeFixed16(p));
    return FloatFromBits(DecodeFixed32(p));
  }
  // Row r's 2 * param_count[r] parameters (mins, then steps) in f32, converted in bulk.
  void RowParams(uint32_t r, std::vector<float>* out) const {
    const size_t n = 2 * size_t{g.param_count[r]};
    out->resize(n);
    const uint8_t* p = base + g.ParamsOffset() + g.param_off[r] * g.psize();
    if (g.info.param_dtype == DType::kF16) {
      thread_local std::vector<uint16_t> h;
      h.resize(n);
      for (size_t k = 0; k < n; ++k) h[k] = DecodeFixed16(p + 2 * k);
      F16ToF32(h.data(), out->data(), n);
    } else {
      for (size_t k = 0; k < n; ++k) (*out)[k] = FloatFromBits(DecodeFixed32(p + 4 * k));
    }
  }
  std::vector<uint16_t> OutlierIndex(uint32_t r) const {
    std::vector<uint16_t> idx(g.outliers(r));
    const uint8_t* p = base + g.OutlierIndexOffset() + size_t{r} * g.info.key_outliers * 2;
    for (size_t j = 0; j < idx.size(); ++j) idx[j] = DecodeFixed16(p + 2 * j);
    return idx;
  }
  const uint8_t* OutlierValues(uint32_t r) const {
    return base + g.OutlierValueOffset() +
           size_t{r} * g.T() * g.info.key_outliers * DTypeSize(g.info.dtype);
  }
  // Row r's exact tokens, [exact_tokens][C] in the KV dtype.
  const uint8_t* Exact(uint32_t r) const {
    return base + g.ExactOffset() +
           size_t{r} * g.info.exact_tokens * g.C() * DTypeSize(g.info.dtype);
  }
  const uint8_t* Freqs(uint32_t r) const { return base + g.FreqsOffset() + g.freq_off[r] * 2; }
};

// Validates everything in `bytes` (kvq.h ParseKvq); the result points into `bytes`.
Result<Parsed> Parse(std::span<const uint8_t> bytes);

// Writes the 64-byte header of g.info (checksums excluded).
void WriteHeader(const Geometry& g, uint8_t* h);

}  // namespace kvstash::codec::kvq_internal

#endif  // KVSTASH_CODEC_SRC_KVQ_FORMAT_H_
