// Whether CUDA kernels can run in this process. Shared by every CUDA user (kernels, codec, tests):
// GPU tests call CudaDeviceAvailable() and GTEST_SKIP when it is false.
#ifndef KVSTASH_KERNELS_CUDA_DEVICE_H_
#define KVSTASH_KERNELS_CUDA_DEVICE_H_

namespace kvstash::kernels {

// True when the build has CUDA kernels (KVSTASH_HAVE_CUDA) and the runtime sees at least one
// device. Cheap after the first call (the answer is cached); thread-safe.
bool CudaDeviceAvailable();

// True when the build compiled the CUDA kernels, whether or not a device is present.
bool CudaKernelsBuilt();

}  // namespace kvstash::kernels

#endif  // KVSTASH_KERNELS_CUDA_DEVICE_H_
