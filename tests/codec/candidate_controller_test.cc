// The streaming controller over measured codec candidates (candidate_controller.h): the chain it
// keeps, the extremes, monotonicity in bandwidth and a hand-computed trace.
#include "kvstash/codec/candidate_controller.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <tuple>

namespace kvstash::codec {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

CodecRates Rates(CodecKind kind, int level, double ratio, double error, double encode,
                 double decode) {
  CodecRates r;
  r.kind = kind;
  r.level = level;
  r.ratio = ratio;
  r.rel_error = error;
  r.encode_bytes_per_s = encode;
  r.decode_bytes_per_s = decode;
  return r;
}

// Shaped like a calibration on this VM (docs/codec.md §10): CacheGen L2 is less exact than KVQ L2
// and larger, so the chain drops it.
std::vector<CodecRates> Calibrated() {
  return {
      Rates(CodecKind::kCacheGen, 2, 3.80, 0.085, 2.0e8, 2.5e8),
      Rates(CodecKind::kKvq, 2, 5.22, 0.021, 1.0e8, 1.0e9),
      Rates(CodecKind::kKvq, 3, 4.14, 0.0052, 1.0e8, 1.1e9),
      Rates(CodecKind::kKvq, 4, 3.10, 0.0011, 1.0e8, 0.9e9),
  };
}

std::vector<CandidateChunk> Chunks(size_t n, uint64_t bytes = 5'898'240) {
  return std::vector<CandidateChunk>(n, CandidateChunk{bytes, 256});
}

std::vector<std::string> Names(const CandidateController& c) {
  std::vector<std::string> out;
  for (const CodecRates& r : c.candidates()) out.push_back(CodecRatesName(r));
  return out;
}

TEST(CandidateControllerTest, KeepsAChainMostExactFirst) {
  std::vector<CodecRates> given = Calibrated();
  given.push_back(Rates(CodecKind::kKvq, 1, 0.0, 0.2, 1e8, 1e9));  // unusable: no ratio
  given.push_back(Rates(CodecKind::kKvq, 1, 6.0, 0.2, 1e8, 0.0));  // unusable: no decode rate
  given.push_back(Rates(CodecKind::kRaw, 0, 1.0, 0.0, 0.0, 0.0));  // raw again: added once
  CandidateController c({}, given, Chunks(1));
  EXPECT_EQ(Names(c), (std::vector<std::string>{"raw", "kvq-l4", "kvq-l3", "kvq-l2"}));
  // Stored copies need no encode rate; under kTransfer a candidate without one is unusable.
  given.push_back(Rates(CodecKind::kCacheGen, 1, 8.0, 0.3, 0.0, 2e8));
  CandidateControllerConfig stored;
  stored.cost_model = CostModel::kStored;
  EXPECT_EQ(Names(CandidateController(stored, given, Chunks(1))).back(), "cachegen-l1");
  EXPECT_EQ(Names(CandidateController({}, given, Chunks(1))).back(), "kvq-l2");
}

TEST(CandidateControllerTest, InfiniteBandwidthPicksRawForEveryChunk) {
  for (CostModel model : {CostModel::kTransfer, CostModel::kStored}) {
    CandidateControllerConfig config;
    config.cost_model = model;
    config.budget_s = 1e-6;
    config.fixed_bandwidth_bps = kInf;
    CandidateController c(config, Calibrated(), Chunks(4));
    while (!c.done()) {
      const CandidateDecision d = c.Next();
      EXPECT_EQ(d.candidate, 0);  // raw
      EXPECT_EQ(d.predicted_s, 0.0);
      c.Report(5'898'240, 1e-7, 0.0);
    }
    EXPECT_EQ(c.bandwidth_estimate_bps(), kInf);  // a transfer too fast to measure
  }
}

TEST(CandidateControllerTest, ZeroBandwidthTakesTheFallback) {
  for (Fallback fallback : {Fallback::kFastest, Fallback::kRecompute}) {
    CandidateControllerConfig config;
    config.fallback = fallback;
    config.prefill_tokens_per_s = 2000;
    CandidateController c(config, Calibrated(), Chunks(3));  // initial estimate 0
    CandidateDecision d = c.Next();
    EXPECT_EQ(d.candidate, CandidateDecision::kRecompute);
    EXPECT_EQ(d.predicted_s, 256 / 2000.0);
    c.Report(0, d.predicted_s, 0.0);  // no bytes: the estimate stays 0
    EXPECT_EQ(c.bandwidth_estimate_bps(), 0.0);
    EXPECT_EQ(c.Next().candidate, CandidateDecision::kRecompute);
    // Without a prefill rate recomputing is no option: every candidate takes forever, raw is
    // the most exact of them.
    config.prefill_tokens_per_s = 0;
    d = CandidateController(config, Calibrated(), Chunks(3)).Next();
    EXPECT_EQ(d.candidate, 0);
    EXPECT_EQ(d.predicted_s, kInf);
  }
}

TEST(CandidateControllerTest, DecisionRankIsNonIncreasingInBandwidth) {
  // Prefill 0: never recompute, so the fallback's fastest candidate shows at every bandwidth.
  for (auto [model, fallback, prefill] :
       {std::tuple{CostModel::kTransfer, Fallback::kFastest, 0.0},
        std::tuple{CostModel::kTransfer, Fallback::kFastest, 4000.0},
        std::tuple{CostModel::kTransfer, Fallback::kRecompute, 4000.0},
        std::tuple{CostModel::kStored, Fallback::kFastest, 0.0},
        std::tuple{CostModel::kStored, Fallback::kRecompute, 1000.0}}) {
    {
      CandidateControllerConfig config;
      config.cost_model = model;
      config.fallback = fallback;
      config.budget_s = 0.4;
      config.prefill_tokens_per_s = prefill;
      CandidateController c(config, Calibrated(), Chunks(8));
      for (int i = 0; i < 3; ++i) c.Report(1'500'000, 0.05, 0.04);
      const int recompute_rank = static_cast<int>(c.candidates().size());
      for (double elapsed : {0.0, 0.1, 0.3, 0.39, 0.5}) {
        int previous = recompute_rank + 1;
        int changes = 0;
        for (int step = 0; step < 102; ++step) {  // 10 kB/s to 1 TB/s
          const double bw = 1e4 * std::pow(1.2, step);
          const int got = c.Decide(bw, elapsed).candidate;
          const int rank = got == CandidateDecision::kRecompute ? recompute_rank : got;
          EXPECT_LE(rank, previous) << "bw " << bw << " elapsed " << elapsed;
          if (rank != previous) ++changes;
          previous = rank;
        }
        if (elapsed < config.budget_s) {
          EXPECT_GE(changes, 2) << "the sweep should cross candidates, elapsed " << elapsed;
        }
        // Past the budget nothing fits: a free transfer is raw's, unless the fallback is to
        // recompute regardless.
        const bool over = elapsed > config.budget_s;
        EXPECT_EQ(c.Decide(kInf, elapsed).candidate,
                  over && fallback == Fallback::kRecompute ? CandidateDecision::kRecompute : 0);
      }
    }
  }
}

// Hand computation, stored copies (no encode term). Candidates X (ratio 2, D 40 MB/s, more exact)
// and Y (ratio 4, D 80 MB/s); 3 chunks of 4 MB; budget 1 s; seconds per raw byte at B:
// raw 1/B, X 0.5/B + 2.5e-8, Y 0.25/B + 1.25e-8.
//   chunk 0, B = 10 MB/s (initial), 1 s left: raw 12 MB / B = 1.2 s > 1; X 12e6 * 7.5e-8 = 0.9 s
//            fits: X, 0.3 s. Reported: 2 MB in 0.3 s, 0.2 s of it in transit -> B = 10 MB/s.
//   chunk 1, B = 10 MB/s, 0.7 s left: raw 0.8 s > 0.7; X 8e6 * 7.5e-8 = 0.6 s fits: X, 0.3 s.
//            Reported: 2 MB in 0.5 s, 0.4 s in transit -> B = 5 MB/s.
//   chunk 2, B = 5 MB/s, 0.2 s left: raw 0.8, X 4e6 * 1.25e-7 = 0.5, Y 4e6 * 6.25e-8 = 0.25 s:
//            none fits. Fallback kFastest: Y (0.25 s) against recomputing 256 tokens: at 1000
//            tokens/s (0.256 s) Y; at 2000 tokens/s (0.128 s) recompute; kRecompute: recompute.
TEST(CandidateControllerTest, FollowsAHandComputedTrace) {
  const std::vector<CodecRates> given = {
      Rates(CodecKind::kKvq, 3, 2.0, 0.01, 0.0, 4e7),
      Rates(CodecKind::kKvq, 1, 4.0, 0.05, 0.0, 8e7),
  };
  struct Case {
    Fallback fallback;
    double prefill;
    int last;  // chunk 2's decision
    double last_s;
  };
  for (const Case& k : {Case{Fallback::kFastest, 1000, 2, 0.25},
                        Case{Fallback::kFastest, 2000, CandidateDecision::kRecompute, 0.128},
                        Case{Fallback::kRecompute, 1000, CandidateDecision::kRecompute, 0.256}}) {
    CandidateControllerConfig config;
    config.cost_model = CostModel::kStored;
    config.budget_s = 1.0;
    config.fallback = k.fallback;
    config.prefill_tokens_per_s = k.prefill;
    config.initial_bandwidth_bps = 1e7;
    CandidateController c(config, given, Chunks(3, 4'000'000));
    ASSERT_EQ(Names(c), (std::vector<std::string>{"raw", "kvq-l3", "kvq-l1"}));
    CandidateDecision d = c.Next();
    EXPECT_EQ(d.candidate, 1);
    EXPECT_NEAR(d.predicted_s, 0.3, 1e-9);
    EXPECT_EQ(d.bandwidth_bps, 1e7);
    c.Report(2'000'000, 0.3, 0.2);
    EXPECT_DOUBLE_EQ(c.bandwidth_estimate_bps(), 1e7);
    d = c.Next();
    EXPECT_EQ(d.candidate, 1);
    EXPECT_NEAR(d.predicted_s, 0.3, 1e-9);
    c.Report(2'000'000, 0.5, 0.4);
    EXPECT_DOUBLE_EQ(c.bandwidth_estimate_bps(), 5e6);
    EXPECT_DOUBLE_EQ(c.elapsed_s(), 0.8);
    d = c.Next();
    EXPECT_EQ(d.candidate, k.last);
    EXPECT_NEAR(d.predicted_s, k.last_s, 1e-9);
    EXPECT_NEAR(c.PredictSeconds(CandidateChunk{4'000'000, 256}, 1, 5e6), 0.5, 1e-9);
    EXPECT_NEAR(c.PredictSeconds(CandidateChunk{4'000'000, 256}, 0, 5e6), 0.8, 1e-9);
    c.Report(0, d.predicted_s, 0.0);
    EXPECT_TRUE(c.done());
  }
}

// The per-request cost model charges the encode too: the same link and budget that let a stored
// copy through at the most exact codec need a smaller one when the service encodes per request.
TEST(CandidateControllerTest, PerRequestEncodingCostsItsEncodeTime) {
  const std::vector<CodecRates> given = {
      Rates(CodecKind::kKvq, 3, 2.0, 0.01, 4e7, 4e7),
      Rates(CodecKind::kKvq, 1, 4.0, 0.05, 1e9, 8e7),
  };
  CandidateControllerConfig config;
  config.budget_s = 1.0;
  config.fixed_bandwidth_bps = 1e7;
  config.initial_bandwidth_bps = 1;  // ignored: the fixed rate decides
  config.cost_model = CostModel::kStored;
  EXPECT_EQ(CandidateController(config, given, Chunks(3, 4'000'000)).Next().candidate, 1);
  config.cost_model = CostModel::kTransfer;  // X: 12e6 * (5e-8 + 2.5e-8 + 2.5e-8) = 1.2 s
  const CandidateDecision d = CandidateController(config, given, Chunks(3, 4'000'000)).Next();
  EXPECT_EQ(d.candidate, 2);  // Y: 12e6 * (2.5e-8 + 1.25e-8 + 1e-9) = 0.462 s
  EXPECT_NEAR(d.predicted_s, 0.154, 1e-9);
  EXPECT_EQ(d.bandwidth_bps, 1e7);
}

// Encode times a service reported scale the encode term of every encoded candidate by an EWMA of
// measured / calibrated (weight 1/2 on the newest). Hand computation, B = 5 MB/s, 3 chunks of
// 4 MB, budget 2 s, X = kvq-l3 (r 2, E 40 MB/s, D 40 MB/s), Y = kvq-l1 (r 4, E 1 GB/s, D 80 MB/s):
//   raw 0.8 s a chunk, 2.4 s in all: never fits.
//   scale 1: X 4e6 * (1e-7 + 2.5e-8 + 2.5e-8) = 0.6 s a chunk, 1.8 s in all: fits.
//   X encoded 4 MB in 0.2 s against a calibrated 0.1 s: scale 2; X 4e6 * 1.75e-7 = 0.7 s, 2.1 s in
//   all: no longer fits; Y 4e6 * (5e-8 + 1.25e-8 + 2e-9) = 0.258 s does.
//   Y encoded 4 MB in 0.016 s against 0.004 s (4x): scale 0.5 * 2 + 0.5 * 4 = 3; X 0.8 s a chunk.
TEST(CandidateControllerTest, ReportedEncodeTimesScaleTheEncodeTerm) {
  const std::vector<CodecRates> given = {
      Rates(CodecKind::kKvq, 3, 2.0, 0.01, 4e7, 4e7),
      Rates(CodecKind::kKvq, 1, 4.0, 0.05, 1e9, 8e7),
  };
  const CandidateChunk chunk{4'000'000, 256};
  CandidateControllerConfig config;
  config.budget_s = 2.0;
  config.fixed_bandwidth_bps = 5e6;
  CandidateController c(config, given, Chunks(3, 4'000'000));
  ASSERT_EQ(Names(c), (std::vector<std::string>{"raw", "kvq-l3", "kvq-l1"}));
  EXPECT_EQ(c.encode_scale(), 1.0);
  CandidateDecision d = c.Next();
  EXPECT_EQ(d.candidate, 1);
  EXPECT_NEAR(d.predicted_s, 0.6, 1e-9);
  // Not samples: raw, no bytes, no time, an index past the chain.
  c.ReportEncode(0, 4'000'000, 0.2);
  c.ReportEncode(1, 0, 0.2);
  c.ReportEncode(1, 4'000'000, 0.0);
  c.ReportEncode(1, 4'000'000, -1.0);
  c.ReportEncode(3, 4'000'000, 0.2);
  EXPECT_EQ(c.encode_scale(), 1.0);
  c.ReportEncode(1, 4'000'000, 0.2);
  EXPECT_NEAR(c.encode_scale(), 2.0, 1e-12);
  EXPECT_NEAR(c.PredictSeconds(chunk, 1, 5e6), 0.7, 1e-9);
  EXPECT_NEAR(c.PredictSeconds(chunk, 0, 5e6), 0.8, 1e-9);  // raw has no encode term
  d = c.Next();
  EXPECT_EQ(d.candidate, 2);
  EXPECT_NEAR(d.predicted_s, 0.258, 1e-9);
  c.ReportEncode(2, 4'000'000, 0.016);
  EXPECT_NEAR(c.encode_scale(), 3.0, 1e-12);
  EXPECT_NEAR(c.PredictSeconds(chunk, 1, 5e6), 0.8, 1e-9);
  EXPECT_EQ(c.next_chunk(), 0u);  // ReportEncode does not advance
  // A stored copy is not encoded per request: nothing to scale.
  config.cost_model = CostModel::kStored;
  CandidateController stored(config, given, Chunks(3, 4'000'000));
  stored.ReportEncode(1, 4'000'000, 0.2);
  EXPECT_EQ(stored.encode_scale(), 1.0);
}

}  // namespace
}  // namespace kvstash::codec
