// KVQ decode on a CUDA device (codec/kvq.h; docs/codec.md §9): the rANS streams and the
// dequantisation of a parsed, validated KVQ container, producing exactly the CPU decoder's bytes.
// The codec module (kvq.h, DecodeKvqGpu) builds these inputs from a container; most callers want
// that API, not this one.
//
// Synchronous (default stream), thread-safe, device scratch allocated per call. Without a CUDA
// build or device: Unimplemented. A stream that does not decode: InvalidArgument. CUDA failures:
// Internal. Inputs are host memory and must be consistent (the codec's parser checks them).
#ifndef KVSTASH_KERNELS_KVQ_CUDA_H_
#define KVSTASH_KERNELS_KVQ_CUDA_H_

#include <cstdint>
#include <vector>

#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"

namespace kvstash::kernels {

struct KvqCudaInputs {
  uint32_t num_layers = 0, channels = 0, num_tokens = 0, subchunk_tokens = 0, group_tokens = 0;
  DType dtype = DType::kF16;
  std::vector<uint8_t> per_channel;  // [2L] 1: the row's parameters are per (channel, group)
  // Decode tables (4096 entries: symbol << 24 | freq << 12 | slot - cum), all rows' contexts;
  // row r's context k is table lut_base[r] + k.
  std::vector<uint32_t> luts;
  std::vector<uint32_t> lut_base;           // [2L]
  std::vector<uint8_t> ctx;                 // [2L][C] context of each channel
  std::vector<int32_t> outlier_slot;        // [2L][C] index among the row's outliers, or -1
  uint32_t outliers = 0;                    // outlier channels per K row
  const uint8_t* outlier_values = nullptr;  // [L][T][outliers] in dtype (not owned)
  std::vector<float> params;                // per row: mins then steps, rows concatenated
  std::vector<uint64_t> param_base;         // [2L] first min of the row in params
  std::vector<uint32_t> param_rows;         // [2L] number of mins (= steps) of the row
  const uint8_t* payload = nullptr;         // not owned
  uint64_t payload_bytes = 0;
  std::vector<uint64_t> stream_offset;  // [subchunks][2L] start in payload
  std::vector<uint32_t> stream_length;  // [subchunks][2L]
};

// Decodes into `out` (2L * T * C elements of dtype; a device pointer when out_on_device).
Status KvqDecodeCuda(const KvqCudaInputs& in, void* out, bool out_on_device);

}  // namespace kvstash::kernels

#endif  // KVSTASH_KERNELS_KVQ_CUDA_H_
