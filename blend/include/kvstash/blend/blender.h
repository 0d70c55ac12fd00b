// Chunk-level KV reuse for RAG prompts: CacheBlend (Yao et al., EuroSys'25) and Cache-Craft
// (Agarwal et al., SIGMOD'25) on the reference engine, plus the baselines they are measured
// against. algorithms.md sections 2 and 3 are the spec; docs/blend.md describes the design.
//
// A prompt comes as segments (prompt.h). Chunk caches live in a ChunkKvStore (chunk_store.h):
// chunks prefilled alone (CacheBlend) or taken from full prefills with attention statistics
// (Cache-Craft variants). Blender::Prefill fills a sequence's paged KV for the whole prompt:
// cached K is re-rotated to its new positions (kernels/rope.h) and scattered into paged memory
// by a loader thread, layer l+1 loading while layer l computes; a chosen subset of tokens is
// recomputed through every layer and its KV replaces the cached KV in paged memory; the last
// token's logits come back. Decoding then continues with Engine::Decode on the same sequence.
//
// Methods (BlendOptions::method):
//   kFullPrefill    every token computed (the reference).
//   kPrefixCaching  the leading segments whose KV was computed in exactly this context (the
//                   prefix segment's own cache; chunk variants with the same preceding segments
//                   at the same positions) are loaded, the rest prefilled. Bitwise a full prefill.
//   kFullReuse      every cached segment reused as is (RoPE-corrected), only uncached segments
//                   and the question computed, at every layer (PromptCache-style naive reuse).
//   kCacheBlend     layers < check_layer computed for all tokens; at check_layer fresh Q/K/V of
//                   all tokens, the floor(ratio * cached) cached tokens with the largest K or V
//                   deviation from their cache are kept (plus uncached tokens and the question),
//                   the rest reuse the cache from then on. Optional gradual filtering.
//   kRandom         kCacheBlend's computation with a seeded random choice at the check layer
//                   (equal compute, no deviation signal).
//   kCacheCraft     per segment the stored variant with the lowest CFO; its top ceil(CFO * |C|)
//                   tokens by stored attention score are recomputed through every layer.
//                   Segments without a variant are recomputed in full (and stored as new
//                   variants when store_new_variants). Optional early termination.
//
// Masking: kExact (causal by position, default) or kReferenceBottomRight (the reference code's
// LowerTriangularFromBottomRightMask: the i-th of q recomputed queries sees keys <= N - q + i),
// for comparison only.
//
// Threading: a Blender drives one Engine and is used by one thread at a time; it runs one loader
// thread per Prefill.
#ifndef KVSTASH_BLEND_BLENDER_H_
#define KVSTASH_BLEND_BLENDER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvstash/blend/chunk_store.h"
#include "kvstash/blend/controller.h"
#include "kvstash/blend/craft.h"
#include "kvstash/blend/prompt.h"
#include "kvstash/common/status.h"
#include "kvstash/engine/engine.h"

namespace kvstash::blend {

enum class Method : uint8_t {
  kFullPrefill,
  kPrefixCaching,
  kFullReuse,
  kCacheBlend,
  kRandom,
  kCacheCraft,
};
const char* MethodName(Method method);

enum class Deviation : uint8_t { kKey, kValue };
enum class MaskMode : uint8_t { kExact, kReferenceBottomRight };

struct CacheBlendOptions {
  uint32_t check_layer = 1;
  // Share of the cached tokens recomputed after the check layer, in [0, 1]. Negative: the
  // loading controller picks it (target 0.15, more when loading is slower than that).
  double ratio = 0.15;
  Deviation deviation = Deviation::kValue;  // the original code's choice; LMCache uses K
  // Gradual filtering (paper 4.3): keep start_ratio at the check layer, then shrink linearly to
  // `ratio` over the next gradual_layers layers, choosing by each layer's deviation.
  bool gradual = false;
  double gradual_start_ratio = 0.30;
  uint32_t gradual_layers = 3;
  uint64_t random_seed = 1;  // kRandom
};

struct CacheCraftOptions {
  double alpha = 1.0;         // CFO = alpha * CCI * (1 - beta'), chosen offline
  uint32_t max_variants = 5;  // variants kept per chunk
  bool store_new_variants = true;
  // Also scale beta' by the share of the new context's tokens that the variant saw
  // (NewContextCoverage; not in the paper, docs/blend.md "Deviations"). On SmolLM2 it gave 2.6x
  // lower next-token KL than the paper's CFO at the same TTFT. false: the paper's CFO.
  bool count_new_context = true;
  // Early termination: after termination_layer (0 = num_layers / 2), stop recomputing the
  // chunks the question attends to least: those whose share of the question's attention mass
  // over layers [0, termination_layer] is below focus_threshold / (number of chunks).
  bool early_termination = false;
  uint32_t termination_layer = 0;
  double focus_threshold = 0.5;
};

struct BlendOptions {
  Method method = Method::kCacheBlend;
  MaskMode mask = MaskMode::kExact;
  CacheBlendOptions blend;
  CacheCraftOptions craft;
  // Chunks without an alone cache are prefilled alone and stored first (CacheBlend, kFullReuse,
  // kRandom); when false they are recomputed in place instead.
  bool prefill_missing = true;
  // Load layer l+1 while layer l computes; false loads every layer before computing.
  bool pipeline = true;
  // When the chunk store fails (preparing missing chunks, Lookup, or loading cached layers,
  // which includes the fetch), prefill the whole prompt instead and say why in
  // BlendReport::fallback ("<step>: <error>"), as the connector's prefix path does. False:
  // return the store's error.
  bool fallback_on_store_error = true;
};

struct BlendReport {
  Method method = Method::kCacheBlend;
  std::vector<float> logits;  // next-token logits after the prompt's last token
  uint32_t num_tokens = 0;
  uint32_t cached_tokens = 0;   // tokens whose KV came from a chunk cache
  uint32_t missing_chunks = 0;  // segments with no usable cache
  // Rows whose Q/K/V were computed at each layer; the compute proxy.
  std::vector<uint32_t> recomputed_per_layer;
  double recompute_fraction = 0.0;  // sum(recomputed_per_layer) / (layers * num_tokens)
  // Cached positions recomputed after the check layer (kCacheBlend / kRandom at the check
  // layer; kCacheCraft: its selection), ascending.
  std::vector<uint32_t> selected;
  double ratio = 0.0;                      // kCacheBlend / kRandom ratio used
  std::vector<CraftScore> craft;           // kCacheCraft: per segment (question: default)
  ControllerDecision decision;             // when the controller chose the ratio
  std::vector<double> layer_load_seconds;  // loader time per layer (0 where nothing loaded)
  std::vector<double> layer_compute_seconds;
  // Lookup and chunks prefilled alone; the fetch of cached KV runs in the layer loader (beside
  // the first layers' compute when pipelined), so it is not part of this.
  double prepare_seconds = 0.0;
  double total_seconds = 0.0;  // the whole call: time to first token
  // Non-empty when the store failed and the prompt was prefilled in full instead: the error.
  std::string fallback;
};

struct BlenderOptions {
  // Tokens prepended when a chunk is prefilled alone and dropped from its cache (the original
  // CacheBlend code prefilled chunks after BOS), so the chunk's first token is not the attention
  // sink. Not used for the prefix segment. A store must be used with one lead only.
  std::vector<int32_t> chunk_lead;
  double target_ratio = 0.15;  // r* of the loading controller
};

// Prefill results of a full prefill with Cache-Craft statistics (one ChunkStats per segment).
struct CapturedPrefill {
  std::vector<float> logits;
  std::vector<ChunkStats> stats;  // per segment; the question's is captured too
  double seconds = 0.0;
};

class Blender {
 public:
  // FailedPrecondition naming the reason when the engine's RoPE cannot be re-rotated exactly by
  // kernels::RotateKeys: a convention other than neox/gptj, RoPE scaling in the model metadata
  // (linear, YaRN, ...), or a failed self-check (a key rotated by the kernel from one position
  // to another must match the engine's own key at the target position).
  static Result<std::unique_ptr<Blender>> Create(engine::Engine* engine, ChunkKvStore* store,
                                                 const BlenderOptions& options = {});

  // Fills `seq` (resized to prompt.num_tokens(); earlier contents dropped) for `prompt`.
  // Errors: InvalidArgument for bad options (check_layer >= layers, ratio > 1), the engine's
  // errors, and the store's errors when options.fallback_on_store_error is false (otherwise a
  // store error means a full prefill, reported in BlendReport::fallback). Cache-Craft's storing
  // of new variants after the first token is not covered by the fallback: its error is returned.
  // On error `seq` is left empty.
  Result<BlendReport> Prefill(engine::Sequence& seq, const BlendPrompt& prompt,
                              const BlendOptions& options);

  // Prefills alone and stores every chunk and prefix segment of `prompt` without an alone
  // cache. Returns how many were prefilled.
  Result<uint32_t> PrepareChunks(const BlendPrompt& prompt);

  // A full prefill (bitwise what Engine::Prefill computes) that also captures Cache-Craft's
  // attention statistics of every segment.
  Result<CapturedPrefill> PrefillWithStats(engine::Sequence& seq, const BlendPrompt& prompt);
  // Stores each non-question segment's KV from `seq` (as left by PrefillWithStats) as a variant
  // with its statistics: a variant of the same context and position is refreshed, else a free
  // slot is used, else the oldest of max_variants is replaced.
  Status StoreVariants(const engine::Sequence& seq, const BlendPrompt& prompt,
                       std::span<const ChunkStats> stats, uint32_t max_variants = 5);

  LoadController& controller() { return controller_; }
  engine::Engine& engine() { return *engine_; }
  ChunkKvStore& store() { return *store_; }

 private:
  Blender(engine::Engine* engine, ChunkKvStore* store, const BlenderOptions& options);
  struct Impl;

  engine::Engine* engine_;
  ChunkKvStore* store_;
  BlenderOptions options_;
  LoadController controller_;
};

// The check Blender::Create runs, on its own: OK when blending may re-rotate this model's keys.
Status CheckRopeReRotatable(engine::Engine& engine);

}  // namespace kvstash::blend

#endif  // KVSTASH_BLEND_BLENDER_H_
