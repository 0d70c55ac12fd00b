// AVX2/F16C rotation of one head for the CPU RoPE kernel, picked at run time. Same operations in
// the same order as the scalar path (no fused multiply-add), so the results are bit-identical.
#ifndef KVSTASH_KERNELS_SRC_ROPE_SIMD_H_
#define KVSTASH_KERNELS_SRC_ROPE_SIMD_H_

#include <cstdint>

#include "kvstash/common/layout.h"

namespace kvstash::kernels::internal {

// True when this CPU has AVX2 and F16C (always false off x86-64) and the scalar path is not
// forced.
bool RopeAvx2Available();

// Tests use this to run the portable path on a CPU that has AVX2. Not for production use.
void ForceRopeScalarForTesting(bool force);

// Rotates the first 2 * half values of one head in place, stored in `dtype`.
// kNeox: cos[i], sin[i] for i < half. kGptj: 2 * half entries, each angle's value twice in a row
// (cos[2i] == cos[2i+1]), matching the interleaved pairs.
void RotateHeadAvx2(void* head, DType dtype, RopeConvention convention, uint32_t half,
                    const float* cos, const float* sin);

}  // namespace kvstash::kernels::internal

#endif  // KVSTASH_KERNELS_SRC_ROPE_SIMD_H_
