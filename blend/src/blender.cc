// Blender: plans each method (which segments come from which cache, which tokens are computed
// from layer 0, whether a check layer selects) and runs it through RunLayers.
#include "kvstash/blend/blender.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "executor.h"
#include "kvstash/kernels/paged_kv.h"

namespace kvstash::blend {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

KvLayout ChunkLayout(const engine::Engine& engine, uint32_t num_tokens, int64_t position_start) {
  const engine::ModelConfig& c = engine.config();
  KvLayout l;
  l.num_layers = c.num_layers;
  l.layer_begin = 0;
  l.total_kv_heads = c.num_kv_heads;
  l.head_begin = 0;
  l.head_end = c.num_kv_heads;
  l.head_dim = c.head_dim;
  l.dtype = engine.kv_cache().shape().dtype;
  l.num_tokens = num_tokens;
  l.rope = c.rope;
  l.rope_theta = c.rope_theta;
  l.rotary_dim = c.rotary_dim;
  l.position_start = position_start;
  return l;
}

// A cache made for this engine's model layout (dtype may differ: the scatter converts).
bool Compatible(const engine::Engine& engine, const KvLayout& l, uint32_t num_tokens) {
  const engine::ModelConfig& c = engine.config();
  const uint32_t rotary = l.rotary_dim == 0 ? l.head_dim : l.rotary_dim;
  return l.num_layers == c.num_layers && l.layer_begin == 0 && l.total_kv_heads == c.num_kv_heads &&
         l.head_begin == 0 && l.head_end == c.num_kv_heads && l.head_dim == c.head_dim &&
         l.rope == c.rope && l.rope_theta == c.rope_theta && rotary == c.rotary_dim &&
         l.num_tokens == num_tokens && l.position_start >= 0;
}

// A plain prefill of the whole prompt into `report` (what kFullPrefill does, and the fallback
// when the store fails).
Status PrefillInFull(engine::Engine& engine, LoadController& controller, engine::Sequence& seq,
                     const BlendPrompt& prompt, Clock::time_point start, BlendReport& report) {
  KVSTASH_RETURN_IF_ERROR(seq.Resize(0));
  const std::vector<int32_t> tokens = prompt.Tokens();
  KVSTASH_ASSIGN_OR_RETURN(report.logits, engine.Prefill(seq, tokens, 0));
  report.total_seconds = Seconds(start, Clock::now());
  report.recomputed_per_layer.assign(engine.config().num_layers, prompt.num_tokens());
  report.recompute_fraction = 1.0;
  report.cached_tokens = 0;
  report.missing_chunks = static_cast<uint32_t>(prompt.size() - 1);
  controller.ObservePrefill(prompt.num_tokens(), report.total_seconds);
  return OkStatus();
}

Status ValidateOptions(const engine::Engine& engine, const BlendOptions& o) {
  const uint32_t layers = engine.config().num_layers;
  if (o.blend.check_layer >= layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("blend: check_layer ", o.blend.check_layer, " >= ", layers, " layers"));
  }
  if (o.blend.ratio > 1.0 || o.blend.gradual_start_ratio < 0.0 ||
      o.blend.gradual_start_ratio > 1.0) {
    return absl::InvalidArgumentError("blend: ratios must lie in [0, 1]");
  }
  if (!(o.craft.alpha >= 0.0) || o.craft.max_variants == 0) {
    return absl::InvalidArgumentError("blend: craft alpha must be >= 0 and max_variants > 0");
  }
  if (o.craft.termination_layer >= layers) {
    return absl::InvalidArgumentError("blend: termination_layer beyond the model");
  }
  return OkStatus();
}

}  // namespace

const char* MethodName(Method method) {
  switch (method) {
    case Method::kFullPrefill:
      return "full_prefill";
    case Method::kPrefixCaching:
      return "prefix_caching";
    case Method::kFullReuse:
      return "full_reuse";
    case Method::kCacheBlend:
      return "cacheblend";
    case Method::kRandom:
      return "random";
    case Method::kCacheCraft:
      return "cachecraft";
  }
  return "?";
}

Blender::Blender(engine::Engine* engine, ChunkKvStore* store, const BlenderOptions& options)
    : engine_(engine), store_(store), options_(options), controller_(options.target_ratio) {}

Result<std::unique_ptr<Blender>> Blender::Create(engine::Engine* engine, ChunkKvStore* store,
                                                 const BlenderOptions& options) {
  if (engine == nullptr || store == nullptr) {
    return absl::InvalidArgumentError("Blender: null engine or store");
  }
  for (int32_t t : options.chunk_lead) {
    if (t < 0 || static_cast<uint32_t>(t) >= engine->config().vocab_size) {
      return absl::InvalidArgumentError("Blender: chunk_lead token outside the vocabulary");
    }
  }
  KVSTASH_RETURN_IF_ERROR(CheckRopeReRotatable(*engine));
  return std::unique_ptr<Blender>(new Blender(engine, store, options));
}

Result<uint32_t> Blender::PrepareChunks(const BlendPrompt& prompt) {
  std::vector<Hash128> keys;
  for (size_t i = 0; i + 1 < prompt.size(); ++i) keys.push_back(prompt.Key(i));
  KVSTASH_ASSIGN_OR_RETURN(std::vector<ChunkEntries> entries, store_->Lookup(keys));
  uint32_t prefilled = 0;
  std::set<Hash128> done;
  for (size_t i = 0; i + 1 < prompt.size(); ++i) {
    const Segment& seg = prompt.segment(i);
    const uint32_t len = static_cast<uint32_t>(seg.tokens.size());
    if (entries[i].alone && Compatible(*engine_, entries[i].alone->layout, len)) continue;
    if (!done.insert(keys[i]).second) continue;
    std::vector<int32_t> tokens;
    if (seg.kind != SegmentKind::kPrefix) tokens = options_.chunk_lead;
    const uint32_t lead = static_cast<uint32_t>(tokens.size());
    tokens.insert(tokens.end(), seg.tokens.begin(), seg.tokens.end());
    auto seq = engine_->NewSequence();
    engine::PrefillOptions po;
    po.logits = engine::LogitsMode::kNone;
    KVSTASH_RETURN_IF_ERROR(engine_->Prefill(*seq, tokens, 0, po).status());
    ChunkRecord rec;
    rec.chunk = keys[i];
    rec.kind = CacheKind::kAlone;
    rec.layout = ChunkLayout(*engine_, len, lead);
    std::vector<uint8_t> bytes(rec.layout.RawBytes());
    kernels::PagedKvView view = engine_->kv_cache().View();
    KVSTASH_RETURN_IF_ERROR(kernels::GatherChunk(view, seq->Span(lead), rec.layout, bytes.data()));
    KVSTASH_RETURN_IF_ERROR(store_->Put(rec, bytes));
    ++prefilled;
  }
  return prefilled;
}

Result<CapturedPrefill> Blender::PrefillWithStats(engine::Sequence& seq,
                                                  const BlendPrompt& prompt) {
  const auto t0 = Clock::now();
  KVSTASH_RETURN_IF_ERROR(seq.Resize(prompt.num_tokens()));
  internal::ExecPlan plan;
  plan.mode = internal::ExecPlan::Mode::kFixed;
  plan.prompt = &prompt;
  plan.cached.assign(prompt.num_tokens(), false);
  for (uint32_t p = 0; p < prompt.num_tokens(); ++p) plan.initial_rows.push_back(p);
  plan.capture_segments.assign(prompt.size(), true);
  auto r = internal::RunLayers(*engine_, seq, plan, nullptr);
  if (!r.ok()) {
    (void)seq.Resize(0);
    return r.status();
  }
  CapturedPrefill out;
  out.logits = std::move(r->logits);
  out.stats = std::move(r->stats);
  out.seconds = Seconds(t0, Clock::now());
  return out;
}

Status Blender::StoreVariants(const engine::Sequence& seq, const BlendPrompt& prompt,
                              std::span<const ChunkStats> stats, uint32_t max_variants) {
  if (stats.size() != prompt.size() || max_variants == 0) {
    return absl::InvalidArgumentError("StoreVariants: one ChunkStats per segment expected");
  }
  if (seq.length() < prompt.num_tokens()) {
    return absl::InvalidArgumentError("StoreVariants: sequence shorter than the prompt");
  }
  std::vector<Hash128> keys;
  for (size_t i = 0; i + 1 < prompt.size(); ++i) keys.push_back(prompt.Key(i));
  KVSTASH_ASSIGN_OR_RETURN(std::vector<ChunkEntries> entries, store_->Lookup(keys));
  std::set<Hash128> done;
  for (size_t i = 0; i + 1 < prompt.size(); ++i) {
    if (stats[i].num_layers == 0 || !done.insert(keys[i]).second) continue;
    const uint32_t begin = prompt.begin(i);
    const std::vector<ChunkRecord>& have = entries[i].variants;
    std::optional<uint32_t> slot;
    uint64_t newest = 0;
    for (const ChunkRecord& v : have) {
      newest = std::max(newest, v.stats.created);
      if (v.stats.context == stats[i].context && v.layout.position_start == begin) slot = v.slot;
    }
    for (uint32_t s = 0; !slot && s < max_variants; ++s) {
      if (std::none_of(have.begin(), have.end(),
                       [s](const ChunkRecord& v) { return v.slot == s; })) {
        slot = s;
      }
    }
    if (!slot) {
      const ChunkRecord* oldest = nullptr;
      for (const ChunkRecord& v : have) {
        if (v.slot >= max_variants) continue;
        if (oldest == nullptr || v.stats.created < oldest->stats.created) oldest = &v;
      }
      slot = oldest != nullptr ? oldest->slot : 0;
    }
    ChunkRecord rec;
    rec.chunk = keys[i];
    rec.kind = CacheKind::kVariant;
    rec.slot = *slot;
    rec.layout = ChunkLayout(*engine_, prompt.end(i) - begin, begin);
    rec.stats = stats[i];
    rec.stats.created = newest + 1;
    std::vector<uint8_t> bytes(rec.layout.RawBytes());
    kernels::PagedKvView view = engine_->kv_cache().View();
    KVSTASH_RETURN_IF_ERROR(kernels::GatherChunk(view, seq.Span(begin), rec.layout, bytes.data()));
    KVSTASH_RETURN_IF_ERROR(store_->Put(rec, bytes));
  }
  return OkStatus();
}

Result<BlendReport> Blender::Prefill(engine::Sequence& seq, const BlendPrompt& prompt,
                                     const BlendOptions& o) {
  KVSTASH_RETURN_IF_ERROR(ValidateOptions(*engine_, o));
  const auto t_start = Clock::now();
  const uint32_t n = prompt.num_tokens();
  const uint32_t layers = engine_->config().num_layers;
  const size_t q = prompt.size() - 1;  // the question segment
  BlendReport report;
  report.method = o.method;
  report.num_tokens = n;
  KVSTASH_RETURN_IF_ERROR(seq.Resize(0));

  if (o.method == Method::kFullPrefill) {
    KVSTASH_RETURN_IF_ERROR(PrefillInFull(*engine_, controller_, seq, prompt, t_start, report));
    return report;
  }
  // A store error: the whole prompt is computed instead (or the error returned).
  auto store_failed = [&](const char* step, const Status& error) -> Result<BlendReport> {
    (void)seq.Resize(0);
    if (!o.fallback_on_store_error) return error;
    report = BlendReport{};
    report.method = o.method;
    report.num_tokens = n;
    report.fallback = absl::StrCat(step, ": ", error.ToString());
    KVSTASH_RETURN_IF_ERROR(PrefillInFull(*engine_, controller_, seq, prompt, t_start, report));
    return report;
  };

  const bool alone_caches = o.method == Method::kFullReuse || o.method == Method::kCacheBlend ||
                            o.method == Method::kRandom;
  if (alone_caches && o.prefill_missing) {
    if (Status s = PrepareChunks(prompt).status(); !s.ok())
      return store_failed("preparing chunks", s);
  }
  std::vector<Hash128> keys;
  for (size_t i = 0; i < q; ++i) keys.push_back(prompt.Key(i));
  Result<std::vector<ChunkEntries>> looked_up = store_->Lookup(keys);
  if (!looked_up.ok()) return store_failed("lookup", looked_up.status());
  std::vector<ChunkEntries> entries = std::move(*looked_up);

  // Which record (if any) serves each segment, and which tokens are computed from layer 0.
  std::vector<std::optional<ChunkRecord>> use(q);
  std::vector<bool> computed_from_start(n, false);
  std::vector<bool> capture(prompt.size(), false);
  report.craft.assign(prompt.size(), CraftScore{});
  if (o.method == Method::kPrefixCaching) {
    for (size_t i = 0; i < q; ++i) {
      const uint32_t len = prompt.end(i) - prompt.begin(i);
      if (i == 0 && prompt.segment(0).kind == SegmentKind::kPrefix && entries[0].alone &&
          entries[0].alone->layout.position_start == 0 &&
          Compatible(*engine_, entries[0].alone->layout, len)) {
        use[0] = entries[0].alone;
        continue;
      }
      const std::vector<Hash128> context(keys.begin(), keys.begin() + static_cast<ptrdiff_t>(i));
      for (const ChunkRecord& v : entries[i].variants) {
        if (v.stats.context == context && v.layout.position_start == prompt.begin(i) &&
            Compatible(*engine_, v.layout, len)) {
          use[i] = v;
          break;
        }
      }
      if (!use[i]) break;
    }
  } else if (alone_caches) {
    for (size_t i = 0; i < q; ++i) {
      const uint32_t len = prompt.end(i) - prompt.begin(i);
      if (entries[i].alone && Compatible(*engine_, entries[i].alone->layout, len)) {
        use[i] = entries[i].alone;
      }
    }
  } else {  // kCacheCraft
    for (size_t i = 0; i < q; ++i) {
      const uint32_t len = prompt.end(i) - prompt.begin(i);
      std::vector<ChunkRecord> variants;
      for (const ChunkRecord& v : entries[i].variants) {
        if (Compatible(*engine_, v.layout, len) && v.stats.Validate(len).ok())
          variants.push_back(v);
      }
      if (variants.empty()) {
        capture[i] = o.craft.store_new_variants;
        continue;
      }
      const std::span<const Hash128> context(keys.data(), i);
      std::vector<uint32_t> context_tokens;
      if (o.craft.count_new_context) {
        context_tokens.reserve(i);
        for (size_t j = 0; j < i; ++j) context_tokens.push_back(prompt.end(j) - prompt.begin(j));
      }
      std::vector<CraftScore> scores;
      scores.reserve(variants.size());
      for (const ChunkRecord& v : variants) {
        scores.push_back(ScoreVariant(v.stats, len, context, o.craft.alpha, context_tokens));
      }
      const size_t best = ChooseVariant(scores, variants);
      use[i] = variants[best];
      report.craft[i] = scores[best];
      for (uint32_t t : CraftTokens(variants[best].stats, scores[best].recompute_tokens)) {
        computed_from_start[prompt.begin(i) + t] = true;
      }
    }
  }

  // The loader fetches the records itself (on its thread when pipelined).
  internal::ExecPlan plan;
  plan.prompt = &prompt;
  plan.mask = o.mask;
  plan.cached.assign(n, false);
  std::vector<internal::CachedSpan> spans;
  uint64_t kv_bytes = 0;
  for (size_t i = 0; i < q; ++i) {
    if (!use[i]) continue;
    const KvLayout& layout = use[i]->layout;
    internal::CachedSpan s;
    s.record = *use[i];
    s.dest_begin = prompt.begin(i);
    s.count = layout.num_tokens;
    s.delta = static_cast<int64_t>(s.dest_begin) - layout.position_start;
    spans.push_back(s);
    for (uint32_t p = prompt.begin(i); p < prompt.end(i); ++p) plan.cached[p] = true;
    report.cached_tokens += layout.num_tokens;
    kv_bytes += layout.RawBytes();
  }
  for (size_t i = 0; i < q; ++i) report.missing_chunks += use[i] ? 0 : 1;

  std::vector<bool> load_layers(layers, true);
  if (o.method == Method::kCacheBlend || o.method == Method::kRandom) {
    plan.mode = internal::ExecPlan::Mode::kCheck;
    plan.check_layer = o.blend.check_layer;
    plan.deviation = o.blend.deviation;
    plan.random = o.method == Method::kRandom;
    plan.seed = o.blend.random_seed;
    plan.gradual = o.blend.gradual;
    plan.gradual_start_ratio = o.blend.gradual_start_ratio;
    plan.gradual_layers = o.blend.gradual_layers;
    plan.ratio = o.blend.ratio;
    if (plan.ratio < 0.0) {
      report.decision = controller_.Decide(report.cached_tokens, kv_bytes);
      plan.ratio = report.decision.ratio;
    }
    report.ratio = plan.ratio;
    for (uint32_t l = 0; l < plan.check_layer; ++l) load_layers[l] = false;
    for (uint32_t p = 0; p < n; ++p) plan.initial_rows.push_back(p);
  } else {
    plan.mode = internal::ExecPlan::Mode::kFixed;
    plan.early_termination = o.method == Method::kCacheCraft && o.craft.early_termination;
    plan.termination_layer = o.craft.termination_layer;
    plan.focus_threshold = o.craft.focus_threshold;
    plan.capture_segments = capture;
    for (uint32_t p = 0; p < n; ++p) {
      if (!plan.cached[p] || computed_from_start[p]) plan.initial_rows.push_back(p);
    }
  }

  Status st = seq.Resize(n);
  if (!st.ok()) return st;
  internal::LayerLoader loader(*engine_, seq, *store_, std::move(spans), load_layers);
  report.prepare_seconds = Seconds(t_start, Clock::now());
  loader.Start(o.pipeline);
  auto exec = internal::RunLayers(*engine_, seq, plan, &loader);
  if (!exec.ok()) {
    loader.Cancel();
    // A layer that failed to load stops the layers waiting for it: a store error too.
    if (Status loading = loader.Finish(); !loading.ok()) {
      return store_failed("loading cached layers", loading);
    }
    (void)seq.Resize(0);
    return exec.status();
  }
  st = loader.Finish();
  if (!st.ok()) return store_failed("loading cached layers", st);
  report.total_seconds = Seconds(t_start, Clock::now());
  report.logits = std::move(exec->logits);
  report.recomputed_per_layer = std::move(exec->recomputed_per_layer);
  report.layer_compute_seconds = std::move(exec->layer_compute_seconds);
  report.layer_load_seconds = loader.layer_seconds();
  report.selected = std::move(exec->selected);
  uint64_t computed = 0;
  for (uint32_t c : report.recomputed_per_layer) computed += c;
  report.recompute_fraction = static_cast<double>(computed) / (static_cast<double>(layers) * n);
  for (const auto& t : loader.tier_loads()) controller_.ObserveLoad(t.tier, t.bytes, t.seconds);

  if (std::find(capture.begin(), capture.end(), true) != capture.end()) {
    // Cache-Craft miss path: segments computed in full become new variants (after the first
    // token, so outside the reported time).
    std::vector<ChunkStats> stats = std::move(exec->stats);
    for (size_t i = 0; i < stats.size(); ++i) {
      if (!capture[i]) stats[i] = ChunkStats{};
    }
    KVSTASH_RETURN_IF_ERROR(StoreVariants(seq, prompt, stats, o.craft.max_variants));
  }
  return report;
}

}  // namespace kvstash::blend
