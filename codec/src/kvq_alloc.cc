// KVQ per-chunk bit allocation (kvq.h KvqAllocateBits, docs/codec.md §9 "Bit allocation").
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kvq_format.h"
#include "kvstash/codec/kvq.h"
#include "kvstash/common/half.h"

namespace kvstash::codec {
namespace {

// Row r of the object as f32 ([T][C]); rows as in kvq.h.
void LoadRow(const KvLayout& layout, std::span<const uint8_t> kv, uint32_t r,
             std::vector<float>* out) {
  const uint32_t L = layout.num_layers, T = layout.num_tokens;
  const size_t C = size_t{layout.heads()} * layout.head_dim;
  const size_t es = DTypeSize(layout.dtype);
  const uint32_t layer = r < L ? r : r - L;
  const uint8_t* src = kv.data() + (size_t{layer} * 2 + (r < L ? 0 : 1)) * T * C * es;
  const size_t n = size_t{T} * C;
  out->resize(n);
  if (layout.dtype == DType::kF32) {
    std::memcpy(out->data(), src, n * 4);
    return;
  }
  std::vector<uint16_t> tmp(n);
  std::memcpy(tmp.data(), src, n * 2);
  if (layout.dtype == DType::kF16) {
    F16ToF32(tmp.data(), out->data(), n);
  } else {
    BF16ToF32(tmp.data(), out->data(), n);
  }
}

// Sum over the row's elements of range^2 / 12 for its scaling (the squared error at "1 level
// step = range"), divided by the element count: mean squared error = this / (2^b - 1)^2.
double RangeEnergy(const std::vector<float>& x, uint32_t T, uint32_t C, KvqScale scale,
                   uint32_t group) {
  double sum = 0;
  if (scale == KvqScale::kPerToken) {
    for (uint32_t t = 0; t < T; ++t) {
      const float* v = x.data() + size_t{t} * C;
      const auto [mn, mx] = std::minmax_element(v, v + C);
      const double range = double{*mx} - double{*mn};
      sum += range * range * C;
    }
  } else {
    std::vector<float> mn(C), mx(C);
    for (uint32_t t0 = 0; t0 < T; t0 += group) {
      const uint32_t t1 = std::min(T, t0 + group);
      kvq_internal::ChannelMinMax(x.data(), C, t0, t1, mn.data(), mx.data());
      for (uint32_t c = 0; c < C; ++c) {
        const double range = double{mx[c]} - double{mn[c]};
        sum += range * range * (t1 - t0);
      }
    }
  }
  return sum / 12.0 / (static_cast<double>(T) * C);
}

}  // namespace

Result<std::vector<uint8_t>> KvqAllocateBits(const KvLayout& layout, std::span<const uint8_t> kv,
                                             const KvqOptions& o) {
  KVSTASH_RETURN_IF_ERROR(layout.Validate());
  if (kv.size() != layout.RawBytes()) {
    return absl::InvalidArgumentError("KVQ allocation: payload size does not match the layout");
  }
  if (o.min_bits < 1 || o.max_bits > 8 || o.min_bits > o.max_bits || !std::isfinite(o.avg_bits) ||
      o.avg_bits < o.min_bits || o.avg_bits > o.max_bits) {
    return absl::InvalidArgumentError(
        "KVQ allocation: need 1 <= min_bits <= avg_bits <= max_bits <= 8");
  }
  const uint32_t rows = 2 * layout.num_layers, T = layout.num_tokens;
  const uint32_t C = layout.heads() * layout.head_dim;
  if ((o.rotate_keys || o.rotate_values) && kvq_internal::PowerOfTwoLog2(layout.head_dim) < 0) {
    return absl::InvalidArgumentError("KVQ allocation: rotation needs a power-of-two head_dim");
  }
  if (!o.row_weights.empty() && o.row_weights.size() != rows) {
    return absl::InvalidArgumentError("KVQ allocation: row_weights needs one entry per row");
  }
  for (float w : o.row_weights) {
    if (!std::isfinite(w) || w < 0) {
      return absl::InvalidArgumentError("KVQ allocation: weights must be finite and >= 0");
    }
  }
  // Weighted predicted error of each row at "one step = its range": err_r(b) = e[r] / (2^b-1)^2.
  // Exact (sink) tokens are not quantised: their values count in no range.
  KVSTASH_ASSIGN_OR_RETURN(const uint32_t exact, kvq_internal::ExactTokens(layout, o));
  const uint32_t Tq = T - exact;
  std::vector<double> e(rows);
  std::vector<float> x;
  for (uint32_t r = 0; r < rows; ++r) {
    LoadRow(layout, kv, r, &x);
    for (float v : x) {
      if (!std::isfinite(v)) {
        return absl::InvalidArgumentError("KVQ allocation: NaN or infinite value in the KV");
      }
    }
    x.erase(x.begin(), x.begin() + size_t{exact} * C);
    double energy = 0;
    for (float v : x) energy += double{v} * v;
    const KvqScale scale = r < layout.num_layers ? o.key_scale : o.value_scale;
    const uint32_t group = std::max<uint32_t>(1, o.group_tokens);
    // Rotated rows: the ranges of the rotated values, their error mapped back (the inverse
    // rotation multiplies squared errors by 2 when log2(head_dim) is odd, kvq_format.h).
    double d;
    if (r < layout.num_layers ? o.rotate_keys : o.rotate_values) {
      std::vector<float> y = x;
      kvq_internal::RotateForward(y.data(), size_t{Tq} * layout.heads(), layout.head_dim);
      d = RangeEnergy(y, Tq, C, scale, group) *
          (kvq_internal::PowerOfTwoLog2(layout.head_dim) % 2 == 1 ? 2.0 : 1.0);
    } else {
      d = RangeEnergy(x, Tq, C, scale, group);
    }
    double w;
    if (!o.row_weights.empty()) {
      w = o.row_weights[r];
    } else {
      energy /= static_cast<double>(Tq) * C;
      w = energy > 0 ? 1.0 / energy : 0.0;
    }
    e[r] = w * d;
  }
  auto err = [](double er, int b) {
    const double levels = static_cast<double>((1 << b) - 1);
    return er / (levels * levels);
  };
  std::vector<uint8_t> bits(rows, o.min_bits);
  const long budget = std::lround(double{o.avg_bits} * rows) - long{rows} * o.min_bits;
  for (long step = 0; step < budget; ++step) {
    int best = -1;
    double best_gain = -1;
    for (uint32_t r = 0; r < rows; ++r) {
      if (bits[r] >= o.max_bits) continue;
      const double gain = err(e[r], bits[r]) - err(e[r], bits[r] + 1);
      if (gain > best_gain) {
        best_gain = gain;
        best = static_cast<int>(r);
      }
    }
    if (best < 0) break;
    ++bits[best];
  }
  return bits;
}

}  // namespace kvstash::codec
