// Shared helpers of the connector tests: generation with and without the cache.
#ifndef KVSTASH_TESTS_CONNECTOR_CONNECTOR_TEST_UTIL_H_
#define KVSTASH_TESTS_CONNECTOR_CONNECTOR_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "kvstash/connector/connector.h"
#include "kvstash/connector/engine_adapter.h"
#include "kvstash/engine/engine.h"
#include "kvstash/engine/sampler.h"
#include "kvstash/engine/tokenizer.h"
#include "testing/status_matchers.h"

namespace kvstash::connector::testing {

inline std::string ReadText(const std::string& name) {
  std::ifstream in(std::string(KVSTASH_SHARED_DATA) + "/text/" + name, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct Generation {
  std::vector<float> first_logits;  // logits of the last prompt position
  std::vector<int32_t> tokens;      // greedy continuation
};

// Greedy decoding of `max_new` tokens after `logits` of the prompt's last position.
inline void DecodeGreedy(engine::Engine& eng, engine::Sequence& seq, std::vector<float> logits,
                         int max_new, Generation* out) {
  out->first_logits = logits;
  for (int i = 0; i < max_new; ++i) {
    const int32_t next = engine::Sampler::Argmax(logits);
    out->tokens.push_back(next);
    if (i + 1 == max_new) break;
    auto l = eng.Decode(seq, next);
    ASSERT_OK(l);
    logits = std::move(*l);
  }
}

// The reference: no cache at all.
inline Generation GenerateUncached(engine::Engine& eng, std::span<const int32_t> prompt,
                                   int max_new) {
  Generation g;
  auto seq = eng.NewSequence();
  auto logits = eng.Prefill(*seq, prompt, 0);
  EXPECT_OK(logits);
  if (logits.ok()) DecodeGreedy(eng, *seq, std::move(*logits), max_new, &g);
  return g;
}

struct CachedGeneration {
  Generation gen;
  CachedPrefill prefill;
};

// Through the connector; decodes while the store runs, then waits for the store before the
// sequence (and its blocks) goes away.
inline CachedGeneration GenerateCached(engine::Engine& eng, KvConnector& connector,
                                       std::span<const int32_t> prompt, int max_new) {
  CachedGeneration out;
  auto seq = eng.NewSequence();
  EngineConnector adapter(eng, connector);
  auto r = adapter.Prefill(*seq, prompt);
  EXPECT_OK(r);
  if (!r.ok()) return out;
  DecodeGreedy(eng, *seq, r->logits, max_new, &out.gen);
  r->store->Wait();
  out.prefill = std::move(*r);
  return out;
}

// Same tokens and bitwise-same first logits.
inline void ExpectSameGeneration(const Generation& want, const Generation& got) {
  EXPECT_EQ(got.tokens, want.tokens);
  ASSERT_EQ(got.first_logits.size(), want.first_logits.size());
  EXPECT_EQ(std::memcmp(got.first_logits.data(), want.first_logits.data(),
                        want.first_logits.size() * sizeof(float)),
            0)
      << "first-token logits differ";
}

}  // namespace kvstash::connector::testing

#endif  // KVSTASH_TESTS_CONNECTOR_CONNECTOR_TEST_UTIL_H_
