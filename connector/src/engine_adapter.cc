#include "kvstash/connector/engine_adapter.h"

#include <algorithm>
#include <chrono>

namespace kvstash::connector {

ModelSpec EngineCacheSpec(const engine::Engine& engine) {
  ModelSpec spec = engine.Spec();
  spec.weights_revision += std::string("+kernels=") + engine::Engine::KernelIsa();
  return spec;
}

Result<CachedPrefill> EngineConnector::Prefill(engine::Sequence& seq,
                                               std::span<const int32_t> tokens,
                                               engine::LogitsMode logits) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  if (tokens.empty()) return absl::InvalidArgumentError("cached prefill: no tokens");
  if (seq.length() != 0) {
    return absl::InvalidArgumentError("cached prefill: the sequence must be empty");
  }
  if (logits == engine::LogitsMode::kAll) {
    return absl::InvalidArgumentError("cached prefill: cached positions have no logits (kAll)");
  }
  if (tokens.size() > engine_.config().max_seq_len) {
    return absl::InvalidArgumentError("cached prefill: prompt longer than the context length");
  }
  const uint32_t n = static_cast<uint32_t>(tokens.size());
  CachedPrefill out;
  out.prompt_tokens = n;

  PrefixLookup lookup = connector_.Lookup(tokens);
  out.lookup_status = lookup.status;
  out.lookup_seconds = lookup.seconds;
  // Blocks for the whole prompt now, so the loader can fill the hit's blocks while the engine
  // computes; Engine::Prefill then finds the sequence at its final length.
  KVSTASH_RETURN_IF_ERROR(seq.Resize(n));
  kernels::PagedKvView view = seq.cache().View();
  KVSTASH_ASSIGN_OR_RETURN(std::unique_ptr<KvLoad> load,
                           connector_.StartLoad(lookup, view, seq.block_table()));
  const uint32_t hit = load->hit_tokens();
  const uint32_t start = std::min(hit, n - 1);

  engine::PrefillOptions options;
  options.logits = logits;
  bool load_failed = false;
  if (hit > 0) {
    options.hooks.before_layer_kv = [&](uint32_t layer) {
      Status st = load->WaitLayer(layer);
      load_failed = !st.ok();
      return st;
    };
  }
  Result<std::vector<float>> result = engine_.Prefill(seq, tokens.subspan(start), start, options);
  if (!result.ok() && load_failed) {
    // The cache let us down after compute started: WaitLayer cancelled the loader, so nothing
    // writes into the sequence any more. Recompute everything.
    out.load_failure = result.status();
    load->Cancel();
    engine::PrefillOptions plain;
    plain.logits = logits;
    result = engine_.Prefill(seq, tokens, 0, plain);
  }
  out.load = load->Report();
  load.reset();
  if (!result.ok()) return result.status();
  out.logits = std::move(*result);

  uint32_t first_to_store = 0;
  if (out.load_failure.ok()) {
    out.hit_tokens = hit;
    out.computed_tokens = n - start;
    const uint32_t ct = connector_.chunker().chunk_tokens();
    out.cpu_hit_tokens = out.load.cpu_chunks * ct;
    out.ssd_hit_tokens = out.load.ssd_chunks * ct;
    out.other_hit_tokens = out.load.other_chunks * ct;
    first_to_store = out.load.hit_chunks;
  } else {
    out.computed_tokens = n;
  }
  // A chunk the lookup saw but the load rejected (missing, corrupt: deleted by the connector)
  // is stored again from the KV just computed.
  if (out.load.hit_chunks < out.load.looked_up_chunks) {
    lookup.present[out.load.hit_chunks] = false;
  }
  out.store = connector_.StoreAsync(lookup, first_to_store, view, seq.block_table());
  out.total_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return out;
}

}  // namespace kvstash::connector
