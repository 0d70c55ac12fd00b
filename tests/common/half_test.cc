#include "kvstash/common/half.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

namespace kvstash {
namespace {

TEST(HalfTest, EveryF16RoundTripsThroughF32) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = F16ToF32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(F16ToF32(F32ToF16(f))));
      continue;
    }
    EXPECT_EQ(F32ToF16(f), h) << std::hex << h;
  }
}

TEST(HalfTest, KnownValues) {
  EXPECT_EQ(F32ToF16(1.0f), 0x3C00);
  EXPECT_EQ(F32ToF16(-2.0f), 0xC000);
  EXPECT_EQ(F32ToF16(65504.0f), 0x7BFF);
  EXPECT_EQ(F32ToF16(65520.0f), 0x7C00);            // rounds up to infinity
  EXPECT_EQ(F32ToF16(5.9604645e-8f), 0x0001);       // smallest subnormal
  EXPECT_EQ(F32ToF16(2.9802322e-8f), 0x0000);       // exactly half of it: ties to even (0)
  EXPECT_EQ(F32ToF16(1.0f + 1.0f / 2048), 0x3C00);  // halfway, ties to even
  EXPECT_EQ(F32ToF16(1.0f + 3.0f / 2048), 0x3C02);  // halfway, ties to even (up)
  EXPECT_EQ(F32ToBF16(1.0f), 0x3F80);
  EXPECT_EQ(BF16ToF32(0x3F80), 1.0f);
  EXPECT_TRUE(std::isnan(BF16ToF32(F32ToBF16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(HalfTest, BulkMatchesScalar) {
  std::vector<float> in;
  for (int i = -3000; i < 3000; ++i) in.push_back(static_cast<float>(i) * 0.37f + 1e-6f * i);
  in.push_back(1e-7f);
  in.push_back(-7e4f);
  std::vector<uint16_t> h(in.size()), b(in.size());
  std::vector<float> back(in.size());
  F32ToF16(in.data(), h.data(), in.size());
  F16ToF32(h.data(), back.data(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ(h[i], F32ToF16(in[i])) << in[i];
    EXPECT_EQ(back[i], F16ToF32(h[i]));
  }
  F32ToBF16(in.data(), b.data(), in.size());
  for (size_t i = 0; i < in.size(); ++i) EXPECT_EQ(b[i], F32ToBF16(in[i]));
}

}  // namespace
}  // namespace kvstash
