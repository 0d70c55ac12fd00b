// Private bridge between kvq_cuda.cc (Status, absl) and kvq_cuda.cu (nvcc, no absl).
#ifndef KVSTASH_KERNELS_SRC_KVQ_CUDA_LAUNCH_H_
#define KVSTASH_KERNELS_SRC_KVQ_CUDA_LAUNCH_H_

#include <cstdint>
#include <string>

namespace kvstash::kernels::detail {

// Host arrays, sizes as in kvq_cuda.h (KvqCudaInputs); copied to the device by KvqDecode.
struct KvqLaunch {
  uint32_t layers = 0, channels = 0, tokens = 0, subchunk = 0, group_tokens = 0;
  int dtype = 0;                         // 1 f16, 2 bf16, 3 f32
  const uint8_t* per_channel = nullptr;  // [rows] 1: per-channel parameters
  const uint32_t* luts = nullptr;        // all decode tables, 4096 entries each
  uint64_t lut_entries = 0;
  const uint32_t* lut_base = nullptr;       // [rows] first table of the row (table index)
  const uint8_t* ctx = nullptr;             // [rows][C] context of each channel
  const int32_t* outlier_slot = nullptr;    // [rows][C] index among the row's outliers, or -1
  uint32_t outliers = 0;                    // per K row
  const uint8_t* outlier_values = nullptr;  // [L][T][outliers] in dtype
  const float* params = nullptr;            // all mins then steps per row, concatenated
  uint64_t param_count = 0;
  const uint64_t* param_base = nullptr;  // [rows] first min; steps follow param_rows[r] later
  const uint32_t* param_rows = nullptr;  // [rows] number of mins
  const uint8_t* payload = nullptr;
  uint64_t payload_bytes = 0;
  const uint64_t* stream_offset = nullptr;  // [subchunks][rows]
  const uint32_t* stream_length = nullptr;  // [subchunks][rows]
};

enum class KvqCode { kOk, kInvalidArgument, kInternal };
struct KvqResult {
  KvqCode code = KvqCode::kOk;
  std::string message;
};

KvqResult KvqDecode(const KvqLaunch& in, void* out, bool out_on_device);

}  // namespace kvstash::kernels::detail

#endif  // KVSTASH_KERNELS_SRC_KVQ_CUDA_LAUNCH_H_
