// Host side of the CUDA RoPE rotation: the CPU's validation, then one launch.
#include "kvstash/kernels/cuda_rope.h"

#include "cuda_status.h"
#include "rope_check.h"
#if KVSTASH_HAVE_CUDA
#include "cuda_launch.h"
#endif

namespace kvstash::kernels {
namespace {

Status Rotate(void* k, DType dtype, uint32_t num_tokens, uint32_t num_heads, uint32_t head_dim,
              const RopeParams& params, bool per_token, const int64_t* deltas, int64_t delta,
              void* stream) {
#if KVSTASH_HAVE_CUDA
  if (per_token && deltas == nullptr && num_tokens > 0) {
    return absl::InvalidArgumentError("rope: position_delta is null");
  }
  KVSTASH_ASSIGN_OR_RETURN(
      uint32_t rotary_dim,
      internal::ValidateRope(k, dtype, num_tokens, num_heads, head_dim, params, num_tokens));
  if (!per_token && delta == 0) return OkStatus();
  cuda::RopeLaunch launch{};
  launch.k = k;
  launch.deltas = deltas;
  launch.delta = delta;
  launch.num_tokens = num_tokens;
  launch.num_heads = num_heads;
  launch.head_dim = head_dim;
  launch.rotary_dim = rotary_dim;
  launch.theta = static_cast<double>(params.theta);
  launch.dtype = static_cast<int>(dtype);
  launch.neox = params.convention == RopeConvention::kNeox;
  return internal::CudaStatus(cuda::LaunchRope(launch, stream), "RoPE launch");
#else
  return internal::CudaNotBuilt();
#endif
}

}  // namespace

Status CudaRotateKeys(void* k, DType dtype, uint32_t num_tokens, uint32_t num_heads,
                      uint32_t head_dim, const RopeParams& params, const int64_t* position_delta,
                      void* stream) {
  return Rotate(k, dtype, num_tokens, num_heads, head_dim, params, /*per_token=*/true,
                position_delta, 0, stream);
}

Status CudaShiftKeys(void* k, DType dtype, uint32_t num_tokens, uint32_t num_heads,
                     uint32_t head_dim, const RopeParams& params, int64_t position_delta,
                     void* stream) {
  return Rotate(k, dtype, num_tokens, num_heads, head_dim, params, /*per_token=*/false, nullptr,
                position_delta, stream);
}

}  // namespace kvstash::kernels
