// Pieces shared by the codec evaluation drivers (codec_eval, codec_quality): the 8-bit
// quantisation baseline, size/error accumulators and their JSON rows, and a median timer.
#ifndef KVSTASH_BENCH_CODEC_EVAL_COMMON_H_
#define KVSTASH_BENCH_CODEC_EVAL_COMMON_H_

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <vector>

#include "kv_corpus.h"
#include "kvstash/codec/coder.h"
#include "kvstash/codec/container.h"
#include "kvstash/common/half.h"

namespace kvstash::bench {

// Bytes per token of the 8-bit baseline for `layout`: one byte per element plus an f16 scale per
// (row, token) vector.
inline double EightBitBytes(const KvLayout& layout) {
  return static_cast<double>(layout.RawBytes()) / DTypeSize(layout.dtype) +
         2.0 * layout.num_layers * 2 * layout.num_tokens;
}

// 8-bit baseline: symmetric per-(row, token) max scaling with 255 levels (bins 256), one byte per
// element plus an f16 scale per (row, token) vector. Input and output are f16.
inline std::vector<uint8_t> EightBitRoundTrip(const KvChunk& c) {
  const size_t C = size_t{c.layout.heads()} * c.layout.head_dim;
  const size_t vectors = size_t{c.layout.num_layers} * 2 * c.layout.num_tokens;
  std::vector<uint8_t> out(c.kv.size());
  std::vector<uint16_t> h(C);
  std::vector<float> x(C), y(C);
  std::vector<uint8_t> sym(C);
  for (size_t v = 0; v < vectors; ++v) {
    std::memcpy(h.data(), c.kv.data() + v * C * 2, C * 2);
    F16ToF32(h.data(), x.data(), C);
    auto scale = codec::QuantizeVector(x, 256, sym);
    codec::DequantizeVector(sym, 256, F16ToF32(F32ToF16(scale.ok() ? *scale : 0.0f)), y);
    F32ToF16(y.data(), h.data(), C);
    std::memcpy(out.data() + v * C * 2, h.data(), C * 2);
  }
  return out;
}

// Size and squared-error sums of one configuration over many chunks.
struct Totals {
  double bytes = 0, tokens = 0;
  codec::SizeBreakdown parts;
  double err_k = 0, ref_k = 0, err_v = 0, ref_v = 0;  // sums of squares

  void AddParts(const codec::SizeBreakdown& s) {
    parts.header += s.header;
    parts.bins += s.bins;
    parts.cdf += s.cdf;
    parts.scales += s.scales;
    parts.anchors += s.anchors;
    parts.lengths += s.lengths;
    parts.payload += s.payload;
  }
  // `c` and `decoded_f16` are f16 layer-major payloads of the same layout.
  void AddError(const KvChunk& c, const std::vector<uint8_t>& decoded_f16) {
    const size_t per_half = size_t{c.layout.num_tokens} * c.layout.heads() * c.layout.head_dim;
    for (size_t lh = 0; lh < size_t{c.layout.num_layers} * 2; ++lh) {
      const bool is_v = lh % 2 == 1;
      for (size_t i = lh * per_half; i < (lh + 1) * per_half; ++i) {
        uint16_t a, b;
        std::memcpy(&a, c.kv.data() + 2 * i, 2);
        std::memcpy(&b, decoded_f16.data() + 2 * i, 2);
        const double x = F16ToF32(a), y = F16ToF32(b);
        (is_v ? err_v : err_k) += (x - y) * (x - y);
        (is_v ? ref_v : ref_k) += x * x;
      }
    }
  }
  void Add(const Totals& o) {
    bytes += o.bytes;
    tokens += o.tokens;
    AddParts(o.parts);
    err_k += o.err_k;
    ref_k += o.ref_k;
    err_v += o.err_v;
    ref_v += o.ref_v;
  }
  double rel_mse_k() const { return ref_k > 0 ? err_k / ref_k : 0.0; }
  double rel_mse_v() const { return ref_v > 0 ? err_v / ref_v : 0.0; }
};

inline nlohmann::json SizeRow(const Totals& t, double fp16_per_token, double int8_per_token,
                              bool with_error) {
  nlohmann::json j;
  const double per_token = t.bytes / t.tokens;
  j["bytes_per_token"] = per_token;
  j["ratio_vs_fp16"] = fp16_per_token / per_token;
  j["ratio_vs_int8"] = int8_per_token / per_token;
  if (t.parts.total() > 0) {
    j["breakdown_bytes_per_token"] = {{"payload", t.parts.payload / t.tokens},
                                      {"cdf", t.parts.cdf / t.tokens},
                                      {"lengths", t.parts.lengths / t.tokens},
                                      {"scales", t.parts.scales / t.tokens},
                                      {"anchors", t.parts.anchors / t.tokens},
                                      {"header_bins", (t.parts.header + t.parts.bins) / t.tokens}};
  }
  if (with_error) {
    j["rel_mse_k"] = t.rel_mse_k();
    j["rel_mse_v"] = t.rel_mse_v();
  }
  return j;
}

inline double MedianSeconds(int reps, const std::function<void()>& fn) {
  std::vector<double> s;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(s.begin(), s.end());
  return s[s.size() / 2];
}

inline double Median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 == 1 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

}  // namespace kvstash::bench

#endif  // KVSTASH_BENCH_CODEC_EVAL_COMMON_H_
