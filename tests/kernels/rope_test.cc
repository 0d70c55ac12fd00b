#include "kvstash/kernels/rope.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kv_test_util.h"
#include "rope_reference.h"
#include "rope_simd.h"  // kernels/src: to run the portable path too
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::kernels {
namespace {

using testing::Load;
using testing::RopeReference;
using testing::Store;

// Error bounds against the float64 reference for values in [-1, 1] (|rotated| <= sqrt(2)).
// f32: the stored input (0.5 ulp), cos/sin rounded to f32 (0.5 ulp each), two products and a sum,
// each rounded: about 5e-7 in the worst case, asserted at 1e-6. f16/bf16: two roundings of the
// stored values (2^-11 / 2^-8 relative) dominate: about 1.7e-3 / 1.3e-2.
double Tolerance(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 1e-6;
    case DType::kF16:
      return 2e-3;
    case DType::kBF16:
      return 1.6e-2;
  }
  return 0;
}

constexpr uint32_t kTokens = 48;
constexpr uint32_t kHeads = 3;
constexpr uint32_t kHeadDim = 64;

using Param = std::tuple<RopeConvention, DType, uint32_t /*rotary_dim*/, float /*theta*/>;

class RopeTest : public ::testing::TestWithParam<Param> {
 protected:
  RopeTest() : rng_(42) {
    params_.convention = std::get<0>(GetParam());
    params_.rotary_dim = std::get<2>(GetParam());
    params_.theta = std::get<3>(GetParam());
    dtype_ = std::get<1>(GetParam());
    rotary_dim_ = params_.rotary_dim == 0 ? kHeadDim : params_.rotary_dim;
    std::uniform_real_distribution<double> uniform(-1.0, 1.0);
    k_pre_.resize(size_t{kTokens} * kHeads * kHeadDim);
    for (double& x : k_pre_) x = uniform(rng_);
  }

  std::vector<double> At(const std::vector<int64_t>& positions) const {
    std::vector<double> x = k_pre_;
    RopeReference(x, kHeads, kHeadDim, params_.convention, rotary_dim_, params_.theta, positions);
    return x;
  }

  // Max |got - want| over the rotary dimensions; also requires the tail dimensions to be
  // bit-identical to `tail_bits` (the input before rotation).
  double MaxError(const std::vector<std::byte>& got, const std::vector<double>& want,
                  const std::vector<std::byte>& tail_bits) const {
    double worst = 0;
    const size_t elem = DTypeSize(dtype_);
    for (size_t i = 0; i < want.size(); ++i) {
      if (i % kHeadDim < rotary_dim_) {
        worst = std::max(worst, std::abs(Load(got, dtype_, i) - want[i]));
      } else {
        EXPECT_EQ(std::memcmp(got.data() + i * elem, tail_bits.data() + i * elem, elem), 0)
            << "tail element " << i << " changed";
      }
    }
    return worst;
  }

  std::mt19937_64 rng_;
  RopeParams params_;
  DType dtype_;
  uint32_t rotary_dim_;
  std::vector<double> k_pre_;
};

// CacheBlend's RoPE fix: rotate(RoPE(k_pre, old), new - old) == RoPE(k_pre, new).
TEST_P(RopeTest, ShiftMovesKeysToNewPositions) {
  for (auto [old_start, new_start] :
       {std::pair<int64_t, int64_t>{3, 1000}, {700, 0}, {5, 131072 + 5}, {123456, 17}}) {
    std::vector<int64_t> old_pos(kTokens), new_pos(kTokens);
    for (uint32_t t = 0; t < kTokens; ++t) {
      old_pos[t] = old_start + t;
      new_pos[t] = new_start + t;
    }
    std::vector<std::byte> k = Store(At(old_pos), dtype_);
    const std::vector<std::byte> before = k;
    ASSERT_TRUE(
        ShiftKeys(k.data(), dtype_, kTokens, kHeads, kHeadDim, params_, new_start - old_start)
            .ok());
    const double error = MaxError(k, At(new_pos), before);
    EXPECT_LE(error, Tolerance(dtype_)) << "old " << old_start << " new " << new_start;
    std::cout << "[ measured ] " << DTypeName(dtype_) << " shift " << old_start << "->" << new_start
              << " max abs error " << error << "\n";
  }
}

TEST_P(RopeTest, InverseShiftIsIdentity) {
  std::vector<std::byte> k = Store(k_pre_, dtype_);
  const std::vector<std::byte> original = k;
  for (int64_t p : {1, 37, 4096, 100000}) {
    ASSERT_OK(ShiftKeys(k.data(), dtype_, kTokens, kHeads, kHeadDim, params_, p));
    ASSERT_OK(ShiftKeys(k.data(), dtype_, kTokens, kHeads, kHeadDim, params_, -p));
    std::vector<double> want(k_pre_.size());
    for (size_t i = 0; i < want.size(); ++i) want[i] = Load(original, dtype_, i);
    EXPECT_LE(MaxError(k, want, original), Tolerance(dtype_)) << "p " << p;
    k = original;
  }
}

TEST_P(RopeTest, PerTokenDeltas) {
  std::uniform_int_distribution<int64_t> position(0, 40000);
  std::vector<int64_t> old_pos(kTokens), new_pos(kTokens), delta(kTokens);
  for (uint32_t t = 0; t < kTokens; ++t) {
    old_pos[t] = position(rng_);
    // Runs of equal deltas, zeros and negative moves.
    new_pos[t] = t % 7 == 0 ? old_pos[t] : (t % 3 == 0 && t > 0 ? old_pos[t - 1] : position(rng_));
    delta[t] = new_pos[t] - old_pos[t];
  }
  std::vector<std::byte> k = Store(At(old_pos), dtype_);
  const std::vector<std::byte> before = k;
  ASSERT_OK(RotateKeys(k.data(), dtype_, kTokens, kHeads, kHeadDim, params_, delta));
  EXPECT_LE(MaxError(k, At(new_pos), before), Tolerance(dtype_));

  // Token by token with ShiftKeys gives the same bits.
  std::vector<std::byte> one_by_one = before;
  const size_t token_bytes = size_t{kHeads} * kHeadDim * DTypeSize(dtype_);
  for (uint32_t t = 0; t < kTokens; ++t) {
    ASSERT_TRUE(ShiftKeys(one_by_one.data() + t * token_bytes, dtype_, 1, kHeads, kHeadDim, params_,
                          delta[t])
                    .ok());
  }
  EXPECT_EQ(k, one_by_one);
}

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  const float theta = std::get<3>(info.param);
  return std::string(RopeConventionName(std::get<0>(info.param))) + "_" +
         std::string(DTypeName(std::get<1>(info.param))) + "_rot" +
         std::to_string(std::get<2>(info.param)) + "_theta" +
         std::to_string(static_cast<int64_t>(theta));
}

INSTANTIATE_TEST_SUITE_P(
    Conventions, RopeTest,
    ::testing::Combine(::testing::Values(RopeConvention::kNeox, RopeConvention::kGptj),
                       ::testing::Values(DType::kF32, DType::kF16, DType::kBF16),
                       ::testing::Values(0u, 32u, 18u),  // full, half, partial odd pair count
                       ::testing::Values(10000.0f, 500000.0f)),
    ParamName);

// rope.h's arithmetic stated in the test: cos/sin of (delta * theta^(-2i/rotary_dim)) computed in
// double and rounded to f32, then x0*c - x1*s and x0*s + x1*c with every operation rounded in f32
// (this file is built with -ffp-contract=off), stored with the scalar common/half.h conversions.
// The kernel must give these bits exactly, on its SIMD path and on its portable path.
TEST_P(RopeTest, BitExactAgainstF32Statement) {
  std::mt19937_64 rng(9);
  std::vector<std::byte> input(k_pre_.size() * DTypeSize(dtype_));
  testing::FillRandom(input.data(), dtype_, k_pre_.size(), rng);
  std::vector<int64_t> deltas(kTokens);
  std::uniform_int_distribution<int64_t> delta_dist(-300000, 300000);
  for (int64_t& d : deltas) d = delta_dist(rng);
  const uint32_t half = rotary_dim_ / 2;
  std::vector<std::byte> want = input;
  for (uint32_t t = 0; t < kTokens; ++t) {
    if (deltas[t] == 0) continue;
    for (uint32_t h = 0; h < kHeads; ++h) {
      const size_t base = (size_t{t} * kHeads + h) * kHeadDim;
      for (uint32_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(deltas[t]) *
                             std::pow(static_cast<double>(params_.theta),
                                      -(2.0 * i) / static_cast<double>(rotary_dim_));
        const float c = static_cast<float>(std::cos(angle));
        const float s = static_cast<float>(std::sin(angle));
        const bool neox = params_.convention == RopeConvention::kNeox;
        const size_t a = base + (neox ? i : 2 * i);
        const size_t b = base + (neox ? i + half : 2 * i + 1);
        const float x0 = static_cast<float>(Load(input, dtype_, a));
        const float x1 = static_cast<float>(Load(input, dtype_, b));
        const float y0 = x0 * c - x1 * s;
        const float y1 = x0 * s + x1 * c;
        const size_t e = DTypeSize(dtype_);
        testing::ConvertOne(reinterpret_cast<const std::byte*>(&y0), DType::kF32,
                            want.data() + a * e, dtype_);
        testing::ConvertOne(reinterpret_cast<const std::byte*>(&y1), DType::kF32,
                            want.data() + b * e, dtype_);
      }
    }
  }
  for (bool force_scalar : {false, true}) {
    SCOPED_TRACE(force_scalar ? "portable path" : "default (SIMD when the CPU has it)");
    internal::ForceRopeScalarForTesting(force_scalar);
    std::vector<std::byte> got = input;
    ASSERT_OK(RotateKeys(got.data(), dtype_, kTokens, kHeads, kHeadDim, params_, deltas));
    internal::ForceRopeScalarForTesting(false);
    size_t mismatches = 0;
    const size_t e = DTypeSize(dtype_);
    for (size_t i = 0; i < k_pre_.size(); ++i) {
      if (std::memcmp(got.data() + i * e, want.data() + i * e, e) != 0) {
        // Inputs include infinities and extreme magnitudes: NaN results are equal as NaNs.
        if (std::isnan(Load(got, dtype_, i)) && std::isnan(Load(want, dtype_, i))) continue;
        if (++mismatches <= 5) ADD_FAILURE() << "element " << i;
      }
    }
    EXPECT_EQ(mismatches, 0u);
  }
}

// The pair layout of each convention, on a unit vector whose first pair has frequency 1.
TEST(RopeConventionTest, PairsRotateTogether) {
  const uint32_t head_dim = 8;
  for (RopeConvention convention : {RopeConvention::kNeox, RopeConvention::kGptj}) {
    std::vector<float> k(head_dim, 0.0f);
    k[0] = 1.0f;
    RopeParams params{convention, 10000.0f, 0};
    ASSERT_OK(ShiftKeys(k.data(), DType::kF32, 1, 1, head_dim, params, 2));
    const size_t partner = convention == RopeConvention::kNeox ? head_dim / 2 : 1;
    EXPECT_EQ(k[0], static_cast<float>(std::cos(2.0)));
    EXPECT_EQ(k[partner], static_cast<float>(std::sin(2.0)));
    for (size_t i = 1; i < head_dim; ++i) {
      if (i != partner) {
        EXPECT_EQ(k[i], 0.0f) << i;
      }
    }
  }
}

TEST(RopeEdgeTest, ZeroDeltaLeavesEveryBitAlone) {
  std::mt19937_64 rng(3);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    std::vector<std::byte> k(4 * 2 * 16 * DTypeSize(dtype));
    for (auto& b : k) b = static_cast<std::byte>(rng());  // NaNs and infinities included
    const auto before = k;
    RopeParams params;
    ASSERT_OK(ShiftKeys(k.data(), dtype, 4, 2, 16, params, 0));
    std::vector<int64_t> zeros(4, 0);
    ASSERT_OK(RotateKeys(k.data(), dtype, 4, 2, 16, params, zeros));
    EXPECT_EQ(k, before);
  }
}

TEST(RopeEdgeTest, NoTokensIsFine) {
  RopeParams params;
  EXPECT_OK(ShiftKeys(nullptr, DType::kF16, 0, 2, 16, params, 5));
  EXPECT_OK(RotateKeys(nullptr, DType::kF16, 0, 2, 16, params, {}));
}

TEST(RopeEdgeTest, InvalidArguments) {
  std::vector<float> k(2 * 16);
  auto rejected = [&](RopeParams params, uint32_t head_dim, size_t deltas, float* data) {
    std::vector<int64_t> delta(deltas, 1);
    const bool rotate = RotateKeys(data, DType::kF32, 2, 1, head_dim, params, delta).code() ==
                        absl::StatusCode::kInvalidArgument;
    const bool shift =
        deltas != 2 || ShiftKeys(data, DType::kF32, 2, 1, head_dim, params, 1).code() ==
                           absl::StatusCode::kInvalidArgument;
    return rotate && shift;
  };
  EXPECT_TRUE(rejected({RopeConvention::kNone, 10000.0f, 0}, 16, 2, k.data()));
  EXPECT_TRUE(rejected({RopeConvention::kNeox, 10000.0f, 7}, 16, 2, k.data()));   // odd
  EXPECT_TRUE(rejected({RopeConvention::kGptj, 10000.0f, 18}, 16, 2, k.data()));  // > head_dim
  EXPECT_TRUE(rejected({RopeConvention::kNeox, 10000.0f, 0}, 15, 2, k.data()));   // odd head_dim
  EXPECT_TRUE(rejected({RopeConvention::kNeox, 0.0f, 0}, 16, 2, k.data()));       // theta
  EXPECT_TRUE(rejected({RopeConvention::kNeox, 10000.0f, 0}, 16, 3, k.data()));   // deltas size
  EXPECT_TRUE(rejected({RopeConvention::kNeox, 10000.0f, 0}, 16, 2, nullptr));    // null
  EXPECT_TRUE(rejected({RopeConvention::kNeox, 10000.0f, 0}, 0, 2, k.data()));    // head_dim 0
  EXPECT_THAT(ShiftKeys(k.data(), static_cast<DType>(9), 2, 1, 16, RopeParams{}, 1),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvstash::kernels
