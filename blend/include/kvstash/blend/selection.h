// Token selection shared by CacheBlend and Cache-Craft: deterministic top-k with index
// tie-breaks, and the recompute counts of the two algorithms. Pure functions, thread-safe.
#ifndef KVSTASH_BLEND_SELECTION_H_
#define KVSTASH_BLEND_SELECTION_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace kvstash::blend {

// Indices of the k largest scores, returned in ascending index order. Ties go to the lower index;
// NaN ranks below every number. k is clamped to scores.size().
std::vector<uint32_t> SelectTopK(std::span<const float> scores, size_t k);

// CacheBlend: floor(ratio * candidates), ratio clamped to [0, 1].
size_t BlendRecomputeCount(double ratio, size_t candidates);

// Cache-Craft: ceil(cfo * chunk_tokens), cfo clamped to [0, 1].
size_t CraftRecomputeCount(double cfo, size_t chunk_tokens);

}  // namespace kvstash::blend

#endif  // KVSTASH_BLEND_SELECTION_H_
