#include "kvstash/codec/coder.h"

#include <cfloat>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kvstash/kernels/cachegen_core.h"

namespace kvstash::codec {
namespace cg = kernels::cachegen;

Result<float> QuantizeVector(std::span<const float> x, int bins, std::span<uint8_t> sym) {
  if (bins < cg::kMinBins || bins > 256 || bins % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("bad bins ", bins));
  }
  if (sym.size() != x.size()) return absl::InvalidArgumentError("size mismatch");
  float m = 0.0f;
  bool bad = false;
  for (float v : x) {
    float a = std::fabs(v);
    bad |= !(a <= FLT_MAX);
    m = a > m ? a : m;
  }
  if (bad) return absl::InvalidArgumentError("vector contains NaN or infinity");
  const int cq = cg::QuantCq(bins);
  const float factor = cg::QuantFactor(m, cq);
  for (size_t i = 0; i < x.size(); ++i) {
    sym[i] = static_cast<uint8_t>(cg::QuantizeValue(x[i], factor, cq));
  }
  return cg::StoredScale(m);
}

void DequantizeVector(std::span<const uint8_t> sym, int bins, float scale, std::span<float> out) {
  const int cq = cg::QuantCq(bins);
  for (size_t i = 0; i < sym.size() && i < out.size(); ++i) {
    out[i] = cg::DequantizeValue(sym[i], cq, scale);
  }
}

std::vector<uint16_t> BuildCdf(std::span<const uint8_t> symbols, int mb) {
  std::vector<uint64_t> hist(static_cast<size_t>(mb) + 1, 0);
  for (uint8_t s : symbols) {
    if (s < mb) ++hist[s];
  }
  std::vector<uint16_t> cdf(static_cast<size_t>(mb) + 1);
  uint64_t cum = 0;
  for (int i = 0; i <= mb; ++i) {
    cdf[i] = cg::CdfValue(cum, symbols.size(), mb, i);
    cum += hist[i];
  }
  return cdf;
}

Status ValidateCdf(std::span<const uint16_t> cdf) {
  if (cdf.size() < 3 || cdf.size() > static_cast<size_t>(cg::kMaxLp)) {
    return absl::InvalidArgumentError(absl::StrCat("CDF needs 3..65 entries, got ", cdf.size()));
  }
  if (cdf[0] != 0 || cdf.back() != 65535) {
    return absl::InvalidArgumentError("CDF must start at 0 and end at 65535");
  }
  for (size_t i = 1; i < cdf.size(); ++i) {
    if (cdf[i] <= cdf[i - 1]) return absl::InvalidArgumentError("CDF not strictly increasing");
  }
  return OkStatus();
}

Status EncodeStream(std::span<const uint8_t> symbols, std::span<const uint16_t> cdf,
                    std::vector<uint8_t>* out) {
  KVSTASH_RETURN_IF_ERROR(ValidateCdf(cdf));
  const int lp = static_cast<int>(cdf.size());
  for (uint8_t s : symbols) {
    if (s > lp - 2) {
      return absl::InvalidArgumentError(absl::StrCat("symbol ", int{s}, " outside the CDF"));
    }
  }
  uint32_t table[cg::kTableSize];
  cg::BuildTable(cg::CdfView{cdf.data()}, lp, cg::TableRef{table});
  const size_t start = out->size();
  const uint64_t cap = cg::MaxStreamBytes(symbols.size());
  out->resize(start + cap);
  cg::BitWriter w(out->data() + start, cap);
  cg::EncoderState st;
  for (uint8_t s : symbols) cg::EncodeSymbol(st, cg::TableView{table}, s, w);
  cg::FinishEncode(st, w);
  if (w.overflowed()) return absl::InternalError("CacheGen stream exceeded its bound");
  out->resize(start + w.size());
  return OkStatus();
}

Status DecodeStream(std::span<const uint8_t> stream, std::span<const uint16_t> cdf,
                    std::span<uint8_t> out) {
  KVSTASH_RETURN_IF_ERROR(ValidateCdf(cdf));
  uint32_t table[cg::kTableSize];
  cg::BuildTable(cg::CdfView{cdf.data()}, static_cast<int>(cdf.size()), cg::TableRef{table});
  cg::BitReader r(stream.data(), stream.size());
  cg::DecoderState st;
  cg::StartDecode(st, r);
  for (uint8_t& s : out) s = static_cast<uint8_t>(cg::DecodeSymbol(st, cg::TableView{table}, r));
  return OkStatus();
}

uint64_t MaxStreamBytes(uint64_t num_symbols) { return cg::MaxStreamBytes(num_symbols); }

double CrossEntropyBits(std::span<const uint8_t> symbols, std::span<const uint16_t> cdf) {
  const int lp = static_cast<int>(cdf.size());
  double bits = 0;
  for (uint8_t s : symbols) {
    if (s > lp - 2) return INFINITY;
    double hi = s == lp - 2 ? 65536.0 : cdf[s + 1];
    bits -= std::log2((hi - cdf[s]) / 65536.0);
  }
  return bits;
}

}  // namespace kvstash::codec
