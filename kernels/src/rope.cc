// Built with -ffp-contract=off (kernels/CMakeLists.txt): every product and sum is rounded on its
// own, as in the CUDA kernel, so both give the same f32 result from the same cos/sin.
#include "kvstash/kernels/rope.h"

#include <cmath>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "convert.h"
#include "rope_check.h"
#include "rope_simd.h"

namespace kvstash::kernels {
namespace internal {

Result<uint32_t> ValidateRope(const void* k, DType dtype, uint32_t num_tokens, uint32_t num_heads,
                              uint32_t head_dim, const RopeParams& params, size_t num_deltas) {
  auto bad = [](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("rope: ", what));
  };
  if (params.convention != RopeConvention::kNeox && params.convention != RopeConvention::kGptj) {
    return bad("convention must be neox or gptj");
  }
  if (DTypeSize(dtype) == 0) return bad("unknown dtype");
  if (num_heads == 0 || head_dim == 0) return bad("num_heads and head_dim must be positive");
  if (head_dim > kMaxHeadDim) return bad("head_dim too large");
  const uint32_t rotary_dim = params.rotary_dim == 0 ? head_dim : params.rotary_dim;
  if (rotary_dim % 2 != 0 || rotary_dim > head_dim) {
    return bad(absl::StrCat("rotary_dim ", rotary_dim, " must be even and <= head_dim ", head_dim));
  }
  if (!(params.theta > 0.0f) || !std::isfinite(params.theta)) return bad("theta must be > 0");
  if (num_deltas != num_tokens) {
    return bad(absl::StrCat(num_deltas, " position deltas for ", num_tokens, " tokens"));
  }
  // Keeps every byte offset far inside size_t.
  if (uint64_t{num_tokens} * num_heads > (uint64_t{1} << 40)) return bad("too many rows");
  if (k == nullptr && num_tokens > 0) return bad("k is null");
  return rotary_dim;
}

}  // namespace internal

namespace {

// Rotates the first rotary_dim values of one head in place by the angles whose cos/sin are given.
void RotateHead(float* x, RopeConvention convention, uint32_t half, const float* cos,
                const float* sin) {
  if (convention == RopeConvention::kNeox) {
    float* a = x;
    float* b = x + half;
    for (uint32_t i = 0; i < half; ++i) {
      const float x0 = a[i];
      const float x1 = b[i];
      a[i] = x0 * cos[i] - x1 * sin[i];
      b[i] = x0 * sin[i] + x1 * cos[i];
    }
  } else {
    for (uint32_t i = 0; i < half; ++i) {
      const float x0 = x[2 * i];
      const float x1 = x[2 * i + 1];
      x[2 * i] = x0 * cos[i] - x1 * sin[i];
      x[2 * i + 1] = x0 * sin[i] + x1 * cos[i];
    }
  }
}

class Rotator {
 public:
  Rotator(DType dtype, uint32_t num_heads, uint32_t head_dim, uint32_t rotary_dim,
          const RopeParams& params)
      : dtype_(dtype),
        num_heads_(num_heads),
        head_dim_(head_dim),
        half_(rotary_dim / 2),
        convention_(params.convention),
        simd_(internal::RopeAvx2Available()),
        // The SIMD kGptj path wants each angle's cos/sin twice in a row (one per pair member).
        table_step_(simd_ && convention_ == RopeConvention::kGptj ? 2 : 1),
        inv_freq_(half_),
        cos_(half_ * table_step_),
        sin_(half_ * table_step_),
        row_(dtype == DType::kF32 || simd_ ? 0 : rotary_dim) {
    for (uint32_t i = 0; i < half_; ++i) {
      inv_freq_[i] =
          std::pow(static_cast<double>(params.theta), -(2.0 * i) / static_cast<double>(rotary_dim));
    }
  }

  void RotateToken(std::byte* token, int64_t delta) {
    if (delta == 0) return;  // identity; also keeps inf values from turning into NaN
    if (!angles_for_ || *angles_for_ != delta) {
      const double d = static_cast<double>(delta);
      for (uint32_t i = 0; i < half_; ++i) {
        const double angle = d * inv_freq_[i];
        for (uint32_t j = 0; j < table_step_; ++j) {
          cos_[i * table_step_ + j] = static_cast<float>(std::cos(angle));
          sin_[i * table_step_ + j] = static_cast<float>(std::sin(angle));
        }
      }
      angles_for_ = delta;
    }
    const size_t elem = DTypeSize(dtype_);
    for (uint32_t h = 0; h < num_heads_; ++h) {
      std::byte* head = token + size_t{h} * head_dim_ * elem;
      if (simd_) {
        internal::RotateHeadAvx2(head, dtype_, convention_, half_, cos_.data(), sin_.data());
      } else if (dtype_ == DType::kF32) {
        RotateHead(reinterpret_cast<float*>(head), convention_, half_, cos_.data(), sin_.data());
      } else {
        internal::ToF32(head, dtype_, row_.data(), row_.size());
        RotateHead(row_.data(), convention_, half_, cos_.data(), sin_.data());
        internal::FromF32(row_.data(), head, dtype_, row_.size());
      }
    }
  }

 private:
  DType dtype_;
  uint32_t num_heads_;
  uint32_t head_dim_;
  uint32_t half_;
  RopeConvention convention_;
  bool simd_;
  uint32_t table_step_;
  std::vector<double> inv_freq_;
  std::vector<float> cos_;
  std::vector<float> sin_;
  std::vector<float> row_;  // f32 copy of one head's rotary part for f16/bf16
  std::optional<int64_t> angles_for_;
};

}  // namespace

Status RotateKeys(void* k, DType dtype, uint32_t num_tokens, uint32_t num_heads, uint32_t head_dim,
                  const RopeParams& params, std::span<const int64_t> position_delta) {
  KVSTASH_ASSIGN_OR_RETURN(uint32_t rotary_dim,
                           internal::ValidateRope(k, dtype, num_tokens, num_heads, head_dim, params,
                                                  position_delta.size()));
  Rotator rotator(dtype, num_heads, head_dim, rotary_dim, params);
  const size_t token_bytes = size_t{num_heads} * head_dim * DTypeSize(dtype);
  for (uint32_t t = 0; t < num_tokens; ++t) {
    rotator.RotateToken(static_cast<std::byte*>(k) + t * token_bytes, position_delta[t]);
  }
  return OkStatus();
}

Status ShiftKeys(void* k, DType dtype, uint32_t num_tokens, uint32_t num_heads, uint32_t head_dim,
                 const RopeParams& params, int64_t position_delta) {
  KVSTASH_ASSIGN_OR_RETURN(
      uint32_t rotary_dim,
      internal::ValidateRope(k, dtype, num_tokens, num_heads, head_dim, params, num_tokens));
  if (position_delta == 0) return OkStatus();
  Rotator rotator(dtype, num_heads, head_dim, rotary_dim, params);
  const size_t token_bytes = size_t{num_heads} * head_dim * DTypeSize(dtype);
  for (uint32_t t = 0; t < num_tokens; ++t) {
    rotator.RotateToken(static_cast<std::byte*>(k) + t * token_bytes, position_delta);
  }
  return OkStatus();
}

}  // namespace kvstash::kernels
