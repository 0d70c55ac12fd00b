// Device-side element types and conversions for the KV kernels. Conversions round to nearest even
// and produce the same bits as the scalar functions of common/half.h (NaN included), so CUDA and
// CPU results agree exactly.
#ifndef KVSTASH_KERNELS_SRC_CUDA_DTYPE_CUH_
#define KVSTASH_KERNELS_SRC_CUDA_DTYPE_CUH_

#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace kvstash::kernels::cuda {

struct F16 {
  uint16_t bits;
};
struct BF16 {
  uint16_t bits;
};

__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(F16 x) {
  return __half2float(__ushort_as_half(x.bits));  // exact widening, subnormals included
}
__device__ __forceinline__ float ToFloat(BF16 x) {
  return __uint_as_float(static_cast<uint32_t>(x.bits) << 16);
}

template <typename T>
__device__ __forceinline__ T FromFloat(float f);

template <>
__device__ __forceinline__ float FromFloat<float>(float f) {
  return f;
}

template <>
__device__ __forceinline__ F16 FromFloat<F16>(float f) {
  const uint32_t x = __float_as_uint(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) {  // NaN: the scalar function's quiet NaN
    return F16{static_cast<uint16_t>(((x >> 16) & 0x8000u) | 0x7E00u)};
  }
  // cvt.rn.f16.f32: nearest even, subnormals kept, overflow to infinity.
  return F16{__half_as_ushort(__float2half_rn(f))};
}

template <>
__device__ __forceinline__ BF16 FromFloat<BF16>(float f) {
  uint32_t x = __float_as_uint(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return BF16{static_cast<uint16_t>((x >> 16) | 0x40u)};
  x += 0x7FFFu + ((x >> 16) & 1u);
  return BF16{static_cast<uint16_t>(x >> 16)};
}

// Element conversion; identical types (including the raw words used for same-dtype copies) are
// copied bit for bit.
template <typename To, typename From>
__device__ __forceinline__ To Convert(From x) {
  if constexpr (std::is_same_v<To, From>) {
    return x;
  } else {
    return FromFloat<To>(ToFloat(x));
  }
}

}  // namespace kvstash::kernels::cuda

#endif  // KVSTASH_KERNELS_SRC_CUDA_DTYPE_CUH_
