// Shared helpers of the engine tests.
#ifndef KVSTASH_TESTS_ENGINE_TEST_UTIL_H_
#define KVSTASH_TESTS_ENGINE_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "kvstash/engine/engine.h"
#include "kvstash/engine/model.h"
#include "kvstash/engine/tokenizer.h"
#include "testing/status_matchers.h"

namespace kvstash::engine::testing {

inline std::string StoriesModelPath() {
  return std::string(KVSTASH_SHARED_DATA) + "/models/stories260K.bin";
}
inline std::string StoriesTokenizerPath() {
  return std::string(KVSTASH_SHARED_DATA) + "/models/tok512.bin";
}
inline std::string SmolLm2Path() {
  return std::string(KVSTASH_MODEL_CACHE) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

inline std::shared_ptr<const Model> LoadStories() {
  static std::shared_ptr<const Model> model = [] {
    auto m = Model::Load(StoriesModelPath());
    EXPECT_OK(m);
    return m.ok() ? *m : nullptr;
  }();
  return model;
}

inline std::unique_ptr<Engine> MakeEngine(std::shared_ptr<const Model> model, size_t threads,
                                          DType dtype = DType::kF16, uint32_t blocks = 0) {
  EngineOptions opts;
  opts.num_threads = threads;
  opts.kv.dtype = dtype;
  opts.kv.num_blocks = blocks;
  auto e = Engine::Create(std::move(model), opts);
  EXPECT_OK(e);
  return e.ok() ? std::move(*e) : nullptr;
}

}  // namespace kvstash::engine::testing

#endif  // KVSTASH_TESTS_ENGINE_TEST_UTIL_H_
