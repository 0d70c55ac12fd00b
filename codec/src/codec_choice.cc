#include "kvstash/codec/codec_choice.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

#include "absl/strings/str_cat.h"
#include "kvstash/codec/cachegen.h"
#include "kvstash/codec/kvq.h"
#include "kvstash/codec/synthetic_kv.h"
#include "kvstash/common/half.h"
#include "kvstash/common/thread_pool.h"

namespace kvstash::codec {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// 4 layers x 4 heads x 64 x 256 tokens of f16 KV: 1 MiB, the SSD tier's and the transfers'
// usual chunk shape scaled down.
KvLayout SampleLayout() {
  KvLayout l;
  l.num_layers = 4;
  l.total_kv_heads = 4;
  l.head_begin = 0;
  l.head_end = 4;
  l.head_dim = 64;
  l.dtype = DType::kF16;
  l.num_tokens = 256;
  return l;
}

double RelativeError(const std::vector<float>& x, std::span<const uint8_t> recon_f16) {
  std::vector<uint16_t> h(x.size());
  std::memcpy(h.data(), recon_f16.data(), h.size() * 2);
  std::vector<float> y(x.size());
  F16ToF32(h.data(), y.data(), y.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double d = static_cast<double>(x[i]) - y[i];
    num += d * d;
    den += static_cast<double>(x[i]) * x[i];
  }
  return den > 0 ? num / den : 0;
}

}  // namespace

std::string CodecName(CodecKind kind, int level) {
  switch (kind) {
    case CodecKind::kRaw:
      return "raw";
    case CodecKind::kCacheGen:
      return level != 0 ? absl::StrCat("cachegen-l", level) : "cachegen";
    case CodecKind::kKvq:
      return level != 0 ? absl::StrCat("kvq-l", level) : "kvq";
  }
  return "invalid";
}

std::string CodecRatesName(const CodecRates& r) { return CodecName(r.kind, r.level); }

namespace {

// `which` empty: CalibrateCodecs (the floor, then the KVQ levels that meet it); else exactly
// those codecs and levels (CalibrateCodecsAt).
Result<std::vector<CodecRates>> Calibrate(const CalibrationOptions& options,
                                          std::span<const CodecRates> which) {
  for (const CodecRates& w : which) {
    if (w.kind != CodecKind::kRaw && w.kind != CodecKind::kCacheGen && w.kind != CodecKind::kKvq) {
      return absl::InvalidArgumentError(
          absl::StrCat("calibration: unknown codec ", static_cast<int>(w.kind)));
    }
    const int max_level = w.kind == CodecKind::kCacheGen ? 3 : kKvqMaxLevel;
    if (w.kind != CodecKind::kRaw && (w.level < 1 || w.level > max_level)) {
      return absl::InvalidArgumentError(
          absl::StrCat("calibration: ", CodecRatesName(w), " is not a level of its codec"));
    }
  }
  if (which.empty() && (options.cachegen_level < 1 || options.cachegen_level > 3)) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration: CacheGen level ", options.cachegen_level, " is not 1..3"));
  }
  if (options.reps < 1 || options.reps > 100) {
    return absl::InvalidArgumentError("calibration: reps must be 1..100");
  }
  const KvLayout layout = SampleLayout();
  const std::vector<uint8_t> kv = SyntheticKv(layout);
  std::vector<float> x(kv.size() / 2);
  {
    std::vector<uint16_t> h(x.size());
    std::memcpy(h.data(), kv.data(), kv.size());
    F16ToF32(h.data(), x.data(), x.size());
  }
  std::unique_ptr<ThreadPool> pool;
  if (options.decode_threads > 1) pool = std::make_unique<ThreadPool>(options.decode_threads);
  std::vector<uint8_t> recon(kv.size()), out(kv.size());

  auto measure = [&](CodecKind kind, int level) -> Result<CodecRates> {
    CodecRates r;
    r.kind = kind;
    r.level = level;
    double enc_s = std::numeric_limits<double>::infinity(), dec_s = enc_s;
    size_t bytes = 0;
    for (int i = 0; i < options.reps; ++i) {
      const Clock::time_point t0 = Clock::now();
      Result<std::vector<uint8_t>> c = absl::InternalError("unset");
      if (kind == CodecKind::kKvq) {
        KvqOptions o;
        o.level = level;
        o.reconstruction = std::span<uint8_t>(recon);
        c = EncodeKvq(layout, kv, o);
      } else {
        EncodeOptions o;
        o.level = level;
        o.reconstruction = std::span<uint8_t>(recon);
        c = EncodeCacheGen(layout, kv, o);
      }
      if (!c.ok()) {
        return absl::InternalError(absl::StrCat("calibration: ", CodecRatesName(r),
                                                " failed on synthetic KV: ", c.status().message()));
      }
      const Clock::time_point t1 = Clock::now();
      DecodeOptions decode_options;
      decode_options.pool = pool.get();
      Status d = kind == CodecKind::kKvq ? DecodeKvq(*c, out, pool.get())
                                         : DecodeCacheGen(*c, out, decode_options);
      const Clock::time_point t2 = Clock::now();
      if (!d.ok()) {
        return absl::InternalError(
            absl::StrCat("calibration: ", CodecRatesName(r),
                         " does not decode its own container: ", d.message()));
      }
      enc_s = std::min(enc_s, Seconds(t0, t1));
      dec_s = std::min(dec_s, Seconds(t1, t2));
      bytes = c->size();
    }
    const double n = static_cast<double>(kv.size());
    r.ratio = n / static_cast<double>(bytes);
    r.encode_bytes_per_s = n / std::max(enc_s, 1e-9);
    r.decode_bytes_per_s = n / std::max(dec_s, 1e-9);
    r.rel_error = RelativeError(x, recon);
    return r;
  };

  std::vector<CodecRates> out_rates;
  if (!which.empty()) {
    for (const CodecRates& w : which) {
      if (w.kind == CodecKind::kRaw) continue;
      KVSTASH_ASSIGN_OR_RETURN(CodecRates r, measure(w.kind, w.level));
      out_rates.push_back(r);
    }
    return out_rates;
  }
  KVSTASH_ASSIGN_OR_RETURN(CodecRates floor_rates,
                           measure(CodecKind::kCacheGen, options.cachegen_level));
  out_rates.push_back(floor_rates);
  if (options.kvq) {
    for (int level = kKvqMinLevel; level <= kKvqMaxLevel; ++level) {
      KVSTASH_ASSIGN_OR_RETURN(CodecRates k, measure(CodecKind::kKvq, level));
      if (k.rel_error <= floor_rates.rel_error) out_rates.push_back(k);
    }
  }
  return out_rates;
}

}  // namespace

Result<std::vector<CodecRates>> CalibrateCodecs(const CalibrationOptions& options) {
  return Calibrate(options, {});
}

Result<std::vector<CodecRates>> CalibrateCodecsAt(std::span<const CodecRates> which,
                                                  const CalibrationOptions& options) {
  return Calibrate(options, which);
}

double SecondsPerRawByte(const CodecRates& r, double link, CostModel model) {
  if (link <= 0) return std::numeric_limits<double>::infinity();
  if (r.kind == CodecKind::kRaw) return 1 / link;
  if (r.ratio <= 0 || r.decode_bytes_per_s <= 0 ||
      (model == CostModel::kTransfer && r.encode_bytes_per_s <= 0)) {
    return std::numeric_limits<double>::infinity();
  }
  double s = 1 / (r.ratio * link) + 1 / r.decode_bytes_per_s;
  if (model == CostModel::kTransfer) s += 1 / r.encode_bytes_per_s;
  return s;
}

CodecRates ChooseEncoding(std::span<const CodecRates> candidates, double link, CostModel model) {
  CodecRates best;  // raw
  if (!(link > 0)) return best;
  double best_s = SecondsPerRawByte(best, link, model);
  for (const CodecRates& c : candidates) {
    const double s = SecondsPerRawByte(c, link, model);
    if (s < best_s) {
      best = c;
      best_s = s;
    }
  }
  return best;
}

double BreakEvenBytesPerS(const CodecRates& r, CostModel model) {
  if (r.kind == CodecKind::kRaw || r.ratio <= 1 || r.decode_bytes_per_s <= 0) return 0;
  double per_byte = 1 / r.decode_bytes_per_s;
  if (model == CostModel::kTransfer) {
    if (r.encode_bytes_per_s <= 0) return 0;
    per_byte += 1 / r.encode_bytes_per_s;
  }
  // 1/L = 1/(rL) + per_byte  <=>  L = (1 - 1/r) / per_byte
  return (1 - 1 / r.ratio) / per_byte;
}

}  // namespace kvstash::codec
