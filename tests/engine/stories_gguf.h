// stories260K re-packed as a GGUF file, for tests of the GGUF loader and of what reads its
// metadata (blending's RoPE check).
#ifndef KVSTASH_TESTS_ENGINE_STORIES_GGUF_H_
#define KVSTASH_TESTS_ENGINE_STORIES_GGUF_H_

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "gguf_builder.h"
#include "kvstash/common/half.h"
#include "kvstash/engine/model.h"
#include "kvstash/engine/weights.h"
#include "test_util.h"

namespace kvstash::engine::testing {

// Writes `bytes` to a per-process file in the temp directory and returns its path.
inline std::string WriteTemp(const std::string& name, const std::vector<uint8_t>& bytes) {
  std::string file = "kvstash_gguf_";
  file += std::to_string(::getpid());
  file += '_';
  file += name;
  file += ".gguf";
  std::string path = (std::filesystem::temp_directory_path() / file).string();
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
  return path;
}

// stories260K as a GGUF llama model. Matrices whose rows are whole 32-blocks are stored as
// `type` (F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q8_0 = 8), others as F32. When `dequantized`
// is true every matrix is stored as F32 holding the exact dequantised values of `type` instead.
// `extra_keys` may add metadata (e.g. RoPE scaling keys).
inline std::vector<uint8_t> StoriesAsGguf(
    const Model& m, uint32_t type, bool dequantized,
    const std::function<void(GgufBuilder&)>& extra_keys = {}) {
  const ModelConfig& c = m.config();
  GgufBuilder b;
  b.Str("general.architecture", "llama");
  b.Str("general.name", "stories260K-test");
  b.U32("llama.block_count", c.num_layers);
  b.U32("llama.context_length", c.max_seq_len);
  b.U32("llama.embedding_length", c.dim);
  b.U32("llama.feed_forward_length", c.ffn_dim);
  b.U32("llama.attention.head_count", c.num_heads);
  b.U32("llama.attention.head_count_kv", c.num_kv_heads);
  b.F32("llama.rope.freq_base", 10000.0f);
  b.F32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  if (extra_keys) extra_keys(b);
  auto matrix = [&](const std::string& name, const WeightMatrix& w) {
    std::vector<float> f(size_t{w.rows} * w.cols);
    for (uint32_t r = 0; r < w.rows; ++r) DequantizeRow(w, r, f.data() + size_t{r} * w.cols);
    uint32_t t = (type >= 2 && w.cols % 32 != 0) ? 0 : type;
    std::vector<uint8_t> bytes;
    if (t == 0) {
      bytes = testing::AsF32(f.data(), f.size());
    } else if (t == 1) {
      bytes = testing::AsF16(f.data(), f.size());
      if (dequantized) {
        for (auto& v : f) v = F16ToF32(F32ToF16(v));
      }
    } else {
      std::vector<float> deq(f.size());
      bytes = testing::Quantize(t, f.data(), f.size(), deq.data());
      f = deq;
    }
    if (dequantized) {
      bytes = testing::AsF32(f.data(), f.size());
      t = 0;
    }
    b.Tensor(name, {w.cols, w.rows}, t, bytes);
  };
  auto vec = [&](const std::string& name, const std::vector<float>& v) {
    b.Tensor(name, {v.size()}, 0, testing::AsF32(v.data(), v.size()));
  };
  const ModelWeights& w = m.weights();
  matrix("token_embd.weight", w.token_embedding);
  for (uint32_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    std::string p = "blk." + std::to_string(l) + ".";
    vec(p + "attn_norm.weight", lw.attn_norm);
    matrix(p + "attn_q.weight", lw.wq);
    matrix(p + "attn_k.weight", lw.wk);
    matrix(p + "attn_v.weight", lw.wv);
    matrix(p + "attn_output.weight", lw.wo);
    vec(p + "ffn_norm.weight", lw.ffn_norm);
    matrix(p + "ffn_gate.weight", lw.w_gate);
    matrix(p + "ffn_up.weight", lw.w_up);
    matrix(p + "ffn_down.weight", lw.w_down);
  }
  vec("output_norm.weight", w.output_norm);
  return b.Build();
}

}  // namespace kvstash::engine::testing

#endif  // KVSTASH_TESTS_ENGINE_STORIES_GGUF_H_
