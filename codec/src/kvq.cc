// KVQ codec (kvq.h, docs/codec.md §9): quantiser, container writer/parser, rANS streams.
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

using internal::ParallelFor;
namespace rans = internal::rans;

constexpr uint8_t kMagic[4] = {'K', 'V', 'Q', 'R'};
constexpr size_t kBodyCrcOffset = 56;
constexpr size_t kHeaderCrcOffset = 60;
constexpr uint32_t kMaxDim = 1024;
constexpr uint32_t kMaxTokens = 1u << 20;
constexpr uint64_t kMaxDecodedBytes = uint64_t{16} << 30;

std::atomic<bool> g_simd{true};

Status Bad(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("malformed KVQ container: ", what));
}

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
  uint32_t T() const { return info.num_tokens; }
  uint32_t subs() const { return (T() + info.subchunk_tokens - 1) / info.subchunk_tokens; }
  uint32_t groups() const { return (T() + info.group_tokens - 1) / info.group_tokens; }
  bool is_key(uint32_t r) const { return r < info.num_layers; }
  KvqScale scale(uint32_t r) const { return is_key(r) ? info.key_scale : info.value_scale; }
  uint32_t outliers(uint32_t r) const { return is_key(r) ? info.key_outliers : 0; }
  size_t psize() const { return DTypeSize(info.param_dtype); }
  size_t RowOffset(uint32_t r) const {
    const uint32_t layer = r < info.num_layers ? r : r - info.num_layers;
    return (size_t{layer} * 2 + (r < info.num_layers ? 0 : 1)) * T() * C();
  }
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
    info.params = p * psize();
    info.freqs = f * 2;
    info.lengths = uint64_t{subs()} * n * 4;
  }
  uint64_t BitsOffset() const { return info.header; }
  uint64_t OutlierIndexOffset() const { return BitsOffset() + info.bits; }
  uint64_t OutlierValueOffset() const {
    return OutlierIndexOffset() + uint64_t{info.num_layers} * info.key_outliers * 2;
  }
  uint64_t ParamsOffset() const { return OutlierIndexOffset() + info.outliers; }
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
#endif

// `vector`: allow the AVX-512 path (identical bytes); the encoder's reconstruction passes false,
// so tests compare the two paths.
void DequantRows(const Geometry& g, uint32_t r, uint32_t t0, uint32_t n, const uint8_t* syms,
                 const float* mins, const float* steps, const std::vector<uint16_t>& out_idx,
                 const uint8_t* out_values, uint8_t* out, bool vector) {
  const uint32_t C = g.C();
  const size_t es = DTypeSize(g.info.dtype);
  const size_t count = size_t{n} * C;
#if defined(__x86_64__)
  if (vector && g.info.dtype == DType::kF16 && C % 16 == 0 && internal::CpuHasAvx512()) {
    uint8_t* dst = out + (g.RowOffset(r) + size_t{t0} * C) * es;
    DequantF16Avx512(g, r, t0, n, syms, mins, steps, dst);
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

void WriteHeader(const Geometry& g, uint8_t* h) {
  const KvqInfo& i = g.info;
  std::memcpy(h, kMagic, 4);
  EncodeFixed16(h + 4, kKvqVersion);
  EncodeFixed16(h + 6, static_cast<uint16_t>(kKvqHeaderBytes));
  h[8] = static_cast<uint8_t>(i.dtype);
  h[9] = static_cast<uint8_t>(i.param_dtype);
  h[10] = i.level;
  h[11] = static_cast<uint8_t>(i.key_scale);
  h[12] = static_cast<uint8_t>(i.value_scale);
  h[13] = rans::kProbBits;
  h[14] = rans::kLanes;
  h[15] = 0;
  EncodeFixed32(h + 16, i.num_layers);
  EncodeFixed32(h + 20, i.num_heads);
  EncodeFixed32(h + 24, i.head_dim);
  EncodeFixed32(h + 28, i.num_tokens);
  EncodeFixed32(h + 32, i.subchunk_tokens);
  EncodeFixed32(h + 36, i.group_tokens);
  EncodeFixed32(h + 40, i.key_outliers);
  EncodeFixed32(h + 44, i.context_channels);
  EncodeFixed64(h + 48, i.payload);
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
  const uint8_t* Freqs(uint32_t r) const { return base + g.FreqsOffset() + g.freq_off[r] * 2; }
};

Result<Parsed> Parse(std::span<const uint8_t> bytes) {
  if (bytes.size() < kKvqHeaderBytes) return Bad("shorter than the header");
  const uint8_t* h = bytes.data();
  if (std::memcmp(h, kMagic, 4) != 0) return Bad("bad magic");
  if (DecodeFixed16(h + 4) != kKvqVersion) return Bad("unsupported version");
  if (DecodeFixed16(h + 6) != kKvqHeaderBytes) return Bad("bad header size");
  if (Crc32c(h, kHeaderCrcOffset) != DecodeFixed32(h + kHeaderCrcOffset)) {
    return absl::DataLossError("KVQ container header checksum mismatch");
  }
  Parsed p;
  p.base = h;
  KvqInfo& i = p.g.info;
  if (h[8] < 1 || h[8] > 3) return Bad("bad dtype");
  i.dtype = static_cast<DType>(h[8]);
  if (h[9] != static_cast<uint8_t>(DType::kF16) && h[9] != static_cast<uint8_t>(DType::kF32)) {
    return Bad("bad parameter dtype");
  }
  i.param_dtype = static_cast<DType>(h[9]);
  i.level = h[10];
  if (i.level > kKvqMaxLevel) return Bad("bad level");
  if (h[11] > 1 || h[12] > 1) return Bad("bad scaling");
  i.key_scale = static_cast<KvqScale>(h[11]);
  i.value_scale = static_cast<KvqScale>(h[12]);
  if (h[13] != rans::kProbBits || h[14] != rans::kLanes || h[15] != 0) {
    return Bad("unsupported coder parameters");
  }
  i.num_layers = DecodeFixed32(h + 16);
  i.num_heads = DecodeFixed32(h + 20);
  i.head_dim = DecodeFixed32(h + 24);
  i.num_tokens = DecodeFixed32(h + 28);
  i.subchunk_tokens = DecodeFixed32(h + 32);
  i.group_tokens = DecodeFixed32(h + 36);
  i.key_outliers = DecodeFixed32(h + 40);
  i.context_channels = DecodeFixed32(h + 44);
  i.payload = DecodeFixed64(h + 48);
  auto in = [](uint32_t v, uint32_t lo, uint32_t hi) { return v >= lo && v <= hi; };
  if (!in(i.num_layers, 1, kMaxDim) || !in(i.num_heads, 1, kMaxDim) ||
      !in(i.head_dim, 1, kMaxDim) || !in(i.num_tokens, 1, kMaxTokens) ||
      !in(i.subchunk_tokens, 1, 65535)) {
    return Bad("shape out of range");
  }
  if (i.RawBytes() > kMaxDecodedBytes) return Bad("decoded size too large");
  // Per-row counts (parameters, symbols) are 32-bit.
  if (uint64_t{i.num_tokens} * i.channels() > UINT32_MAX) return Bad("row too large");
  const bool channelwise =
      i.key_scale == KvqScale::kPerChannel || i.value_scale == KvqScale::kPerChannel;
  if (channelwise ? !in(i.group_tokens, 1, 65535) : i.group_tokens != 0) {
    return Bad("bad group tokens");
  }
  const uint32_t C = i.channels();
  if (i.key_outliers >= C || (i.key_outliers > 0 && C > 65536)) return Bad("bad outlier count");
  if (i.context_channels == 0 || C % i.context_channels != 0 ||
      C / i.context_channels + (i.key_outliers > 0 ? 1 : 0) > 255) {
    return Bad("bad context channels");
  }
  const uint64_t rows = i.rows();
  if (bytes.size() < kKvqHeaderBytes + rows) return Bad("truncated bits");
  p.g.bits.assign(h + kKvqHeaderBytes, h + kKvqHeaderBytes + rows);
  for (uint8_t b : p.g.bits) {
    if (b < 1 || b > 8) return Bad("bits out of range");
  }
  p.g.Derive();
  if (i.total() != bytes.size()) return Bad("section sizes do not add up to the input size");
  if (Crc32c(h + kKvqHeaderBytes, bytes.size() - kKvqHeaderBytes) !=
      DecodeFixed32(h + kBodyCrcOffset)) {
    return absl::DataLossError("KVQ container body checksum mismatch");
  }
  for (uint32_t r = 0; r < i.num_layers; ++r) {
    const std::vector<uint16_t> idx = p.OutlierIndex(r);
    for (size_t j = 0; j < idx.size(); ++j) {
      if (idx[j] >= C || (j > 0 && idx[j] <= idx[j - 1])) return Bad("bad outlier channels");
    }
  }
  for (uint32_t r = 0; r < rows; ++r) {
    for (uint32_t k = 0; k < 2 * p.g.param_count[r]; ++k) {
      const float v = p.Param(p.g.param_off[r] + k);
      if (!std::isfinite(v) || (k >= p.g.param_count[r] && v < 0)) return Bad("bad parameter");
    }
    const int alphabet = 1 << p.g.bits[r];
    std::vector<uint16_t> f(alphabet);
    for (uint32_t c = 0; c < p.g.contexts[r]; ++c) {
      const uint8_t* src = p.Freqs(r) + size_t{c} * alphabet * 2;
      for (int s = 0; s < alphabet; ++s) f[s] = DecodeFixed16(src + 2 * s);
      if (!rans::ValidFreqs(f.data(), alphabet)) return Bad("bad frequency table");
    }
  }
  uint64_t sum = 0;
  for (uint32_t s = 0; s < p.g.subs(); ++s) {
    const uint64_t symbols = uint64_t{p.g.SubTokens(s)} * C;
    for (uint32_t r = 0; r < rows; ++r) {
      const uint32_t len = p.StreamLength(s, r);
      if (len < rans::kStateBytes || len > rans::MaxStreamBytes(symbols)) {
        return Bad("bad stream length");
      }
      sum += len;
    }
  }
  if (sum != i.payload) return Bad("stream lengths do not add up to the payload");
  return p;
}

}  // namespace

std::string KvqScaleName(KvqScale scale) {
  return scale == KvqScale::kPerToken ? "per-token" : "per-channel";
}

void SetKvqSimdForTesting(bool enabled) { g_simd.store(enabled); }

bool IsKvqContainer(std::span<const uint8_t> bytes) {
  return bytes.size() >= 4 && std::memcmp(bytes.data(), kMagic, 4) == 0;
}

void RefreshKvqChecksums(std::span<uint8_t> bytes) {
  if (bytes.size() < kKvqHeaderBytes) return;
  EncodeFixed32(bytes.data() + kBodyCrcOffset,
                Crc32c(bytes.data() + kKvqHeaderBytes, bytes.size() - kKvqHeaderBytes));
  EncodeFixed32(bytes.data() + kHeaderCrcOffset, Crc32c(bytes.data(), kHeaderCrcOffset));
}

Result<std::vector<uint8_t>> KvqRowBitsForLevel(int level, uint32_t model_layers,
                                                uint32_t layer_begin, uint32_t num_layers) {
  static constexpr uint8_t kKey[4][3] = {{3, 3, 2}, {4, 3, 3}, {4, 4, 4}, {6, 5, 5}};
  static constexpr uint8_t kValue[4][2] = {{3, 2}, {3, 3}, {4, 4}, {5, 5}};
  if (level < kKvqMinLevel || level > kKvqMaxLevel) {
    return absl::InvalidArgumentError(absl::StrCat("KVQ level must be 1..4, got ", level));
  }
  if (model_layers == 0 || num_layers == 0 || layer_begin + num_layers > model_layers) {
    return absl::InvalidArgumentError("KVQ layers outside the model");
  }
  const LayerGroups g = LayerGroupsFor(model_layers);
  std::vector<uint8_t> bits(2 * num_layers);
  for (uint32_t i = 0; i < num_layers; ++i) {
    const uint32_t l = layer_begin + i;
    bits[i] = kKey[level - 1][l < g.k_group1_end ? 0 : l < g.k_group2_end ? 1 : 2];
    bits[num_layers + i] = kValue[level - 1][l < g.v_group1_end ? 0 : 1];
  }
  return bits;
}

Result<KvqInfo> ParseKvq(std::span<const uint8_t> bytes) {
  KVSTASH_ASSIGN_OR_RETURN(Parsed p, Parse(bytes));
  return p.g.info;
}

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
  if (!o.row_bits.empty()) {
    if (o.row_bits.size() != i.rows()) {
      return absl::InvalidArgumentError("KVQ encode: row_bits needs one entry per row");
    }
    for (uint8_t b : o.row_bits) {
      if (b < 1 || b > 8) return absl::InvalidArgumentError("KVQ encode: bits must be 1..8");
    }
    g.bits = o.row_bits;
    i.level = 0;
  } else {
    const uint32_t model_layers =
        o.model_layers ? o.model_layers : layout.layer_begin + layout.num_layers;
    KVSTASH_ASSIGN_OR_RETURN(
        g.bits, KvqRowBitsForLevel(o.level, model_layers, layout.layer_begin, layout.num_layers));
    i.level = static_cast<uint8_t>(o.level);
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

  auto quantise_row = [&](uint32_t r) {
    std::vector<float> x(size_t{T} * C);
    LoadF32(kv.data() + g.RowOffset(r) * es, i.dtype, x.size(), x.data());
    for (float v : x) {
      if (!std::isfinite(v)) {
        bad_value = true;
        return;
      }
    }
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
    auto set_param = [&](uint32_t k, float mn, float mx) {
      mins[k] = RoundParam(mn, i.param_dtype);
      steps[k] = RoundParam((mx - mins[k]) / top, i.param_dtype);
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
        out[c] = static_cast<uint8_t>(static_cast<int>(y + 0.5f));
      }
    };
    std::vector<float> inv(g.scale(r) == KvqScale::kPerToken ? 1 : C);
    if (g.scale(r) == KvqScale::kPerToken) {
      for (uint32_t t = 0; t < T; ++t) {
        const float* v = x.data() + size_t{t} * C;
        float mn = INFINITY, mx = -INFINITY;
        for (uint32_t c = 0; c < C; ++c) {
          mn = std::min(mn, v[c]);
          mx = std::max(mx, v[c]);
        }
        set_param(t, mn, mx);
        inv[0] = steps[t] > 0 ? 1.f / steps[t] : 0.f;
        quant_row(v, &mins[t], inv.data(), 0, C, q + size_t{t} * C);
      }
    } else {
      const uint32_t G = i.group_tokens;
      std::vector<float> mn(C), mx(C);
      for (uint32_t gi = 0; gi < g.groups(); ++gi) {
        const uint32_t t0 = gi * G, t1 = std::min(T, t0 + G);
        std::fill(mn.begin(), mn.end(), INFINITY);
        std::fill(mx.begin(), mx.end(), -INFINITY);
        for (uint32_t t = t0; t < t1; ++t) {
          const float* v = x.data() + size_t{t} * C;
          for (uint32_t c = 0; c < C; ++c) {
            mn[c] = std::min(mn[c], v[c]);
            mx[c] = std::max(mx[c], v[c]);
          }
        }
        for (uint32_t c = 0; c < C; ++c) {
          set_param(gi * C + c, mn[c], mx[c]);
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
  std::memcpy(out.data() + g.OutlierValueOffset(), out_values.data(), out_values.size());
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
  std::atomic<bool> malformed{false};
  ParallelFor(pool, rows, 1, [&](size_t b, size_t e) {
    std::vector<rans::DecTable> tables;
    std::vector<uint8_t> syms(size_t{g.info.subchunk_tokens} * C);
    std::vector<float> params;
    std::vector<uint16_t> f;
    for (size_t rr = b; rr < e && !malformed; ++rr) {
      const uint32_t r = static_cast<uint32_t>(rr);
      const int alphabet = 1 << g.bits[r];
      tables.resize(g.contexts[r]);
      f.resize(alphabet);
      for (uint32_t k = 0; k < g.contexts[r]; ++k) {
        const uint8_t* src = p.Freqs(r) + size_t{k} * alphabet * 2;
        for (int s = 0; s < alphabet; ++s) f[s] = DecodeFixed16(src + 2 * s);
        rans::BuildDecTable(f.data(), alphabet, &tables[k]);
      }
      params.resize(2 * size_t{g.param_count[r]});
      for (size_t k = 0; k < params.size(); ++k) params[k] = p.Param(g.param_off[r] + k);
      const std::vector<uint16_t> idx = p.OutlierIndex(r);
      const std::vector<uint8_t> ctx = g.ContextMap(r, idx);
      for (uint32_t s = 0; s < subs; ++s) {
        const size_t item = size_t{s} * rows + r;
        const uint32_t n = g.SubTokens(s);
        if (!rans::DecodeStream(payload + start[item], start[item + 1] - start[item], size_t{n} * C,
                                ctx.data(), C, tables.data(), syms.data(), simd)) {
          malformed = true;
          break;
        }
        DequantRows(g, r, s * g.info.subchunk_tokens, n, syms.data(), params.data(),
                    params.data() + g.param_count[r], idx, p.OutlierValues(r), out.data(), simd);
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
