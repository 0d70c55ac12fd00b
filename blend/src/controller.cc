#include "kvstash/blend/controller.h"

#include <algorithm>
#include <limits>

namespace kvstash::blend {

ControllerDecision DecideLoad(const ControllerInputs& in) {
  ControllerDecision d;
  const double r_star = std::clamp(in.target_ratio, 0.0, 1.0);
  d.ratio = r_star;
  auto load_time = [&](const TierThroughput& t) {
    return t.bytes_per_second > 0.0 ? static_cast<double>(in.kv_bytes) / t.bytes_per_second
                                    : std::numeric_limits<double>::infinity();
  };
  const double budget = r_star * in.prefill_seconds;
  const TierThroughput* chosen = nullptr;
  for (const TierThroughput& t : in.tiers) {
    if (load_time(t) <= budget) {
      chosen = &t;
      break;
    }
  }
  if (chosen == nullptr) {
    for (const TierThroughput& t : in.tiers) {
      if (chosen == nullptr || t.bytes_per_second > chosen->bytes_per_second) chosen = &t;
    }
  }
  if (chosen != nullptr) {
    d.tier = chosen->tier;
    d.load_seconds = load_time(*chosen);
    if (in.prefill_seconds > 0.0) {
      d.ratio = std::min(1.0, std::max(r_star, d.load_seconds / in.prefill_seconds));
    }
  }
  d.recompute_seconds = d.ratio * in.prefill_seconds;
  return d;
}

double PipelinedSeconds(std::span<const double> load, std::span<const double> compute) {
  const size_t n = std::min(load.size(), compute.size());
  double loaded = 0.0, done = 0.0;
  for (size_t l = 0; l < n; ++l) {
    loaded += load[l];
    done = std::max(done, loaded) + compute[l];
  }
  return done;
}

LoadController::LoadController(double target_ratio, double smoothing)
    : target_ratio_(target_ratio), smoothing_(std::clamp(smoothing, 0.0, 1.0)) {}

void LoadController::ObservePrefill(uint32_t tokens, double seconds) {
  if (tokens == 0 || !(seconds > 0.0)) return;
  std::lock_guard<std::mutex> lock(mu_);
  const double x = seconds / tokens;
  prefill_per_token_ =
      prefill_per_token_ == 0.0 ? x : (1 - smoothing_) * prefill_per_token_ + smoothing_ * x;
}

void LoadController::ObserveLoad(Tier tier, uint64_t bytes, double seconds) {
  const auto i = static_cast<size_t>(tier);
  if (i >= kTierCount || bytes == 0 || !(seconds > 0.0)) return;
  std::lock_guard<std::mutex> lock(mu_);
  const double x = static_cast<double>(bytes) / seconds;
  throughput_[i] = throughput_[i] == 0.0 ? x : (1 - smoothing_) * throughput_[i] + smoothing_ * x;
}

ControllerDecision LoadController::Decide(uint32_t tokens, uint64_t kv_bytes) const {
  ControllerInputs in;
  in.kv_bytes = kv_bytes;
  in.target_ratio = target_ratio_;
  std::lock_guard<std::mutex> lock(mu_);
  in.prefill_seconds = prefill_per_token_ * tokens;
  // Cheapest storage first.
  for (Tier t : {Tier::kSsd, Tier::kRemote, Tier::kCpu, Tier::kGpu, Tier::kProcess}) {
    double bps = throughput_[static_cast<size_t>(t)];
    if (bps > 0.0) in.tiers.push_back({t, bps});
  }
  return DecideLoad(in);
}

double LoadController::prefill_seconds_per_token() const {
  std::lock_guard<std::mutex> lock(mu_);
  return prefill_per_token_;
}

double LoadController::throughput(Tier tier) const {
  const auto i = static_cast<size_t>(tier);
  if (i >= kTierCount) return 0.0;
  std::lock_guard<std::mutex> lock(mu_);
  return throughput_[i];
}

}  // namespace kvstash::blend
