// SmolLM2-135M through the connector and a real cachesvc: full and partial prefix hits give
// exactly the tokens (and first-token logits) of a run without the cache. Label heavy: needs
// ./scripts/fetch_models.sh.
#include <filesystem>

#include "connector_test_util.h"
#include "service_process.h"
#include "testing/status_matchers.h"

namespace kvstash::connector {
namespace {

using testing::CachedGeneration;
using testing::ExpectSameGeneration;
using testing::GenerateCached;
using testing::GenerateUncached;
using testing::Generation;

constexpr int kNewTokens = 12;

TEST(ConnectorSmolLm2Test, FullAndPartialPrefixHitsAreExact) {
  const std::string path =
      std::string(KVSTASH_MODEL_CACHE) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "run ./scripts/fetch_models.sh";
  auto model = engine::Model::Load(path);
  ASSERT_OK(model);
  auto tok = engine::LoadGgufTokenizer(*(*model)->gguf());
  ASSERT_OK(tok);
  engine::EngineOptions opts;
  opts.num_threads = 2;
  auto eng = engine::Engine::Create(*model, opts);
  ASSERT_OK(eng);

  const std::string text = testing::ReadText("botchan.txt");
  auto chat = [&](const std::string& doc) {
    return (*tok)->Encode(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
        "trained by Hugging Face<|im_end|>\n<|im_start|>user\n" +
            doc + "\nWho tells this story?<|im_end|>\n<|im_start|>assistant\n",
        false);
  };
  // A: ~700 tokens (two full chunks and a tail). B: A's first 300 tokens, then other text.
  std::vector<int32_t> a = chat(text.substr(5000, 3000));
  ASSERT_GT(a.size(), 600u);
  std::vector<int32_t> b(a.begin(), a.begin() + 300);
  std::vector<int32_t> more = (*tok)->Encode(text.substr(20000, 1500), false);
  b.insert(b.end(), more.begin(), more.end());

  kvstash::testing::TempDir dir;
  auto svc = kvstash::testing::ServiceProcess::Start(dir.path());
  ASSERT_OK(svc);
  auto c = KvConnector::Create((*svc)->target(), EngineCacheSpec(**eng));
  ASSERT_OK(c);

  const Generation ref_a = GenerateUncached(**eng, a, kNewTokens);
  CachedGeneration cold = GenerateCached(**eng, **c, a, kNewTokens);
  EXPECT_EQ(cold.prefill.hit_tokens, 0u);
  EXPECT_EQ(cold.prefill.store->chunks_stored(), a.size() / 256);
  ExpectSameGeneration(ref_a, cold.gen);

  CachedGeneration full = GenerateCached(**eng, **c, a, kNewTokens);
  EXPECT_EQ(full.prefill.hit_tokens, a.size() / 256 * 256);
  EXPECT_EQ(full.prefill.cpu_hit_tokens, full.prefill.hit_tokens);
  EXPECT_OK(full.prefill.load_failure);
  ExpectSameGeneration(ref_a, full.gen);

  CachedGeneration partial = GenerateCached(**eng, **c, b, kNewTokens);
  EXPECT_EQ(partial.prefill.hit_tokens, 256u);
  ExpectSameGeneration(GenerateUncached(**eng, b, kNewTokens), partial.gen);
}

}  // namespace
}  // namespace kvstash::connector
