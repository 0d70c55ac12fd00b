// KVQ's step-based quantiser (codec/kvq.h KvqOptions::step_scale): error bounds, the container
// it writes (the same version-1 format, decoded by the unchanged decoders), sizes against
// min/max scaling, and refused options.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "kvstash/codec/kvq.h"
#include "kvstash/codec/synthetic_kv.h"
#include "kvstash/common/thread_pool.h"
#include "test_util.h"
#include "testing/status_matchers.h"

namespace kvstash::codec {
namespace {

using ::kvstash::testing::IsOk;
using ::kvstash::testing::IsOkAndHolds;
using ::kvstash::testing::StatusIs;
using testing::MakeLayout;
using testing::ValueAt;

// Rows as in kvq.h: element (row r, token t, channel c) of a [layer][K|V][token][C] payload.
size_t Index(const KvLayout& l, uint32_t r, uint32_t t, uint32_t c) {
  const uint32_t L = l.num_layers, C = l.heads() * l.head_dim;
  const uint32_t layer = r < L ? r : r - L;
  return ((size_t{layer} * 2 + (r < L ? 0 : 1)) * l.num_tokens + t) * C + c;
}

// Gaussian KV whose channels differ in spread by up to 16x (and keys carry per-channel
// offsets), the shape where one step for the whole row should pay.
std::vector<uint8_t> UnevenChannels(const KvLayout& l, uint32_t seed) {
  std::vector<uint8_t> kv(l.RawBytes());
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.f, 1.f);
  const uint32_t C = l.heads() * l.head_dim;
  for (uint32_t r = 0; r < 2 * l.num_layers; ++r) {
    for (uint32_t c = 0; c < C; ++c) {
      const float spread = std::ldexp(1.f, static_cast<int>(c % 5)) / 16.f;
      const float offset = r < l.num_layers ? 3.f * static_cast<float>(c % 3) : 0.f;
      for (uint32_t t = 0; t < l.num_tokens; ++t) {
        testing::SetValue(kv, l.dtype, Index(l, r, t, c), offset + spread * n(rng));
      }
    }
  }
  return kv;
}

double SquaredError(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b, DType d) {
  double sq = 0;
  for (size_t k = 0; k < a.size() / DTypeSize(d); ++k) {
    const double e = double{ValueAt(a, d, k)} - ValueAt(b, d, k);
    sq += e * e;
  }
  return sq;
}

// With weights, every token of a row gets the row's target step, step_scale / sqrt(w): the
// error stays within half of it (f32 KV, f32 parameters), for per-token and per-channel rows.
TEST(KvqStepTest, ErrorsStayWithinHalfTheRowsTargetStep) {
  const KvLayout l = MakeLayout(2, 2, 16, 80, DType::kF32);
  const std::vector<uint8_t> kv = UnevenChannels(l, 3);
  for (KvqScale scale : {KvqScale::kPerToken, KvqScale::kPerChannel}) {
    KvqOptions o;
    o.row_bits = {8, 8, 8, 8};  // wide alphabets: no range reaches 255 target steps here
    o.key_scale = o.value_scale = scale;
    o.group_tokens = 32;
    o.step_scale = 0.2f;
    o.row_weights = {1, 4, 16, 0.25f};
    ASSERT_OK_AND_ASSIGN(auto container, EncodeKvq(l, kv, o));
    ASSERT_OK_AND_ASSIGN(auto out, DecodeKvq(container));
    const uint32_t C = 32;
    for (uint32_t r = 0; r < 4; ++r) {
      const float step = 0.2f / std::sqrt(o.row_weights[r]);
      double worst = 0;
      for (uint32_t t = 0; t < l.num_tokens; ++t) {
        for (uint32_t c = 0; c < C; ++c) {
          const size_t k = Index(l, r, t, c);
          worst = std::max<double>(worst,
                                   std::fabs(ValueAt(kv, l.dtype, k) - ValueAt(out, l.dtype, k)));
        }
      }
      EXPECT_LE(worst, 0.5 * step * 1.0001 + 1e-5) << "row " << r;
      // The error uses most of the half step (it is not a finer quantiser in disguise).
      EXPECT_GT(worst, 0.3 * step) << "row " << r;
    }
  }
}

// step_per_unit: each key channel's step is step_scale times its standard deviation over the
// chunk, each value token's times its deviation over the channels; errors stay within half.
TEST(KvqStepTest, PerUnitStepsFollowEachChannelsAndTokensSpread) {
  const KvLayout l = MakeLayout(1, 2, 16, 96, DType::kF32);
  const std::vector<uint8_t> kv = UnevenChannels(l, 8);
  KvqOptions o;
  o.row_bits = {8, 8};
  o.group_tokens = 32;
  o.step_scale = 0.3f;
  o.value_step_ratio = 2;
  o.step_per_unit = true;
  ASSERT_OK_AND_ASSIGN(auto container, EncodeKvq(l, kv, o));
  ASSERT_OK_AND_ASSIGN(auto out, DecodeKvq(container));
  const uint32_t C = 32, T = 96;
  auto sd = [](const std::vector<double>& v) {
    double sum = 0, sq = 0;
    for (double x : v) {
      sum += x;
      sq += x * x;
    }
    const double n = static_cast<double>(v.size());
    return std::sqrt(std::max(0.0, sq - sum * sum / n) / n);
  };
  // Keys (row 0), per channel.
  for (uint32_t c = 0; c < C; ++c) {
    std::vector<double> col;
    for (uint32_t t = 0; t < T; ++t) col.push_back(ValueAt(kv, l.dtype, Index(l, 0, t, c)));
    const double step = 0.3 * sd(col);
    double worst = 0;
    for (uint32_t t = 0; t < T; ++t) {
      const size_t k = Index(l, 0, t, c);
      worst =
          std::max<double>(worst, std::fabs(ValueAt(kv, l.dtype, k) - ValueAt(out, l.dtype, k)));
    }
    EXPECT_LE(worst, 0.5 * step * 1.001 + 1e-5) << "channel " << c;
    EXPECT_GT(worst, 0.25 * step) << "channel " << c;
  }
  // Values (row 1), per token, at twice the scale.
  for (uint32_t t = 0; t < T; ++t) {
    std::vector<double> tok;
    for (uint32_t c = 0; c < C; ++c) tok.push_back(ValueAt(kv, l.dtype, Index(l, 1, t, c)));
    const double step = 2 * 0.3 * sd(tok);
    for (uint32_t c = 0; c < C; ++c) {
      const size_t k = Index(l, 1, t, c);
      ASSERT_LE(std::fabs(ValueAt(kv, l.dtype, k) - ValueAt(out, l.dtype, k)),
                0.5 * step * 1.001 + 1e-5)
          << "token " << t << " channel " << c;
    }
  }
}

// A range wider than 2^bits - 1 target steps takes range / (2^bits - 1), so nothing is clamped:
// the bound of min/max scaling holds for it.
TEST(KvqStepTest, WideRangesFallBackToTheirMinMaxStep) {
  const KvLayout l = MakeLayout(1, 1, 8, 64, DType::kF32);
  const std::vector<uint8_t> kv = UnevenChannels(l, 4);
  KvqOptions o;
  o.row_bits = {3, 3};
  o.key_scale = o.value_scale = KvqScale::kPerToken;
  o.step_scale = 1e-4f;  // far below every token's range / 7
  o.value_step_ratio = 2;
  ASSERT_OK_AND_ASSIGN(auto container, EncodeKvq(l, kv, o));
  ASSERT_OK_AND_ASSIGN(auto out, DecodeKvq(container));
  // Same steps as min/max scaling: the same container.
  KvqOptions minmax = o;
  minmax.step_scale = 0;
  minmax.value_step_ratio = 1;
  EXPECT_THAT(EncodeKvq(l, kv, minmax), IsOkAndHolds(container));
  for (uint32_t r = 0; r < 2; ++r) {
    for (uint32_t t = 0; t < l.num_tokens; ++t) {
      float mn = INFINITY, mx = -INFINITY;
      for (uint32_t c = 0; c < 8; ++c) {
        mn = std::min(mn, ValueAt(kv, l.dtype, Index(l, r, t, c)));
        mx = std::max(mx, ValueAt(kv, l.dtype, Index(l, r, t, c)));
      }
      const float bound = 0.5f * (mx - mn) / 7 * 1.0001f + 1e-6f * (std::fabs(mn) + mx - mn);
      for (uint32_t c = 0; c < 8; ++c) {
        const size_t k = Index(l, r, t, c);
        ASSERT_LE(std::fabs(ValueAt(kv, l.dtype, k) - ValueAt(out, l.dtype, k)), bound);
      }
    }
  }
}

// At the same squared error, one step per row codes channels of uneven spread in fewer bytes
// than per-channel min/max scaling; the f16 container decodes to the encoder's reconstruction
// bit for bit on the vector and portable decoders, with and without a pool, with sinks.
TEST(KvqStepTest, SmallerThanMinMaxAtTheSameErrorAndDecodedIdentically) {
  const KvLayout l = MakeLayout(2, 2, 64, 256, DType::kF16);
  const std::vector<uint8_t> kv = UnevenChannels(l, 5);
  KvqOptions minmax;
  minmax.row_bits = {4, 4, 4, 4};
  ASSERT_OK_AND_ASSIGN(auto mm, EncodeKvq(l, kv, minmax));
  ASSERT_OK_AND_ASSIGN(auto mm_out, DecodeKvq(mm));
  const double mm_err = SquaredError(kv, mm_out, l.dtype);
  // The largest step whose error is no larger than min/max's (bisection on the scale).
  KvqOptions step;
  step.row_bits = {6, 6, 6, 6};
  step.group_tokens = 256;
  double lo = 0.01, hi = 4;
  std::vector<uint8_t> best;
  for (int i = 0; i < 20; ++i) {
    step.step_scale = static_cast<float>(std::sqrt(lo * hi));
    ASSERT_OK_AND_ASSIGN(auto c, EncodeKvq(l, kv, step));
    ASSERT_OK_AND_ASSIGN(auto out, DecodeKvq(c));
    if (SquaredError(kv, out, l.dtype) <= mm_err) {
      lo = step.step_scale;
      best = std::move(c);
    } else {
      hi = step.step_scale;
    }
  }
  ASSERT_FALSE(best.empty());
  EXPECT_LT(best.size(), mm.size() * 0.9) << "min/max " << mm.size() << " B, step " << best.size();

  step.step_scale = static_cast<float>(lo);
  step.sink_tokens = 1;
  std::vector<uint8_t> recon(kv.size());
  step.reconstruction = recon;
  ThreadPool pool(2);
  step.pool = &pool;
  ASSERT_OK_AND_ASSIGN(auto container, EncodeKvq(l, kv, step));
  ASSERT_OK_AND_ASSIGN(KvqInfo info, ParseKvq(container));
  EXPECT_EQ(info.level, 0);
  EXPECT_EQ(info.exact_tokens, 1u);
  EXPECT_EQ(info.total(), container.size());
  ASSERT_OK_AND_ASSIGN(auto a, DecodeKvq(container));
  ASSERT_OK_AND_ASSIGN(auto b, DecodeKvq(container, &pool));
  SetKvqSimdForTesting(false);
  auto c = DecodeKvq(container);
  SetKvqSimdForTesting(true);
  ASSERT_THAT(c.status(), IsOk());
  EXPECT_EQ(a, recon);
  EXPECT_EQ(b, recon);
  EXPECT_EQ(*c, recon);
}

TEST(KvqStepTest, DamagedStepContainersAreRefused) {
  const KvLayout l = MakeLayout(2, 2, 16, 64, DType::kF16);
  const std::vector<uint8_t> kv = UnevenChannels(l, 6);
  KvqOptions o;
  o.row_bits = {5, 5, 5, 5};
  o.step_scale = 0.5f;
  ASSERT_OK_AND_ASSIGN(auto container, EncodeKvq(l, kv, o));
  std::vector<uint8_t> bad = container;
  bad[bad.size() - 3] ^= 0x10;  // payload byte, checksums left as they are
  EXPECT_THAT(DecodeKvq(bad), StatusIs(absl::StatusCode::kDataLoss));
  bad.assign(container.begin(), container.end() - 1);
  EXPECT_THAT(DecodeKvq(bad), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(KvqStepTest, BadStepOptionsAreRefused) {
  const KvLayout l = MakeLayout(2, 2, 16, 8, DType::kF32);
  const std::vector<uint8_t> kv = UnevenChannels(l, 7);
  KvqOptions o;
  o.step_scale = -1;
  EXPECT_THAT(EncodeKvq(l, kv, o), StatusIs(absl::StatusCode::kInvalidArgument));
  o.step_scale = NAN;
  EXPECT_THAT(EncodeKvq(l, kv, o), StatusIs(absl::StatusCode::kInvalidArgument));
  o.step_scale = 0;
  o.value_step_ratio = 2;  // a ratio without a step
  EXPECT_THAT(EncodeKvq(l, kv, o), StatusIs(absl::StatusCode::kInvalidArgument));
  o.step_scale = 0.5f;
  o.value_step_ratio = 0;
  EXPECT_THAT(EncodeKvq(l, kv, o), StatusIs(absl::StatusCode::kInvalidArgument));
  o.value_step_ratio = 1;
  o.avg_bits = 4;
  EXPECT_THAT(EncodeKvq(l, kv, o), StatusIs(absl::StatusCode::kInvalidArgument));
  o.avg_bits = 0;
  o.row_weights = {1, 1, 1};  // 4 rows
  EXPECT_THAT(EncodeKvq(l, kv, o), StatusIs(absl::StatusCode::kInvalidArgument));
  o.row_weights = {1, 0, 1, 1};
  EXPECT_THAT(EncodeKvq(l, kv, o), StatusIs(absl::StatusCode::kInvalidArgument));
  o.row_weights = {1, 1, 1, 1};
  EXPECT_THAT(EncodeKvq(l, kv, o), IsOk());
  o.step_per_unit = true;  // per-unit steps take no weights
  EXPECT_THAT(EncodeKvq(l, kv, o), StatusIs(absl::StatusCode::kInvalidArgument));
  o.row_weights.clear();
  EXPECT_THAT(EncodeKvq(l, kv, o), IsOk());
  o.step_scale = 0;  // per-unit steps need a scale
  EXPECT_THAT(EncodeKvq(l, kv, o), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvstash::codec
