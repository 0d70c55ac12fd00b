// Output-quality metrics of codec_quality: next-token agreement and KL divergence of next-token
// distributions, teacher-forced on the continuation generated with exact KV.
#ifndef KVSTASH_BENCH_CODEC_QUALITY_METRICS_H_
#define KVSTASH_BENCH_CODEC_QUALITY_METRICS_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <span>
#include <vector>

#include "eval_common.h"

namespace kvstash::bench {

// Index of the largest logit (the lowest index among equal maxima, as greedy sampling picks).
inline int32_t Argmax(std::span<const float> logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

// log softmax in f64.
inline std::vector<double> LogSoftmax(std::span<const float> logits) {
  double max = -INFINITY;
  for (float x : logits) max = std::max<double>(max, x);
  double sum = 0;
  for (float x : logits) sum += std::exp(x - max);
  const double log_z = max + std::log(sum);
  std::vector<double> out(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) out[i] = logits[i] - log_z;
  return out;
}

// KL(P || Q) in nats, P the exact distribution.
inline double KlDivergence(std::span<const double> log_p, std::span<const double> log_q) {
  double kl = 0;
  for (size_t i = 0; i < log_p.size(); ++i) kl += std::exp(log_p[i]) * (log_p[i] - log_q[i]);
  return std::max(kl, 0.0);
}

// One prompt's comparison of a configuration against exact KV.
struct PromptScore {
  uint64_t positions = 0, matches = 0;
  uint64_t first_divergence = 0;  // first mismatching position (positions when none)
  double kl_sum = 0, kl_first = 0, kl_max = 0;
};

// `log_exact` holds one row of exact log-probabilities per generated position, `logits` the
// configuration's logits [positions][vocab], `targets` the exact greedy tokens.
inline PromptScore Score(const std::vector<std::vector<double>>& log_exact,
                         std::span<const float> logits, std::span<const int32_t> targets,
                         size_t vocab) {
  PromptScore s;
  s.positions = targets.size();
  s.first_divergence = targets.size();
  for (size_t i = 0; i < targets.size(); ++i) {
    std::span<const float> row = logits.subspan(i * vocab, vocab);
    if (Argmax(row) == targets[i]) {
      ++s.matches;
    } else if (s.first_divergence == targets.size()) {
      s.first_divergence = i;
    }
    const double kl = KlDivergence(log_exact[i], LogSoftmax(row));
    s.kl_sum += kl;
    s.kl_max = std::max(s.kl_max, kl);
    if (i == 0) s.kl_first = kl;
  }
  return s;
}

// One configuration's results over prompts.
struct QualityStats {
  uint64_t prompts = 0, positions = 0, matches = 0, full_matches = 0;
  double first_divergence_sum = 0;
  double kl_sum = 0, kl_first_sum = 0, kl_max = 0;
  std::vector<double> kl_per_prompt;  // mean KL over the positions of each prompt
  Totals kv;                          // whole-context KV error

  void Add(const PromptScore& s, const Totals& kv_error) {
    ++prompts;
    positions += s.positions;
    matches += s.matches;
    full_matches += s.matches == s.positions ? 1 : 0;
    first_divergence_sum += static_cast<double>(s.first_divergence);
    kl_sum += s.kl_sum;
    kl_first_sum += s.kl_first;
    kl_max = std::max(kl_max, s.kl_max);
    kl_per_prompt.push_back(s.kl_sum / static_cast<double>(s.positions));
    kv.Add(kv_error);
  }

  nlohmann::json ToJson() const {
    nlohmann::json j;
    if (prompts == 0) return j;
    std::vector<double> sorted = kl_per_prompt;
    std::sort(sorted.begin(), sorted.end());
    j["prompts"] = prompts;
    j["next_token_agreement"] = static_cast<double>(matches) / static_cast<double>(positions);
    j["all_tokens_match_share"] = static_cast<double>(full_matches) / static_cast<double>(prompts);
    j["mean_first_divergence"] = first_divergence_sum / static_cast<double>(prompts);
    j["kl_mean"] = kl_sum / static_cast<double>(positions);
    j["kl_first_token_mean"] = kl_first_sum / static_cast<double>(prompts);
    j["kl_prompt_median"] = Median(kl_per_prompt);
    j["kl_prompt_p90"] = sorted[std::min(sorted.size() - 1, sorted.size() * 9 / 10)];
    j["kl_max"] = kl_max;
    j["rel_mse_k"] = kv.rel_mse_k();
    j["rel_mse_v"] = kv.rel_mse_v();
    return j;
  }
};

}  // namespace kvstash::bench

#endif  // KVSTASH_BENCH_CODEC_QUALITY_METRICS_H_
