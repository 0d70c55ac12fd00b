// RoPE rotation of stored keys, used to move a cached chunk to new positions (CacheBlend,
// Cache-Craft). RoPE attention depends only on relative position, so K rotated at position p can
// be moved to position p' by one more rotation by (p' - p) with the same frequencies.
//
// Frequencies: inv_freq[i] = theta^(-2i / rotary_dim), i in [0, rotary_dim/2); angle = pos *
// inv_freq[i]. kNeox rotates pairs (i, i + rotary_dim/2); kGptj rotates pairs (2i, 2i+1).
// Dimensions at and above rotary_dim are left untouched. Angles are computed in double precision
// from the integer position delta, then applied in f32, so a shift is exact up to f32 rounding.
#ifndef KVSTASH_KERNELS_ROPE_H_
#define KVSTASH_KERNELS_ROPE_H_

#include <cstdint>
#include <span>

#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"

namespace kvstash::kernels {

struct RopeParams {
  RopeConvention convention = RopeConvention::kNeox;
  float theta = 10000.0f;
  uint32_t rotary_dim = 0;  // 0 = head_dim
};

// Rotates `k`, laid out [token][head][head_dim] in `dtype`, in place: token t is moved by
// position_delta[t] (new position minus old). One delta per token.
// InvalidArgument for kNone, an odd or too large rotary_dim, or a size mismatch.
Status RotateKeys(void* k, DType dtype, uint32_t num_tokens, uint32_t num_heads, uint32_t head_dim,
                  const RopeParams& params, std::span<const int64_t> position_delta);

// Same, with one delta for every token (the common case of a chunk moved as a whole).
Status ShiftKeys(void* k, DType dtype, uint32_t num_tokens, uint32_t num_heads, uint32_t head_dim,
                 const RopeParams& params, int64_t position_delta);

}  // namespace kvstash::kernels

#endif  // KVSTASH_KERNELS_ROPE_H_
