#include "paged_kv_check.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace kvstash::kernels::internal {
namespace {

Status Bad(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("paged KV copy: ", what));
}

// Far above any engine's pool, low enough that every offset computation fits in 64 bits.
constexpr uint64_t kMaxPoolSlots = uint64_t{1} << 36;

}  // namespace

Status ValidatePagedCopy(const PagedKvView& paged, const TokenSpan& span, const KvLayout& chunk,
                         uint32_t first_layer, uint32_t layer_count, const void* chunk_ptr) {
  KVSTASH_RETURN_IF_ERROR(chunk.Validate());
  const PagedKvShape& shape = paged.shape;
  if (shape.num_layers == 0 || shape.num_kv_heads == 0 || shape.head_dim == 0 ||
      shape.block_size == 0 || shape.num_blocks == 0) {
    return Bad("paged shape has a zero dimension");
  }
  if (DTypeSize(shape.dtype) == 0) return Bad("paged dtype is unknown");
  if (uint64_t{shape.num_blocks} * shape.block_size > kMaxPoolSlots) {
    return Bad("paged pool has too many slots");
  }
  if (paged.k_pools.size() != shape.num_layers || paged.v_pools.size() != shape.num_layers) {
    return Bad(absl::StrCat("k_pools/v_pools have ", paged.k_pools.size(), "/",
                            paged.v_pools.size(), " entries, paged shape has ", shape.num_layers,
                            " layers"));
  }
  if (chunk.total_kv_heads != shape.num_kv_heads) {
    return Bad(absl::StrCat("chunk has ", chunk.total_kv_heads, " KV heads in total, paged memory ",
                            shape.num_kv_heads));
  }
  if (chunk.head_dim != shape.head_dim) {
    return Bad(
        absl::StrCat("chunk head_dim ", chunk.head_dim, " != paged head_dim ", shape.head_dim));
  }
  const uint64_t chunk_layer_end = uint64_t{chunk.layer_begin} + chunk.num_layers;
  const uint64_t last = uint64_t{first_layer} + layer_count;
  if (layer_count == 0 || first_layer < chunk.layer_begin || last > chunk_layer_end) {
    return Bad(absl::StrCat("layer ", first_layer, " (+", layer_count,
                            ") is outside the chunk's layers [", chunk.layer_begin, ", ",
                            chunk_layer_end, ")"));
  }
  if (last > shape.num_layers) {
    return Bad(absl::StrCat("layer ", last - 1, " is outside the paged memory's ", shape.num_layers,
                            " layers"));
  }
  auto misaligned = [](const void* p, DType dtype) {
    return reinterpret_cast<uintptr_t>(p) % DTypeSize(dtype) != 0;
  };
  for (uint32_t layer = first_layer; layer < last; ++layer) {
    if (paged.k_pools[layer] == nullptr || paged.v_pools[layer] == nullptr) {
      return Bad(absl::StrCat("pool pointer of layer ", layer, " is null"));
    }
    if (misaligned(paged.k_pools[layer], shape.dtype) ||
        misaligned(paged.v_pools[layer], shape.dtype)) {
      return Bad(absl::StrCat("pool pointer of layer ", layer, " is not aligned to its dtype"));
    }
  }
  if (chunk_ptr == nullptr) return Bad("chunk pointer is null");
  if (misaligned(chunk_ptr, chunk.dtype)) return Bad("chunk pointer is not aligned to its dtype");

  const uint64_t end = uint64_t{span.token_begin} + chunk.num_tokens;
  const size_t first_block = BlockIndex(shape, span.token_begin);
  const size_t last_block = BlockIndex(shape, end - 1);
  if (last_block >= span.block_table.size()) {
    return Bad(absl::StrCat("block table has ", span.block_table.size(), " blocks, tokens [",
                            span.token_begin, ", ", end, ") need ", last_block + 1));
  }
  std::vector<int32_t> blocks(span.block_table.begin() + first_block,
                              span.block_table.begin() + last_block + 1);
  for (int32_t block : blocks) {
    if (block < 0 || static_cast<uint32_t>(block) >= shape.num_blocks) {
      return Bad(absl::StrCat("block id ", block, " is outside [0, ", shape.num_blocks, ")"));
    }
  }
  std::sort(blocks.begin(), blocks.end());
  auto repeated = std::adjacent_find(blocks.begin(), blocks.end());
  if (repeated != blocks.end()) {
    return Bad(absl::StrCat("block id ", *repeated, " appears twice in the span"));
  }
  return OkStatus();
}

}  // namespace kvstash::kernels::internal
