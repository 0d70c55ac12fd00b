// The one Tier enum of common/tier.h against the wire enum kvstash.v1.Tier.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "kvstash/common/tier.h"
#include "kvstash/proto/convert.h"

namespace kvstash {
namespace {

TEST(TierConvert, StoreTiersRoundTripWithTheirWireValues) {
  EXPECT_EQ(ToProtoTier(Tier::kGpu), v1::TIER_GPU);
  EXPECT_EQ(ToProtoTier(Tier::kCpu), v1::TIER_CPU);
  EXPECT_EQ(ToProtoTier(Tier::kSsd), v1::TIER_SSD);
  EXPECT_EQ(ToProtoTier(Tier::kRemote), v1::TIER_REMOTE);
  EXPECT_EQ(ToProtoTier(Tier::kUnknown), v1::TIER_UNSPECIFIED);
  for (Tier t : {Tier::kUnknown, Tier::kGpu, Tier::kCpu, Tier::kSsd, Tier::kRemote}) {
    EXPECT_EQ(FromProtoTier(ToProtoTier(t)), t) << TierName(t);
  }
}

TEST(TierConvert, ProcessTierNeverCrossesTheWire) {
  EXPECT_EQ(ToProtoTier(Tier::kProcess), v1::TIER_UNSPECIFIED);
  EXPECT_EQ(FromProtoTier(static_cast<int>(Tier::kProcess)), Tier::kUnknown);
  EXPECT_EQ(FromProtoTier(99), Tier::kUnknown);
}

TEST(TierConvert, EveryTierHasItsOwnName) {
  std::set<std::string> names;
  for (size_t i = 0; i < kTierCount; ++i) {
    names.insert(std::string(TierName(static_cast<Tier>(i))));
  }
  EXPECT_EQ(names, (std::set<std::string>{"unknown", "gpu", "cpu", "ssd", "remote", "process"}));
}

}  // namespace
}  // namespace kvstash
