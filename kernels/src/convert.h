// Element conversion between the KV dtypes (f32, f16, bf16) for the CPU kernels.
#ifndef KVSTASH_KERNELS_SRC_CONVERT_H_
#define KVSTASH_KERNELS_SRC_CONVERT_H_

#include <cstddef>

#include "kvstash/common/layout.h"

namespace kvstash::kernels::internal {

// Converts `n` elements from `src` (in `src_dtype`) to `dst` (in `dst_dtype`); the ranges must not
// overlap. Equal dtypes are a memcpy. Otherwise the result equals the scalar common/half.h
// functions element by element (rounding to nearest even) for every non-NaN input; the bulk F16C
// paths of common/half.h may keep a NaN's payload bits where the scalar functions do not.
void ConvertElements(const void* src, DType src_dtype, void* dst, DType dst_dtype, size_t n);

// Conversions to and from f32 used by the RoPE kernel (f32 -> f32 is a copy).
void ToF32(const void* src, DType src_dtype, float* dst, size_t n);
void FromF32(const float* src, void* dst, DType dst_dtype, size_t n);

}  // namespace kvstash::kernels::internal

#endif  // KVSTASH_KERNELS_SRC_CONVERT_H_
