// Tokenizers: llama2.c (tok512.bin) and byte-level BPE from a synthetic GGUF vocabulary.
#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <sstream>

#include "gguf_builder.h"
#include "kvstash/engine/gguf.h"
#include "test_util.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::engine {
namespace {

std::unique_ptr<Tokenizer> Tok512() {
  auto t = LoadLlama2cTokenizer(testing::StoriesTokenizerPath(), 512);
  EXPECT_OK(t);
  return t.ok() ? std::move(*t) : nullptr;
}

TEST(Llama2cTokenizerTest, RoundTripsTinyStoriesText) {
  auto tok = Tok512();
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 512u);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  std::ifstream f(std::string(KVSTASH_SHARED_DATA) + "/text/tinystories_sample.txt");
  ASSERT_TRUE(f.good());
  std::string line;
  int lines = 0;
  size_t tokens = 0, bytes = 0;
  while (std::getline(f, line) && lines < 200) {
    if (line.empty()) continue;
    std::vector<int32_t> ids = tok->Encode(line, true);
    ASSERT_EQ(ids.front(), 1);
    EXPECT_EQ(tok->Decode(ids), line);
    tokens += ids.size();
    bytes += line.size();
    ++lines;
  }
  EXPECT_GT(lines, 50);
  EXPECT_LT(tokens * 2, bytes);  // merges actually happen
}

TEST(Llama2cTokenizerTest, ByteFallbackRoundTrips) {
  auto tok = Tok512();
  ASSERT_NE(tok, nullptr);
  const std::string text = "Café 日本 🙂 \x01 done";
  std::vector<int32_t> ids = tok->Encode(text, true);
  bool byte_tokens = false;
  for (int32_t id : ids) byte_tokens |= id >= 3 && id < 259;
  EXPECT_TRUE(byte_tokens);
  EXPECT_EQ(tok->Decode(ids), text);
  EXPECT_EQ(tok->Encode("", true), std::vector<int32_t>{1});
}

TEST(Llama2cTokenizerTest, RejectsMalformedFiles) {
  EXPECT_THAT(LoadLlama2cTokenizer(testing::StoriesTokenizerPath(), 100000),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(LoadLlama2cTokenizer("/nonexistent/tok.bin", 512),
              StatusIs(absl::StatusCode::kNotFound));
}

// A byte-level vocabulary: 2 control tokens, the 256 byte symbols, a few merges.
std::unique_ptr<GgufFile> SyntheticBpe(std::vector<uint8_t>* storage) {
  std::vector<std::string> tokens = {"<|endoftext|>", "<|im_start|>"};
  std::vector<int32_t> types = {3, 3};
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    uint32_t cp = printable ? b : next++;
    std::string s;
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    tokens.push_back(s);
    types.push_back(1);
  }
  const std::vector<std::string> merges = {"Ġ t", "h e", "Ġt he", "Ġ Ġ", "1 2"};
  for (const auto& m : merges) {
    std::string t = m;
    t.erase(t.find(' '), 1);
    tokens.push_back(t);
    types.push_back(1);
  }
  testing::GgufBuilder b;
  b.Str("tokenizer.ggml.model", "gpt2");
  b.Str("tokenizer.ggml.pre", "smollm");
  b.StrArray("tokenizer.ggml.tokens", tokens);
  b.I32Array("tokenizer.ggml.token_type", types);
  b.StrArray("tokenizer.ggml.merges", merges);
  b.U32("tokenizer.ggml.bos_token_id", 1);
  b.U32("tokenizer.ggml.eos_token_id", 0);
  *storage = b.Build();
  auto f = GgufFile::Parse(*storage);
  EXPECT_OK(f);
  return f.ok() ? std::move(*f) : nullptr;
}

TEST(BpeTokenizerTest, MergesSplitsAndSpecials) {
  std::vector<uint8_t> storage;
  auto gguf = SyntheticBpe(&storage);
  ASSERT_NE(gguf, nullptr);
  auto tok = LoadGgufTokenizer(*gguf);
  ASSERT_OK(tok);
  auto id = [&](const std::string& piece) {
    std::vector<int32_t> ids = (*tok)->Encode(piece, false);
    return ids.size() == 1 ? ids[0] : -1;
  };
  const int32_t the = 2 + 256 + 2;  // "Ġthe"
  EXPECT_EQ((*tok)->Encode(" the", false), std::vector<int32_t>{the});
  // "the" has no leading space: t + he.
  EXPECT_EQ((*tok)->Encode("the", false).size(), 2u);
  // Digits are isolated before BPE, so the "1 2" merge never applies.
  EXPECT_EQ((*tok)->Encode("x12", false), (std::vector<int32_t>{id("x"), id("1"), id("2")}));
  // Special tokens are recognised in the text.
  std::vector<int32_t> ids = (*tok)->Encode("<|im_start|> the<|endoftext|>", false);
  EXPECT_EQ(ids, (std::vector<int32_t>{1, the, 0}));
  EXPECT_EQ((*tok)->Decode(ids), "<|im_start|> the<|endoftext|>");
  // A whitespace run keeps its last space for the next word: "a", "  " (merged to "ĠĠ"),
  // " the".
  EXPECT_EQ((*tok)->Encode("a   the", false), (std::vector<int32_t>{id("a"), 2 + 256 + 3, the}));
  EXPECT_EQ((*tok)->Encode("it's", false),
            (std::vector<int32_t>{id("i"), id("t"), id("'"), id("s")}));
}

TEST(BpeTokenizerTest, ArbitraryBytesRoundTrip) {
  std::vector<uint8_t> storage;
  auto gguf = SyntheticBpe(&storage);
  ASSERT_NE(gguf, nullptr);
  auto tok = LoadGgufTokenizer(*gguf);
  ASSERT_OK(tok);
  std::mt19937 rng(11);
  const std::vector<std::string> alphabet = {"a",    " ",  "  ", "1",    "é",        "日",
                                             "🙂", "\n", "'s", "\xff", "\xe6\x97", "<|im_start|>",
                                             "the",  "\t"};
  for (int i = 0; i < 300; ++i) {
    std::string text;
    for (int j = static_cast<int>(rng() % 12); j > 0; --j)
      text += alphabet[rng() % alphabet.size()];
    EXPECT_EQ((*tok)->Decode((*tok)->Encode(text, false)), text);
  }
}

}  // namespace
}  // namespace kvstash::engine
