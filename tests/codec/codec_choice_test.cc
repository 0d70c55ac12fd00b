#include "kvstash/codec/codec_choice.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "testing/status_matchers.h"

namespace kvstash::codec {
namespace {

using ::kvstash::testing::StatusIs;

CodecRates Rates(CodecKind kind, int level, double ratio, double enc, double dec) {
  CodecRates r;
  r.kind = kind;
  r.level = level;
  r.ratio = ratio;
  r.encode_bytes_per_s = enc;
  r.decode_bytes_per_s = dec;
  return r;
}

// CacheGen: smaller, slow to decode; KVQ: a little larger, 8x faster to decode.
const CodecRates kCacheGen = Rates(CodecKind::kCacheGen, 2, 4.0, 0.5e9, 0.5e9);
const CodecRates kKvq = Rates(CodecKind::kKvq, 3, 3.5, 0.25e9, 4e9);

// One name per codec and level, for every caller (the controllers, KvClient, the SSD tier).
TEST(CodecChoiceTest, CodecNameIsTheCodecAndItsLevel) {
  EXPECT_EQ(CodecName(CodecKind::kRaw, 0), "raw");
  EXPECT_EQ(CodecName(CodecKind::kRaw, 3), "raw");
  EXPECT_EQ(CodecName(CodecKind::kCacheGen, 1), "cachegen-l1");
  EXPECT_EQ(CodecName(CodecKind::kCacheGen, 3), "cachegen-l3");
  EXPECT_EQ(CodecName(CodecKind::kKvq, 4), "kvq-l4");
  EXPECT_EQ(CodecName(CodecKind::kCacheGen, 0), "cachegen");
  EXPECT_EQ(CodecName(CodecKind::kKvq, 0), "kvq");
  EXPECT_EQ(CodecName(CodecKind::kKvq, 9), "kvq-l9");  // named, not validated
  EXPECT_EQ(CodecName(static_cast<CodecKind>(7), 1), "invalid");
  EXPECT_EQ(CodecRatesName(Rates(CodecKind::kKvq, 2, 1, 1, 1)), CodecName(CodecKind::kKvq, 2));
}

TEST(CodecChoiceTest, CostsFollowTheModel) {
  const double L = 1.25e9;  // 10 Gbit/s
  EXPECT_DOUBLE_EQ(SecondsPerRawByte(CodecRates{}, L, CostModel::kStored), 1 / L);
  EXPECT_DOUBLE_EQ(SecondsPerRawByte(kKvq, L, CostModel::kStored), 1 / (3.5 * L) + 1 / 4e9);
  EXPECT_DOUBLE_EQ(SecondsPerRawByte(kKvq, L, CostModel::kTransfer),
                   1 / (3.5 * L) + 1 / 4e9 + 1 / 0.25e9);
  EXPECT_EQ(CodecRatesName(kKvq), "kvq-l3");
  EXPECT_EQ(CodecRatesName(kCacheGen), "cachegen-l2");
  EXPECT_EQ(CodecRatesName(CodecRates{}), "raw");
}

TEST(CodecChoiceTest, PicksKvqWhereItsMeasuredSpeedWinsAndRawOnAFastLink) {
  const std::vector<CodecRates> both = {kCacheGen, kKvq};
  // 10 Gbit/s from a tier that holds the encoded copy: raw 0.8 ns/B, CacheGen 2.2, KVQ 0.48.
  EXPECT_EQ(ChooseEncoding(both, 1.25e9, CostModel::kStored).kind, CodecKind::kKvq);
  // 100 Mbit/s: the link dominates and CacheGen's ratio wins (22 against 23.1 ns/B).
  EXPECT_EQ(ChooseEncoding(both, 1.25e7, CostModel::kStored).kind, CodecKind::kCacheGen);
  // 800 Gbit/s: nothing beats raw.
  EXPECT_EQ(ChooseEncoding(both, 1e11, CostModel::kStored).kind, CodecKind::kRaw);
  // Encoding per transfer (KVQ's encoder is the slower one) moves the choice to CacheGen at
  // 1 Gbit/s (raw 8 ns/B, CacheGen 6, KVQ 6.54) and to raw at 10 Gbit/s.
  EXPECT_EQ(ChooseEncoding(both, 1.25e8, CostModel::kTransfer).kind, CodecKind::kCacheGen);
  EXPECT_EQ(ChooseEncoding(both, 1.25e9, CostModel::kTransfer).kind, CodecKind::kRaw);
  // A KVQ whose encoder is measured faster than CacheGen's takes 1 Gbit/s transfers too.
  CodecRates fast_kvq = kKvq;
  fast_kvq.encode_bytes_per_s = 1e9;
  const std::vector<CodecRates> fast = {kCacheGen, fast_kvq};
  EXPECT_EQ(ChooseEncoding(fast, 1.25e8, CostModel::kTransfer).kind, CodecKind::kKvq);
  // Unknown rate, no candidates, and a tie: raw.
  EXPECT_EQ(ChooseEncoding(both, 0, CostModel::kStored).kind, CodecKind::kRaw);
  EXPECT_EQ(ChooseEncoding({}, 1e6, CostModel::kStored).kind, CodecKind::kRaw);
  const CodecRates useless = Rates(CodecKind::kKvq, 1, 1.0, 1e9, 1e9);
  EXPECT_EQ(ChooseEncoding(std::vector<CodecRates>{useless}, 1e6, CostModel::kStored).kind,
            CodecKind::kRaw);
}

TEST(CodecChoiceTest, BreakEvenSeparatesTheRatesWhereACodecWins) {
  for (const CostModel model : {CostModel::kStored, CostModel::kTransfer}) {
    for (const CodecRates& c : {kCacheGen, kKvq}) {
      const double b = BreakEvenBytesPerS(c, model);
      ASSERT_GT(b, 0);
      const std::vector<CodecRates> one = {c};
      EXPECT_EQ(ChooseEncoding(one, b * 0.99, model).kind, c.kind);
      EXPECT_EQ(ChooseEncoding(one, b * 1.01, model).kind, CodecKind::kRaw);
    }
  }
  EXPECT_EQ(BreakEvenBytesPerS(Rates(CodecKind::kKvq, 1, 0.9, 1e9, 1e9), CostModel::kStored), 0);
}

// On a faster link the choice never moves to a candidate with a higher ratio (the costs are lines
// in 1/L whose slope is 1/ratio).
TEST(CodecChoiceTest, ChosenRatioDoesNotGrowWithTheLinkRate) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> ratio(1.0, 8.0), speed(1e8, 1e10);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<CodecRates> c;
    for (int i = 0; i < 4; ++i) {
      c.push_back(Rates(i % 2 ? CodecKind::kKvq : CodecKind::kCacheGen, 1 + i % 3, ratio(rng),
                        speed(rng), speed(rng)));
    }
    double last = 1e9;
    // 1e5 to 1e12 bytes/s in steps of 1.5x, counted in an int (clang-analyzer FloatLoopCounter).
    for (int step = 0; step < 40; ++step) {
      const double link = 1e5 * std::pow(1.5, step);
      const CodecRates chosen = ChooseEncoding(c, link, CostModel::kTransfer);
      ASSERT_LE(chosen.ratio, last) << "trial " << trial << " link " << link;
      last = chosen.ratio;
    }
  }
}

TEST(CodecChoiceTest, CalibrationMeasuresTheFloorAndKeepsKvqLevelsAtOrAboveIt) {
  CalibrationOptions o;
  o.cachegen_level = 2;
  o.reps = 1;
  o.decode_threads = 2;
  ASSERT_OK_AND_ASSIGN(std::vector<CodecRates> c, CalibrateCodecs(o));
  ASSERT_GE(c.size(), 1u);
  EXPECT_EQ(c[0].kind, CodecKind::kCacheGen);
  EXPECT_EQ(c[0].level, 2);
  EXPECT_GT(c[0].rel_error, 0);
  int last_level = 0;
  for (const CodecRates& r : c) {
    EXPECT_GT(r.ratio, 1) << CodecRatesName(r);
    EXPECT_GT(r.encode_bytes_per_s, 0);
    EXPECT_GT(r.decode_bytes_per_s, 0);
    EXPECT_LE(r.rel_error, c[0].rel_error) << CodecRatesName(r);
    if (r.kind == CodecKind::kKvq) {
      EXPECT_GT(r.level, last_level);
      last_level = r.level;
    }
  }
  // KVQ level 4 (5-6 bits) is more exact than CacheGen level 2 on this sample, so at least one
  // KVQ level qualifies; without KVQ only the floor is left.
  EXPECT_GE(c.size(), 2u);
  o.kvq = false;
  ASSERT_OK_AND_ASSIGN(c, CalibrateCodecs(o));
  EXPECT_EQ(c.size(), 1u);
}

TEST(CodecChoiceTest, BadCalibrationOptionsAreRejected) {
  CalibrationOptions o;
  o.cachegen_level = 4;
  EXPECT_THAT(CalibrateCodecs(o), StatusIs(absl::StatusCode::kInvalidArgument));
  o.cachegen_level = 2;
  o.reps = 0;
  EXPECT_THAT(CalibrateCodecs(o), StatusIs(absl::StatusCode::kInvalidArgument));
}

// The named codecs and levels, in the order given, with no quality floor (KVQ level 1 is less
// exact than CacheGen level 2 on the sample and still measured); raw entries skipped.
TEST(CodecChoiceTest, CalibrationAtNamedLevelsMeasuresExactlyThose) {
  CalibrationOptions o;
  o.reps = 1;
  o.cachegen_level = 0;  // not looked at
  CodecRates kvq1, cachegen3, raw;
  kvq1.kind = CodecKind::kKvq;
  kvq1.level = 1;
  cachegen3.kind = CodecKind::kCacheGen;
  cachegen3.level = 3;
  const std::vector<CodecRates> which = {kvq1, raw, cachegen3};
  ASSERT_OK_AND_ASSIGN(std::vector<CodecRates> c, CalibrateCodecsAt(which, o));
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(CodecRatesName(c[0]), "kvq-l1");
  EXPECT_EQ(CodecRatesName(c[1]), "cachegen-l3");
  for (const CodecRates& r : c) {
    EXPECT_GT(r.ratio, 1) << CodecRatesName(r);
    EXPECT_GT(r.encode_bytes_per_s, 0);
    EXPECT_GT(r.decode_bytes_per_s, 0);
    EXPECT_GT(r.rel_error, 0);
  }
  EXPECT_GT(c[0].rel_error, c[1].rel_error);  // KVQ L1 (2-3 bits) is the coarser
  cachegen3.level = 4;
  EXPECT_THAT(CalibrateCodecsAt(std::vector<CodecRates>{cachegen3}, o),
              StatusIs(absl::StatusCode::kInvalidArgument));
  kvq1.level = 5;
  EXPECT_THAT(CalibrateCodecsAt(std::vector<CodecRates>{kvq1}, o),
              StatusIs(absl::StatusCode::kInvalidArgument));
  kvq1.kind = static_cast<CodecKind>(9);
  kvq1.level = 1;
  EXPECT_THAT(CalibrateCodecsAt(std::vector<CodecRates>{kvq1}, o),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvstash::codec
