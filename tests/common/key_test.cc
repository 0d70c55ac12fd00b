#include "kvstash/common/key.h"

#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash {
namespace {

// Golden vectors produced by the independent Python statement tests/reference/hash_vectors.py
// (PyPI xxhash). Any change here is a wire-format break: bump the domain tags instead.
std::vector<uint32_t> Iota(uint32_t begin, uint32_t end) {
  std::vector<uint32_t> v(end - begin);
  std::iota(v.begin(), v.end(), begin);
  return v;
}

ModelSpec SmolSpec() {
  ModelSpec s;
  s.model_id = "HuggingFaceTB/SmolLM2-135M-Instruct";
  s.weights_revision = "b179c952";
  s.dtype = DType::kF16;
  s.num_layers = 30;
  s.layer_begin = 0;
  s.layer_end = 30;
  s.total_kv_heads = 3;
  s.head_begin = 0;
  s.head_end = 3;
  s.head_dim = 64;
  s.rope = RopeConvention::kNeox;
  s.rope_theta = 100000.0f;
  return s;
}

TEST(KeyTest, PrefixChainedGoldenVectors) {
  Hash128 zero;
  EXPECT_EQ(ChainTokenHash(zero, {}).ToHex(), "3cd4be28fd341c6e791c5f6606b70473");
  std::vector<uint32_t> t = {1, 2, 3};
  EXPECT_EQ(ChainTokenHash(zero, t).ToHex(), "9f4d6340eb4f32eb11077db1cd530a6f");
  auto first = Iota(0, 256);
  auto second = Iota(256, 512);
  Hash128 c0 = ChainTokenHash(zero, first);
  EXPECT_EQ(c0.ToHex(), "4c067250bdce8e5a1f8404c424e2386e");
  EXPECT_EQ(ChainTokenHash(c0, second).ToHex(), "40430788ba81843136975b3f79dfb8b9");
}

TEST(KeyTest, PositionIndependentGoldenVectors) {
  std::vector<uint32_t> t = {1, 2, 3};
  EXPECT_EQ(IndependentTokenHash(t).ToHex(), "8e6354780f2adbb8ef178c81183a07d4");
  std::vector<uint32_t> max = {0xFFFFFFFFu};
  EXPECT_EQ(IndependentTokenHash(max).ToHex(), "5464fda953c6f866088be221cee7d9e0");
}

TEST(KeyTest, ChunkVariantGoldenVectors) {
  std::vector<uint32_t> t = {1, 2, 3};
  Hash128 chunk = IndependentTokenHash(t);
  EXPECT_EQ(ChunkVariantHash(chunk, 0, kVariantKv).ToHex(), "afbb606c68c86ad42aeccdb250eee7fc");
  EXPECT_EQ(ChunkVariantHash(chunk, 4, kVariantStats).ToHex(), "2a011f627b6bf3d45367a8245fa585c4");
  EXPECT_NE(ChunkVariantHash(chunk, 0, kVariantKv), ChunkVariantHash(chunk, 0, kVariantStats));
}

TEST(KeyTest, FingerprintAndObjectKeyGoldenVectors) {
  Hash128 fp = ModelFingerprint(SmolSpec());
  EXPECT_EQ(fp.ToHex(), "b6518bfc6fef993de0ec47499f35014b");
  Hash128 c0 = ChainTokenHash(Hash128{}, Iota(0, 256));
  EXPECT_EQ(ObjectKey("tenant-a", fp, c0).ToHex(), "f51b5a1255b6a35850603ba0df39f592");
  EXPECT_EQ(ObjectKey("", fp, c0).ToHex(), "e15021d1aae6c0a91c9055abf7148451");
}

TEST(KeyTest, ChunkHashesChainAndDropPartial) {
  auto tokens = Iota(0, 600);
  auto full = ChunkTokenHashes(tokens, 256, TokenHashMode::kPrefixChained, false);
  ASSERT_EQ(full.size(), 2u);
  EXPECT_EQ(full[0].ToHex(), "4c067250bdce8e5a1f8404c424e2386e");
  EXPECT_EQ(full[1].ToHex(), "40430788ba81843136975b3f79dfb8b9");
  auto with_partial = ChunkTokenHashes(tokens, 256, TokenHashMode::kPrefixChained, true);
  ASSERT_EQ(with_partial.size(), 3u);
  EXPECT_EQ(with_partial[2], ChainTokenHash(full[1], std::span(tokens).subspan(512)));
  auto independent = ChunkTokenHashes(tokens, 256, TokenHashMode::kPositionIndependent, false);
  ASSERT_EQ(independent.size(), 2u);
  EXPECT_EQ(independent[1], IndependentTokenHash(std::span(tokens).subspan(256, 256)));
  EXPECT_TRUE(ChunkTokenHashes(tokens, 0, TokenHashMode::kPrefixChained, true).empty());
}

TEST(KeyTest, DomainsAndFieldsSeparate) {
  std::vector<uint32_t> t = {1, 2, 3};
  EXPECT_NE(ChainTokenHash(Hash128{}, t), IndependentTokenHash(t));
  ModelSpec a = SmolSpec();
  ModelSpec b = a;
  b.head_begin = 1;
  EXPECT_NE(ModelFingerprint(a), ModelFingerprint(b));
  Hash128 fp = ModelFingerprint(a);
  EXPECT_NE(ObjectKey("a", fp, Hash128{}), ObjectKey("b", fp, Hash128{}));
}

TEST(KeyTest, HexAndBytesRoundTrip) {
  Hash128 h{0x0123456789abcdefull, 0xfedcba9876543210ull};
  auto back = Hash128::FromHex(h.ToHex());
  ASSERT_OK(back);
  EXPECT_EQ(*back, h);
  auto bytes = h.Bytes();
  auto from = Hash128::FromBytes(std::string_view(reinterpret_cast<const char*>(bytes.data()), 16));
  ASSERT_OK(from);
  EXPECT_EQ(*from, h);
  EXPECT_THAT(Hash128::FromHex("xyz"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Hash128::FromHex(std::string(32, 'g')), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Hash128::FromBytes("short"), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvstash
