// Streaming controller over measured codec candidates (docs/codec.md §6): before each chunk of a
// multi-chunk load, pick the most exact encoding whose predicted time lets the whole rest of the
// load fit the time budget (SLO), as CacheGen's controller (stream_controller.h) does with its
// three levels, but among any candidates CalibrateCodecs measured (raw, CacheGen and KVQ levels).
//
// Candidates. Raw (ratio 1, exact) is always one. The others are CodecRates (codec_choice.h):
// ratio, encode and decode rate and the relative error on the calibration sample. Quality order:
// smaller rel_error first (raw, error 0, leads). The controller keeps a chain: a candidate is
// dropped when a more exact one (or an equally exact one seen first) is at least as small
// (ratio >= its ratio), since it could then only win through faster coding, and keeping it would
// break the property below (a less exact but less compressed candidate can be the faster one on a
// fast link and the slower one on a slow link). candidates() lists what is kept, best first.
//
// Predicted time of chunk j (raw bytes R) under candidate c at bandwidth B (bytes/s), no overlap
// of transfer and coding assumed (a chunk's container is decoded once it has arrived, and the
// service encodes the whole chunk before sending):
//   raw        R / B
//   encoded    R / (r B) + R / D                 (CostModel::kStored: a copy held encoded)
//              R / (r B) + R / D + R / E         (CostModel::kTransfer: encoded per request)
// i.e. R * SecondsPerRawByte(c, B, model), except that under kTransfer the encode term R / E is
// multiplied by encode_scale() (below).
//
// Encode rate. The calibration measures E on this host, unloaded or not; the service that encodes
// per request may be another host, or loaded, and run slower. ReportEncode feeds it what a
// service measured (GetChunk.encode_micros): the ratio of that time to the calibrated R / E of the
// candidate asked for, an EWMA with weight 1/2 on the newest (the first sample taken whole), scales
// the encode term of every encoded candidate alike, since what slows one codec on a loaded node
// slows the others; 1 until a sample has come. A common scale only moves the lines' intercepts, so
// the property below still holds.
//
// Rule (per chunk, the estimated policy of stream_controller.h): B = the fixed bandwidth if set,
// else the last measured throughput (initial_bandwidth_bps before any). Take the first candidate
// (most exact) for which the rest of the load, every remaining chunk at c, takes at most the
// budget minus the time spent so far. If none fits: Fallback::kFastest takes the quicker of
// recomputing the chunk (tokens / prefill_tokens_per_s) and the candidate fastest at B (ties to
// the more exact); Fallback::kRecompute always recomputes. Without a prefill rate (0) recomputing
// is no option and both take the fastest candidate (at zero bandwidth: raw, at infinite time).
//
// Property (tested): for a fixed state the decision's rank is non-increasing in B (a faster link
// never gets a less exact candidate; recompute ranks last): the set of fitting candidates grows
// with B, and along the chain the fastest candidate moves to less compressed, more exact ones as
// B grows (the per-byte times are lines in 1/B whose slopes 1/r increase with exactness).
//
// Not thread-safe: one controller per load.
#ifndef KVSTASH_CODEC_CANDIDATE_CONTROLLER_H_
#define KVSTASH_CODEC_CANDIDATE_CONTROLLER_H_

#include <cstdint>
#include <span>
#include <vector>

#include "kvstash/codec/codec_choice.h"
#include "kvstash/codec/stream_controller.h"

namespace kvstash::codec {

struct CandidateChunk {
  uint64_t raw_bytes = 0;  // the object's size as stored
  uint32_t tokens = 0;     // tokens to prefill if recomputed
};

struct CandidateControllerConfig {
  double budget_s = 0.5;  // the whole load (TTFT share)
  Fallback fallback = Fallback::kFastest;
  double prefill_tokens_per_s = 0;  // measured prefill rate; 0: recomputing is no option
  CostModel cost_model = CostModel::kTransfer;
  double initial_bandwidth_bps = 0;  // before the first measurement
  // > 0: use this bandwidth for every decision instead of the measurements (a link of known rate,
  // like cachesvc --peer-link-mbps; tests that must not depend on the machine's speed).
  double fixed_bandwidth_bps = 0;
};

struct CandidateDecision {
  static constexpr int kRecompute = -1;
  int candidate = kRecompute;  // index into candidates(), or kRecompute
  double predicted_s = 0.0;    // predicted time of this chunk under the decision
  double bandwidth_bps = 0.0;  // the bandwidth the decision assumed
};

class CandidateController {
 public:
  // `candidates` in any order, raw among them or not (raw is added); rates as CalibrateCodecs
  // measured them. Candidates with a ratio <= 0 or, encoded, without a decode rate (or an encode
  // rate under kTransfer) are dropped as unusable.
  CandidateController(const CandidateControllerConfig& config,
                      std::span<const CodecRates> candidates, std::vector<CandidateChunk> chunks);

  // The chain, most exact first; candidates()[0] is raw.
  const std::vector<CodecRates>& candidates() const { return candidates_; }

  // Decision for the next chunk. Precondition: !done().
  CandidateDecision Next() const;
  // Records the next chunk: wire bytes moved (0 for a recompute or a failure), the seconds it
  // cost the load (charged to the budget) and the seconds the bytes were in transit (what the
  // bandwidth estimate divides by; coding time excluded). transfer_s <= 0 with bytes > 0 reads
  // as an unmeasurably fast transfer (+inf). No bytes: the estimate is kept.
  void Report(uint64_t wire_bytes, double seconds, double transfer_s);
  // Records that a service encoded `raw_bytes` under candidate `index` (an encoded one) in
  // `encode_s` seconds, updating encode_scale(). Ignored under kStored, for raw, for no bytes or
  // a time that is not positive. Does not advance to the next chunk (Report does).
  void ReportEncode(size_t index, uint64_t raw_bytes, double encode_s);
  // Measured / calibrated encode time (see above); 1 before any ReportEncode.
  double encode_scale() const { return encode_scale_; }

  bool done() const { return next_ >= chunks_.size(); }
  size_t next_chunk() const { return next_; }
  double elapsed_s() const { return elapsed_s_; }
  double bandwidth_estimate_bps() const { return estimate_bps_; }

  // The rule alone, for the next chunk at a given bandwidth and time already spent.
  CandidateDecision Decide(double bandwidth_bps, double elapsed_s) const;
  // Predicted seconds of `chunk` under candidate `index` at `bandwidth_bps`.
  double PredictSeconds(const CandidateChunk& chunk, size_t index, double bandwidth_bps) const;

 private:
  CandidateControllerConfig config_;
  std::vector<CodecRates> candidates_;
  std::vector<CandidateChunk> chunks_;
  size_t next_ = 0;
  double elapsed_s_ = 0.0;
  double estimate_bps_ = 0.0;
  double encode_scale_ = 1.0;
  bool encode_measured_ = false;
};

}  // namespace kvstash::codec

#endif  // KVSTASH_CODEC_CANDIDATE_CONTROLLER_H_
