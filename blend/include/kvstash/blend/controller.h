// CacheBlend's loading controller (algorithms.md 2.1 item 5) and the layer pipeline's time model.
//
// With Prefill(L) the measured time of a full prefill of the L reused tokens and T_load(tier) =
// kv_bytes / throughput(tier):
//   T_recompute(r) = r * Prefill(L)
//   tier = the cheapest tier with T_load(tier) <= T_recompute(r*) (else the fastest tier)
//   r    = max(r*, T_load(tier) / Prefill(L)), at most 1
// so loading hides behind recompute, and recomputing more than r* is free when loading is the
// bottleneck anyway.
//
// LoadController learns Prefill time per token and each tier's throughput from measurements
// (exponential moving averages). Thread-safe.
#ifndef KVSTASH_BLEND_CONTROLLER_H_
#define KVSTASH_BLEND_CONTROLLER_H_

#include <cstdint>
#include <mutex>
#include <span>
#include <vector>

#include "kvstash/blend/chunk_store.h"

namespace kvstash::blend {

struct TierThroughput {
  Tier tier = Tier::kUnknown;
  double bytes_per_second = 0.0;
};

struct ControllerInputs {
  uint64_t kv_bytes = 0;              // bytes of reused KV to load (all layers)
  double prefill_seconds = 0.0;       // Prefill(L): full prefill time of the prompt
  std::vector<TierThroughput> tiers;  // cheapest first (e.g. SSD, then CPU)
  double target_ratio = 0.15;         // r*
};

struct ControllerDecision {
  double ratio = 0.15;
  Tier tier = Tier::kUnknown;      // kUnknown when no tier was given
  double load_seconds = 0.0;       // T_load(tier)
  double recompute_seconds = 0.0;  // T_recompute(ratio)
};

ControllerDecision DecideLoad(const ControllerInputs& in);

// Finish time of a two-stage pipeline: a loader fills layers in order (load[l] each), compute
// runs layers in order (compute[l] each) and starts layer l only once it is loaded. A layer that
// needs no load has load 0. ~ sum over l of max(load[l], compute[l]) when both are steady.
// InvalidArgument-free: spans of different lengths use the shorter.
double PipelinedSeconds(std::span<const double> load, std::span<const double> compute);

class LoadController {
 public:
  explicit LoadController(double target_ratio = 0.15, double smoothing = 0.3);

  // A full prefill of `tokens` tokens took `seconds`.
  void ObservePrefill(uint32_t tokens, double seconds);
  // `bytes` of KV came from `tier` in `seconds`.
  void ObserveLoad(Tier tier, uint64_t bytes, double seconds);

  // Decision for `tokens` reused tokens of `kv_bytes`, over the tiers with a measured throughput,
  // cheapest first (SSD, remote, CPU, GPU, process). Without a prefill measurement the ratio is r*.
  ControllerDecision Decide(uint32_t tokens, uint64_t kv_bytes) const;

  double prefill_seconds_per_token() const;
  double throughput(Tier tier) const;  // bytes/s; 0 when never measured

 private:
  double target_ratio_, smoothing_;
  mutable std::mutex mu_;
  double prefill_per_token_ = 0.0;
  double throughput_[kTierCount] = {};  // by Tier
};

}  // namespace kvstash::blend

#endif  // KVSTASH_BLEND_CONTROLLER_H_
