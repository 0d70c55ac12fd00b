// Paged KV memory in the layout of kernels/paged_kv.h (the same problem a connector faces with
// vLLM): per layer a K pool and a V pool, each [num_blocks][block_size][num_kv_heads][head_dim]
// in f16 (default) or f32. Sequences own blocks through block tables: position t of a sequence
// lives in block block_table[t / block_size], slot t % block_size.
//
// K is stored AFTER RoPE (rotated at the token's position, in the model's pair convention); V as
// computed. Values are rounded to the pool dtype (round to nearest even) when written, and the
// engine's attention reads them back from the pool, so KV written by the engine and KV loaded
// from a cache are used identically.
//
// Threading: PagedKvCache::NewSequence, Sequence::Resize and destruction may run on any thread
// (the block allocator is locked). The pool bytes are not synchronised: callers that write or
// read KV from several threads coordinate through the engine's layer hooks.
#ifndef KVSTASH_ENGINE_KV_CACHE_H_
#define KVSTASH_ENGINE_KV_CACHE_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"
#include "kvstash/engine/model.h"
#include "kvstash/kernels/paged_kv.h"

namespace kvstash::engine {

struct KvCacheOptions {
  uint32_t num_blocks = 0;    // capacity: num_blocks * block_size token positions in total
  uint32_t block_size = 16;   // tokens per block (vLLM's default)
  DType dtype = DType::kF16;  // kF16 or kF32
};

class Sequence;

class PagedKvCache {
 public:
  // InvalidArgument for zero blocks or block size, a dtype other than f16/f32, or an invalid
  // config; ResourceExhausted when the pools cannot be mapped.
  static Result<std::unique_ptr<PagedKvCache>> Create(const ModelConfig& config,
                                                      const KvCacheOptions& options);
  ~PagedKvCache();
  PagedKvCache(const PagedKvCache&) = delete;
  PagedKvCache& operator=(const PagedKvCache&) = delete;

  const kernels::PagedKvShape& shape() const { return shape_; }
  // Pointers into this cache, valid for its lifetime (what kernels::GatherLayer/ScatterLayer
  // take).
  kernels::PagedKvView View() const;
  uint8_t* KPool(uint32_t layer) const { return base_ + (2 * size_t{layer}) * pool_bytes_; }
  uint8_t* VPool(uint32_t layer) const { return base_ + (2 * size_t{layer} + 1) * pool_bytes_; }
  // Bytes of one token's K (or V) row: num_kv_heads * head_dim elements.
  size_t TokenBytes() const { return token_bytes_; }

  // An empty sequence drawing blocks from this cache. The cache must outlive it.
  std::unique_ptr<Sequence> NewSequence();
  uint32_t free_blocks() const;

 private:
  friend class Sequence;
  PagedKvCache() = default;
  Result<std::vector<int32_t>> AllocateBlocks(size_t count);
  void FreeBlocks(std::span<const int32_t> blocks);

  kernels::PagedKvShape shape_;
  size_t pool_bytes_ = 0;
  size_t token_bytes_ = 0;
  uint8_t* base_ = nullptr;
  size_t mapped_bytes_ = 0;
  mutable std::mutex mu_;
  std::vector<int32_t> free_;  // stack; blocks are handed out lowest id first
};

// One sequence's view of paged memory. Not thread-safe; not copyable.
class Sequence {
 public:
  ~Sequence();  // returns every block
  Sequence(const Sequence&) = delete;
  Sequence& operator=(const Sequence&) = delete;

  // Positions [0, length) are in use.
  uint32_t length() const { return length_; }
  std::span<const int32_t> block_table() const { return blocks_; }
  PagedKvCache& cache() const { return *cache_; }

  // Grows (allocating blocks) or shrinks (returning blocks no longer needed) to `length`
  // positions. Growing does not initialise the new positions' KV. ResourceExhausted, with the
  // sequence unchanged, when the cache has too few free blocks.
  Status Resize(uint32_t length);

  // Byte address of position `pos`'s K (or V) row in `layer`; pos < length().
  uint8_t* KRow(uint32_t layer, uint32_t pos) const;
  uint8_t* VRow(uint32_t layer, uint32_t pos) const;

  // The TokenSpan kernels::GatherLayer/ScatterLayer take for tokens starting at token_begin.
  kernels::TokenSpan Span(uint32_t token_begin) const;

 private:
  friend class PagedKvCache;
  explicit Sequence(PagedKvCache* cache) : cache_(cache) {}
  size_t SlotOffset(uint32_t pos) const;

  PagedKvCache* cache_;
  std::vector<int32_t> blocks_;
  uint32_t length_ = 0;
};

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_KV_CACHE_H_
