// CacheGen reference-mode encode and decode on a CUDA device, producing and consuming exactly the
// bitstream of the CPU codec (both run kernels/cachegen_core.h). The codec module (codec/
// cachegen_gpu.h) wraps these into containers; most callers want that API, not this one.
//
// Layout: the chunk is layer-major [layer][K|V][token][channel] (channel = head * head_dim + d) in
// `dtype`. Rows r in [0, 2L): r < L is K of layer r, r >= L is V of layer r - L. Streams: one per
// (sub-chunk, row, channel), sub-chunks of `subchunk_tokens` tokens, in that order.
//
// All functions are synchronous (they use the default stream and wait), thread-safe, and allocate
// their device scratch per call. Without a CUDA build or device they return Unimplemented.
// Inputs are checked for consistent sizes (InvalidArgument); CUDA failures are Internal.
#ifndef KVSTASH_KERNELS_CACHEGEN_CUDA_H_
#define KVSTASH_KERNELS_CACHEGEN_CUDA_H_

#include <cstdint>
#include <span>
#include <vector>

#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"

namespace kvstash::kernels {

struct CacheGenCudaShape {
  uint32_t num_layers = 0;  // L (rows = 2L)
  uint32_t channels = 0;    // heads * head_dim
  uint32_t num_tokens = 0;
  uint32_t subchunk_tokens = 256;
  DType dtype = DType::kF16;
  uint32_t lp = 0;  // CDF entries per (row, channel): max bins + 1

  uint32_t rows() const { return 2 * num_layers; }
  uint32_t subchunks() const {
    return subchunk_tokens == 0 ? 0 : (num_tokens + subchunk_tokens - 1) / subchunk_tokens;
  }
};

// Encoder output, in host memory.
struct CacheGenCudaEncoded {
  std::vector<float> scales;      // [2L][T]: max |x| per (row, token) (0 below kMinScale)
  std::vector<uint16_t> cdf;      // [2L][C][lp], computed on the device; empty if one was given
  std::vector<uint32_t> lengths;  // [subchunks][2L][C] stream bytes
  std::vector<uint8_t> payload;   // the streams, concatenated in (subchunk, row, channel) order
};

// Quantises with `row_bins` (2L entries, even, in [4, 64], lp == max + 1), builds the per-(row,
// channel) CDF unless `cdf` (2L*C*lp entries, validated by the caller) is given, and range-codes.
// `kv` is a device pointer when kv_on_device, else host memory. InvalidArgument for NaN/Inf in kv.
Status CacheGenEncodeCuda(const void* kv, bool kv_on_device, const CacheGenCudaShape& shape,
                          std::span<const uint8_t> row_bins, std::span<const uint16_t> cdf,
                          CacheGenCudaEncoded* out);

// Decodes streams into `out` (RawBytes of the chunk, in shape.dtype; a device pointer when
// out_on_device). cdf/scales/lengths/payload as produced by CacheGenEncodeCuda (and validated by
// the container parser). DataLoss if a stream decodes to a symbol its row cannot produce.
Status CacheGenDecodeCuda(const CacheGenCudaShape& shape, std::span<const uint8_t> row_bins,
                          std::span<const uint16_t> cdf, std::span<const float> scales,
                          std::span<const uint32_t> lengths, std::span<const uint8_t> payload,
                          void* out, bool out_on_device);

}  // namespace kvstash::kernels

#endif  // KVSTASH_KERNELS_CACHEGEN_CUDA_H_
