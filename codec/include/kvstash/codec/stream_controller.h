// CacheGen streaming controller (paper §5.3): before each chunk of a context is fetched, pick the
// best CacheGen level whose predicted fetch time fits the TTFT budget, or fall back to recomputing
// the chunk from its tokens.
//
// Policies:
//   kEstimated     bandwidth = the previous chunk's measured throughput (initial_bandwidth_bps
//                  before any measurement); level l fits if fetching every remaining chunk at l
//                  takes at most the remaining budget (budget minus time spent so far).
//   kOracleShare   the reference (run_adaptation.py): the true bandwidth of each chunk is known,
//                  every chunk gets budget / num_chunks, and level l fits if this chunk at l takes
//                  at most that share.
// Both try levels 3, 2, 1 and take the first that fits. If none fits:
//   Fallback::kFastest    the quicker of recomputing the chunk (tokens / prefill_tokens_per_s, a
//                         measured rate) and fetching it at level 1 (default);
//   Fallback::kRecompute  always recompute, as the reference does.
// For a fixed state the decision is non-decreasing in the bandwidth (recompute counts as level 0).
// Decode time is assumed hidden behind the transfer.
//
// Not thread-safe: one controller per context being fetched.
#ifndef KVSTASH_CODEC_STREAM_CONTROLLER_H_
#define KVSTASH_CODEC_STREAM_CONTROLLER_H_

#include <array>
#include <cstdint>
#include <span>
#include <vector>

namespace kvstash::codec {

struct ChunkCost {
  std::array<uint64_t, 3> level_bytes{};  // encoded bytes at levels 1, 2, 3
  uint32_t tokens = 0;                    // tokens to prefill if recomputed
};

enum class ControllerPolicy { kEstimated, kOracleShare };
enum class Fallback { kFastest, kRecompute };

struct ControllerConfig {
  ControllerPolicy policy = ControllerPolicy::kEstimated;
  Fallback fallback = Fallback::kFastest;
  double ttft_budget_s = 0.5;
  double prefill_tokens_per_s = 5000;  // measured prefill throughput of the engine
  double initial_bandwidth_bps = 0;    // bytes/s before the first measurement (kEstimated)
};

struct ChunkDecision {
  int level = 0;             // 1..3, or 0 = recompute from tokens
  double predicted_s = 0.0;  // predicted time of this chunk under the decision
};

class StreamController {
 public:
  StreamController(const ControllerConfig& config, std::vector<ChunkCost> chunks);

  // Decision for the next chunk. `true_bandwidth_bps` is read only by kOracleShare.
  // Precondition: !done().
  ChunkDecision Next(double true_bandwidth_bps = 0.0) const;
  // Records the fetch of the next chunk: bytes moved (0 for a recompute) and seconds taken.
  void Report(uint64_t bytes, double seconds);

  bool done() const { return next_ >= chunks_.size(); }
  size_t next_chunk() const { return next_; }
  double elapsed_s() const { return elapsed_s_; }
  double bandwidth_estimate_bps() const { return estimate_bps_; }

  // The decision rule alone, for a given bandwidth and time already spent.
  ChunkDecision Decide(double bandwidth_bps, double elapsed_s) const;

 private:
  double RecomputeSeconds(const ChunkCost& c) const;

  ControllerConfig config_;
  std::vector<ChunkCost> chunks_;
  size_t next_ = 0;
  double elapsed_s_ = 0.0;
  double estimate_bps_ = 0.0;
};

struct TraceResult {
  std::vector<int> levels;  // per chunk, 0 = recomputed
  double total_s = 0.0;
  bool violated = false;  // total_s > budget
};

// Fetches one context over a synthetic trace: chunk i moves at bandwidth_bps[i] (bytes/s; +inf
// and 0 allowed). bandwidth_bps.size() must equal chunks.size().
TraceResult SimulateTrace(const ControllerConfig& config, std::span<const ChunkCost> chunks,
                          std::span<const double> bandwidth_bps);

}  // namespace kvstash::codec

#endif  // KVSTASH_CODEC_STREAM_CONTROLLER_H_
