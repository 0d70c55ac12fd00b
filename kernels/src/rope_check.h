// Validation and frequency table shared by the CPU and CUDA RoPE kernels.
#ifndef KVSTASH_KERNELS_SRC_ROPE_CHECK_H_
#define KVSTASH_KERNELS_SRC_ROPE_CHECK_H_

#include <cstdint>

#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"
#include "kvstash/kernels/rope.h"

namespace kvstash::kernels::internal {

// Checks the arguments of RotateKeys/ShiftKeys (num_deltas = the number of deltas given, or
// num_tokens for ShiftKeys) and returns the effective rotary dimension.
Result<uint32_t> ValidateRope(const void* k, DType dtype, uint32_t num_tokens, uint32_t num_heads,
                              uint32_t head_dim, const RopeParams& params, size_t num_deltas);

}  // namespace kvstash::kernels::internal

#endif  // KVSTASH_KERNELS_SRC_ROPE_CHECK_H_
