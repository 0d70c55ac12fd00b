#include "kvstash/kernels/paged_kv.h"

#include <algorithm>
#include <cstddef>

#include "convert.h"
#include "paged_kv_check.h"

namespace kvstash::kernels {
namespace {

enum class Direction { kGather, kScatter };

// Copies K and V of one model layer between paged memory and the chunk's layer slab. Inputs are
// already validated. Runs of tokens that sit in one block are handled together: with every head
// held, a run is one contiguous range on both sides (a single memcpy or bulk conversion);
// otherwise each token's head range is.
void CopyLayer(const PagedKvView& paged, const TokenSpan& span, const KvLayout& chunk,
               uint32_t layer, std::byte* chunk_layer, Direction direction) {
  const PagedKvShape& shape = paged.shape;
  const size_t paged_elem = DTypeSize(shape.dtype);
  const size_t chunk_elem = DTypeSize(chunk.dtype);
  const size_t row = size_t{chunk.heads()} * chunk.head_dim;  // elements per token held
  const size_t slot = size_t{shape.num_kv_heads} * shape.head_dim;
  const size_t head_offset = size_t{chunk.head_begin} * chunk.head_dim;
  const bool all_heads = chunk.heads() == shape.num_kv_heads;
  const size_t half_bytes = chunk.ElementsPerLayerHalf() * chunk_elem;

  for (int kv = 0; kv < 2; ++kv) {
    auto* pool = static_cast<std::byte*>(kv == 0 ? paged.k_pools[layer] : paged.v_pools[layer]);
    std::byte* chunk_half = chunk_layer + kv * half_bytes;
    for (uint32_t t = 0; t < chunk.num_tokens;) {
      const uint64_t pos = uint64_t{span.token_begin} + t;
      const size_t block = static_cast<size_t>(span.block_table[pos / shape.block_size]);
      const uint32_t first_slot = static_cast<uint32_t>(pos % shape.block_size);
      const uint32_t run = std::min(shape.block_size - first_slot, chunk.num_tokens - t);
      std::byte* paged_ptr =
          pool + ((block * shape.block_size + first_slot) * slot + head_offset) * paged_elem;
      std::byte* chunk_ptr = chunk_half + size_t{t} * row * chunk_elem;
      const size_t pieces = all_heads ? 1 : run;
      const size_t piece_elems = all_heads ? run * row : row;
      for (size_t p = 0; p < pieces; ++p) {
        std::byte* from_paged = paged_ptr + p * slot * paged_elem;
        std::byte* from_chunk = chunk_ptr + p * row * chunk_elem;
        if (direction == Direction::kGather) {
          internal::ConvertElements(from_paged, shape.dtype, from_chunk, chunk.dtype, piece_elems);
        } else {
          internal::ConvertElements(from_chunk, chunk.dtype, from_paged, shape.dtype, piece_elems);
        }
      }
      t += run;
    }
  }
}

}  // namespace

size_t ChunkLayerBytes(const KvLayout& chunk) {
  return 2 * chunk.ElementsPerLayerHalf() * DTypeSize(chunk.dtype);
}

Status GatherLayer(const PagedKvView& paged, const TokenSpan& span, const KvLayout& chunk,
                   uint32_t layer, void* chunk_layer) {
  KVSTASH_RETURN_IF_ERROR(internal::ValidatePagedCopy(paged, span, chunk, layer, 1, chunk_layer));
  CopyLayer(paged, span, chunk, layer, static_cast<std::byte*>(chunk_layer), Direction::kGather);
  return OkStatus();
}

Status ScatterLayer(const KvLayout& chunk, uint32_t layer, const void* chunk_layer,
                    const TokenSpan& span, PagedKvView& paged) {
  KVSTASH_RETURN_IF_ERROR(internal::ValidatePagedCopy(paged, span, chunk, layer, 1, chunk_layer));
  // The chunk side is only read in this direction.
  CopyLayer(paged, span, chunk, layer, static_cast<std::byte*>(const_cast<void*>(chunk_layer)),
            Direction::kScatter);
  return OkStatus();
}

Status GatherChunk(const PagedKvView& paged, const TokenSpan& span, const KvLayout& chunk,
                   void* chunk_bytes) {
  KVSTASH_RETURN_IF_ERROR(internal::ValidatePagedCopy(paged, span, chunk, chunk.layer_begin,
                                                      chunk.num_layers, chunk_bytes));
  const size_t layer_bytes = ChunkLayerBytes(chunk);
  for (uint32_t i = 0; i < chunk.num_layers; ++i) {
    CopyLayer(paged, span, chunk, chunk.layer_begin + i,
              static_cast<std::byte*>(chunk_bytes) + i * layer_bytes, Direction::kGather);
  }
  return OkStatus();
}

Status ScatterChunk(const KvLayout& chunk, const void* chunk_bytes, const TokenSpan& span,
                    PagedKvView& paged) {
  KVSTASH_RETURN_IF_ERROR(internal::ValidatePagedCopy(paged, span, chunk, chunk.layer_begin,
                                                      chunk.num_layers, chunk_bytes));
  const size_t layer_bytes = ChunkLayerBytes(chunk);
  auto* base = static_cast<std::byte*>(const_cast<void*>(chunk_bytes));
  for (uint32_t i = 0; i < chunk.num_layers; ++i) {
    CopyLayer(paged, span, chunk, chunk.layer_begin + i, base + i * layer_bytes,
              Direction::kScatter);
  }
  return OkStatus();
}

}  // namespace kvstash::kernels
