// stories260K (llama2.c checkpoint + tok512.bin): golden greedy text, batch invariance.
#include <gtest/gtest.h>

#include <cstring>

#include "kvstash/engine/sampler.h"
#include "test_util.h"
#include "testing/status_matchers.h"

namespace kvstash::engine {
namespace {

using testing::LoadStories;
using testing::MakeEngine;

constexpr char kGolden[] =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.";

std::string GreedyFromBos(Engine& engine, const Tokenizer& tok, int max_tokens) {
  auto seq = engine.NewSequence();
  std::string text;
  int32_t prev = tok.bos_id();
  auto logits = engine.Prefill(*seq, std::vector<int32_t>{prev}, 0);
  EXPECT_OK(logits);
  for (int i = 0; i < max_tokens && logits.ok(); ++i) {
    int32_t next = Sampler::Argmax(*logits);
    if (next == tok.eos_id() || next == tok.bos_id()) break;
    text += tok.Piece(prev, next);
    prev = next;
    logits = engine.Decode(*seq, next);
    EXPECT_OK(logits);
  }
  return text;
}

class StoriesTest : public ::testing::TestWithParam<DType> {};

TEST_P(StoriesTest, GreedyFromBosMatchesGoldenText) {
  auto model = LoadStories();
  ASSERT_NE(model, nullptr);
  const ModelConfig& c = model->config();
  EXPECT_EQ(c.dim, 64u);
  EXPECT_EQ(c.num_layers, 5u);
  EXPECT_EQ(c.num_heads, 8u);
  EXPECT_EQ(c.num_kv_heads, 4u);
  EXPECT_EQ(c.head_dim, 8u);
  EXPECT_EQ(c.vocab_size, 512u);
  EXPECT_EQ(c.rope, RopeConvention::kGptj);
  auto tok = LoadLlama2cTokenizer(testing::StoriesTokenizerPath(), c.vocab_size);
  ASSERT_OK(tok);
  for (size_t threads : {1, 2}) {
    auto engine = MakeEngine(model, threads, GetParam());
    ASSERT_NE(engine, nullptr);
    std::string text = GreedyFromBos(*engine, **tok, 100);
    EXPECT_EQ(text.substr(0, sizeof(kGolden) - 1), kGolden) << "threads " << threads;
  }
}

INSTANTIATE_TEST_SUITE_P(KvDtypes, StoriesTest, ::testing::Values(DType::kF16, DType::kF32),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

}  // namespace
}  // namespace kvstash::engine
