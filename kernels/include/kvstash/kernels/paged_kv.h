// Paged KV memory as the reference engine (and vLLM) lays it out, and the conversions between
// paged blocks and chunk objects.
//
// Paged layout, per layer: a K pool and a V pool, each
// [num_blocks][block_size][num_kv_heads][head_dim] in `dtype`, contiguous. A sequence owns blocks
// listed in its block table: token t of the sequence lives in block block_table[t / block_size],
// slot t % block_size.
//
// Chunk objects are layer-major [layer][K|V][token][head][head_dim] (common/layout.h) and may hold
// a sub-range of layers and of KV heads, in their own dtype (f32, f16 or bf16; converted with
// round-to-nearest-even).
//
// CPU functions below are thread-safe for disjoint outputs and run on the calling thread.
// CUDA variants (cuda_paged_kv.h) take device pointers and a stream.
#ifndef KVSTASH_KERNELS_PAGED_KV_H_
#define KVSTASH_KERNELS_PAGED_KV_H_

#include <cstdint>
#include <span>
#include <vector>

#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"

namespace kvstash::kernels {

struct PagedKvShape {
  uint32_t num_layers = 0;
  uint32_t num_kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t block_size = 16;
  uint32_t num_blocks = 0;
  DType dtype = DType::kF16;

  size_t BlockElements() const { return size_t{block_size} * num_kv_heads * head_dim; }
  size_t PoolBytes() const { return size_t{num_blocks} * BlockElements() * DTypeSize(dtype); }
};

// Non-owning view of one engine's paged KV: per-layer K and V pool base pointers.
struct PagedKvView {
  PagedKvShape shape;
  std::vector<void*> k_pools;  // num_layers entries
  std::vector<void*> v_pools;  // num_layers entries
};

// Which tokens of a sequence a chunk covers.
struct TokenSpan {
  std::span<const int32_t> block_table;  // the sequence's blocks
  uint32_t token_begin = 0;              // first sequence position copied
  // num_tokens comes from the chunk layout
};

// Copies one layer of tokens [token_begin, token_begin + chunk.num_tokens) and heads
// [chunk.head_begin, chunk.head_end) from paged memory into `chunk_layer`, which points at that
// layer's [K|V][token][head][dim] slab of a chunk object laid out as `chunk`
// (ChunkLayerBytes(chunk) bytes). `layer` is the model layer: chunk.layer_begin + i for the
// chunk's i-th layer.
// InvalidArgument when chunk.Validate() fails, shapes disagree (chunk.total_kv_heads or head_dim
// differ from the paged shape, k_pools/v_pools do not have num_layers entries), the layer is
// outside both the chunk's and the paged layer range, the block table is too short for the span,
// a block id is out of [0, num_blocks), the span's blocks are not distinct, or a pointer the copy
// needs is null or not aligned to its dtype's size. Nothing is written when an error is returned.
Status GatherLayer(const PagedKvView& paged, const TokenSpan& span, const KvLayout& chunk,
                   uint32_t layer, void* chunk_layer);

// The reverse of GatherLayer: writes the chunk's layer slab into the sequence's blocks.
Status ScatterLayer(const KvLayout& chunk, uint32_t layer, const void* chunk_layer,
                    const TokenSpan& span, PagedKvView& paged);

// Whole-object convenience: every layer of the chunk, layer after layer (validated once, before
// anything is copied).
Status GatherChunk(const PagedKvView& paged, const TokenSpan& span, const KvLayout& chunk,
                   void* chunk_bytes);
Status ScatterChunk(const KvLayout& chunk, const void* chunk_bytes, const TokenSpan& span,
                    PagedKvView& paged);

// Bytes of one layer slab of `chunk` ([K|V][token][head][dim]).
size_t ChunkLayerBytes(const KvLayout& chunk);

}  // namespace kvstash::kernels

#endif  // KVSTASH_KERNELS_PAGED_KV_H_
