// The layer loop of every blending method (see blender.h for the methods). Per layer:
//   ComputeQkv of the batch's rows -> wait for the loader's layer -> [check layer: deviation of
//   fresh vs cached K or V, selection] -> WriteKv (fresh KV replaces cached KV in paged memory)
//   -> [Keep the selected rows] -> FinishLayer (attention over paged KV) -> [early termination].
// The rows are always in ascending position order.
#include "executor.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "kvstash/blend/selection.h"

namespace kvstash::blend::internal {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Squared distance of each candidate row's fresh K (or V) from the cached one in paged memory.
Result<std::vector<float>> DeviationScores(engine::Engine& engine, const engine::Sequence& seq,
                                           uint32_t layer, const engine::TokenBatch& batch,
                                           std::span<const size_t> rows, Deviation which) {
  const size_t width = engine.config().kv_dim();
  std::vector<uint32_t> positions(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) positions[i] = batch.positions()[rows[i]];
  std::vector<float> k(rows.size() * width), v(rows.size() * width);
  KVSTASH_RETURN_IF_ERROR(engine.ReadKv(seq, layer, positions, k.data(), v.data()));
  std::vector<float> scores(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    const float* fresh = which == Deviation::kKey ? batch.k(rows[i]) : batch.v(rows[i]);
    const float* cached = (which == Deviation::kKey ? k.data() : v.data()) + i * width;
    double sum = 0.0;
    for (size_t d = 0; d < width; ++d) {
      const double diff = double{fresh[d]} - double{cached[d]};
      sum += diff * diff;
    }
    scores[i] = static_cast<float>(sum);
  }
  return scores;
}

// Keeps the uncached rows and the `picked` entries of `candidates` (row indices, ascending).
Status KeepRows(engine::TokenBatch& batch, const std::vector<bool>& cached,
                std::span<const size_t> candidates, std::span<const uint32_t> picked) {
  std::vector<bool> keep(batch.size(), false);
  for (size_t r = 0; r < batch.size(); ++r) keep[r] = !cached[batch.positions()[r]];
  for (uint32_t i : picked) keep[candidates[i]] = true;
  std::vector<size_t> rows;
  for (size_t r = 0; r < batch.size(); ++r) {
    if (keep[r]) rows.push_back(r);
  }
  return batch.Keep(rows);
}

std::vector<size_t> CachedRows(const engine::TokenBatch& batch, const std::vector<bool>& cached) {
  std::vector<size_t> rows;
  for (size_t r = 0; r < batch.size(); ++r) {
    if (cached[batch.positions()[r]]) rows.push_back(r);
  }
  return rows;
}

// Cache-Craft early termination: drop cached rows of the chunks the question attends to least.
Status TerminateUnfocused(engine::TokenBatch& batch, const ExecPlan& plan,
                          const StatsCollector& collector) {
  const BlendPrompt& prompt = *plan.prompt;
  const size_t q = prompt.size() - 1;
  const ChunkStats& qs = collector.stats(q);
  std::vector<double> mass(prompt.size(), 0.0);
  for (uint32_t l = 0; l < qs.num_layers; ++l) {
    for (size_t j = 0; j < q; ++j) mass[j] += qs.inter[l * q + j];
  }
  double total = 0.0;
  size_t chunks = 0;
  for (size_t j = 0; j < q; ++j) {
    if (prompt.segment(j).kind != SegmentKind::kChunk) continue;
    total += mass[j];
    ++chunks;
  }
  if (chunks == 0 || !(total > 0.0)) return OkStatus();
  std::vector<bool> drop(prompt.size(), false);
  for (size_t j = 0; j < q; ++j) {
    drop[j] = prompt.segment(j).kind == SegmentKind::kChunk &&
              mass[j] / total < plan.focus_threshold / static_cast<double>(chunks);
  }
  std::vector<size_t> rows;
  for (size_t r = 0; r < batch.size(); ++r) {
    const uint32_t p = batch.positions()[r];
    if (!plan.cached[p] || !drop[prompt.SegmentAt(p)]) rows.push_back(r);
  }
  return batch.Keep(rows);
}

}  // namespace

std::vector<uint32_t> RandomSubset(size_t n, size_t k, uint64_t seed) {
  k = std::min(k, n);
  std::vector<uint32_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0u);
  uint64_t state = seed;
  for (size_t i = 0; i < k; ++i) {
    const size_t j = i + static_cast<size_t>(SplitMix64(state) % (n - i));
    std::swap(idx[i], idx[j]);
  }
  idx.resize(k);
  std::sort(idx.begin(), idx.end());
  return idx;
}

Result<ExecResult> RunLayers(engine::Engine& engine, engine::Sequence& seq, const ExecPlan& plan,
                             LayerLoader* loader) {
  const engine::ModelConfig& c = engine.config();
  const BlendPrompt& prompt = *plan.prompt;
  const uint32_t n = prompt.num_tokens();
  const std::vector<int32_t> all_tokens = prompt.Tokens();
  std::vector<int32_t> tokens;
  for (uint32_t p : plan.initial_rows) tokens.push_back(all_tokens[p]);
  KVSTASH_ASSIGN_OR_RETURN(engine::TokenBatch batch, engine.Embed(tokens, plan.initial_rows));

  size_t cached_total = 0;
  for (bool b : plan.cached) cached_total += b ? 1 : 0;

  std::vector<bool> capture = plan.capture_segments;
  capture.resize(prompt.size(), false);
  if (plan.early_termination) capture[prompt.size() - 1] = true;
  StatsCollector collector(prompt, capture, c.num_heads, c.num_layers);
  const uint32_t termination_layer =
      plan.termination_layer == 0 ? c.num_layers / 2 : plan.termination_layer;

  ExecResult out;
  out.recomputed_per_layer.assign(c.num_layers, 0);
  out.layer_compute_seconds.assign(c.num_layers, 0.0);
  std::vector<uint32_t> limits;
  std::vector<uint32_t> positions;
  for (uint32_t l = 0; l < c.num_layers; ++l) {
    auto t0 = Clock::now();
    out.recomputed_per_layer[l] = static_cast<uint32_t>(batch.size());
    KVSTASH_RETURN_IF_ERROR(engine.ComputeQkv(l, batch));
    auto t_wait = Clock::now();
    if (loader != nullptr) KVSTASH_RETURN_IF_ERROR(loader->WaitLayer(l));
    auto t1 = Clock::now();

    const bool check = plan.mode == ExecPlan::Mode::kCheck && l == plan.check_layer;
    const bool filter = plan.mode == ExecPlan::Mode::kCheck && plan.gradual &&
                        l > plan.check_layer && l <= plan.check_layer + plan.gradual_layers;
    if (check || filter) {
      double ratio = plan.ratio;
      if (plan.gradual) {
        const double f = plan.gradual_layers == 0
                             ? 1.0
                             : static_cast<double>(l - plan.check_layer) / plan.gradual_layers;
        ratio = plan.gradual_start_ratio + (plan.ratio - plan.gradual_start_ratio) * f;
      }
      const std::vector<size_t> candidates = CachedRows(batch, plan.cached);
      const size_t k = std::min(candidates.size(), BlendRecomputeCount(ratio, cached_total));
      std::vector<uint32_t> picked;
      if (plan.random) {
        picked = RandomSubset(candidates.size(), k, plan.seed + l);
      } else {
        KVSTASH_ASSIGN_OR_RETURN(
            std::vector<float> scores,
            DeviationScores(engine, seq, l, batch, candidates, plan.deviation));
        picked = SelectTopK(scores, k);
      }
      // Every row's fresh K/V is written first: at the check layer that makes layers <= check
      // exact, as in the reference code.
      KVSTASH_RETURN_IF_ERROR(engine.WriteKv(seq, l, batch));
      KVSTASH_RETURN_IF_ERROR(KeepRows(batch, plan.cached, candidates, picked));
    } else {
      KVSTASH_RETURN_IF_ERROR(engine.WriteKv(seq, l, batch));
    }

    positions.assign(batch.positions().begin(), batch.positions().end());
    limits.clear();
    if (plan.mask == MaskMode::kReferenceBottomRight) {
      const uint32_t q = static_cast<uint32_t>(batch.size());
      for (uint32_t i = 0; i < q; ++i) limits.push_back(n - q + i);
    }
    engine::AttentionProbsFn probs;
    if (collector.any()) probs = collector.Callback(positions);
    KVSTASH_RETURN_IF_ERROR(engine.FinishLayer(seq, l, batch, probs, limits));
    if (collector.any()) collector.EndLayer(l);
    if (plan.early_termination && l == termination_layer) {
      KVSTASH_RETURN_IF_ERROR(TerminateUnfocused(batch, plan, collector));
    }
    out.layer_compute_seconds[l] = Seconds(t0, t_wait) + Seconds(t1, Clock::now());
  }

  for (uint32_t p : batch.positions()) {
    if (plan.cached[p]) out.selected.push_back(p);
  }
  const auto last = std::find(batch.positions().begin(), batch.positions().end(), n - 1);
  if (last == batch.positions().end()) {
    return absl::InternalError("blend: the prompt's last token was not computed");
  }
  const size_t last_row[] = {static_cast<size_t>(last - batch.positions().begin())};
  KVSTASH_ASSIGN_OR_RETURN(out.logits, engine.Logits(batch, last_row));
  out.stats = collector.Take();
  return out;
}

// ---------------------------------------------------------------------------------------------

StatsCollector::StatsCollector(const BlendPrompt& prompt, std::vector<bool> capture,
                               uint32_t num_heads, uint32_t num_layers)
    : prompt_(prompt),
      capture_(std::move(capture)),
      num_heads_(num_heads),
      num_layers_(num_layers),
      num_segments_(prompt.size()) {
  capture_.resize(num_segments_, false);
  any_ = std::find(capture_.begin(), capture_.end(), true) != capture_.end();
  stats_.resize(num_segments_);
  if (!any_) return;
  mass_.assign(size_t{prompt.num_tokens()} * num_heads_ * num_segments_, 0.0);
  for (size_t i = 0; i < num_segments_; ++i) {
    if (!capture_[i]) continue;
    ChunkStats& s = stats_[i];
    s.num_layers = num_layers;
    for (size_t j = 0; j < i; ++j) {
      s.context.push_back(prompt.Key(j));
      s.context_tokens.push_back(prompt.end(j) - prompt.begin(j));
    }
    s.inter.assign(size_t{num_layers} * i, 0.0);
    s.intra.assign(num_layers, 0.0);
    s.token_scores.assign(prompt.end(i) - prompt.begin(i), 0.0f);
  }
}

engine::AttentionProbsFn StatsCollector::Callback(std::span<const uint32_t> positions) {
  return [this, positions](size_t row, uint32_t head, std::span<const float> probs) {
    const uint32_t p = positions[row];
    const size_t seg = prompt_.SegmentAt(p);
    if (!capture_[seg]) return;
    double* m = mass_.data() + (size_t{p} * num_heads_ + head) * num_segments_;
    for (size_t j = 0; j <= seg; ++j) {
      const uint32_t b = prompt_.begin(j);
      const uint32_t e = std::min<uint32_t>(prompt_.end(j), static_cast<uint32_t>(probs.size()));
      double sum = 0.0;
      for (uint32_t t = b; t < e; ++t) sum += probs[t];
      m[j] = sum;
    }
  };
}

void StatsCollector::EndLayer(uint32_t layer) {
  for (size_t i = 0; i < num_segments_; ++i) {
    if (!capture_[i]) continue;
    ChunkStats& s = stats_[i];
    for (uint32_t p = prompt_.begin(i); p < prompt_.end(i); ++p) {
      double before = 0.0;
      for (size_t j = 0; j <= i; ++j) {
        double avg = 0.0;
        for (uint32_t h = 0; h < num_heads_; ++h) {
          avg += mass_[(size_t{p} * num_heads_ + h) * num_segments_ + j];
        }
        avg /= num_heads_;
        if (j < i) {
          s.inter[size_t{layer} * i + j] += avg;
          before += avg;
        } else {
          s.intra[layer] += avg;
        }
      }
      s.token_scores[p - prompt_.begin(i)] += static_cast<float>(before / num_layers_);
    }
  }
  std::fill(mass_.begin(), mass_.end(), 0.0);
}

std::vector<ChunkStats> StatsCollector::Take() { return std::move(stats_); }

}  // namespace kvstash::blend::internal
