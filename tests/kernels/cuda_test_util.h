// Device buffers for the gpu tests, through kvstash/kernels/cuda_device.h (no CUDA header).
#ifndef KVSTASH_TESTS_KERNELS_CUDA_TEST_UTIL_H_
#define KVSTASH_TESTS_KERNELS_CUDA_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <cstddef>
#include <vector>

#include "kvstash/kernels/cuda_device.h"
#include "testing/status_matchers.h"

namespace kvstash::kernels::testing {

#define KVSTASH_SKIP_WITHOUT_CUDA_DEVICE()                      \
  do {                                                          \
    if (!::kvstash::kernels::CudaDeviceAvailable()) {           \
      GTEST_SKIP() << "no CUDA device (or built without CUDA)"; \
    }                                                           \
  } while (0)

class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) {
    auto ptr = CudaMalloc(bytes);
    EXPECT_OK(ptr);
    if (ptr.ok()) {
      ptr_ = static_cast<std::byte*>(*ptr);
    }
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) {
      EXPECT_OK(CudaFree(ptr_));
    }
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  std::byte* get() const { return ptr_; }
  void Upload(const void* host, size_t bytes, size_t offset = 0) {
    ASSERT_OK(CudaMemcpy(ptr_ + offset, host, bytes));
  }
  std::vector<std::byte> Download(size_t bytes, size_t offset = 0) const {
    std::vector<std::byte> host(bytes);
    EXPECT_OK(CudaMemcpy(host.data(), ptr_ + offset, bytes));
    return host;
  }

 private:
  std::byte* ptr_ = nullptr;
};

}  // namespace kvstash::kernels::testing

#endif  // KVSTASH_TESTS_KERNELS_CUDA_TEST_UTIL_H_
