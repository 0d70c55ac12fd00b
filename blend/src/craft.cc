#include "kvstash/blend/craft.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "kvstash/blend/selection.h"

namespace kvstash::blend {
namespace {

bool Contains(std::span<const Hash128> keys, const Hash128& k) {
  return std::find(keys.begin(), keys.end(), k) != keys.end();
}

}  // namespace

double PrefixOverlap(const ChunkStats& stats, std::span<const Hash128> new_context) {
  const size_t m = stats.context.size();
  if (m == 0) return 1.0;
  double common = 0.0, total = 0.0;
  for (size_t j = 0; j < m; ++j) {
    double inter_j = 0.0;
    for (uint32_t l = 0; l < stats.num_layers; ++l) inter_j += stats.inter[l * m + j];
    total += inter_j;
    if (Contains(new_context, stats.context[j])) common += inter_j;
  }
  if (!(total > 0.0)) return 1.0;
  return common / total;
}

double OrderPenalty(std::span<const Hash128> old_context, std::span<const Hash128> new_context) {
  // Rank in the new context of each common key, listed in old-context order.
  std::unordered_map<Hash128, size_t> new_rank;
  for (size_t i = 0; i < new_context.size(); ++i) new_rank.emplace(new_context[i], i);
  std::vector<size_t> ranks;
  std::vector<Hash128> seen;
  for (const Hash128& k : old_context) {
    if (Contains(seen, k)) continue;
    seen.push_back(k);
    auto it = new_rank.find(k);
    if (it != new_rank.end()) ranks.push_back(it->second);
  }
  const size_t c = ranks.size();
  if (c < 2) return 0.0;
  size_t discordant = 0;
  for (size_t a = 0; a < c; ++a) {
    for (size_t b = a + 1; b < c; ++b) discordant += ranks[a] > ranks[b] ? 1 : 0;
  }
  return static_cast<double>(discordant) / (static_cast<double>(c) * (c - 1) / 2.0);
}

double ContextImpact(const ChunkStats& stats, uint32_t chunk_tokens) {
  const size_t m = stats.context.size();
  if (stats.num_layers == 0 || chunk_tokens == 0) return 0.5;
  const double ci = chunk_tokens;
  double a = 0.0, b = 0.0;
  for (uint32_t l = 0; l < stats.num_layers; ++l) {
    for (size_t j = 0; j < m; ++j) {
      if (stats.context_tokens[j] == 0) continue;
      a += stats.inter[l * m + j] / (ci * stats.context_tokens[j]);
    }
    b += stats.intra[l] / (ci * ci);
  }
  a /= stats.num_layers;
  b /= stats.num_layers;
  if (!(b > 0.0)) return a > 0.0 ? 1.0 : 0.5;
  return 1.0 / (1.0 + std::exp(-a / b));
}

double NewContextCoverage(const ChunkStats& stats, std::span<const Hash128> new_context,
                          std::span<const uint32_t> new_context_tokens) {
  double covered = 0.0, total = 0.0;
  for (size_t j = 0; j < new_context.size() && j < new_context_tokens.size(); ++j) {
    total += new_context_tokens[j];
    if (Contains(stats.context, new_context[j])) covered += new_context_tokens[j];
  }
  return total > 0.0 ? covered / total : 1.0;
}

CraftScore ScoreVariant(const ChunkStats& stats, uint32_t chunk_tokens,
                        std::span<const Hash128> new_context, double alpha,
                        std::span<const uint32_t> new_context_tokens) {
  CraftScore s;
  s.beta = PrefixOverlap(stats, new_context);
  s.gamma = OrderPenalty(stats.context, new_context);
  if (!new_context_tokens.empty()) {
    s.coverage = NewContextCoverage(stats, new_context, new_context_tokens);
  }
  s.beta_prime = s.beta * (1.0 - s.gamma) * s.coverage;
  s.cci = ContextImpact(stats, chunk_tokens);
  s.cfo = std::clamp(alpha * s.cci * (1.0 - s.beta_prime), 0.0, 1.0);
  s.recompute_tokens = static_cast<uint32_t>(CraftRecomputeCount(s.cfo, chunk_tokens));
  return s;
}

size_t ChooseVariant(std::span<const CraftScore> scores, std::span<const ChunkRecord> variants) {
  size_t best = 0;
  for (size_t i = 1; i < scores.size(); ++i) {
    const CraftScore& a = scores[i];
    const CraftScore& b = scores[best];
    const uint64_t ca = variants[i].stats.created, cb = variants[best].stats.created;
    if (a.cfo < b.cfo ||
        (a.cfo == b.cfo && (ca > cb || (ca == cb && variants[i].slot < variants[best].slot)))) {
      best = i;
    }
  }
  return best;
}

std::vector<uint32_t> CraftTokens(const ChunkStats& stats, uint32_t recompute_tokens) {
  return SelectTopK(stats.token_scores, recompute_tokens);
}

}  // namespace kvstash::blend
