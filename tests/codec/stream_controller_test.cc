// Streaming controller on synthetic traces (algorithms.md §1.5 item 7).
#include "kvstash/codec/stream_controller.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

namespace kvstash::codec {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

std::vector<ChunkCost> Chunks(size_t n) {
  // Sizes roughly as measured for CacheGen levels 1-3 on a 256-token chunk.
  std::vector<ChunkCost> chunks;
  for (size_t i = 0; i < n; ++i) {
    ChunkCost c;
    c.level_bytes = {1'000'000 + 1000 * i, 1'500'000 + 1000 * i, 2'400'000 + 1000 * i};
    c.tokens = 256;
    chunks.push_back(c);
  }
  return chunks;
}

ControllerConfig Config(ControllerPolicy policy, double initial_bps = 0) {
  ControllerConfig c;
  c.policy = policy;
  c.ttft_budget_s = 1.0;
  c.prefill_tokens_per_s = 2000;  // 0.128 s per chunk
  c.initial_bandwidth_bps = initial_bps;
  return c;
}

TEST(StreamControllerTest, InfiniteBandwidthGivesBestLevel) {
  auto chunks = Chunks(8);
  std::vector<double> bw(8, kInf);
  for (auto policy : {ControllerPolicy::kEstimated, ControllerPolicy::kOracleShare}) {
    TraceResult r = SimulateTrace(Config(policy, kInf), chunks, bw);
    EXPECT_EQ(r.levels, std::vector<int>(8, 3));
    EXPECT_EQ(r.total_s, 0.0);
    EXPECT_FALSE(r.violated);
  }
}

TEST(StreamControllerTest, ZeroBandwidthRecomputesEverything) {
  auto chunks = Chunks(8);
  std::vector<double> bw(8, 0.0);
  for (auto policy : {ControllerPolicy::kEstimated, ControllerPolicy::kOracleShare}) {
    TraceResult r = SimulateTrace(Config(policy, 0.0), chunks, bw);
    EXPECT_EQ(r.levels, std::vector<int>(8, 0));
    EXPECT_DOUBLE_EQ(r.total_s, 8 * 256 / 2000.0);
    EXPECT_TRUE(r.violated);  // 1.024 s > 1 s
  }
}

TEST(StreamControllerTest, DecisionIsNonDecreasingInBandwidth) {
  for (auto policy : {ControllerPolicy::kEstimated, ControllerPolicy::kOracleShare}) {
    StreamController controller(Config(policy), Chunks(10));
    for (int step = 0; step < 5; ++step) controller.Report(1'000'000, 0.05);
    for (double elapsed : {0.0, 0.1, 0.5, 0.9, 1.5}) {
      int previous = -1;
      // 1e5 to 8.4e10 B/s in steps of x1.3 (an integer counter: clang-analyzer's
      // security.FloatLoopCounter).
      for (int i = 0; i < 53; ++i) {
        const double bw = 1e5 * std::pow(1.3, i);
        const int level = controller.Decide(bw, elapsed).level;
        EXPECT_GE(level, previous) << "bw " << bw << " elapsed " << elapsed;
        previous = level;
      }
      const bool fits = policy == ControllerPolicy::kOracleShare || elapsed <= 1.0;
      // Past the budget nothing fits; a free transfer at level 1 beats recomputing.
      EXPECT_EQ(controller.Decide(kInf, elapsed).level, fits ? 3 : 1);
    }
  }
}

TEST(StreamControllerTest, OracleLevelsPerChunkNonDecreasingInBandwidth) {
  auto chunks = Chunks(6);
  std::mt19937_64 rng(2);
  std::uniform_real_distribution<double> u(0.1, 10.0);
  std::vector<double> shape(6);
  for (double& s : shape) s = u(rng);
  std::vector<int> previous(6, -1);
  for (int step = 0; step < 23; ++step) {  // scale 1e5 to 7.5e8 in steps of x1.5
    const double scale = 1e5 * std::pow(1.5, step);
    std::vector<double> bw(6);
    for (size_t i = 0; i < 6; ++i) bw[i] = shape[i] * scale;
    TraceResult r = SimulateTrace(Config(ControllerPolicy::kOracleShare), chunks, bw);
    for (size_t i = 0; i < 6; ++i) {
      EXPECT_GE(r.levels[i], previous[i]) << "chunk " << i << " scale " << scale;
      previous[i] = r.levels[i];
    }
  }
}

TEST(StreamControllerTest, FallbackPicksTheFasterOfRecomputeAndLevelOne) {
  auto chunks = Chunks(4);
  ControllerConfig config = Config(ControllerPolicy::kEstimated, 1e7);
  config.ttft_budget_s = 0.1;         // nothing fits at 10 MB/s (4 MB at level 1 takes 0.4 s)
  config.prefill_tokens_per_s = 500;  // recompute 0.512 s per chunk, slower than level 1 (0.1 s)
  std::vector<double> bw(4, 1e7);
  TraceResult fastest = SimulateTrace(config, chunks, bw);
  EXPECT_EQ(fastest.levels, std::vector<int>(4, 1));
  config.fallback = Fallback::kRecompute;
  TraceResult reference = SimulateTrace(config, chunks, bw);
  EXPECT_EQ(reference.levels, std::vector<int>(4, 0));
  EXPECT_LT(fastest.total_s, reference.total_s);
}

TEST(StreamControllerTest, EstimatorFollowsPreviousChunk) {
  auto chunks = Chunks(3);
  ControllerConfig config = Config(ControllerPolicy::kEstimated, 1e6);
  config.fallback = Fallback::kRecompute;
  StreamController c(config, chunks);
  // 1 MB/s initially: nothing fits in 1 s for 3 chunks (3 MB at level 1) -> recompute.
  EXPECT_EQ(c.Next().level, 0);
  c.Report(0, 0.128);  // recompute does not change the estimate
  EXPECT_EQ(c.bandwidth_estimate_bps(), 1e6);
  EXPECT_EQ(c.Next().level, 0);
  c.Report(2'400'000, 0.01);  // a measured transfer at 240 MB/s
  EXPECT_DOUBLE_EQ(c.bandwidth_estimate_bps(), 2.4e8);
  EXPECT_EQ(c.Next().level, 3);
}

// Hand computation of SLO violations with the reference policy: 4 chunks, budget 1 s, so each
// chunk gets 0.25 s. Level sizes 1.0/1.5/2.4 MB (+1 kB per chunk index).
TEST(StreamControllerTest, ViolationCountMatchesHandComputation) {
  auto chunks = Chunks(4);
  ControllerConfig config = Config(ControllerPolicy::kOracleShare);
  config.fallback = Fallback::kRecompute;  // the reference's rule
  // Trace A: 10 MB/s everywhere: level 3 needs 0.24 s <= 0.25 -> all level 3, total 0.9606 s.
  // Trace B: 5 MB/s: level 1 needs 0.2 s (+0.2 ms per index) -> all level 1, total 0.8012 s.
  // Trace C: 3 MB/s: nothing fits (level 1 is 0.333 s) -> recompute 256/2000 = 0.128 s each.
  // Trace D: 10, 10, 1, 1 MB/s with a slow prefill (640 tokens/s, 0.4 s per chunk): levels 3, 3,
  //          then recompute twice: 0.24 + 0.2401 + 0.8 = 1.2801 s > 1 s, the one violation.
  // Trace E: 6 MB/s then 8 MB/s: chunk 0 at level 2 takes exactly 0.25 s (fits), chunk 1's level
  //          2 is 1 kB larger and misses (level 1), chunks 2-3 at 8 MB/s fit level 2 (0.188 s).
  struct Case {
    std::vector<double> bw;
    double prefill;
    std::vector<int> levels;
    double total;
    bool violated;
  };
  const std::vector<Case> cases = {
      {{1e7, 1e7, 1e7, 1e7}, 2000, {3, 3, 3, 3}, (2.4e6 * 4 + 6000) / 1e7, false},
      {{5e6, 5e6, 5e6, 5e6}, 2000, {1, 1, 1, 1}, (1e6 * 4 + 6000) / 5e6, false},
      {{3e6, 3e6, 3e6, 3e6}, 2000, {0, 0, 0, 0}, 4 * 0.128, false},
      {{1e7, 1e7, 1e6, 1e6}, 640, {3, 3, 0, 0}, (2.4e6 + 2.401e6) / 1e7 + 0.8, true},
      {{6e6, 6e6, 8e6, 8e6}, 2000, {2, 1, 2, 2}, 2.501e6 / 6e6 + 3.005e6 / 8e6, false},
  };
  int violations = 0;
  for (const Case& c : cases) {
    config.prefill_tokens_per_s = c.prefill;
    TraceResult r = SimulateTrace(config, chunks, c.bw);
    EXPECT_EQ(r.levels, c.levels);
    EXPECT_NEAR(r.total_s, c.total, 1e-9);
    EXPECT_EQ(r.violated, c.violated);
    violations += r.violated ? 1 : 0;
  }
  EXPECT_EQ(violations, 1);
}

}  // namespace
}  // namespace kvstash::codec
