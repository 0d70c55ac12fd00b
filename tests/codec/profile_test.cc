#include "kvstash/codec/profile.h"

#include <gtest/gtest.h>

#include "kvstash/codec/cachegen.h"
#include "kvstash/codec/synthetic_kv.h"
#include "kvstash/common/crc32c.h"
#include "test_util.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::codec {
namespace {

using testing::MakeLayout;

std::vector<uint8_t> Chunk(const KvLayout& layout, uint64_t seed) {
  SyntheticKvOptions o;
  o.seed = seed;
  return SyntheticKv(layout, o);
}

CdfProfile LearnProfile(const KvLayout& layout, int chunks) {
  std::vector<CdfProfileBuilder::TableSpec> specs;
  for (int level = 1; level <= 3; ++level) specs.push_back({CacheGenMode::kReference, level, {}});
  specs.push_back({CacheGenMode::kDelta, 2, {}});
  auto builder = CdfProfileBuilder::Create(ProfileShape::Of(layout), specs);
  EXPECT_OK(builder);
  for (int i = 0; i < chunks; ++i) EXPECT_OK(builder->Add(layout, Chunk(layout, 100 + i)));
  auto profile = builder->Build();
  EXPECT_OK(profile);
  return *std::move(profile);
}

TEST(ProfileTest, SerialisationRoundTripAndStableId) {
  KvLayout layout = MakeLayout(3, 2, 8, 256);
  CdfProfile p = LearnProfile(layout, 4);
  EXPECT_EQ(p.tables().size(), 4u);
  auto parsed = CdfProfile::Parse(p.bytes());
  ASSERT_OK(parsed);
  EXPECT_EQ(parsed->id(), p.id());
  EXPECT_EQ(parsed->bytes(), p.bytes());
  // Same inputs, same profile, same id.
  CdfProfile again = LearnProfile(layout, 4);
  EXPECT_EQ(again.id(), p.id());
  // More data, different profile.
  EXPECT_NE(LearnProfile(layout, 5).id(), p.id());
}

TEST(ProfileTest, ProfileContainersCarryNoCdfAndRoundTrip) {
  KvLayout layout = MakeLayout(3, 2, 8, 256);
  CdfProfile p = LearnProfile(layout, 6);
  ProfileSet set;
  set.Add(CdfProfile(p));
  auto kv = Chunk(layout, 999);  // a chunk the profile has not seen
  for (CacheGenMode mode : {CacheGenMode::kReference, CacheGenMode::kDelta}) {
    EncodeOptions options;
    options.mode = mode;
    options.level = 2;
    auto own = EncodeCacheGen(layout, kv, options);
    options.profile = &p;
    auto with = EncodeCacheGen(layout, kv, options);
    ASSERT_OK(own);
    ASSERT_OK(with);
    auto view = ParseContainer(*with);
    ASSERT_OK(view);
    EXPECT_EQ(view->info.cdf_source, CdfSource::kProfile);
    EXPECT_EQ(view->info.profile_id, p.id());
    EXPECT_EQ(view->info.sizes.cdf, 0u);
    EXPECT_LT(with->size(), own->size());
    DecodeOptions d;
    d.profiles = &set;
    auto a = DecodeCacheGen(*own);
    auto b = DecodeCacheGen(*with, d);
    ASSERT_OK(a);
    ASSERT_OK(b);
    EXPECT_EQ(*a, *b);  // same symbols, so the same reconstruction
    // Without the profile the container cannot be decoded.
    EXPECT_THAT(DecodeCacheGen(*with), StatusIs(absl::StatusCode::kNotFound));
    ProfileSet empty;
    d.profiles = &empty;
    EXPECT_THAT(DecodeCacheGen(*with, d), StatusIs(absl::StatusCode::kNotFound));
  }
}

TEST(ProfileTest, MismatchedProfileIsRejected) {
  KvLayout layout = MakeLayout(3, 2, 8, 64);
  CdfProfile p = LearnProfile(layout, 1);
  auto kv = Chunk(layout, 1);
  EncodeOptions options;
  options.profile = &p;
  options.row_bins = {12, 12, 12, 12, 12, 12};  // no table for these bins
  EXPECT_THAT(EncodeCacheGen(layout, kv, options), StatusIs(absl::StatusCode::kInvalidArgument));
  KvLayout other = MakeLayout(3, 2, 8, 64, DType::kF16, /*layer_begin=*/1);
  options.row_bins.clear();
  options.model_layers = 4;
  EXPECT_THAT(EncodeCacheGen(other, Chunk(other, 1), options),
              StatusIs(absl::StatusCode::kInvalidArgument));
  auto builder = CdfProfileBuilder::Create(ProfileShape::Of(layout), {{}});
  ASSERT_OK(builder);
  EXPECT_THAT(builder->Add(other, Chunk(other, 1)), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(builder->Build(), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST(ProfileTest, ParserRejectsMalformedProfiles) {
  KvLayout layout = MakeLayout(1, 1, 4, 64);
  CdfProfile p = LearnProfile(layout, 1);
  const auto& good = p.bytes();
  // Shorter than the 40-byte header and the crc: InvalidArgument; longer, the crc (over all
  // but the last 4 bytes) no longer matches: DataLoss.
  constexpr size_t kHeaderAndCrc = 44;
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_THAT(CdfProfile::Parse(std::span<const uint8_t>(good).first(n)),
                StatusIs(n < kHeaderAndCrc ? absl::StatusCode::kInvalidArgument
                                           : absl::StatusCode::kDataLoss))
        << n;
  }
  auto fixed = [](std::vector<uint8_t> b) {
    uint32_t crc = Crc32c(b.data(), b.size() - 4);
    for (int i = 0; i < 4; ++i) b[b.size() - 4 + i] = static_cast<uint8_t>(crc >> (8 * i));
    return b;
  };
  for (size_t i = 0; i < good.size(); ++i) {
    auto b = good;
    b[i] ^= 0x10;
    // Magic, version and header length (bytes 0..7) are checked before the crc.
    EXPECT_THAT(CdfProfile::Parse(b),
                StatusIs(i < 8 ? absl::StatusCode::kInvalidArgument : absl::StatusCode::kDataLoss))
        << "flip at " << i;
    // With a valid crc, the structural checks must still catch it (or it is a different valid
    // profile, which then has a different id). A flip in the crc itself is undone by fixing it.
    if (i >= good.size() - 4) continue;
    auto parsed = CdfProfile::Parse(fixed(b));
    if (parsed.ok()) {
      EXPECT_NE(parsed->id(), p.id());
    } else {
      EXPECT_THAT(parsed, StatusIs(absl::StatusCode::kInvalidArgument));
    }
  }
}

}  // namespace
}  // namespace kvstash::codec
