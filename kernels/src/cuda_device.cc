#include "kvstash/kernels/cuda_device.h"

#if defined(KVSTASH_HAVE_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace kvstash::kernels {

bool CudaKernelsBuilt() {
#if defined(KVSTASH_HAVE_CUDA)
  return true;
#else
  return false;
#endif
}

bool CudaDeviceAvailable() {
#if defined(KVSTASH_HAVE_CUDA)
  static const bool available = [] {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "no device" error
      return false;
    }
    return count > 0;
  }();
  return available;
#else
  return false;
#endif
}

}  // namespace kvstash::kernels
