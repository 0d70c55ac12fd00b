#include "kvstash/codec/stream_controller.h"

#include <limits>

namespace kvstash::codec {
namespace {

double TransferSeconds(uint64_t bytes, double bandwidth_bps) {
  if (bytes == 0) return 0.0;
  if (!(bandwidth_bps > 0.0)) return std::numeric_limits<double>::infinity();
  return static_cast<double>(bytes) / bandwidth_bps;  // +inf bandwidth gives 0
}

}  // namespace

StreamController::StreamController(const ControllerConfig& config, std::vector<ChunkCost> chunks)
    : config_(config), chunks_(std::move(chunks)), estimate_bps_(config.initial_bandwidth_bps) {}

double StreamController::RecomputeSeconds(const ChunkCost& c) const {
  if (!(config_.prefill_tokens_per_s > 0.0)) return std::numeric_limits<double>::infinity();
  return c.tokens / config_.prefill_tokens_per_s;
}

ChunkDecision StreamController::Decide(double bandwidth_bps, double elapsed_s) const {
  const ChunkCost& chunk = chunks_[next_];
  for (int level = 3; level >= 1; --level) {
    const double own = TransferSeconds(chunk.level_bytes[level - 1], bandwidth_bps);
    bool fits;
    if (config_.policy == ControllerPolicy::kOracleShare) {
      fits = own <= config_.ttft_budget_s / static_cast<double>(chunks_.size());
    } else {
      double rest = 0.0;
      for (size_t j = next_; j < chunks_.size(); ++j) {
        rest += TransferSeconds(chunks_[j].level_bytes[level - 1], bandwidth_bps);
      }
      fits = rest <= config_.ttft_budget_s - elapsed_s;
    }
    if (fits) return ChunkDecision{level, own};
  }
  const double recompute = RecomputeSeconds(chunk);
  if (config_.fallback == Fallback::kFastest) {
    const double level1 = TransferSeconds(chunk.level_bytes[0], bandwidth_bps);
    if (level1 < recompute) return ChunkDecision{1, level1};
  }
  return ChunkDecision{0, recompute};
}

ChunkDecision StreamController::Next(double true_bandwidth_bps) const {
  const double bw =
      config_.policy == ControllerPolicy::kOracleShare ? true_bandwidth_bps : estimate_bps_;
  return Decide(bw, elapsed_s_);
}

void StreamController::Report(uint64_t bytes, double seconds) {
  elapsed_s_ += seconds;
  if (bytes > 0) {
    estimate_bps_ = seconds > 0.0 ? static_cast<double>(bytes) / seconds
                                  : std::numeric_limits<double>::infinity();
  }
  ++next_;
}

TraceResult SimulateTrace(const ControllerConfig& config, std::span<const ChunkCost> chunks,
                          std::span<const double> bandwidth_bps) {
  TraceResult result;
  StreamController controller(config, std::vector<ChunkCost>(chunks.begin(), chunks.end()));
  for (size_t i = 0; i < chunks.size() && i < bandwidth_bps.size(); ++i) {
    const ChunkDecision d = controller.Next(bandwidth_bps[i]);
    uint64_t bytes = 0;
    double seconds;
    if (d.level > 0) {
      bytes = chunks[i].level_bytes[d.level - 1];
      seconds = TransferSeconds(bytes, bandwidth_bps[i]);
    } else {
      seconds = config.prefill_tokens_per_s > 0.0 ? chunks[i].tokens / config.prefill_tokens_per_s
                                                  : std::numeric_limits<double>::infinity();
    }
    controller.Report(bytes, seconds);
    result.levels.push_back(d.level);
  }
  result.total_s = controller.elapsed_s();
  result.violated = result.total_s > config.ttft_budget_s;
  return result;
}

}  // namespace kvstash::codec
