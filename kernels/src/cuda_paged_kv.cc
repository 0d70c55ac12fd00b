// Host side of the CUDA paged-KV copies: the CPU's validation, then launches of
// cuda_paged_kv_kernels.cu with the block ids passed by value (no staging buffer, nothing to free,
// fully asynchronous).
#include "kvstash/kernels/cuda_paged_kv.h"

#include <algorithm>
#include <cstddef>

#include "cuda_status.h"
#include "paged_kv_check.h"
#if KVSTASH_HAVE_CUDA
#include "cuda_launch.h"
#endif

namespace kvstash::kernels {
namespace {

#if KVSTASH_HAVE_CUDA

Status CopyLayers(const PagedKvView& paged, const TokenSpan& span, const KvLayout& chunk,
                  uint32_t first_layer, uint32_t layer_count, const void* chunk_ptr, bool gather,
                  void* stream) {
  KVSTASH_RETURN_IF_ERROR(
      internal::ValidatePagedCopy(paged, span, chunk, first_layer, layer_count, chunk_ptr));
  const PagedKvShape& shape = paged.shape;
  const size_t layer_bytes = ChunkLayerBytes(chunk);
  cuda::PagedCopyLaunch launch{};
  launch.chunk_layer_bytes = layer_bytes;
  launch.chunk_tokens = chunk.num_tokens;
  launch.block_size = shape.block_size;
  launch.num_kv_heads = shape.num_kv_heads;
  launch.head_begin = chunk.head_begin;
  launch.heads = chunk.heads();
  launch.head_dim = chunk.head_dim;
  launch.paged_dtype = static_cast<int>(shape.dtype);
  launch.chunk_dtype = static_cast<int>(chunk.dtype);
  launch.gather = gather;
  const uint64_t end = uint64_t{span.token_begin} + chunk.num_tokens;
  for (uint32_t l0 = 0; l0 < layer_count; l0 += cuda::kMaxLayersPerLaunch) {
    launch.num_layers = std::min(cuda::kMaxLayersPerLaunch, layer_count - l0);
    for (uint32_t i = 0; i < launch.num_layers; ++i) {
      launch.k_pools[i] = paged.k_pools[first_layer + l0 + i];
      launch.v_pools[i] = paged.v_pools[first_layer + l0 + i];
    }
    launch.chunk = static_cast<char*>(const_cast<void*>(chunk_ptr)) + l0 * layer_bytes;
    for (uint64_t pos = span.token_begin; pos < end;) {
      const uint64_t first_block = pos / shape.block_size;
      const uint64_t run_end =
          std::min<uint64_t>(end, (first_block + cuda::kMaxBlocksPerLaunch) * shape.block_size);
      const uint64_t last_block = (run_end - 1) / shape.block_size;
      std::copy(span.block_table.begin() + first_block, span.block_table.begin() + last_block + 1,
                launch.blocks);
      launch.first_slot = static_cast<uint32_t>(pos % shape.block_size);
      launch.num_tokens = static_cast<uint32_t>(run_end - pos);
      launch.chunk_token_offset = static_cast<uint32_t>(pos - span.token_begin);
      KVSTASH_RETURN_IF_ERROR(
          internal::CudaStatus(cuda::LaunchPagedCopy(launch, stream), "paged KV copy launch"));
      pos = run_end;
    }
  }
  return OkStatus();
}

#else

Status CopyLayers(const PagedKvView&, const TokenSpan&, const KvLayout&, uint32_t, uint32_t,
                  const void*, bool, void*) {
  return internal::CudaNotBuilt();
}

#endif

}  // namespace

Status CudaGatherLayer(const PagedKvView& paged, const TokenSpan& span, const KvLayout& chunk,
                       uint32_t layer, void* chunk_layer, void* stream) {
  return CopyLayers(paged, span, chunk, layer, 1, chunk_layer, /*gather=*/true, stream);
}

Status CudaScatterLayer(const KvLayout& chunk, uint32_t layer, const void* chunk_layer,
                        const TokenSpan& span, PagedKvView& paged, void* stream) {
  return CopyLayers(paged, span, chunk, layer, 1, chunk_layer, /*gather=*/false, stream);
}

Status CudaGatherChunk(const PagedKvView& paged, const TokenSpan& span, const KvLayout& chunk,
                       void* chunk_bytes, void* stream) {
  return CopyLayers(paged, span, chunk, chunk.layer_begin, chunk.num_layers, chunk_bytes,
                    /*gather=*/true, stream);
}

Status CudaScatterChunk(const KvLayout& chunk, const void* chunk_bytes, const TokenSpan& span,
                        PagedKvView& paged, void* stream) {
  return CopyLayers(paged, span, chunk, chunk.layer_begin, chunk.num_layers, chunk_bytes,
                    /*gather=*/false, stream);
}

}  // namespace kvstash::kernels
