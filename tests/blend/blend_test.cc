// CacheBlend / Cache-Craft invariants (algorithms.md 2.5 and 3.4) on stories260K: exact where
// the spec says exact, bitwise where the engine's batch invariance makes it so.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>

#include "blend_test_util.h"
#include "kvstash/common/half.h"
#include "kvstash/kernels/paged_kv.h"
#include "kvstash/kernels/rope.h"
#include "stories_gguf.h"  // tests/engine
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::blend {
namespace {

using testing::DumpKv;
using testing::KvDump;
using testing::MeanAbsDiffAll;
using testing::SameKvBytes;
using testing::StoriesPrompt;

class BlendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = testing::LoadStories();
    ASSERT_NE(model_, nullptr);
    engine_ = testing::MakeEngine(model_, 2, DType::kF16, 160);
    ASSERT_NE(engine_, nullptr);
    store_ = NewInProcessChunkStore();
    auto b = Blender::Create(engine_.get(), store_.get());
    ASSERT_OK(b);
    blender_ = std::move(*b);
    prompt_ = StoriesPrompt({2, 0, 3, 1});
    layers_ = engine_->config().num_layers;
  }

  // The reference: Engine::Prefill of the whole prompt.
  std::vector<float> Full(engine::Sequence& seq, const BlendPrompt& p) {
    auto r = engine_->Prefill(seq, p.Tokens(), 0);
    EXPECT_OK(r);
    return r.ok() ? *r : std::vector<float>();
  }

  BlendReport Run(engine::Sequence& seq, const BlendPrompt& p, const BlendOptions& o) {
    auto r = blender_->Prefill(seq, p, o);
    EXPECT_OK(r);
    return r.ok() ? *r : BlendReport{};
  }

  static BlendOptions Blend(double ratio, Method m = Method::kCacheBlend) {
    BlendOptions o;
    o.method = m;
    o.blend.ratio = ratio;
    return o;
  }

  std::shared_ptr<const engine::Model> model_;
  std::unique_ptr<engine::Engine> engine_;
  std::unique_ptr<ChunkKvStore> store_;
  std::unique_ptr<Blender> blender_;
  BlendPrompt prompt_;
  uint32_t layers_ = 0;
};

TEST(PromptTest, SplitKeepsTokensAndKeys) {
  const std::vector<int32_t> tokens = {1, 5, 9, 9, 7, 8, 9, 9, 6, 9, 9, 4, 4};
  const std::vector<int32_t> sep = {9, 9};
  auto p = BlendPrompt::Split(tokens, sep);
  ASSERT_OK(p);
  ASSERT_EQ(p->size(), 4u);
  EXPECT_EQ(p->Tokens(), tokens);
  EXPECT_EQ(p->segment(0).kind, SegmentKind::kPrefix);
  EXPECT_EQ(p->segment(1).kind, SegmentKind::kChunk);
  EXPECT_EQ(p->segment(1).tokens, (std::vector<int32_t>{7, 8, 9, 9}));
  EXPECT_EQ(p->segment(3).kind, SegmentKind::kQuestion);
  EXPECT_EQ(p->begin(2), 8u);
  EXPECT_EQ(p->SegmentAt(7), 1u);
  EXPECT_EQ(p->Key(1), ChunkKey(std::vector<int32_t>{7, 8, 9, 9}));
  std::vector<uint32_t> u = {7, 8, 9, 9};
  EXPECT_EQ(p->Key(1), IndependentTokenHash(u));  // domain tag KVS1IND
  EXPECT_THAT(BlendPrompt::Split(tokens, std::vector<int32_t>{42}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(BlendPrompt::Split(std::vector<int32_t>{1, 9, 9}, sep),  // empty question
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(BlendPrompt::Make({{SegmentKind::kChunk, {1}}}),  // no question
              StatusIs(absl::StatusCode::kInvalidArgument));
}

// algorithms.md 2.5.1: rotate(k at a, b - a) == k at b, for both pair conventions, and
// rope(-d) o rope(d) == identity; in f32 to 1e-5 relative (f32 rounding of the rotation).
TEST(RopeShiftTest, IdentityForBothConventions) {
  for (RopeConvention conv : {RopeConvention::kGptj, RopeConvention::kNeox}) {
    engine::LoadOptions lo;
    lo.rope = conv;
    auto model = engine::Model::Load(engine::testing::StoriesModelPath(), lo);
    ASSERT_OK(model);
    auto e = testing::MakeEngine(*model, 1, DType::kF32, 8);
    const auto& c = e->config();
    ASSERT_OK(CheckRopeReRotatable(*e));
    const std::vector<int32_t> tokens = {300, 300, 300, 41};
    const std::vector<uint32_t> pos = {0, 17, 300, 511};
    auto batch = e->Embed(tokens, pos);
    ASSERT_OK(batch);
    // Layer 0: the copies of token 300 share their pre-RoPE key.
    ASSERT_OK(e->ComputeQkv(0, *batch));
    kernels::RopeParams rope{conv, c.rope_theta, c.rotary_dim};
    for (size_t a = 0; a < 3; ++a) {
      for (size_t b = 0; b < 3; ++b) {
        std::vector<float> k(batch->k(a), batch->k(a) + c.kv_dim());
        ASSERT_TRUE(kernels::ShiftKeys(k.data(), DType::kF32, 1, c.num_kv_heads, c.head_dim, rope,
                                       int64_t{pos[b]} - int64_t{pos[a]})
                        .ok());
        double scale = 0, err = 0;
        for (size_t i = 0; i < k.size(); ++i) {
          scale = std::max(scale, std::fabs(double{batch->k(b)[i]}));
          err = std::max(err, std::fabs(double{k[i]} - double{batch->k(b)[i]}));
        }
        EXPECT_LE(err, 1e-5 * scale) << RopeConventionName(conv) << " " << pos[a] << "->" << pos[b];
      }
    }
    std::vector<float> k(batch->k(3), batch->k(3) + c.kv_dim());
    ASSERT_OK(kernels::ShiftKeys(k.data(), DType::kF32, 1, c.num_kv_heads, c.head_dim, rope, 400));
    ASSERT_OK(kernels::ShiftKeys(k.data(), DType::kF32, 1, c.num_kv_heads, c.head_dim, rope, -400));
    for (size_t i = 0; i < k.size(); ++i) {
      EXPECT_NEAR(k[i], batch->k(3)[i], 1e-5 * (1 + std::fabs(batch->k(3)[i])));
    }
  }
}

// Blender::Create refuses, with a message naming the cause, a model whose RoPE it cannot
// re-rotate exactly: scaled RoPE (linear, YaRN, ...) changes every position's angle. The same
// model without scaling keys, or with neutral ones, is accepted.
TEST(RopeSupportTest, RefusesScaledRopeWithAClearMessage) {
  auto stories = testing::LoadStories();
  ASSERT_NE(stories, nullptr);
  struct Case {
    const char* name;
    std::function<void(engine::testing::GgufBuilder&)> keys;
    const char* refusal;  // nullptr: accepted
  };
  const std::vector<Case> cases = {
      {"plain", nullptr, nullptr},
      {"neutral",
       [](auto& b) {
         b.Str("llama.rope.scaling.type", "none");
         b.F32("llama.rope.scaling.factor", 1.0f);
       },
       nullptr},
      {"linear",
       [](auto& b) {
         b.Str("llama.rope.scaling.type", "linear");
         b.F32("llama.rope.scaling.factor", 4.0f);
       },
       "rope scaling type 'linear'"},
      {"yarn", [](auto& b) { b.Str("llama.rope.scaling.type", "yarn"); },
       "rope scaling type 'yarn'"},
      {"legacy_linear", [](auto& b) { b.F32("llama.rope.scale_linear", 2.0f); },
       "llama.rope.scale_linear = 2"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = engine::testing::WriteTemp(
        std::string("rope_") + c.name, engine::testing::StoriesAsGguf(*stories, 0, false, c.keys));
    auto model = engine::Model::Load(path);
    std::filesystem::remove(path);
    ASSERT_OK(model);
    auto engine = testing::MakeEngine(*model, 1, DType::kF32, 8);
    auto store = NewInProcessChunkStore();
    auto blender = Blender::Create(engine.get(), store.get());
    if (c.refusal == nullptr) {
      EXPECT_OK(blender);
      continue;
    }
    ASSERT_THAT(blender, StatusIs(absl::StatusCode::kFailedPrecondition));
    const std::string message(blender.status().message());
    EXPECT_NE(message.find("blending disabled: cached keys cannot be re-rotated exactly"),
              std::string::npos)
        << message;
    EXPECT_NE(message.find(c.refusal), std::string::npos) << message;
  }
}

// The cached chunk, moved by the loader into f16 paged memory, against a full prefill: V of
// layer 0 is bitwise equal (it depends on the token only), K of layer 0 within the RoPE shift
// identity's bound plus one f16 rounding (algorithms.md 2.5.2).
TEST_F(BlendTest, LayerZeroDeviationIsZero) {
  auto full = engine_->NewSequence();
  Full(*full, prompt_);
  auto naive = engine_->NewSequence();
  Run(*naive, prompt_, Blend(0.0, Method::kFullReuse));
  const uint32_t width = engine_->config().kv_dim();
  for (size_t s = 1; s + 1 < prompt_.size(); ++s) {
    for (uint32_t p = prompt_.begin(s); p < prompt_.end(s); ++p) {
      ASSERT_EQ(std::memcmp(naive->VRow(0, p), full->VRow(0, p), full->cache().TokenBytes()), 0);
      const uint16_t* a = reinterpret_cast<const uint16_t*>(naive->KRow(0, p));
      const uint16_t* b = reinterpret_cast<const uint16_t*>(full->KRow(0, p));
      for (uint32_t i = 0; i < width; ++i) {
        const float x = F16ToF32(a[i]), y = F16ToF32(b[i]);
        ASSERT_LE(std::fabs(x - y), 2e-3f * std::max(1.0f, std::fabs(y))) << p << " " << i;
      }
    }
  }
  // CacheBlend recomputes layers <= check for everyone: bitwise the full prefill there.
  auto blended = engine_->NewSequence();
  Run(*blended, prompt_, Blend(0.15));
  EXPECT_TRUE(SameKvBytes(*blended, *full, 0, 0, prompt_.num_tokens()));
  EXPECT_TRUE(SameKvBytes(*blended, *full, 1, 0, prompt_.num_tokens()));
}

// algorithms.md 2.5.3: r = 100% is a full prefill, bitwise (logits and every layer's KV).
TEST_F(BlendTest, FullRatioEqualsFullPrefill) {
  auto full = engine_->NewSequence();
  const std::vector<float> want = Full(*full, prompt_);
  for (Method m : {Method::kCacheBlend, Method::kRandom}) {
    for (bool gradual : {false, true}) {
      BlendOptions o = Blend(1.0, m);
      o.blend.gradual = gradual;
      o.blend.gradual_start_ratio = 1.0;
      auto seq = engine_->NewSequence();
      BlendReport r = Run(*seq, prompt_, o);
      EXPECT_EQ(r.logits, want) << MethodName(m);
      for (uint32_t l = 0; l < layers_; ++l) {
        EXPECT_TRUE(SameKvBytes(*seq, *full, l, 0, prompt_.num_tokens())) << l;
      }
      EXPECT_DOUBLE_EQ(r.recompute_fraction, 1.0);
    }
  }
}

// The KV the loader puts at `begin` for segment s: the alone cache, K re-rotated by the kernel.
std::vector<uint8_t> ExpectedCachedLayer(ChunkKvStore& store, const BlendPrompt& p, size_t s,
                                         uint32_t layer) {
  auto entries = store.Lookup(std::vector<Hash128>{p.Key(s)});
  EXPECT_OK(entries);
  if (!entries.ok() || !(*entries)[0].alone) {
    ADD_FAILURE() << "no alone cache for segment " << s;
    return {};
  }
  auto kv = store.Fetch(std::vector<ChunkRecord>{*(*entries)[0].alone});
  EXPECT_OK(kv);
  const KvLayout& l = (*kv)[0]->layout();
  auto slab = (*kv)[0]->Layer(layer);
  std::vector<uint8_t> bytes(slab->begin(), slab->end());
  kernels::RopeParams rope{l.rope, l.rope_theta, l.rotary_dim};
  EXPECT_TRUE(kernels::ShiftKeys(bytes.data(), l.dtype, l.num_tokens, l.heads(), l.head_dim, rope,
                                 int64_t{p.begin(s)} - l.position_start)
                  .ok());
  return bytes;
}

// algorithms.md 2.5.4: r = 0% is not naive concatenation. Layers <= check are exact; after it,
// every cached token's KV is the RoPE-corrected cache bit for bit; the question is recomputed.
TEST_F(BlendTest, ZeroRatioInvariant) {
  auto full = engine_->NewSequence();
  Full(*full, prompt_);
  auto seq = engine_->NewSequence();
  BlendReport r = Run(*seq, prompt_, Blend(0.0));
  EXPECT_TRUE(r.selected.empty());
  const uint32_t n = prompt_.num_tokens(), q_begin = prompt_.begin(prompt_.size() - 1);
  for (uint32_t l = 0; l <= 1; ++l) EXPECT_TRUE(SameKvBytes(*seq, *full, l, 0, n)) << l;
  const size_t row = seq->cache().TokenBytes();
  for (uint32_t l = 2; l < layers_; ++l) {
    for (size_t s = 0; s + 1 < prompt_.size(); ++s) {
      std::vector<uint8_t> want = ExpectedCachedLayer(*store_, prompt_, s, l);
      const uint32_t count = prompt_.end(s) - prompt_.begin(s);
      for (uint32_t t = 0; t < count; ++t) {
        ASSERT_EQ(std::memcmp(seq->KRow(l, prompt_.begin(s) + t), want.data() + t * row, row), 0);
        ASSERT_EQ(
            std::memcmp(seq->VRow(l, prompt_.begin(s) + t), want.data() + (count + t) * row, row),
            0);
      }
    }
    EXPECT_EQ(r.recomputed_per_layer[l], n - q_begin);
  }
  EXPECT_EQ(r.recomputed_per_layer[0], n);
  EXPECT_EQ(r.recomputed_per_layer[1], n);
  // Naive full reuse (the separate PromptCache-style baseline) uses the cache at layer 1 too.
  auto naive = engine_->NewSequence();
  BlendReport nr = Run(*naive, prompt_, Blend(0.0, Method::kFullReuse));
  EXPECT_FALSE(SameKvBytes(*naive, *full, 1, prompt_.begin(1), prompt_.end(1)));
  EXPECT_EQ(nr.recomputed_per_layer[1], n - q_begin);
  EXPECT_NE(nr.logits, r.logits);
}

// algorithms.md 2.5.5: under the exact mask the KV error against a full prefill falls as the
// ratio grows; the reference bottom-right mask is reported beside it (not monotone).
TEST_F(BlendTest, ErrorFallsWithRatioUnderExactMask) {
  auto full = engine_->NewSequence();
  Full(*full, prompt_);
  const KvDump want = DumpKv(*engine_, *full, prompt_.num_tokens());
  double prev = 1e30;
  for (double ratio : {0.0, 0.05, 0.15, 0.30, 0.50, 1.0}) {
    auto seq = engine_->NewSequence();
    Run(*seq, prompt_, Blend(ratio));
    const double err = MeanAbsDiffAll(DumpKv(*engine_, *seq, prompt_.num_tokens()), want);
    BlendOptions br = Blend(ratio);
    br.mask = MaskMode::kReferenceBottomRight;
    auto seq_br = engine_->NewSequence();
    Run(*seq_br, prompt_, br);
    const double err_br = MeanAbsDiffAll(DumpKv(*engine_, *seq_br, prompt_.num_tokens()), want);
    std::printf("ratio %.2f  mean |dKV| exact %.5f  bottom-right %.5f\n", ratio, err, err_br);
    EXPECT_LT(err, prev) << ratio;
    prev = err;
    if (ratio == 1.0) {
      EXPECT_EQ(err, 0.0);
    }
  }
}

// algorithms.md 2.5.7: the same inputs select the same tokens; ties go to the lower index.
TEST_F(BlendTest, SelectionIsDeterministic) {
  auto a = engine_->NewSequence();
  auto b = engine_->NewSequence();
  BlendReport ra = Run(*a, prompt_, Blend(0.15));
  BlendReport rb = Run(*b, prompt_, Blend(0.15));
  EXPECT_EQ(ra.selected, rb.selected);
  EXPECT_EQ(ra.logits, rb.logits);
  size_t cached = prompt_.begin(prompt_.size() - 1);
  EXPECT_EQ(ra.selected.size(), static_cast<size_t>(0.15 * cached + 1e-9));
  EXPECT_TRUE(std::is_sorted(ra.selected.begin(), ra.selected.end()));
  // Random selection: seeded, same size, different tokens.
  auto c = engine_->NewSequence();
  BlendReport rc = Run(*c, prompt_, Blend(0.15, Method::kRandom));
  EXPECT_EQ(rc.selected.size(), ra.selected.size());
  EXPECT_NE(rc.selected, ra.selected);
  EXPECT_EQ(rc.recomputed_per_layer, ra.recomputed_per_layer);  // equal compute
}

// Pipelined loading and loading everything first give the same bytes; so does K deviation vs
// V deviation at r = 100%. The controller picks r* when loading is fast.
TEST_F(BlendTest, PipelineAndControllerOptions) {
  auto a = engine_->NewSequence();
  auto b = engine_->NewSequence();
  BlendOptions o = Blend(0.3);
  BlendReport ra = Run(*a, prompt_, o);
  o.pipeline = false;
  BlendReport rb = Run(*b, prompt_, o);
  EXPECT_EQ(ra.logits, rb.logits);
  for (uint32_t l = 0; l < layers_; ++l)
    EXPECT_TRUE(SameKvBytes(*a, *b, l, 0, prompt_.num_tokens()));
  EXPECT_EQ(ra.layer_load_seconds[0], 0.0);  // layers < check are not loaded
  EXPECT_GT(ra.layer_load_seconds[2], 0.0);

  auto full = engine_->NewSequence();
  Run(*full, prompt_, Blend(0.0, Method::kFullPrefill));  // teaches the controller Prefill(L)
  auto c = engine_->NewSequence();
  BlendReport rc = Run(*c, prompt_, Blend(-1.0));
  EXPECT_GE(rc.ratio, 0.15);
  EXPECT_LE(rc.ratio, 1.0);
  EXPECT_EQ(rc.decision.tier, Tier::kProcess);
}

// Gradual filtering recomputes more than the final ratio right after the check layer, then
// exactly the final ratio.
TEST_F(BlendTest, GradualFiltering) {
  BlendOptions o = Blend(0.1);
  o.blend.gradual = true;
  o.blend.gradual_start_ratio = 0.4;
  o.blend.gradual_layers = 2;
  auto seq = engine_->NewSequence();
  BlendReport r = Run(*seq, prompt_, o);
  const uint32_t cached = prompt_.begin(prompt_.size() - 1);
  const uint32_t question = prompt_.num_tokens() - cached;
  EXPECT_EQ(r.recomputed_per_layer[2], question + static_cast<uint32_t>(0.4 * cached));
  EXPECT_EQ(r.recomputed_per_layer[3], question + static_cast<uint32_t>(0.25 * cached + 1e-9));
  EXPECT_EQ(r.recomputed_per_layer[4], question + static_cast<uint32_t>(0.1 * cached + 1e-9));
}

// Prefix caching loads only what was computed in exactly this context: bitwise a full prefill.
TEST_F(BlendTest, PrefixCachingIsExact) {
  auto full = engine_->NewSequence();
  const std::vector<float> want = Full(*full, prompt_);
  ASSERT_OK(blender_->PrepareChunks(prompt_));
  auto seq = engine_->NewSequence();
  BlendReport r = Run(*seq, prompt_, Blend(0.0, Method::kPrefixCaching));
  EXPECT_EQ(r.logits, want);
  EXPECT_EQ(r.cached_tokens, prompt_.end(0));  // the prefix segment only
  for (uint32_t l = 0; l < layers_; ++l)
    EXPECT_TRUE(SameKvBytes(*seq, *full, l, 0, prompt_.num_tokens()));
}

// algorithms.md 3.4.1: with the same preceding chunks in the same order, beta' = 1 and CFO = 0:
// Cache-Craft reuses every variant as is, and that is bitwise prefix caching (and a full
// prefill).
TEST_F(BlendTest, CraftWithExactPrefixIsPrefixCaching) {
  auto capture_seq = engine_->NewSequence();
  auto captured = blender_->PrefillWithStats(*capture_seq, prompt_);
  ASSERT_OK(captured);
  auto full = engine_->NewSequence();
  EXPECT_EQ(captured->logits, Full(*full, prompt_));  // the layer API run is the same prefill
  ASSERT_OK(blender_->StoreVariants(*capture_seq, prompt_, captured->stats));

  auto craft_seq = engine_->NewSequence();
  BlendOptions o = Blend(0.0, Method::kCacheCraft);
  BlendReport craft = Run(*craft_seq, prompt_, o);
  for (size_t s = 0; s + 1 < prompt_.size(); ++s) {
    EXPECT_DOUBLE_EQ(craft.craft[s].beta_prime, 1.0);
    EXPECT_DOUBLE_EQ(craft.craft[s].cfo, 0.0);
  }
  EXPECT_TRUE(craft.selected.empty());
  auto prefix_seq = engine_->NewSequence();
  BlendReport prefix = Run(*prefix_seq, prompt_, Blend(0.0, Method::kPrefixCaching));
  EXPECT_EQ(prefix.cached_tokens, prompt_.begin(prompt_.size() - 1));
  EXPECT_EQ(craft.logits, prefix.logits);
  EXPECT_EQ(craft.logits, captured->logits);
  for (uint32_t l = 0; l < layers_; ++l) {
    EXPECT_TRUE(SameKvBytes(*craft_seq, *prefix_seq, l, 0, prompt_.num_tokens())) << l;
  }
}

// algorithms.md 3.4.2 and 3.4.6: CFO = 1 is a full prefill; early termination that drops nothing
// equals the plain partial prefill; Cache-Craft error sits between naive reuse and exact.
TEST_F(BlendTest, CraftFullCfoAndEarlyTermination) {
  // Every chunk of prompt_ ({2, 0, 3, 1}) had some chunk before it here that prompt_ lacks
  // before it (chunk 5 opens this prompt), so beta' < 1 for all and a huge alpha gives CFO = 1.
  // (A variant made right after the prefix has beta = 1 in any new context: S_new ⊇ S_old.)
  const BlendPrompt other = StoriesPrompt({5, 1, 3, 0, 2});
  auto cap = engine_->NewSequence();
  auto captured = blender_->PrefillWithStats(*cap, other);
  ASSERT_OK(captured);
  ASSERT_OK(blender_->StoreVariants(*cap, other, captured->stats));

  auto full = engine_->NewSequence();
  const std::vector<float> want = Full(*full, prompt_);
  BlendOptions o = Blend(0.0, Method::kCacheCraft);
  o.craft.alpha = 1e9;
  auto all = engine_->NewSequence();
  BlendReport r_all = Run(*all, prompt_, o);
  for (size_t s = 1; s + 1 < prompt_.size(); ++s) EXPECT_EQ(r_all.craft[s].cfo, 1.0) << s;
  EXPECT_EQ(r_all.craft[0].cfo, 0.0);  // the prefix: no context before it, reused exactly
  EXPECT_EQ(r_all.logits, want);
  for (uint32_t l = 0; l < layers_; ++l)
    EXPECT_TRUE(SameKvBytes(*all, *full, l, 0, prompt_.num_tokens()));

  o.craft.alpha = 2.0;
  o.craft.count_new_context = false;  // the paper's CFO, which leaves part of each chunk cached
  auto plain = engine_->NewSequence();
  BlendReport r_plain = Run(*plain, prompt_, o);
  EXPECT_GT(r_plain.selected.size(), 0u);
  EXPECT_LT(r_plain.recompute_fraction, 1.0);
  o.craft.early_termination = true;
  o.craft.focus_threshold = 0.0;  // nothing is unfocused
  auto et0 = engine_->NewSequence();
  BlendReport r_et0 = Run(*et0, prompt_, o);
  EXPECT_EQ(r_et0.logits, r_plain.logits);
  EXPECT_EQ(r_et0.recomputed_per_layer, r_plain.recomputed_per_layer);
  o.craft.focus_threshold = 1.0;  // chunks below the uniform share stop after the layer
  auto et1 = engine_->NewSequence();
  BlendReport r_et1 = Run(*et1, prompt_, o);
  EXPECT_LT(r_et1.recomputed_per_layer.back(), r_plain.recomputed_per_layer.back());
  EXPECT_EQ(r_et1.recomputed_per_layer[0], r_plain.recomputed_per_layer[0]);
}

// CacheCraftOptions::count_new_context (the default): a variant made right behind the prefix
// scores CFO 0 in the paper's formula behind any new chunks; counting the new context recomputes
// part of it.
TEST_F(BlendTest, CraftCountingNewContext) {
  const BlendPrompt other = StoriesPrompt({1, 5});  // chunk 1 right behind the prefix
  auto cap = engine_->NewSequence();
  auto captured = blender_->PrefillWithStats(*cap, other);
  ASSERT_OK(captured);
  ASSERT_OK(blender_->StoreVariants(*cap, other, captured->stats));
  // In prompt_ ({2, 0, 3, 1}) chunk 1 is segment 4, behind the prefix and three chunks it never
  // saw; those three have no variant and are computed in full.
  BlendOptions o = Blend(0.0, Method::kCacheCraft);
  o.craft.store_new_variants = false;
  o.craft.count_new_context = false;  // the paper's CFO
  auto paper = engine_->NewSequence();
  BlendReport r = Run(*paper, prompt_, o);
  EXPECT_EQ(r.missing_chunks, 3u);
  EXPECT_EQ(r.craft[4].cfo, 0.0);
  o.craft.count_new_context = true;
  auto counted = engine_->NewSequence();
  BlendReport rc = Run(*counted, prompt_, o);
  const double prefix_share =
      static_cast<double>(prompt_.end(0) - prompt_.begin(0)) / prompt_.begin(4);
  EXPECT_DOUBLE_EQ(rc.craft[4].coverage, prefix_share);
  EXPECT_GT(rc.craft[4].cfo, 0.0);
  EXPECT_EQ(rc.craft[0].cfo, 0.0);  // the prefix itself is still reused exactly
  EXPECT_GT(rc.recompute_fraction, r.recompute_fraction);
  // The recomputed tokens of chunk 1 move the KV towards a full prefill of prompt_.
  auto full = engine_->NewSequence();
  Full(*full, prompt_);
  const KvDump want = DumpKv(*engine_, *full, prompt_.num_tokens());
  const double err_paper = MeanAbsDiffAll(DumpKv(*engine_, *paper, prompt_.num_tokens()), want);
  const double err_counted = MeanAbsDiffAll(DumpKv(*engine_, *counted, prompt_.num_tokens()), want);
  EXPECT_LT(err_counted, err_paper);
}

// Cache-Craft misses recompute the chunk in full and store it as a new variant.
TEST_F(BlendTest, CraftMissStoresVariants) {
  auto seq = engine_->NewSequence();
  BlendReport r = Run(*seq, prompt_, Blend(0.0, Method::kCacheCraft));
  EXPECT_EQ(r.missing_chunks, prompt_.size() - 1);
  EXPECT_DOUBLE_EQ(r.recompute_fraction, 1.0);
  auto entries = store_->Lookup(std::vector<Hash128>{prompt_.Key(2)});
  ASSERT_OK(entries);
  ASSERT_EQ((*entries)[0].variants.size(), 1u);
  const ChunkRecord& v = (*entries)[0].variants[0];
  EXPECT_EQ(v.layout.position_start, prompt_.begin(2));
  EXPECT_EQ(v.stats.context, (std::vector<Hash128>{prompt_.Key(0), prompt_.Key(1)}));
  auto again = engine_->NewSequence();
  BlendReport r2 = Run(*again, prompt_, Blend(0.0, Method::kCacheCraft));
  EXPECT_EQ(r2.missing_chunks, 0u);
  EXPECT_EQ(r2.logits, r.logits);  // same context: CFO 0, the stored KV is what was computed
}

TEST_F(BlendTest, VariantSlotsAreBoundedAndRefreshed) {
  for (int i = 0; i < 4; ++i) {
    std::vector<size_t> order = {static_cast<size_t>(i), 4, static_cast<size_t>((i + 1) % 4)};
    const BlendPrompt p = StoriesPrompt(order);
    auto seq = engine_->NewSequence();
    auto captured = blender_->PrefillWithStats(*seq, p);
    ASSERT_OK(captured);
    ASSERT_OK(blender_->StoreVariants(*seq, p, captured->stats, 3));
  }
  // Chunk 4 was stored after 4 different first chunks; 3 slots keep the newest 3.
  const BlendPrompt p = StoriesPrompt({0, 4, 1});
  auto entries = store_->Lookup(std::vector<Hash128>{p.Key(2)});
  ASSERT_OK(entries);
  ASSERT_EQ((*entries)[0].variants.size(), 3u);
  std::vector<uint64_t> created;
  for (const ChunkRecord& v : (*entries)[0].variants) created.push_back(v.stats.created);
  std::sort(created.begin(), created.end());
  EXPECT_EQ(created, (std::vector<uint64_t>{2, 3, 4}));
}

// Forwards to a real store and fails one step on demand: the fault injection for the fallback
// below (the data path itself is the real in-process store).
class FailingStore final : public ChunkKvStore {
 public:
  enum class Fail { kNothing, kPut, kLookup, kFetch, kLayer };
  explicit FailingStore(ChunkKvStore* inner) : inner_(inner) {}
  Fail fail = Fail::kNothing;

  Result<std::vector<ChunkEntries>> Lookup(std::span<const Hash128> chunks) override {
    if (fail == Fail::kLookup) return absl::UnavailableError("injected: store unreachable");
    return inner_->Lookup(chunks);
  }
  Result<std::vector<std::unique_ptr<ChunkKv>>> Fetch(
      std::span<const ChunkRecord> records) override {
    if (fail == Fail::kFetch) return absl::NotFoundError("injected: evicted since the lookup");
    KVSTASH_ASSIGN_OR_RETURN(auto kv, inner_->Fetch(records));
    if (fail == Fail::kLayer) {
      for (auto& k : kv) k = std::make_unique<BadLayers>(std::move(k));
    }
    return kv;
  }
  Status Put(const ChunkRecord& record, std::span<const uint8_t> kv) override {
    if (fail == Fail::kPut) return absl::UnavailableError("injected: store unreachable");
    return inner_->Put(record, kv);
  }

 private:
  // Layer 3 of every chunk fails to load (after the pipeline has started).
  class BadLayers final : public ChunkKv {
   public:
    explicit BadLayers(std::unique_ptr<ChunkKv> kv) : kv_(std::move(kv)) {}
    const KvLayout& layout() const override { return kv_->layout(); }
    Result<std::span<const uint8_t>> Layer(uint32_t layer) override {
      if (layer == 3) return absl::DataLossError("injected: layer 3 unreadable");
      return kv_->Layer(layer);
    }
    Tier tier() const override { return kv_->tier(); }

   private:
    std::unique_ptr<ChunkKv> kv_;
  };
  ChunkKvStore* inner_;
};

// A store failure at any step means a full prefill (bitwise Engine::Prefill) with the reason in
// BlendReport::fallback, or the store's error when the fallback is off.
TEST_F(BlendTest, StoreFailuresFallBackToFullPrefill) {
  auto full = engine_->NewSequence();
  const std::vector<float> want = Full(*full, prompt_);
  ASSERT_OK(blender_->PrepareChunks(prompt_));  // the fetch cases have chunks to fetch
  FailingStore failing(store_.get());
  auto b = Blender::Create(engine_.get(), &failing);
  ASSERT_OK(b);
  struct Case {
    FailingStore::Fail fail;
    Method method;
    bool prefill_missing;
    const char* step;
    absl::StatusCode code;
  };
  const std::vector<Case> cases = {
      {FailingStore::Fail::kLookup, Method::kCacheBlend, true, "preparing chunks",
       absl::StatusCode::kUnavailable},
      {FailingStore::Fail::kLookup, Method::kCacheBlend, false, "lookup",
       absl::StatusCode::kUnavailable},
      {FailingStore::Fail::kFetch, Method::kCacheBlend, true,
       "loading cached layers: NOT_FOUND: fetch:", absl::StatusCode::kNotFound},
      {FailingStore::Fail::kLayer, Method::kCacheBlend, true, "loading cached layers",
       absl::StatusCode::kDataLoss},
      {FailingStore::Fail::kLayer, Method::kFullReuse, true, "loading cached layers",
       absl::StatusCode::kDataLoss},
      {FailingStore::Fail::kFetch, Method::kPrefixCaching, true,
       "loading cached layers: NOT_FOUND: fetch:", absl::StatusCode::kNotFound},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.step);
    failing.fail = c.fail;
    BlendOptions o = Blend(0.15, c.method);
    o.blend.check_layer = 1;
    o.prefill_missing = c.prefill_missing;
    auto seq = engine_->NewSequence();
    auto r = (*b)->Prefill(*seq, prompt_, o);
    ASSERT_OK(r);
    EXPECT_EQ(r->fallback.rfind(c.step, 0), 0u) << r->fallback;
    EXPECT_EQ(r->logits, want);
    EXPECT_EQ(r->cached_tokens, 0u);
    EXPECT_EQ(r->recompute_fraction, 1.0);
    EXPECT_EQ(seq->length(), prompt_.num_tokens());
    for (uint32_t l = 0; l < layers_; ++l) {
      EXPECT_TRUE(SameKvBytes(*seq, *full, l, 0, prompt_.num_tokens())) << "layer " << l;
    }
    o.fallback_on_store_error = false;
    auto strict = (*b)->Prefill(*seq, prompt_, o);
    EXPECT_EQ(strict.status().code(), c.code) << strict.status();
    EXPECT_EQ(seq->length(), 0u);
  }
  // Storing a chunk prefilled alone fails: the same, for a prompt whose chunks are not cached.
  failing.fail = FailingStore::Fail::kPut;
  const BlendPrompt fresh = StoriesPrompt({4, 5});
  auto fresh_full = engine_->NewSequence();
  const std::vector<float> fresh_want = Full(*fresh_full, fresh);
  auto seq = engine_->NewSequence();
  auto r = (*b)->Prefill(*seq, fresh, Blend(0.15));
  ASSERT_OK(r);
  EXPECT_EQ(r->fallback.rfind("preparing chunks", 0), 0u) << r->fallback;
  EXPECT_EQ(r->logits, fresh_want);
  // No failure: no fallback.
  failing.fail = FailingStore::Fail::kNothing;
  r = (*b)->Prefill(*seq, prompt_, Blend(0.15));
  ASSERT_OK(r);
  EXPECT_TRUE(r->fallback.empty()) << r->fallback;
  EXPECT_GT(r->cached_tokens, 0u);
}

TEST_F(BlendTest, BadOptionsAndMissingChunksWithoutPrefill) {
  auto seq = engine_->NewSequence();
  BlendOptions o = Blend(0.15);
  o.blend.check_layer = layers_;
  EXPECT_THAT(blender_->Prefill(*seq, prompt_, o), StatusIs(absl::StatusCode::kInvalidArgument));
  o = Blend(1.5);
  EXPECT_THAT(blender_->Prefill(*seq, prompt_, o), StatusIs(absl::StatusCode::kInvalidArgument));
  // Without prefill_missing nothing is cached: every token is computed, a full prefill.
  o = Blend(0.15);
  o.prefill_missing = false;
  BlendReport r = Run(*seq, prompt_, o);
  EXPECT_EQ(r.missing_chunks, prompt_.size() - 1);
  auto full = engine_->NewSequence();
  EXPECT_EQ(r.logits, Full(*full, prompt_));
  auto prepared = blender_->PrepareChunks(prompt_);
  ASSERT_OK(prepared);
  EXPECT_EQ(*prepared, prompt_.size() - 1);
  EXPECT_EQ(*blender_->PrepareChunks(prompt_), 0u);
}

}  // namespace
}  // namespace kvstash::blend
