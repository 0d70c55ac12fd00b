// Cache-Craft metrics against hand-computed values, selection tie-breaks, the statistics
// encoding, the loading controller and the pipeline time model (no model needed).
#include "kvstash/blend/craft.h"

#include <gtest/gtest.h>

#include <cmath>

#include "executor.h"  // RandomSubset
#include "kvstash/blend/chunk_store.h"
#include "kvstash/blend/controller.h"
#include "kvstash/blend/selection.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::blend {
namespace {

const Hash128 A{1, 0}, B{2, 0}, C{3, 0}, D{4, 0};

// Two layers, context [A, B, C]; inter summed over layers: A 2, B 2, C 4.
ChunkStats ThreeChunkStats() {
  ChunkStats s;
  s.context = {A, B, C};
  s.context_tokens = {4, 2, 8};
  s.num_layers = 2;
  s.inter = {1, 2, 3, /* layer 1 */ 1, 0, 1};
  s.intra = {6, 2};
  s.token_scores = {0.5f, 0.25f, 0.5f, 0.75f};
  return s;
}

TEST(CraftTest, OrderPenaltyIsKendallTauDistance) {
  const std::vector<Hash128> abc = {A, B, C};
  EXPECT_EQ(OrderPenalty(abc, abc), 0.0);
  EXPECT_EQ(OrderPenalty(abc, std::vector<Hash128>{C, B, A}), 1.0);
  EXPECT_DOUBLE_EQ(OrderPenalty(abc, std::vector<Hash128>{B, A, C}), 1.0 / 3.0);
  EXPECT_DOUBLE_EQ(OrderPenalty(abc, std::vector<Hash128>{D, C, A, B}), 2.0 / 3.0);
  // Fewer than two common chunks: no order to violate.
  EXPECT_EQ(OrderPenalty(abc, std::vector<Hash128>{C}), 0.0);
  EXPECT_EQ(OrderPenalty(abc, std::vector<Hash128>{}), 0.0);
  EXPECT_EQ(OrderPenalty(std::vector<Hash128>{A, B}, std::vector<Hash128>{B, D, A}), 1.0);
  const std::vector<Hash128> four = {A, B, C, D};
  EXPECT_EQ(OrderPenalty(four, std::vector<Hash128>{D, C, B, A}), 1.0);
}

TEST(CraftTest, PrefixOverlapWeightsByAttention) {
  const ChunkStats s = ThreeChunkStats();
  EXPECT_DOUBLE_EQ(PrefixOverlap(s, std::vector<Hash128>{A, B, C}), 1.0);
  EXPECT_DOUBLE_EQ(PrefixOverlap(s, std::vector<Hash128>{D, C, A, B}), 1.0);  // superset
  EXPECT_DOUBLE_EQ(PrefixOverlap(s, std::vector<Hash128>{A, C}), 6.0 / 8.0);
  EXPECT_DOUBLE_EQ(PrefixOverlap(s, std::vector<Hash128>{B}), 2.0 / 8.0);
  EXPECT_DOUBLE_EQ(PrefixOverlap(s, std::vector<Hash128>{D}), 0.0);
  ChunkStats first;  // S_old empty: beta = 1 by convention (algorithms.md 3.5.2)
  first.num_layers = 2;
  first.intra = {1, 1};
  EXPECT_EQ(PrefixOverlap(first, std::vector<Hash128>{A}), 1.0);
}

TEST(CraftTest, ContextImpactByHand) {
  // One layer, chunk of 2 tokens, one context chunk of 4: a = 2 / (2 * 4) = 0.25,
  // b = 1 / 2^2 = 0.25, CCI = sigmoid(1).
  ChunkStats s;
  s.context = {A};
  s.context_tokens = {4};
  s.num_layers = 1;
  s.inter = {2.0};
  s.intra = {1.0};
  s.token_scores = {0, 0};
  EXPECT_NEAR(ContextImpact(s, 2), 1.0 / (1.0 + std::exp(-1.0)), 1e-15);
  // Three-chunk stats, |C_i| = 4: layer 0 a = 1/16 + 2/8 + 3/32 = 0.40625, b = 6/16;
  // layer 1 a = 1/16 + 0 + 1/32 = 0.09375, b = 2/16. Means: a = 0.25, b = 0.25.
  EXPECT_NEAR(ContextImpact(ThreeChunkStats(), 4), 1.0 / (1.0 + std::exp(-1.0)), 1e-15);
  ChunkStats none;
  none.num_layers = 1;
  none.intra = {3.0};
  EXPECT_EQ(ContextImpact(none, 3), 0.5);
}

TEST(CraftTest, CfoAndTokenCountByHand) {
  const ChunkStats s = ThreeChunkStats();
  // New context [C, A]: beta = 6/8, gamma = 1 (A before C became C before A), beta' = 0,
  // CFO = 0.8 * sigmoid(1) * 1.
  CraftScore sc = ScoreVariant(s, 4, std::vector<Hash128>{C, A}, 0.8);
  EXPECT_DOUBLE_EQ(sc.beta, 0.75);
  EXPECT_DOUBLE_EQ(sc.gamma, 1.0);
  EXPECT_DOUBLE_EQ(sc.beta_prime, 0.0);
  const double cci = 1.0 / (1.0 + std::exp(-1.0));
  EXPECT_NEAR(sc.cfo, 0.8 * cci, 1e-15);
  EXPECT_EQ(sc.recompute_tokens, 3u);  // ceil(0.5849 * 4)
  // [A, B, D]: beta = 4/8, gamma = 0, beta' = 0.5, CFO = 0.5 * cci * 0.5.
  sc = ScoreVariant(s, 4, std::vector<Hash128>{A, B, D}, 0.5);
  EXPECT_DOUBLE_EQ(sc.beta_prime, 0.5);
  EXPECT_NEAR(sc.cfo, 0.25 * cci, 1e-15);
  EXPECT_EQ(sc.recompute_tokens, 1u);  // ceil(0.18 * 4)
  // Same prefix, same order: CFO 0 whatever alpha.
  sc = ScoreVariant(s, 4, std::vector<Hash128>{A, B, C}, 100.0);
  EXPECT_EQ(sc.cfo, 0.0);
  EXPECT_EQ(sc.recompute_tokens, 0u);
  // Clamped to 1.
  sc = ScoreVariant(s, 4, std::vector<Hash128>{}, 100.0);
  EXPECT_EQ(sc.cfo, 1.0);
  EXPECT_EQ(sc.recompute_tokens, 4u);
  EXPECT_EQ(CraftRecomputeCount(0.25, 4), 1u);  // exact products are not rounded up
  EXPECT_EQ(CraftRecomputeCount(0.2500001, 4), 2u);
}

// The extension (CacheCraftOptions::count_new_context): beta' also scaled by the token share of
// the new context that the variant saw.
TEST(CraftTest, NewContextCoverageByHand) {
  const ChunkStats s = ThreeChunkStats();  // S_old = [A, B, C]
  const std::vector<Hash128> dab = {D, A, B};
  // D (6 tokens) is new; A (4) and B (2) were seen: coverage = 6 / 12.
  EXPECT_DOUBLE_EQ(NewContextCoverage(s, dab, std::vector<uint32_t>{6, 4, 2}), 0.5);
  EXPECT_DOUBLE_EQ(NewContextCoverage(s, dab, std::vector<uint32_t>{0, 4, 2}), 1.0);
  EXPECT_DOUBLE_EQ(NewContextCoverage(s, std::vector<Hash128>{D}, std::vector<uint32_t>{3}), 0.0);
  EXPECT_EQ(NewContextCoverage(s, std::vector<Hash128>{}, std::vector<uint32_t>{}), 1.0);
  // [D, A, B], alpha 1: beta = 4/8, gamma = 0, coverage = 0.5, beta' = 0.25,
  // CFO = cci * 0.75; without the token counts, the paper's beta' = 0.5.
  const double cci = 1.0 / (1.0 + std::exp(-1.0));
  CraftScore sc = ScoreVariant(s, 4, dab, 1.0, std::vector<uint32_t>{6, 4, 2});
  EXPECT_DOUBLE_EQ(sc.coverage, 0.5);
  EXPECT_DOUBLE_EQ(sc.beta_prime, 0.25);
  EXPECT_NEAR(sc.cfo, 0.75 * cci, 1e-15);
  EXPECT_EQ(sc.recompute_tokens, 3u);  // ceil(0.548 * 4)
  sc = ScoreVariant(s, 4, dab, 1.0);
  EXPECT_EQ(sc.coverage, 1.0);
  EXPECT_DOUBLE_EQ(sc.beta_prime, 0.5);
  // The case it exists for: a variant made behind the prefix A alone, now behind A and two new
  // chunks. The paper's CFO is 0; counted, coverage = 4 / 16 and CFO = cci_1 * 0.75.
  ChunkStats behind_prefix;
  behind_prefix.context = {A};
  behind_prefix.context_tokens = {4};
  behind_prefix.num_layers = 1;
  behind_prefix.inter = {2.0};
  behind_prefix.intra = {1.0};
  behind_prefix.token_scores = {0, 0};
  const std::vector<Hash128> abd = {A, B, D};
  EXPECT_EQ(ScoreVariant(behind_prefix, 2, abd, 1.0).cfo, 0.0);
  sc = ScoreVariant(behind_prefix, 2, abd, 1.0, std::vector<uint32_t>{4, 6, 6});
  EXPECT_DOUBLE_EQ(sc.coverage, 0.25);
  EXPECT_NEAR(sc.cfo, 0.75 * cci, 1e-15);  // CCI of these stats is sigmoid(1) too
  // S_new == S_old still gives CFO 0, so the prefix-caching invariant is kept.
  EXPECT_EQ(
      ScoreVariant(s, 4, std::vector<Hash128>{A, B, C}, 100.0, std::vector<uint32_t>{4, 2, 8}).cfo,
      0.0);
}

TEST(CraftTest, VariantChoiceAndTokens) {
  std::vector<ChunkRecord> v(3);
  v[0].slot = 0, v[0].stats.created = 5;
  v[1].slot = 1, v[1].stats.created = 9;
  v[2].slot = 2, v[2].stats.created = 9;
  std::vector<CraftScore> sc(3);
  sc[0].cfo = 0.1, sc[1].cfo = 0.2, sc[2].cfo = 0.2;
  EXPECT_EQ(ChooseVariant(sc, v), 0u);
  sc[0].cfo = 0.2;  // all tie: newest, then lowest slot
  EXPECT_EQ(ChooseVariant(sc, v), 1u);
  // Top-2 of scores {0.5, 0.25, 0.5, 0.75}: 3, then the tie 0 / 2 goes to 0.
  EXPECT_EQ(CraftTokens(ThreeChunkStats(), 2), (std::vector<uint32_t>{0, 3}));
}

TEST(SelectionTest, TopKTiesByIndexSortedAscending) {
  const std::vector<float> s = {1, 3, 3, 2, 3, NAN, 0};
  EXPECT_EQ(SelectTopK(s, 0), std::vector<uint32_t>{});
  EXPECT_EQ(SelectTopK(s, 2), (std::vector<uint32_t>{1, 2}));
  EXPECT_EQ(SelectTopK(s, 4), (std::vector<uint32_t>{1, 2, 3, 4}));
  EXPECT_EQ(SelectTopK(s, 7).size(), 7u);
  EXPECT_EQ(SelectTopK(s, 99).size(), 7u);
  EXPECT_EQ(SelectTopK(s, 6), (std::vector<uint32_t>{0, 1, 2, 3, 4, 6}));  // NaN last
  EXPECT_EQ(BlendRecomputeCount(0.15, 100), 15u);
  EXPECT_EQ(BlendRecomputeCount(0.29, 100), 29u);  // not 28 (0.29 * 100 < 29 in binary)
  EXPECT_EQ(BlendRecomputeCount(0.15, 10), 1u);
  EXPECT_EQ(BlendRecomputeCount(-1, 10), 0u);
  EXPECT_EQ(BlendRecomputeCount(2, 10), 10u);
  EXPECT_EQ(internal::RandomSubset(10, 3, 7), internal::RandomSubset(10, 3, 7));
  EXPECT_EQ(internal::RandomSubset(10, 10, 7).size(), 10u);
  EXPECT_NE(internal::RandomSubset(1000, 10, 7), internal::RandomSubset(1000, 10, 8));
}

TEST(StatsCodecTest, RoundTripAndRejection) {
  ChunkStats s = ThreeChunkStats();
  s.created = 42;
  ASSERT_OK(s.Validate(4));
  EXPECT_THAT(s.Validate(5), StatusIs(absl::StatusCode::kInvalidArgument));
  std::vector<uint8_t> bytes = EncodeStats(s);
  auto back = DecodeStats(bytes);
  ASSERT_OK(back);
  EXPECT_EQ(*back, s);
  for (size_t cut : {size_t{0}, size_t{7}, size_t{20}, bytes.size() - 1}) {
    EXPECT_THAT(DecodeStats(std::span(bytes).first(cut)), StatusIs(absl::StatusCode::kDataLoss))
        << cut;
  }
  bytes.push_back(0);
  EXPECT_THAT(DecodeStats(bytes), StatusIs(absl::StatusCode::kDataLoss));
  bytes.pop_back();
  bytes[0] ^= 1;
  EXPECT_THAT(DecodeStats(bytes), StatusIs(absl::StatusCode::kDataLoss));
}

// algorithms.md 2.1.5 and 2.5.9 with mocked times.
TEST(ControllerTest, RatioAndTierFollowTheFormulas) {
  ControllerInputs in;
  in.kv_bytes = 1000;
  in.prefill_seconds = 10.0;
  in.target_ratio = 0.15;
  // SSD 100 B/s -> 10 s load; CPU 10'000 B/s -> 0.1 s. r* budget 1.5 s: SSD too slow.
  in.tiers = {{Tier::kSsd, 100}, {Tier::kCpu, 10'000}};
  ControllerDecision d = DecideLoad(in);
  EXPECT_EQ(d.tier, Tier::kCpu);
  EXPECT_DOUBLE_EQ(d.ratio, 0.15);
  EXPECT_DOUBLE_EQ(d.recompute_seconds, 1.5);
  // SSD at 1000 B/s loads in 1 s <= 1.5 s: the cheaper tier suffices.
  in.tiers[0].bytes_per_second = 1000;
  d = DecideLoad(in);
  EXPECT_EQ(d.tier, Tier::kSsd);
  EXPECT_DOUBLE_EQ(d.load_seconds, 1.0);
  EXPECT_DOUBLE_EQ(d.ratio, 0.15);
  // Only a slow tier: it is used, and r grows until recompute hides the load: 4 s / 10 s.
  in.tiers = {{Tier::kSsd, 250}};
  d = DecideLoad(in);
  EXPECT_EQ(d.tier, Tier::kSsd);
  EXPECT_DOUBLE_EQ(d.ratio, 0.4);
  in.tiers = {{Tier::kSsd, 1}};
  EXPECT_DOUBLE_EQ(DecideLoad(in).ratio, 1.0);
  in.tiers.clear();
  EXPECT_EQ(DecideLoad(in).tier, Tier::kUnknown);

  LoadController lc(0.15, 1.0);
  EXPECT_DOUBLE_EQ(lc.Decide(100, 1000).ratio, 0.15);  // nothing measured
  lc.ObservePrefill(100, 10.0);
  lc.ObserveLoad(Tier::kSsd, 500, 2.0);  // 250 B/s
  d = lc.Decide(100, 1000);
  EXPECT_EQ(d.tier, Tier::kSsd);
  EXPECT_DOUBLE_EQ(d.ratio, 0.4);
  lc.ObserveLoad(Tier::kCpu, 1'000'000, 1.0);
  d = lc.Decide(100, 1000);
  EXPECT_EQ(d.tier, Tier::kCpu);
  EXPECT_DOUBLE_EQ(d.ratio, 0.15);
}

TEST(ControllerTest, PipelineTimeIsSumOfMaxima) {
  // Steady state: each layer costs max(load, compute) after the first load.
  const std::vector<double> load = {1, 1, 1, 1};
  const std::vector<double> compute = {2, 2, 2, 2};
  EXPECT_DOUBLE_EQ(PipelinedSeconds(load, compute), 1 + 4 * 2);
  const std::vector<double> slow_load = {3, 3, 3};
  const std::vector<double> fast = {1, 1, 1};
  EXPECT_DOUBLE_EQ(PipelinedSeconds(slow_load, fast), 3 * 3 + 1);
  // Layers without load (CacheBlend's layers before the check layer) start at once.
  EXPECT_DOUBLE_EQ(PipelinedSeconds(std::vector<double>{0, 0, 2}, std::vector<double>{1, 1, 1}),
                   3.0);
}

}  // namespace
}  // namespace kvstash::blend
