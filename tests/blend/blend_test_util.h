// Shared helpers of the blending tests: stories260K RAG prompts from the TinyStories sample and
// KV comparisons.
#ifndef KVSTASH_TESTS_BLEND_BLEND_TEST_UTIL_H_
#define KVSTASH_TESTS_BLEND_BLEND_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "kvstash/blend/blender.h"
#include "kvstash/blend/prompt.h"
#include "kvstash/engine/engine.h"
#include "kvstash/engine/tokenizer.h"
#include "test_util.h"  // tests/engine
#include "testing/status_matchers.h"

namespace kvstash::blend::testing {

using engine::testing::LoadStories;
using engine::testing::MakeEngine;

inline const engine::Tokenizer& StoriesTokenizer() {
  static std::unique_ptr<engine::Tokenizer> tok = [] {
    auto t = engine::LoadLlama2cTokenizer(engine::testing::StoriesTokenizerPath(), 512);
    EXPECT_OK(t);
    return t.ok() ? std::move(*t) : nullptr;
  }();
  return *tok;
}

// The first `count` paragraphs of the TinyStories sample, each cut to `max_tokens` tokens.
inline std::vector<std::vector<int32_t>> StoryChunks(size_t count, size_t max_tokens) {
  std::ifstream in(std::string(KVSTASH_SHARED_DATA) + "/text/tinystories_sample.txt");
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  std::vector<std::vector<int32_t>> out;
  size_t pos = 0;
  while (out.size() < count && pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string para = text.substr(pos, end - pos);
    pos = end + 1;
    if (para.size() < 80) continue;
    std::vector<int32_t> ids = StoriesTokenizer().Encode(para, false);
    if (ids.size() > max_tokens) ids.resize(max_tokens);
    out.push_back(std::move(ids));
  }
  return out;
}

// BOS + a short prefix, the chunks in `order`, a question: about 4 x 36 + 20 tokens.
inline BlendPrompt StoriesPrompt(const std::vector<size_t>& order, size_t chunk_tokens = 36) {
  static const std::vector<std::vector<int32_t>> chunks = StoryChunks(6, chunk_tokens);
  std::vector<Segment> segs;
  std::vector<int32_t> prefix = StoriesTokenizer().Encode("Here are some stories.", true);
  segs.push_back({SegmentKind::kPrefix, prefix});
  for (size_t i : order) segs.push_back({SegmentKind::kChunk, chunks.at(i)});
  segs.push_back({SegmentKind::kQuestion, StoriesTokenizer().Encode("Who was happy?", false)});
  auto p = BlendPrompt::Make(std::move(segs));
  EXPECT_OK(p);
  return *p;
}

// f32 copy of every layer's K and V: [layer][K|V][position][kv_dim].
struct KvDump {
  uint32_t layers = 0, n = 0, width = 0;
  std::vector<float> data;
  const float* k(uint32_t l, uint32_t p) const {
    return data.data() + ((size_t{l} * 2) * n + p) * width;
  }
  const float* v(uint32_t l, uint32_t p) const {
    return data.data() + ((size_t{l} * 2 + 1) * n + p) * width;
  }
};

inline KvDump DumpKv(const engine::Engine& e, const engine::Sequence& seq, uint32_t n) {
  KvDump d;
  d.layers = e.config().num_layers;
  d.n = n;
  d.width = e.config().kv_dim();
  d.data.resize(size_t{d.layers} * 2 * n * d.width);
  std::vector<uint32_t> pos(n);
  for (uint32_t p = 0; p < n; ++p) pos[p] = p;
  for (uint32_t l = 0; l < d.layers; ++l) {
    float* k = d.data.data() + (size_t{l} * 2) * n * d.width;
    EXPECT_OK(e.ReadKv(seq, l, pos, k, k + size_t{n} * d.width));
  }
  return d;
}

// Bytes of layer `l`, positions [begin, end), K and V, equal in both sequences.
inline bool SameKvBytes(const engine::Sequence& a, const engine::Sequence& b, uint32_t l,
                        uint32_t begin, uint32_t end) {
  const size_t row = a.cache().TokenBytes();
  for (uint32_t p = begin; p < end; ++p) {
    if (std::memcmp(a.KRow(l, p), b.KRow(l, p), row) != 0) return false;
    if (std::memcmp(a.VRow(l, p), b.VRow(l, p), row) != 0) return false;
  }
  return true;
}

// Mean |a - b| over K and V of layer l (every position).
inline double MeanAbsDiff(const KvDump& a, const KvDump& b, uint32_t l) {
  double sum = 0.0;
  const size_t count = size_t{a.n} * a.width * 2;
  const float* x = a.k(l, 0);
  const float* y = b.k(l, 0);
  for (size_t i = 0; i < count; ++i) sum += std::fabs(double{x[i]} - double{y[i]});
  return sum / static_cast<double>(count);
}

inline double MeanAbsDiffAll(const KvDump& a, const KvDump& b) {
  double s = 0.0;
  for (uint32_t l = 0; l < a.layers; ++l) s += MeanAbsDiff(a, b, l);
  return s / a.layers;
}

}  // namespace kvstash::blend::testing

#endif  // KVSTASH_TESTS_BLEND_BLEND_TEST_UTIL_H_
