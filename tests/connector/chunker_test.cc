#include "kvstash/connector/chunker.h"

#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::connector {
namespace {

ModelSpec SmolSpec() {
  ModelSpec spec;
  spec.model_id = "HuggingFaceTB/SmolLM2-135M-Instruct";
  spec.weights_revision = "sha256:test";
  spec.dtype = DType::kF16;
  spec.num_layers = 30;
  spec.layer_begin = 0;
  spec.layer_end = 30;
  spec.total_kv_heads = 3;
  spec.head_begin = 0;
  spec.head_end = 3;
  spec.head_dim = 64;
  spec.rope = RopeConvention::kGptj;
  spec.rope_theta = 100000.0f;
  return spec;
}

TEST(ChunkerTest, HashesAreTheSpecifiedPrefixChain) {
  auto chunker = Chunker::Create(SmolSpec(), "tenant-a", 256);
  ASSERT_OK(chunker);
  std::vector<int32_t> tokens(512 + 100);
  std::iota(tokens.begin(), tokens.end(), 0);
  ChunkPlan plan = chunker->Plan(tokens);
  ASSERT_EQ(plan.full_chunks(), 2u);  // the 100-token tail is never named
  EXPECT_EQ(plan.prompt_tokens, 612u);
  // Golden vectors of docs/hashing.md.
  EXPECT_EQ(plan.token_hashes[0].ToHex(), "4c067250bdce8e5a1f8404c424e2386e");
  EXPECT_EQ(plan.token_hashes[1].ToHex(), "40430788ba81843136975b3f79dfb8b9");
  const Hash128 fp = ModelFingerprint(SmolSpec());
  EXPECT_EQ(chunker->fingerprint(), fp);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(plan.names[i].name_space, "tenant-a");
    EXPECT_EQ(plan.names[i].model_fingerprint, fp);
    EXPECT_EQ(plan.names[i].token_hash, plan.token_hashes[i]);
    EXPECT_EQ(plan.names[i].storage_key, ObjectKey("tenant-a", fp, plan.token_hashes[i]));
  }
  // Same as the common helper, for any chunk size.
  auto small = Chunker::Create(SmolSpec(), "", 7);
  ASSERT_OK(small);
  std::vector<uint32_t> u(tokens.begin(), tokens.end());
  EXPECT_EQ(small->Plan(tokens).token_hashes,
            ChunkTokenHashes(u, 7, TokenHashMode::kPrefixChained, /*include_partial=*/false));
}

TEST(ChunkerTest, PrefixSharingAndDivergence) {
  auto chunker = Chunker::Create(SmolSpec(), "", 4);
  ASSERT_OK(chunker);
  std::vector<int32_t> a = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  std::vector<int32_t> b = a;
  b[5] = 99;  // second chunk differs, so every later hash differs too
  ChunkPlan pa = chunker->Plan(a), pb = chunker->Plan(b);
  EXPECT_EQ(pa.token_hashes[0], pb.token_hashes[0]);
  EXPECT_NE(pa.token_hashes[1], pb.token_hashes[1]);
  EXPECT_NE(pa.token_hashes[2], pb.token_hashes[2]);
  EXPECT_EQ(chunker->Plan(std::span(a).first(3)).full_chunks(), 0u);
}

TEST(ChunkerTest, ChunkLayoutDescribesTheEnginesKv) {
  auto chunker = Chunker::Create(SmolSpec(), "ns", 256);
  ASSERT_OK(chunker);
  KvLayout l = chunker->ChunkLayout(3);
  EXPECT_EQ(l.num_layers, 30u);
  EXPECT_EQ(l.layer_begin, 0u);
  EXPECT_EQ(l.total_kv_heads, 3u);
  EXPECT_EQ(l.heads(), 3u);
  EXPECT_EQ(l.head_dim, 64u);
  EXPECT_EQ(l.dtype, DType::kF16);
  EXPECT_EQ(l.num_tokens, 256u);
  EXPECT_EQ(l.rope, RopeConvention::kGptj);
  EXPECT_EQ(l.rope_theta, 100000.0f);
  EXPECT_EQ(l.position_start, 768);
  ObjectInfo info = chunker->ChunkInfo(3);
  EXPECT_OK(info.Validate());
  EXPECT_EQ(info.encoding, Encoding::kRaw);
  EXPECT_EQ(info.payload_bytes, 256u * 30 * 2 * 3 * 64 * 2);
}

TEST(ChunkerTest, RejectsBadInput) {
  EXPECT_THAT(Chunker::Create(SmolSpec(), "", 0).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Chunker::Create(SmolSpec(), std::string(300, 'x'), 256).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  ModelSpec bad = SmolSpec();
  bad.head_end = 4;  // more heads than the model has
  EXPECT_THAT(Chunker::Create(bad, "", 256).status(), StatusIs(absl::StatusCode::kInvalidArgument));
  bad = SmolSpec();
  bad.layer_end = 31;
  EXPECT_THAT(Chunker::Create(bad, "", 256).status(), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvstash::connector
