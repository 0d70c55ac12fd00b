// The reference engine's side of the connector: a prefill that reuses cached prefixes.
//
//   EngineConnector ec(engine, connector);
//   auto r = ec.Prefill(seq, prompt);         // lookup, load layer by layer, compute the rest
//   ... sample from r->logits, Decode ...     // decode never waits for the store
//   r->store->Wait();                         // before destroying or shrinking `seq`
//
// Prefill resizes the (empty) sequence to the whole prompt, starts the load of the hit into its
// blocks, and runs Engine::Prefill on the positions after the hit with a before_layer_kv hook
// that waits for each layer (the hit's positions are never recomputed). When the whole prompt
// is cached, the last token is still computed (its logits are needed): its KV is then written
// twice with the same value. If the load fails after compute started (deadline, lost lease),
// the prefill is aborted and the whole prompt recomputed. Tokens are therefore always those of
// a run without the cache; CachedPrefill says what happened.
//
// Threading: like Engine, one caller at a time per EngineConnector.
#ifndef KVSTASH_CONNECTOR_ENGINE_ADAPTER_H_
#define KVSTASH_CONNECTOR_ENGINE_ADAPTER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kvstash/common/key.h"
#include "kvstash/common/status.h"
#include "kvstash/connector/connector.h"
#include "kvstash/engine/engine.h"

namespace kvstash::connector {

// The engine's Spec() with its CPU kernel set folded into weights_revision: KV computed with
// other kernels (e.g. AVX2 vs AVX-512) differs in the last bits, and a hit must be bitwise what
// this engine would compute.
ModelSpec EngineCacheSpec(const engine::Engine& engine);

struct CachedPrefill {
  std::vector<float> logits;  // as Engine::Prefill with the requested LogitsMode
  uint32_t prompt_tokens = 0;
  uint32_t hit_tokens = 0;       // positions whose KV came from the cache
  uint32_t computed_tokens = 0;  // positions run through the model
  uint32_t cpu_hit_tokens = 0, ssd_hit_tokens = 0, other_hit_tokens = 0;
  Status lookup_status;  // non-OK: the lookup failed (e.g. service down); a miss
  Status load_failure;   // non-OK: the load failed after compute started; recomputed
  LoadReport load;       // what the load did (zeros without a hit)
  double lookup_seconds = 0;
  double total_seconds = 0;            // the whole call: lookup, load, compute
  std::shared_ptr<StoreHandle> store;  // new chunks being stored; never null
};

class EngineConnector {
 public:
  // Both must outlive this object; the connector's spec must be EngineCacheSpec(engine) (or
  // describe the same KV).
  EngineConnector(engine::Engine& engine, KvConnector& connector)
      : engine_(engine), connector_(connector) {}

  // Prefills `tokens` into `seq`, which must be empty (length 0). logits: kLast or kNone.
  // Errors: InvalidArgument (non-empty sequence, kAll, bad tokens), ResourceExhausted (no free
  // KV blocks), or the engine's errors; never a cache error (those fall back to computing).
  Result<CachedPrefill> Prefill(engine::Sequence& seq, std::span<const int32_t> tokens,
                                engine::LogitsMode logits = engine::LogitsMode::kLast);

 private:
  engine::Engine& engine_;
  KvConnector& connector_;
};

}  // namespace kvstash::connector

#endif  // KVSTASH_CONNECTOR_ENGINE_ADAPTER_H_
