// CUDA variants of rope.h on device-accessible memory, queued on `stream` (a cudaStream_t;
// nullptr = legacy default stream); the call returns without waiting (see cuda_paged_kv.h for the
// asynchrony and error rules, which are the same here).
//
// Same arithmetic as the CPU functions: angles in double from the integer delta, rotation in f32
// with every product and sum rounded separately (no fused multiply-add). The device's double
// sin/cos/pow may differ from the host's in the last bit, so a cos or sin can differ by one f32
// ulp from the CPU result in rare cases; tests bound the difference, see
// tests/kernels/cuda_rope_test.cc.
#ifndef KVSTASH_KERNELS_CUDA_ROPE_H_
#define KVSTASH_KERNELS_CUDA_ROPE_H_

#include <cstdint>

#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"
#include "kvstash/kernels/rope.h"

namespace kvstash::kernels {

// `position_delta` points to num_tokens int64 values in device-accessible memory (it cannot be
// checked on the host: the caller guarantees its size).
Status CudaRotateKeys(void* k, DType dtype, uint32_t num_tokens, uint32_t num_heads,
                      uint32_t head_dim, const RopeParams& params, const int64_t* position_delta,
                      void* stream);

Status CudaShiftKeys(void* k, DType dtype, uint32_t num_tokens, uint32_t num_heads,
                     uint32_t head_dim, const RopeParams& params, int64_t position_delta,
                     void* stream);

}  // namespace kvstash::kernels

#endif  // KVSTASH_KERNELS_CUDA_ROPE_H_
