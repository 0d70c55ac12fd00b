// llama2.c legacy checkpoint: header {dim, hidden_dim, n_layers, n_heads, n_kv_heads,
// vocab_size, seq_len} as int32, then f32 tensors in a fixed order (see LoadLlama2cModel).
#include <cstring>
#include <filesystem>

#include "kvstash/engine/model.h"
#include "mapped_file.h"

namespace kvstash::engine {

Result<std::shared_ptr<const Model>> LoadLlama2cModel(const std::string& path,
                                                      const LoadOptions& options) {
  KVSTASH_ASSIGN_OR_RETURN(auto file, MappedFile::Open(path));
  auto bytes = file->bytes();
  int32_t h[7];
  if (bytes.size() < sizeof(h)) {
    return absl::InvalidArgumentError(path + ": too short for a llama2.c checkpoint");
  }
  std::memcpy(h, bytes.data(), sizeof(h));
  for (int i = 0; i < 7; ++i) {
    if (i != 5 && (h[i] <= 0 || h[i] > (1 << 20))) {
      return absl::InvalidArgumentError(path + ": not a GGUF file nor a llama2.c checkpoint");
    }
  }
  if (h[5] == 0 || h[5] < -(1 << 24) || h[5] > (1 << 24)) {
    return absl::InvalidArgumentError(path + ": bad llama2.c vocab_size");
  }
  std::shared_ptr<Model> model(new Model());
  ModelConfig& c = model->config_;
  c.architecture = "llama";
  c.dim = static_cast<uint32_t>(h[0]);
  c.ffn_dim = static_cast<uint32_t>(h[1]);
  c.num_layers = static_cast<uint32_t>(h[2]);
  c.num_heads = static_cast<uint32_t>(h[3]);
  c.num_kv_heads = static_cast<uint32_t>(h[4]);
  c.tied_output = h[5] > 0;
  c.vocab_size = static_cast<uint32_t>(h[5] > 0 ? h[5] : -h[5]);
  c.max_seq_len = static_cast<uint32_t>(h[6]);
  if (c.dim % c.num_heads != 0) {
    return absl::InvalidArgumentError(path + ": dim is not a multiple of n_heads");
  }
  c.head_dim = c.dim / c.num_heads;
  c.rotary_dim = c.head_dim;
  c.rms_eps = 1e-5f;
  c.rope = RopeConvention::kGptj;
  if (options.rope != RopeConvention::kNone) c.rope = options.rope;
  c.rope_theta = 10000.0f;
  KVSTASH_RETURN_IF_ERROR(c.Validate());

  // Sizes in floats, in file order.
  const uint64_t L = c.num_layers, D = c.dim, F = c.ffn_dim, V = c.vocab_size;
  const uint64_t KV = uint64_t{c.num_kv_heads} * c.head_dim;
  uint64_t expected = V * D + L * D + L * D * D + 2 * L * KV * D + L * D * D + L * D +
                      3 * L * F * D + D + uint64_t{c.max_seq_len} * c.head_dim;
  if (!c.tied_output) expected += V * D;
  if (bytes.size() != sizeof(h) + expected * 4) {
    return absl::InvalidArgumentError(path + ": size " + std::to_string(bytes.size()) +
                                      " does not match its llama2.c header (expected " +
                                      std::to_string(sizeof(h) + expected * 4) + ")");
  }
  const uint8_t* p = bytes.data() + sizeof(h);
  auto take = [&p](uint64_t floats) {
    const uint8_t* at = p;
    p += floats * 4;
    return at;
  };
  auto matrix = [](const uint8_t* data, uint64_t rows, uint64_t cols) {
    WeightMatrix m;
    m.type = GgmlType::kF32;
    m.rows = static_cast<uint32_t>(rows);
    m.cols = static_cast<uint32_t>(cols);
    m.data = data;
    m.row_bytes = cols * 4;
    return m;
  };
  auto vec = [](const uint8_t* data, uint64_t n) {
    std::vector<float> v(n);
    std::memcpy(v.data(), data, n * 4);
    return v;
  };
  ModelWeights& w = model->weights_;
  w.layers.resize(L);
  w.token_embedding = matrix(take(V * D), V, D);
  for (auto& l : w.layers) l.attn_norm = vec(take(D), D);
  for (auto& l : w.layers) l.wq = matrix(take(D * D), D, D);
  for (auto& l : w.layers) l.wk = matrix(take(KV * D), KV, D);
  for (auto& l : w.layers) l.wv = matrix(take(KV * D), KV, D);
  for (auto& l : w.layers) l.wo = matrix(take(D * D), D, D);
  for (auto& l : w.layers) l.ffn_norm = vec(take(D), D);
  for (auto& l : w.layers) l.w_gate = matrix(take(F * D), F, D);
  for (auto& l : w.layers) l.w_down = matrix(take(D * F), D, F);
  for (auto& l : w.layers) l.w_up = matrix(take(F * D), F, D);
  w.output_norm = vec(take(D), D);
  take(uint64_t{c.max_seq_len} * c.head_dim);  // legacy freq_cis tables: RoPE is recomputed
  w.output = c.tied_output ? w.token_embedding : matrix(take(V * D), V, D);

  model->format_ = ModelFormat::kLlama2c;
  model->path_ = path;
  model->model_id_ = "llama2c:" + std::filesystem::path(path).stem().string();
  model->file_ = std::move(file);
  return std::shared_ptr<const Model>(std::move(model));
}

}  // namespace kvstash::engine
