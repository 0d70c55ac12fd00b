#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda_dtype.cuh"
#include "cuda_launch.h"

namespace kvstash::kernels::cuda {
namespace {

// One CUDA block per token (grid-stride): the block computes the token's cos/sin once into shared
// memory, then its threads rotate every (head, pair). Products and sums use the _rn intrinsics so
// nothing is fused into an FMA: the arithmetic is the CPU's, operation for operation.
template <typename T>
__global__ void RopeKernel(const RopeLaunch p) {
  extern __shared__ float angles[];  // cos[half], sin[half]
  const uint32_t half = p.rotary_dim / 2;
  float* cos_table = angles;
  float* sin_table = angles + half;
  T* k = static_cast<T*>(p.k);
  for (uint32_t t = blockIdx.x; t < p.num_tokens; t += gridDim.x) {
    const int64_t delta = p.deltas != nullptr ? p.deltas[t] : p.delta;
    if (delta == 0) continue;  // uniform across the block
    __syncthreads();           // the previous token's readers are done with the table
    for (uint32_t i = threadIdx.x; i < half; i += blockDim.x) {
      const double inv_freq = pow(p.theta, -(2.0 * i) / static_cast<double>(p.rotary_dim));
      const double angle = static_cast<double>(delta) * inv_freq;
      double s, c;
      sincos(angle, &s, &c);
      cos_table[i] = static_cast<float>(c);
      sin_table[i] = static_cast<float>(s);
    }
    __syncthreads();
    T* token = k + static_cast<uint64_t>(t) * p.num_heads * p.head_dim;
    for (uint32_t j = threadIdx.x; j < p.num_heads * half; j += blockDim.x) {
      const uint32_t h = j / half;
      const uint32_t i = j % half;
      T* head = token + static_cast<uint64_t>(h) * p.head_dim;
      const uint32_t i0 = p.neox ? i : 2 * i;
      const uint32_t i1 = p.neox ? i + half : 2 * i + 1;
      const float x0 = ToFloat(head[i0]);
      const float x1 = ToFloat(head[i1]);
      const float c = cos_table[i];
      const float s = sin_table[i];
      head[i0] = FromFloat<T>(__fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s)));
      head[i1] = FromFloat<T>(__fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c)));
    }
  }
}

template <typename T>
int Launch(const RopeLaunch& p, cudaStream_t stream) {
  const uint32_t work = p.num_heads * (p.rotary_dim / 2);
  const uint32_t threads = std::min<uint32_t>(256, std::max<uint32_t>(32, (work + 31) / 32 * 32));
  const uint32_t blocks = std::min<uint32_t>(p.num_tokens, 1u << 20);
  const size_t shared = sizeof(float) * p.rotary_dim;
  RopeKernel<T><<<blocks, threads, shared, stream>>>(p);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int LaunchRope(const RopeLaunch& p, void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  if (p.num_tokens == 0 || p.rotary_dim == 0) return 0;
  switch (p.dtype) {
    case kLaunchF32:
      return Launch<float>(p, stream);
    case kLaunchF16:
      return Launch<F16>(p, stream);
    default:
      return Launch<BF16>(p, stream);
  }
}

}  // namespace kvstash::kernels::cuda
