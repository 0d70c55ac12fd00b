// Private bridge between cachegen_cuda.cc (Status, absl) and cachegen_cuda.cu (nvcc, no absl).
#ifndef KVSTASH_KERNELS_SRC_CACHEGEN_CUDA_LAUNCH_H_
#define KVSTASH_KERNELS_SRC_CACHEGEN_CUDA_LAUNCH_H_

#include <cstdint>
#include <string>
#include <vector>

namespace kvstash::kernels::detail {

struct CgShape {
  uint32_t layers = 0;
  uint32_t channels = 0;
  uint32_t tokens = 0;
  uint32_t subchunk = 0;
  uint32_t lp = 0;
  int dtype = 0;  // DType value: 1 f16, 2 bf16, 3 f32
};

enum class CgCode { kOk, kInvalidArgument, kDataLoss, kInternal };

struct CgResult {
  CgCode code = CgCode::kOk;
  std::string message;
};

// Sizes: bins 2L; cdf_in 2L*C*lp or null; scales 2L*T; cdf_out 2L*C*lp (filled when cdf_in is
// null); lengths subchunks*2L*C; payload resized to the total.
CgResult CgEncode(const void* kv, bool kv_on_device, const CgShape& shape, const uint8_t* bins,
                  const uint16_t* cdf_in, float* scales, uint16_t* cdf_out, uint32_t* lengths,
                  std::vector<uint8_t>* payload);

// offsets[i] = start of stream i in payload (prefix sums of lengths, checked by the caller).
CgResult CgDecode(const CgShape& shape, const uint8_t* bins, const uint16_t* cdf,
                  const float* scales, const uint32_t* lengths, const uint64_t* offsets,
                  const uint8_t* payload, uint64_t payload_bytes, void* out, bool out_on_device);

}  // namespace kvstash::kernels::detail

#endif  // KVSTASH_KERNELS_SRC_CACHEGEN_CUDA_LAUNCH_H_
