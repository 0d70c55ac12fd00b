#include <cuda_runtime.h>

#include "cuda_launch.h"

namespace kvstash::kernels::cuda {

int DeviceCount(int* count) { return static_cast<int>(cudaGetDeviceCount(count)); }

int Malloc(void** ptr, uint64_t bytes) { return static_cast<int>(cudaMalloc(ptr, bytes)); }

int Free(void* ptr) { return static_cast<int>(cudaFree(ptr)); }

int Memcpy(void* dst, const void* src, uint64_t bytes) {
  return static_cast<int>(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
}

int StreamSynchronize(void* stream) {
  return static_cast<int>(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
}

const char* ErrorName(int code) { return cudaGetErrorName(static_cast<cudaError_t>(code)); }

const char* ErrorString(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

bool IsNoDevice(int code) {
  const auto error = static_cast<cudaError_t>(code);
  return error == cudaErrorNoDevice || error == cudaErrorInsufficientDriver ||
         error == cudaErrorNoKernelImageForDevice || error == cudaErrorDevicesUnavailable;
}

bool IsOutOfMemory(int code) { return static_cast<cudaError_t>(code) == cudaErrorMemoryAllocation; }

}  // namespace kvstash::kernels::cuda
