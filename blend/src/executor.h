// Internal: the layer loop shared by every blending method, the pipelined layer loader, and the
// attention-statistics collector.
#ifndef KVSTASH_BLEND_SRC_EXECUTOR_H_
#define KVSTASH_BLEND_SRC_EXECUTOR_H_

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "kvstash/blend/blender.h"
#include "kvstash/blend/chunk_store.h"
#include "kvstash/blend/prompt.h"
#include "kvstash/engine/engine.h"

namespace kvstash::blend::internal {

// One cached segment placed in the prompt.
struct CachedSpan {
  ChunkRecord record;       // what to fetch (as Lookup returned it)
  uint32_t dest_begin = 0;  // first prompt position
  uint32_t count = 0;       // == record.layout.num_tokens
  int64_t delta = 0;        // dest_begin - record.layout.position_start
};

// Fetches the cached KV of `spans` from `store` and writes it, RoPE-corrected, into `seq`'s
// paged memory layer by layer, on its own thread (pipelined) or all at once on the caller's (not
// pipelined). Pipelined, the fetch itself (cachesvc's AcquireMany, an SSD promotion) runs while
// the layers that need no cached KV compute. The sequence must already have its final length
// and keep it until Finish(). A fetch error is the loader's error (message prefixed "fetch: ").
class LayerLoader {
 public:
  LayerLoader(engine::Engine& engine, engine::Sequence& seq, ChunkKvStore& store,
              std::vector<CachedSpan> spans, std::vector<bool> layers);
  ~LayerLoader();  // cancels and joins
  LayerLoader(const LayerLoader&) = delete;
  LayerLoader& operator=(const LayerLoader&) = delete;

  void Start(bool pipelined);
  // Returns once `layer` is in paged memory (at once for a layer not loaded); the loader's error
  // if it failed.
  Status WaitLayer(uint32_t layer);
  // Stops early (remaining layers are skipped) and joins.
  void Cancel();
  // Joins; the first error.
  Status Finish();

  const std::vector<double>& layer_seconds() const { return layer_seconds_; }
  // Bytes and seconds per tier, for the loading controller.
  struct TierLoad {
    Tier tier;
    uint64_t bytes = 0;
    double seconds = 0.0;
  };
  std::vector<TierLoad> tier_loads() const;

 private:
  void Run();
  Status Fetch();
  Status LoadLayer(uint32_t layer);

  engine::Engine& engine_;
  engine::Sequence& seq_;
  ChunkKvStore& store_;
  std::vector<CachedSpan> spans_;
  std::vector<std::unique_ptr<ChunkKv>> kv_;  // per span, once fetched
  std::vector<bool> layers_;
  std::vector<double> layer_seconds_;
  std::vector<uint64_t> span_bytes_;
  std::vector<double> span_seconds_;
  std::vector<uint8_t> scratch_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<bool> ready_;
  Status error_;
  bool cancel_ = false;
  bool finished_ = false;
};

struct ExecPlan {
  enum class Mode { kFixed, kCheck };
  Mode mode = Mode::kFixed;
  const BlendPrompt* prompt = nullptr;
  std::vector<bool> cached;            // per position
  std::vector<uint32_t> initial_rows;  // positions computed from layer 0, ascending
  MaskMode mask = MaskMode::kExact;
  // kCheck
  uint32_t check_layer = 1;
  double ratio = 0.15;
  Deviation deviation = Deviation::kValue;
  bool random = false;
  uint64_t seed = 1;
  bool gradual = false;
  double gradual_start_ratio = 0.3;
  uint32_t gradual_layers = 3;
  // kFixed: Cache-Craft early termination
  bool early_termination = false;
  uint32_t termination_layer = 0;
  double focus_threshold = 0.5;
  // Capture attention statistics of these segments' rows (they must be computed at every layer).
  std::vector<bool> capture_segments;
};

struct ExecResult {
  std::vector<float> logits;
  std::vector<uint32_t> recomputed_per_layer;
  std::vector<double> layer_compute_seconds;
  std::vector<uint32_t> selected;  // cached positions still computed at the last layer
  std::vector<ChunkStats> stats;   // per segment when capture_segments[s]
};

Result<ExecResult> RunLayers(engine::Engine& engine, engine::Sequence& seq, const ExecPlan& plan,
                             LayerLoader* loader);

// Accumulates Cache-Craft statistics from the softmax of every (row, head) of a layer.
// The rows of a captured segment must be computed at every layer.
class StatsCollector {
 public:
  StatsCollector(const BlendPrompt& prompt, std::vector<bool> capture, uint32_t num_heads,
                 uint32_t num_layers);
  bool any() const { return any_; }
  // The callback for Engine::FinishLayer of a batch whose rows sit at `positions` (kept alive by
  // the caller for the call); thread-safe across distinct (row, head).
  engine::AttentionProbsFn Callback(std::span<const uint32_t> positions);
  // Folds the layer just finished into the statistics.
  void EndLayer(uint32_t layer);
  const ChunkStats& stats(size_t segment) const { return stats_[segment]; }
  std::vector<ChunkStats> Take();

 private:
  const BlendPrompt& prompt_;
  std::vector<bool> capture_;
  bool any_ = false;
  uint32_t num_heads_, num_layers_;
  size_t num_segments_;
  std::vector<double> mass_;  // [position][head][segment]
  std::vector<ChunkStats> stats_;
};

// Seeded choice of k distinct indices in [0, n), ascending (Fisher-Yates on splitmix64).
std::vector<uint32_t> RandomSubset(size_t n, size_t k, uint64_t seed);

}  // namespace kvstash::blend::internal

#endif  // KVSTASH_BLEND_SRC_EXECUTOR_H_
