#include "kvstash/codec/candidate_controller.h"

#include <algorithm>
#include <limits>

namespace kvstash::codec {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

bool Usable(const CodecRates& c, CostModel model) {
  if (c.kind == CodecKind::kRaw) return false;  // raw is added once, as the first candidate
  return c.ratio > 0 && c.decode_bytes_per_s > 0 &&
         (model == CostModel::kStored || c.encode_bytes_per_s > 0);
}

// Most exact first; among equally exact ones the smaller first, so the larger is dropped.
std::vector<CodecRates> Chain(std::span<const CodecRates> given, CostModel model) {
  std::vector<CodecRates> sorted;
  for (const CodecRates& c : given) {
    if (Usable(c, model)) sorted.push_back(c);
  }
  std::stable_sort(sorted.begin(), sorted.end(), [](const CodecRates& a, const CodecRates& b) {
    if (a.rel_error != b.rel_error) return a.rel_error < b.rel_error;
    return a.ratio > b.ratio;
  });
  std::vector<CodecRates> chain(1);  // raw: kind kRaw, ratio 1, error 0
  for (const CodecRates& c : sorted) {
    if (c.ratio > chain.back().ratio) chain.push_back(c);
  }
  return chain;
}

}  // namespace

CandidateController::CandidateController(const CandidateControllerConfig& config,
                                         std::span<const CodecRates> candidates,
                                         std::vector<CandidateChunk> chunks)
    : config_(config),
      candidates_(Chain(candidates, config.cost_model)),
      chunks_(std::move(chunks)),
      estimate_bps_(config.initial_bandwidth_bps) {}

double CandidateController::PredictSeconds(const CandidateChunk& chunk, size_t index,
                                           double bandwidth_bps) const {
  if (chunk.raw_bytes == 0) return 0.0;
  CodecRates rates = candidates_[index];
  // A slower encode than calibrated is a lower encode rate (R / E * scale = R / (E / scale)).
  if (rates.kind != CodecKind::kRaw) rates.encode_bytes_per_s /= encode_scale_;
  return static_cast<double>(chunk.raw_bytes) *
         SecondsPerRawByte(rates, bandwidth_bps, config_.cost_model);
}

CandidateDecision CandidateController::Decide(double bandwidth_bps, double elapsed_s) const {
  const CandidateChunk& chunk = chunks_[next_];
  const double left = config_.budget_s - elapsed_s;
  size_t fastest = 0;
  double fastest_s = kInf;
  for (size_t c = 0; c < candidates_.size(); ++c) {
    double rest = 0.0;
    for (size_t j = next_; j < chunks_.size(); ++j) {
      rest += PredictSeconds(chunks_[j], c, bandwidth_bps);
    }
    const double own = PredictSeconds(chunk, c, bandwidth_bps);
    if (rest <= left) return CandidateDecision{static_cast<int>(c), own, bandwidth_bps};
    if (own < fastest_s) {  // strict: ties stay with the more exact
      fastest = c;
      fastest_s = own;
    }
  }
  // Without a prefill rate recomputing is no option: the fastest candidate, under either rule.
  if (!(config_.prefill_tokens_per_s > 0.0)) {
    return CandidateDecision{static_cast<int>(fastest), fastest_s, bandwidth_bps};
  }
  const double recompute = chunk.tokens / config_.prefill_tokens_per_s;
  if (config_.fallback == Fallback::kFastest && fastest_s < recompute) {
    return CandidateDecision{static_cast<int>(fastest), fastest_s, bandwidth_bps};
  }
  return CandidateDecision{CandidateDecision::kRecompute, recompute, bandwidth_bps};
}

CandidateDecision CandidateController::Next() const {
  const double bw = config_.fixed_bandwidth_bps > 0.0 ? config_.fixed_bandwidth_bps : estimate_bps_;
  return Decide(bw, elapsed_s_);
}

void CandidateController::Report(uint64_t wire_bytes, double seconds, double transfer_s) {
  elapsed_s_ += std::max(seconds, 0.0);
  if (wire_bytes > 0) {
    estimate_bps_ = transfer_s > 0.0 ? static_cast<double>(wire_bytes) / transfer_s : kInf;
  }
  ++next_;
}

void CandidateController::ReportEncode(size_t index, uint64_t raw_bytes, double encode_s) {
  if (config_.cost_model != CostModel::kTransfer || index >= candidates_.size() ||
      candidates_[index].kind == CodecKind::kRaw || raw_bytes == 0 || !(encode_s > 0.0)) {
    return;
  }
  const double calibrated_s =
      static_cast<double>(raw_bytes) / candidates_[index].encode_bytes_per_s;
  const double sample = encode_s / calibrated_s;
  encode_scale_ = encode_measured_ ? 0.5 * encode_scale_ + 0.5 * sample : sample;
  encode_measured_ = true;
}

}  // namespace kvstash::codec
