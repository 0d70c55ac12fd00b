// Validation shared by the CPU and CUDA paged-KV copies, so both reject exactly the same inputs.
#ifndef KVSTASH_KERNELS_SRC_PAGED_KV_CHECK_H_
#define KVSTASH_KERNELS_SRC_PAGED_KV_CHECK_H_

#include <cstdint>

#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"
#include "kvstash/kernels/paged_kv.h"

namespace kvstash::kernels::internal {

// Checks a copy of model layers [first_layer, first_layer + layer_count) between `paged` and a
// chunk laid out as `chunk` whose bytes start at `chunk_ptr` (the slab of first_layer). Covers
// every error case documented in paged_kv.h.
Status ValidatePagedCopy(const PagedKvView& paged, const TokenSpan& span, const KvLayout& chunk,
                         uint32_t first_layer, uint32_t layer_count, const void* chunk_ptr);

// Index into span.block_table of the block holding sequence position `pos`.
inline size_t BlockIndex(const PagedKvShape& shape, uint64_t pos) { return pos / shape.block_size; }

}  // namespace kvstash::kernels::internal

#endif  // KVSTASH_KERNELS_SRC_PAGED_KV_CHECK_H_
