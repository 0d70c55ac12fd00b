// The reference engine: a Llama forward pass over paged KV memory, with a layer-level API for
// the connector (layer-wise KV loading and storing) and for CacheBlend / Cache-Craft (recompute
// chosen tokens per layer, read fresh K/V, observe attention probabilities).
//
// Numerics. Activations are f32; weights stay in their stored type and are unpacked block by
// block inside the matmul. K/V are rounded to the paged pool's dtype when written and attention
// reads them back from the pool. Batch invariance: every number computed for a token (hidden
// state, Q/K/V, attention output, logits) is bitwise the same whatever batch it is computed in
// (whole prompt, pieces, or with earlier positions loaded from a cache), because every
// reduction runs per row in a fixed order and threads split output rows, never a reduction.
// The order does depend on the instruction set chosen at start-up (scalar / AVX2 / AVX-512),
// so bitwise equality holds between runs on the same kind of CPU.
//
// Threading. An Engine is used by one thread at a time (it owns scratch buffers); it runs its
// own pool of num_threads - 1 workers inside each call. Hooks and probability callbacks are
// described where they are declared. Several engines may share one Model.
#ifndef KVSTASH_ENGINE_ENGINE_H_
#define KVSTASH_ENGINE_ENGINE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "kvstash/common/key.h"
#include "kvstash/common/status.h"
#include "kvstash/common/thread_pool.h"
#include "kvstash/engine/kv_cache.h"
#include "kvstash/engine/model.h"

namespace kvstash::engine {

struct EngineOptions {
  size_t num_threads = 0;  // compute threads including the caller; 0 = hardware concurrency
  KvCacheOptions kv;       // kv.num_blocks == 0: room for one sequence of max_seq_len tokens
};

// Callbacks Prefill makes on the calling thread, layer by layer, in layer order.
struct LayerHooks {
  // Before layer `layer` reads or writes paged KV (its Q/K/V projection may already have run):
  // return once that layer's KV for positions [0, start_pos) is in paged memory (layer-wise
  // loading). The engine touches no paged KV of layers > l before their own call, so a loader
  // may fill later layers concurrently. A non-OK status aborts the prefill and is returned
  // unchanged.
  std::function<Status(uint32_t layer)> before_layer_kv;
  // After layer `layer`'s K/V for the new positions [start_pos, start_pos + n) are in paged
  // memory (layer-wise storing). The callee may read those entries from any thread until
  // Prefill returns; the engine does not modify them during the call. Non-OK aborts.
  std::function<Status(uint32_t layer)> after_layer_kv;
};

enum class LogitsMode { kNone, kLast, kAll };

struct PrefillOptions {
  LogitsMode logits = LogitsMode::kLast;
  LayerHooks hooks;
};

// Receives the attention probabilities of one (batch row, query head) over positions
// [0, position]. Called concurrently from pool threads, each (row, head) exactly once.
using AttentionProbsFn =
    std::function<void(size_t row, uint32_t head, std::span<const float> probs)>;

// Activations of a set of tokens moving through the layers together. Rows may sit at any
// distinct positions (not necessarily contiguous or sorted).
class TokenBatch {
 public:
  size_t size() const { return tokens_.size(); }
  std::span<const int32_t> tokens() const { return tokens_; }
  std::span<const uint32_t> positions() const { return positions_; }
  // Residual stream of a row entering the next layer: [dim].
  float* hidden(size_t row) { return hidden_.data() + row * dim_; }
  const float* hidden(size_t row) const { return hidden_.data() + row * dim_; }
  // Valid after ComputeQkv (layer qkv_layer()): Q [num_heads][head_dim], K and V
  // [num_kv_heads][head_dim], f32, Q and K after RoPE at the row's position.
  const float* q(size_t row) const { return q_.data() + row * q_dim_; }
  const float* k(size_t row) const { return k_.data() + row * kv_dim_; }
  const float* v(size_t row) const { return v_.data() + row * kv_dim_; }
  // Layer whose Q/K/V the batch holds; -1 when none (after Embed or FinishLayer).
  int qkv_layer() const { return qkv_layer_; }

  // Keeps only `rows` (indices into the current batch, distinct), in that order.
  // InvalidArgument for an out-of-range or repeated index.
  Status Keep(std::span<const size_t> rows);

 private:
  friend class Engine;
  size_t dim_ = 0, q_dim_ = 0, kv_dim_ = 0, rope_half_ = 0;
  std::vector<int32_t> tokens_;
  std::vector<uint32_t> positions_;
  std::vector<float> hidden_, q_, k_, v_;
  std::vector<float> rope_cos_, rope_sin_;  // [row][rotary_dim / 2]
  int qkv_layer_ = -1;
};

class Engine {
 public:
  // InvalidArgument for bad options; ResourceExhausted when the KV pools cannot be allocated.
  static Result<std::unique_ptr<Engine>> Create(std::shared_ptr<const Model> model,
                                                const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const Model& model() const { return *model_; }
  const ModelConfig& config() const { return model_->config(); }
  PagedKvCache& kv_cache() const { return *kv_; }
  // Identity of this engine's KV for kvstash::ModelFingerprint (model id, weights sha256, KV
  // dtype, layers, KV heads, head dim, RoPE convention and theta).
  ModelSpec Spec() const { return model_->Spec(kv_->shape().dtype); }
  // "scalar", "avx2" or "avx512": the kernel set (and so the reduction order) in use.
  static const char* KernelIsa();

  std::unique_ptr<Sequence> NewSequence() { return kv_->NewSequence(); }

  // Runs `tokens` at positions [start_pos, start_pos + n) of `seq` through every layer. The
  // sequence is first resized to start_pos + n: positions < start_pos must hold valid KV by the
  // time each layer reads it (computed earlier or loaded through hooks.before_layer_kv); later
  // positions are dropped. Returns logits per options.logits: [vocab] for kLast, [n][vocab] for
  // kAll, empty for kNone.
  // Errors: InvalidArgument (empty tokens, token id >= vocab, start_pos > seq.length(), beyond
  // max_seq_len), ResourceExhausted (no free KV blocks), or a hook's status. On error the
  // sequence is left at length start_pos.
  Result<std::vector<float>> Prefill(Sequence& seq, std::span<const int32_t> tokens,
                                     uint32_t start_pos, const PrefillOptions& options = {});
  // One token at position seq.length(); returns its logits.
  Result<std::vector<float>> Decode(Sequence& seq, int32_t token);

  // ---- Layer-level API (what Prefill is made of) ----
  // A batch of `tokens` at `positions` (same length, distinct) with hidden = token embeddings.
  Result<TokenBatch> Embed(std::span<const int32_t> tokens,
                           std::span<const uint32_t> positions) const;
  // Layer `layer`'s attention RMSNorm and Q/K/V projections of every row, RoPE applied to Q and
  // K. Touches no paged memory.
  Status ComputeQkv(uint32_t layer, TokenBatch& batch);
  // Writes every row's K/V (from ComputeQkv of `layer`) into `seq` at the row's position,
  // rounded to the pool dtype. Positions must be < seq.length(). FailedPrecondition when the
  // batch holds another layer's Q/K/V.
  Status WriteKv(Sequence& seq, uint32_t layer, const TokenBatch& batch);
  // Attention of every row over `seq`'s paged KV of `layer` at positions [0, row position]
  // (exact causal mask by position), output projection, residual, RMSNorm, SwiGLU FFN,
  // residual: hidden then enters layer + 1. Every position up to the largest row position must
  // be < seq.length() and hold valid KV. `probs`, when set, observes the softmax.
  // `last_key`, when not empty (one entry per row), replaces the causal mask: row r attends to
  // positions [0, last_key[r]] instead (its RoPE position is unchanged). CacheBlend uses it to
  // reproduce the reference code's bottom-right-aligned mask for comparison; InvalidArgument for
  // a size mismatch or a limit beyond the sequence.
  // FailedPrecondition when the batch holds another layer's Q/K/V.
  Status FinishLayer(Sequence& seq, uint32_t layer, TokenBatch& batch,
                     const AttentionProbsFn& probs = nullptr,
                     std::span<const uint32_t> last_key = {});
  // Final RMSNorm and output head for `rows` of a batch that went through every layer:
  // [rows.size()][vocab].
  Result<std::vector<float>> Logits(const TokenBatch& batch, std::span<const size_t> rows);
  // Reads K and V of `layer` at `positions` (< seq.length()) from paged memory as f32:
  // k, v each [positions.size()][num_kv_heads][head_dim].
  Status ReadKv(const Sequence& seq, uint32_t layer, std::span<const uint32_t> positions, float* k,
                float* v) const;

 private:
  Engine() = default;
  void ApplyRope(TokenBatch& batch) const;
  Status GatherContext(const Sequence& seq, uint32_t layer, uint32_t context);

  std::shared_ptr<const Model> model_;
  std::unique_ptr<PagedKvCache> kv_;
  std::unique_ptr<ThreadPool> pool_;  // null when single-threaded
  std::vector<double> inv_freq_;      // RoPE frequencies, [rotary_dim / 2]
  // Scratch reused across calls.
  std::vector<float> xn_, att_, tmp_, gate_, up_, k_ctx_, v_ctx_;
};

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_ENGINE_H_
