// Maps a cudaError_t (as int, see cuda_launch.h) to a Status with the codes documented in
// kvstash/kernels/cuda_device.h. Host-side only; defined in cuda_device.cc.
#ifndef KVSTASH_KERNELS_SRC_CUDA_STATUS_H_
#define KVSTASH_KERNELS_SRC_CUDA_STATUS_H_

#include "kvstash/common/status.h"

namespace kvstash::kernels::internal {

// OK for 0 (cudaSuccess); `what` names the failed operation in the message.
Status CudaStatus(int code, const char* what);

// The status every CUDA entry point returns in a build without CUDA.
Status CudaNotBuilt();

}  // namespace kvstash::kernels::internal

#endif  // KVSTASH_KERNELS_SRC_CUDA_STATUS_H_
