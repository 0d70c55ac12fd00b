#include "kvstash/kernels/cuda_device.h"

#include "absl/strings/str_cat.h"
#include "cuda_status.h"

#if KVSTASH_HAVE_CUDA
#define KVSTASH_HAVE_CUDA_BUILT true
#else
#define KVSTASH_HAVE_CUDA_BUILT false
#endif
#if KVSTASH_HAVE_CUDA
#include "cuda_launch.h"
#endif

namespace kvstash::kernels {
namespace internal {

Status CudaNotBuilt() {
  return absl::UnimplementedError("kvstash was built without CUDA (KVSTASH_HAVE_CUDA is off)");
}

#if KVSTASH_HAVE_CUDA

Status CudaStatus(int code, const char* what) {
  if (code == 0) return OkStatus();
  std::string message =
      absl::StrCat(what, ": ", cuda::ErrorName(code), " (", cuda::ErrorString(code), ")");
  if (cuda::IsNoDevice(code)) return absl::UnimplementedError(message);
  if (cuda::IsOutOfMemory(code)) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

#else

Status CudaStatus(int code, const char* what) { return code == 0 ? OkStatus() : CudaNotBuilt(); }

#endif

}  // namespace internal

bool CudaKernelsBuilt() { return KVSTASH_HAVE_CUDA_BUILT; }

#if KVSTASH_HAVE_CUDA

bool CudaDeviceAvailable() {
  static const bool available = [] {
    int count = 0;
    return cuda::DeviceCount(&count) == 0 && count > 0;
  }();
  return available;
}

Result<void*> CudaMalloc(size_t bytes) {
  void* ptr = nullptr;
  KVSTASH_RETURN_IF_ERROR(internal::CudaStatus(cuda::Malloc(&ptr, bytes), "cudaMalloc"));
  return ptr;
}

Status CudaFree(void* device_ptr) {
  return internal::CudaStatus(cuda::Free(device_ptr), "cudaFree");
}

Status CudaMemcpy(void* dst, const void* src, size_t bytes) {
  return internal::CudaStatus(cuda::Memcpy(dst, src, bytes), "cudaMemcpy");
}

Status CudaStreamSynchronize(void* stream) {
  return internal::CudaStatus(cuda::StreamSynchronize(stream), "cudaStreamSynchronize");
}

#else

bool CudaDeviceAvailable() { return false; }
Result<void*> CudaMalloc(size_t) { return internal::CudaNotBuilt(); }
Status CudaFree(void*) { return internal::CudaNotBuilt(); }
Status CudaMemcpy(void*, const void*, size_t) { return internal::CudaNotBuilt(); }
Status CudaStreamSynchronize(void*) { return internal::CudaNotBuilt(); }

#endif

}  // namespace kvstash::kernels
