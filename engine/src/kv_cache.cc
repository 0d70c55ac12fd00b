#include "kvstash/engine/kv_cache.h"

#include <sys/mman.h>

#include <algorithm>

namespace kvstash::engine {

Result<std::unique_ptr<PagedKvCache>> PagedKvCache::Create(const ModelConfig& config,
                                                           const KvCacheOptions& options) {
  KVSTASH_RETURN_IF_ERROR(config.Validate());
  if (options.num_blocks == 0 || options.block_size == 0 ||
      options.num_blocks > (1u << 30) / options.block_size) {
    return absl::InvalidArgumentError("KV cache: num_blocks and block_size must be positive");
  }
  if (options.dtype != DType::kF16 && options.dtype != DType::kF32) {
    return absl::InvalidArgumentError("KV cache: dtype must be f16 or f32");
  }
  std::unique_ptr<PagedKvCache> cache(new PagedKvCache());
  kernels::PagedKvShape& s = cache->shape_;
  s.num_layers = config.num_layers;
  s.num_kv_heads = config.num_kv_heads;
  s.head_dim = config.head_dim;
  s.block_size = options.block_size;
  s.num_blocks = options.num_blocks;
  s.dtype = options.dtype;
  cache->token_bytes_ = size_t{s.num_kv_heads} * s.head_dim * DTypeSize(s.dtype);
  cache->pool_bytes_ = s.PoolBytes();
  cache->mapped_bytes_ = cache->pool_bytes_ * 2 * s.num_layers;
  // Anonymous mapping: zero-filled, committed page by page as blocks get used.
  void* p = ::mmap(nullptr, cache->mapped_bytes_, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return absl::ResourceExhaustedError("KV cache: cannot map " +
                                        std::to_string(cache->mapped_bytes_) + " bytes");
  }
  cache->base_ = static_cast<uint8_t*>(p);
  cache->free_.resize(s.num_blocks);
  for (uint32_t i = 0; i < s.num_blocks; ++i) {
    cache->free_[i] = static_cast<int32_t>(s.num_blocks - 1 - i);
  }
  return cache;
}

PagedKvCache::~PagedKvCache() {
  if (base_ != nullptr) ::munmap(base_, mapped_bytes_);
}

kernels::PagedKvView PagedKvCache::View() const {
  kernels::PagedKvView view;
  view.shape = shape_;
  for (uint32_t l = 0; l < shape_.num_layers; ++l) {
    view.k_pools.push_back(KPool(l));
    view.v_pools.push_back(VPool(l));
  }
  return view;
}

std::unique_ptr<Sequence> PagedKvCache::NewSequence() {
  return std::unique_ptr<Sequence>(new Sequence(this));
}

uint32_t PagedKvCache::free_blocks() const {
  std::lock_guard lock(mu_);
  return static_cast<uint32_t>(free_.size());
}

Result<std::vector<int32_t>> PagedKvCache::AllocateBlocks(size_t count) {
  std::lock_guard lock(mu_);
  if (count > free_.size()) {
    return absl::ResourceExhaustedError("KV cache: need " + std::to_string(count) + " blocks, " +
                                        std::to_string(free_.size()) + " free");
  }
  std::vector<int32_t> out(free_.end() - static_cast<ptrdiff_t>(count), free_.end());
  std::reverse(out.begin(), out.end());
  free_.resize(free_.size() - count);
  return out;
}

void PagedKvCache::FreeBlocks(std::span<const int32_t> blocks) {
  std::lock_guard lock(mu_);
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) free_.push_back(*it);
}

Sequence::~Sequence() { cache_->FreeBlocks(blocks_); }

Status Sequence::Resize(uint32_t length) {
  const uint32_t bs = cache_->shape_.block_size;
  size_t need = (size_t{length} + bs - 1) / bs;
  if (need > blocks_.size()) {
    KVSTASH_ASSIGN_OR_RETURN(auto fresh, cache_->AllocateBlocks(need - blocks_.size()));
    blocks_.insert(blocks_.end(), fresh.begin(), fresh.end());
  } else if (need < blocks_.size()) {
    cache_->FreeBlocks(std::span<const int32_t>(blocks_).subspan(need));
    blocks_.resize(need);
  }
  length_ = length;
  return OkStatus();
}

size_t Sequence::SlotOffset(uint32_t pos) const {
  const uint32_t bs = cache_->shape_.block_size;
  size_t slot = size_t(blocks_[pos / bs]) * bs + pos % bs;
  return slot * cache_->token_bytes_;
}

uint8_t* Sequence::KRow(uint32_t layer, uint32_t pos) const {
  return cache_->KPool(layer) + SlotOffset(pos);
}

uint8_t* Sequence::VRow(uint32_t layer, uint32_t pos) const {
  return cache_->VPool(layer) + SlotOffset(pos);
}

kernels::TokenSpan Sequence::Span(uint32_t token_begin) const {
  kernels::TokenSpan span;
  span.block_table = blocks_;
  span.token_begin = token_begin;
  return span;
}

}  // namespace kvstash::engine
