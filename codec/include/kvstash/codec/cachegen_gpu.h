// CacheGen on a CUDA device: produces and consumes exactly the containers of cachegen.h (same
// bytes for the same input and options; tests labelled gpu check it). Reference mode only, with
// inline CDFs or a profile; delta mode is CPU-only (Unimplemented here).
//
// Synchronous and thread-safe. Without a CUDA build or device every call returns Unimplemented;
// callers fall back to the CPU functions, which need no GPU.
#ifndef KVSTASH_CODEC_CACHEGEN_GPU_H_
#define KVSTASH_CODEC_CACHEGEN_GPU_H_

#include <cstdint>
#include <span>
#include <vector>

#include "kvstash/codec/cachegen.h"

namespace kvstash::codec {

bool GpuCodecAvailable();

// `kv` holds layout.RawBytes() bytes, on the device when kv_on_device, else in host memory.
// options.pool is ignored.
Result<std::vector<uint8_t>> EncodeCacheGenGpu(const KvLayout& layout, const void* kv,
                                               bool kv_on_device, const EncodeOptions& options);

// Decodes into `out` (info.RawBytes() bytes; a device pointer when out_on_device). The container
// is parsed and validated on the host exactly as DecodeCacheGen does.
Status DecodeCacheGenGpu(std::span<const uint8_t> container, void* out, bool out_on_device,
                         const DecodeOptions& options = {});

}  // namespace kvstash::codec

#endif  // KVSTASH_CODEC_CACHEGEN_GPU_H_
