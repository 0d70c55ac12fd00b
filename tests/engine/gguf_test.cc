// GGUF reader and loader: stories260K re-packed as GGUF in every supported tensor type.
#include "kvstash/engine/gguf.h"

#include <gtest/gtest.h>

#include <fstream>
#include <random>

#include "gguf_builder.h"
#include "stories_gguf.h"
#include "test_util.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::engine {
namespace {

namespace fs = std::filesystem;
using testing::GgufBuilder;
using testing::StoriesAsGguf;
using testing::WriteTemp;

std::vector<float> AllLogits(std::shared_ptr<const Model> model, std::span<const int32_t> ids) {
  auto engine = testing::MakeEngine(std::move(model), 2);
  auto seq = engine->NewSequence();
  PrefillOptions opts;
  opts.logits = LogitsMode::kAll;
  auto logits = engine->Prefill(*seq, ids, 0, opts);
  EXPECT_OK(logits);
  return logits.ok() ? *logits : std::vector<float>();
}

const std::vector<int32_t> kIds = {1,   403, 407, 261, 378, 282, 395,
                                   429, 266, 309, 324, 272, 13,  46};

TEST(GgufTest, F32GgufMatchesLlama2cCheckpointBitwise) {
  auto stories = testing::LoadStories();
  ASSERT_NE(stories, nullptr);
  std::string path = WriteTemp("f32", StoriesAsGguf(*stories, 0, false));
  auto model = Model::Load(path);
  ASSERT_OK(model);
  EXPECT_EQ((*model)->format(), ModelFormat::kGguf);
  EXPECT_EQ((*model)->model_id(), "gguf:stories260K-test");
  EXPECT_EQ((*model)->config().rope, RopeConvention::kGptj);
  EXPECT_TRUE((*model)->config().tied_output);
  std::vector<float> a = AllLogits(stories, kIds), b = AllLogits(*model, kIds);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0);
  fs::remove(path);
}

class GgufTypeTest : public ::testing::TestWithParam<uint32_t> {};

// Quantised kernels unpack each block to exactly the dequantised values (weights.h) and reduce
// like the F32 kernel, so a quantised model and its F32 dequantisation agree bit for bit; the
// test's own (independent) quantiser and dequantiser define those values.
TEST_P(GgufTypeTest, QuantisedMatchesItsDequantisationBitwise) {
  auto stories = testing::LoadStories();
  ASSERT_NE(stories, nullptr);
  const std::string type = std::to_string(GetParam());
  std::string qpath = WriteTemp("q_" + type, StoriesAsGguf(*stories, GetParam(), false));
  std::string dpath = WriteTemp("d_" + type, StoriesAsGguf(*stories, GetParam(), true));
  auto q = Model::Load(qpath);
  auto d = Model::Load(dpath);
  ASSERT_OK(q);
  ASSERT_OK(d);
  EXPECT_EQ(static_cast<uint32_t>((*q)->weights().layers[0].wq.type), GetParam());
  std::vector<float> a = AllLogits(*q, kIds), b = AllLogits(*d, kIds);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0);
  // And the quantised model still behaves like the original (loose: 4-bit weights).
  std::vector<float> orig = AllLogits(stories, kIds);
  const size_t vocab = 512;
  size_t agree = 0;
  for (size_t t = 0; t < kIds.size(); ++t) {
    std::span<const float> x(a.data() + t * vocab, vocab), y(orig.data() + t * vocab, vocab);
    agree += std::max_element(x.begin(), x.end()) - x.begin() ==
             std::max_element(y.begin(), y.end()) - y.begin();
  }
  EXPECT_GE(agree, kIds.size() / 2);
  fs::remove(qpath);
  fs::remove(dpath);
}

INSTANTIATE_TEST_SUITE_P(Types, GgufTypeTest, ::testing::Values(1u, 2u, 3u, 8u),
                         [](const auto& info) { return GgmlTypeName(info.param); });

TEST(GgufTest, UnsupportedTensorTypeIsAClearError) {
  auto stories = testing::LoadStories();
  std::vector<uint8_t> bytes = StoriesAsGguf(*stories, 0, false);
  // Re-type blk.0.attn_q.weight as Q4_K (12) by patching its descriptor.
  auto parsed = GgufFile::Parse(bytes);
  ASSERT_OK(parsed);
  const std::string name = "blk.0.attn_q.weight";
  auto it = std::search(bytes.begin(), bytes.end(), name.begin(), name.end());
  ASSERT_NE(it, bytes.end());
  size_t type_at = static_cast<size_t>(it - bytes.begin()) + name.size() + 4 + 2 * 8;
  uint32_t q4k = 12;
  std::memcpy(bytes.data() + type_at, &q4k, 4);
  std::string path = WriteTemp("q4k", bytes);
  auto model = Model::Load(path);
  ASSERT_THAT(model, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(model.status().message().find("Q4_K"), std::string::npos) << model.status();
  EXPECT_NE(model.status().message().find(name), std::string::npos) << model.status();
  fs::remove(path);
}

TEST(GgufTest, MetadataGetters) {
  GgufBuilder b;
  b.U32("a.u32", 7);
  b.F32("a.f32", 1.5f);
  b.Bool("a.bool", true);
  b.Str("a.str", "hi");
  b.StrArray("a.strs", {"x", "yz"});
  b.I32Array("a.ints", {-1, 2});
  std::vector<uint8_t> bytes = b.Build();
  auto f = GgufFile::Parse(bytes);
  ASSERT_OK(f);
  EXPECT_EQ(*(*f)->GetU32("a.u32"), 7u);
  EXPECT_EQ(*(*f)->GetF32("a.f32"), 1.5f);
  EXPECT_EQ(*(*f)->GetF32("a.u32"), 7.0f);
  EXPECT_TRUE(*(*f)->GetBool("a.bool"));
  EXPECT_EQ(*(*f)->GetString("a.str"), "hi");
  EXPECT_EQ(**(*f)->GetStringArray("a.strs"), (std::vector<std::string>{"x", "yz"}));
  EXPECT_EQ(**(*f)->GetNumArray("a.ints"), (std::vector<double>{-1, 2}));
  EXPECT_THAT((*f)->GetU32("missing"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT((*f)->GetU32("a.str"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT((*f)->GetU32("a.f32"), StatusIs(absl::StatusCode::kInvalidArgument));
}

// Every truncation and many single-byte corruptions of a valid file parse to an error or to a
// file whose tensors lie inside the bytes; none reads outside them (ASan checks that).
TEST(GgufTest, MalformedInputNeverReadsOutOfBounds) {
  GgufBuilder b;
  b.Str("general.architecture", "llama");
  b.StrArray("tokenizer.ggml.tokens", {"a", "b", "c"});
  std::vector<float> w(64, 0.5f);
  b.Tensor("t0", {32, 2}, 0, testing::AsF32(w.data(), w.size()));
  std::vector<uint8_t> good = b.Build();
  ASSERT_OK(GgufFile::Parse(good));
  for (size_t n = 0; n < good.size(); ++n) {
    std::vector<uint8_t> cut(good.begin(), good.begin() + static_cast<ptrdiff_t>(n));
    EXPECT_THAT(GgufFile::Parse(cut), StatusIs(absl::StatusCode::kInvalidArgument))
        << "prefix " << n;
  }
  std::mt19937 rng(7);
  for (int i = 0; i < 3000; ++i) {
    std::vector<uint8_t> bad = good;
    bad[rng() % bad.size()] = static_cast<uint8_t>(rng());
    auto f = GgufFile::Parse(bad);
    if (!f.ok()) continue;
    for (const auto& t : (*f)->tensors()) {
      EXPECT_GE(t.data, bad.data());
      EXPECT_LE(t.data + t.bytes, bad.data() + bad.size());
    }
  }
  EXPECT_THAT(Model::Load("/nonexistent/model.gguf"), StatusIs(absl::StatusCode::kNotFound));
}

}  // namespace
}  // namespace kvstash::engine
