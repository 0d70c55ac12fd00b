// CUDA variants of paged_kv.h: same layouts, same validation, and the same bytes as the CPU
// functions for every non-NaN value (conversions round to nearest even like common/half.h; a NaN
// stays a NaN, but its payload bits may differ from the CPU's F16C path).
//
// Pointers: the pools in `paged` and the chunk bytes must be device-accessible (device memory, or
// host memory mapped into the device address space with cudaHostRegister/cudaMallocHost, which the
// kernel then reads or writes over the bus). `span.block_table` is HOST memory: it is validated on
// the host and passed to the kernel by value, so the caller may reuse it as soon as the call
// returns. Large spans or many layers are split into several launches on the same stream.
//
// Asynchrony: work is queued on `stream` (a cudaStream_t; nullptr = legacy default stream) and the
// call returns without waiting. OK means "validated and queued"; a fault during execution shows up
// at the next synchronisation (CudaStreamSynchronize). The caller keeps the device buffers alive
// until the stream has finished with them.
//
// Errors: InvalidArgument exactly as the CPU functions (checked before anything is queued);
// Unimplemented when built without CUDA or when no device is present; Internal for other CUDA
// launch errors. Thread-safe for disjoint outputs.
#ifndef KVSTASH_KERNELS_CUDA_PAGED_KV_H_
#define KVSTASH_KERNELS_CUDA_PAGED_KV_H_

#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"
#include "kvstash/kernels/paged_kv.h"

namespace kvstash::kernels {

Status CudaGatherLayer(const PagedKvView& paged, const TokenSpan& span, const KvLayout& chunk,
                       uint32_t layer, void* chunk_layer, void* stream);
Status CudaScatterLayer(const KvLayout& chunk, uint32_t layer, const void* chunk_layer,
                        const TokenSpan& span, PagedKvView& paged, void* stream);
Status CudaGatherChunk(const PagedKvView& paged, const TokenSpan& span, const KvLayout& chunk,
                       void* chunk_bytes, void* stream);
Status CudaScatterChunk(const KvLayout& chunk, const void* chunk_bytes, const TokenSpan& span,
                        PagedKvView& paged, void* stream);

}  // namespace kvstash::kernels

#endif  // KVSTASH_KERNELS_CUDA_PAGED_KV_H_
