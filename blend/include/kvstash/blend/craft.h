// Cache-Craft's reuse metrics (Agarwal et al., SIGMOD'25; algorithms.md section 3): how much of a
// stored chunk cache C(C_i | S_old) must be fixed when C_i reappears after a new context S_new.
// Pure functions over ChunkStats, thread-safe.
#ifndef KVSTASH_BLEND_CRAFT_H_
#define KVSTASH_BLEND_CRAFT_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kvstash/blend/chunk_store.h"
#include "kvstash/common/key.h"

namespace kvstash::blend {

// beta (Eq. 6): sum of inter(C_i, C_j) over j in S_old that also occur in S_new, divided by the
// sum over all of S_old; inter summed over layers. 1 when S_old is empty or its total is 0
// (algorithms.md 3.5.2).
double PrefixOverlap(const ChunkStats& stats, std::span<const Hash128> new_context);

// gamma (Eq. 7): Kendall-tau distance between the orders of the chunks common to both contexts
// (first occurrence of each key): discordant pairs / C(m, 2); 0 when fewer than 2 are common.
double OrderPenalty(std::span<const Hash128> old_context, std::span<const Hash128> new_context);

// CCI (Eq. 9-11) = sigmoid(a / b), a = mean over layers of
// sum_j inter_l(C_i, C_j) / (|C_i| |C_j|), b = mean over layers of intra_l(C_i) / |C_i|^2.
// In [0.5, 1) for non-negative statistics; 0.5 when there is no context.
double ContextImpact(const ChunkStats& stats, uint32_t chunk_tokens);

// Not in the paper (docs/blend.md, "Deviations"): the share of the new context's tokens that sit
// in chunks of S_old, i.e. sum of new_context_tokens[j] over the j whose key is in stats.context,
// divided by the sum of all new_context_tokens. beta only asks whether the old context's chunks
// are still present, so without this a variant made behind the system prefix alone scores
// CFO 0 behind any number of new chunks. 1 when the new context is empty or has no tokens.
// `new_context` and `new_context_tokens` are parallel.
double NewContextCoverage(const ChunkStats& stats, std::span<const Hash128> new_context,
                          std::span<const uint32_t> new_context_tokens);

struct CraftScore {
  double beta = 1.0;
  double gamma = 0.0;
  double coverage = 1.0;    // NewContextCoverage when counted, else 1
  double beta_prime = 1.0;  // beta * (1 - gamma) * coverage, Eq. 8 (coverage: the extension)
  double cci = 0.5;
  double cfo = 0.0;               // clamp(alpha * cci * (1 - beta_prime), 0, 1), Eq. 12
  uint32_t recompute_tokens = 0;  // ceil(cfo * |C_i|)
};

// The paper's score when `new_context_tokens` is empty; otherwise (parallel to new_context) beta'
// is also multiplied by NewContextCoverage. Either way, S_new == S_old gives CFO 0.
CraftScore ScoreVariant(const ChunkStats& stats, uint32_t chunk_tokens,
                        std::span<const Hash128> new_context, double alpha,
                        std::span<const uint32_t> new_context_tokens = {});

// Index of the variant with the smallest CFO; ties go to the newest (largest stats.created), then
// to the lowest slot. `scores` and `variants` are parallel and non-empty.
size_t ChooseVariant(std::span<const CraftScore> scores, std::span<const ChunkRecord> variants);

// The chunk-relative indices to recompute: top recompute_tokens by stats.token_scores (Eq. 14),
// ties by index, ascending.
std::vector<uint32_t> CraftTokens(const ChunkStats& stats, uint32_t recompute_tokens);

}  // namespace kvstash::blend

#endif  // KVSTASH_BLEND_CRAFT_H_
