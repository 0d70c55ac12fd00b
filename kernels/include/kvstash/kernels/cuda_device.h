// CUDA runtime helpers that CPU-only code can include: no CUDA header is needed, streams are
// passed as `void*` (a cudaStream_t; nullptr is the legacy default stream).
//
// When the library was built without CUDA (KVSTASH_HAVE_CUDA undefined), CudaDeviceAvailable()
// returns false and every other function returns Unimplemented. When it was built with CUDA but
// the machine has no device or no usable driver, the functions return Unimplemented too.
// Other CUDA failures map to ResourceExhausted (out of memory) or Internal (with the CUDA message).
// All functions are thread-safe; they act on the calling thread's current device.
#ifndef KVSTASH_KERNELS_CUDA_DEVICE_H_
#define KVSTASH_KERNELS_CUDA_DEVICE_H_

#include <cstddef>

#include "kvstash/common/status.h"

namespace kvstash::kernels {

// True when this build has CUDA kernels and at least one device can run them.
bool CudaDeviceAvailable();

// True when the build compiled the CUDA kernels, whether or not a device is present.
bool CudaKernelsBuilt();

// Device memory, owned by the caller (free it with CudaFree).
Result<void*> CudaMalloc(size_t bytes);
Status CudaFree(void* device_ptr);

// Synchronous copy in any direction (cudaMemcpyDefault; pointers may be host or device).
Status CudaMemcpy(void* dst, const void* src, size_t bytes);

// Waits for all work queued on `stream`; reports errors raised by kernels queued earlier.
Status CudaStreamSynchronize(void* stream);

}  // namespace kvstash::kernels

#endif  // KVSTASH_KERNELS_CUDA_DEVICE_H_
