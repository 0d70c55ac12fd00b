// GGUF llama-architecture models.
#include <filesystem>

#include "kvstash/common/half.h"
#include "kvstash/engine/gguf.h"
#include "kvstash/engine/model.h"

namespace kvstash::engine {
namespace {

Status TensorError(const std::string& name, const std::string& what) {
  return absl::InvalidArgumentError("GGUF tensor " + name + ": " + what);
}

Result<const GgufTensor*> FindChecked(const GgufFile& f, const std::string& name,
                                      const std::vector<uint64_t>& dims) {
  const GgufTensor* t = f.FindTensor(name);
  if (t == nullptr) return absl::InvalidArgumentError("GGUF: missing tensor " + name);
  if (t->type == GgmlType::kUnsupported) {
    return TensorError(name, "type " + GgmlTypeName(t->raw_type) +
                                 " is not supported (supported: F32, F16, Q4_0, Q4_1, Q8_0)");
  }
  if (t->dims != dims) {
    std::string got, want;
    for (auto d : t->dims) got += std::to_string(d) + " ";
    for (auto d : dims) want += std::to_string(d) + " ";
    return TensorError(name, "shape [ " + got + "] but the config implies [ " + want + "]");
  }
  return t;
}

Result<WeightMatrix> Matrix(const GgufFile& f, const std::string& name, uint32_t rows,
                            uint32_t cols) {
  KVSTASH_ASSIGN_OR_RETURN(const GgufTensor* t, FindChecked(f, name, {cols, rows}));
  WeightMatrix m;
  m.type = t->type;
  m.rows = rows;
  m.cols = cols;
  m.data = t->data;
  KVSTASH_ASSIGN_OR_RETURN(m.row_bytes, GgmlRowBytes(t->type, cols));
  return m;
}

Result<std::vector<float>> Vector(const GgufFile& f, const std::string& name, uint32_t n) {
  KVSTASH_ASSIGN_OR_RETURN(const GgufTensor* t, FindChecked(f, name, {n}));
  if (t->type != GgmlType::kF32 && t->type != GgmlType::kF16) {
    return TensorError(name, "norm weights must be F32 or F16");
  }
  WeightMatrix m{t->type, 1, n, t->data, t->bytes};
  std::vector<float> v(n);
  DequantizeRow(m, 0, v.data());
  return v;
}

}  // namespace

Result<std::shared_ptr<const Model>> LoadGgufModel(const std::string& path,
                                                   const LoadOptions& options) {
  KVSTASH_ASSIGN_OR_RETURN(auto gguf, GgufFile::Open(path));
  const GgufFile& f = *gguf;
  std::shared_ptr<Model> model(new Model());
  ModelConfig& c = model->config_;
  KVSTASH_ASSIGN_OR_RETURN(c.architecture, f.GetString("general.architecture"));
  if (c.architecture != "llama") {
    return absl::InvalidArgumentError(path + ": architecture " + c.architecture +
                                      " is not supported (only llama)");
  }
  const std::string a = c.architecture + ".";
  KVSTASH_ASSIGN_OR_RETURN(c.num_layers, f.GetU32(a + "block_count"));
  KVSTASH_ASSIGN_OR_RETURN(c.dim, f.GetU32(a + "embedding_length"));
  KVSTASH_ASSIGN_OR_RETURN(c.ffn_dim, f.GetU32(a + "feed_forward_length"));
  KVSTASH_ASSIGN_OR_RETURN(c.num_heads, f.GetU32(a + "attention.head_count"));
  c.num_kv_heads = c.num_heads;
  if (f.Find(a + "attention.head_count_kv") != nullptr) {
    KVSTASH_ASSIGN_OR_RETURN(c.num_kv_heads, f.GetU32(a + "attention.head_count_kv"));
  }
  KVSTASH_ASSIGN_OR_RETURN(c.max_seq_len, f.GetU32(a + "context_length"));
  KVSTASH_ASSIGN_OR_RETURN(c.rms_eps, f.GetF32(a + "attention.layer_norm_rms_epsilon"));
  c.rope_theta = 10000.0f;
  if (f.Find(a + "rope.freq_base") != nullptr) {
    KVSTASH_ASSIGN_OR_RETURN(c.rope_theta, f.GetF32(a + "rope.freq_base"));
  }
  if (c.num_heads == 0 || c.dim % c.num_heads != 0) {
    return absl::InvalidArgumentError(path + ": embedding_length not a multiple of head_count");
  }
  c.head_dim = c.dim / c.num_heads;
  if (f.Find(a + "attention.key_length") != nullptr) {
    KVSTASH_ASSIGN_OR_RETURN(c.head_dim, f.GetU32(a + "attention.key_length"));
  }
  c.rotary_dim = c.head_dim;
  if (f.Find(a + "rope.dimension_count") != nullptr) {
    KVSTASH_ASSIGN_OR_RETURN(c.rotary_dim, f.GetU32(a + "rope.dimension_count"));
  }
  // The GGUF converter permutes llama's Q/K rows so that RoPE rotates adjacent pairs.
  c.rope = RopeConvention::kGptj;
  if (options.rope != RopeConvention::kNone) c.rope = options.rope;
  const GgufTensor* emb = f.FindTensor("token_embd.weight");
  if (emb == nullptr || emb->dims.size() != 2) {
    return absl::InvalidArgumentError(path + ": missing or malformed token_embd.weight");
  }
  c.vocab_size = static_cast<uint32_t>(emb->dims[1]);
  c.tied_output = f.FindTensor("output.weight") == nullptr;
  KVSTASH_RETURN_IF_ERROR(c.Validate());

  ModelWeights& w = model->weights_;
  KVSTASH_ASSIGN_OR_RETURN(w.token_embedding, Matrix(f, "token_embd.weight", c.vocab_size, c.dim));
  w.layers.resize(c.num_layers);
  for (uint32_t i = 0; i < c.num_layers; ++i) {
    LayerWeights& l = w.layers[i];
    const std::string p = "blk." + std::to_string(i) + ".";
    KVSTASH_ASSIGN_OR_RETURN(l.attn_norm, Vector(f, p + "attn_norm.weight", c.dim));
    KVSTASH_ASSIGN_OR_RETURN(l.wq, Matrix(f, p + "attn_q.weight", c.q_dim(), c.dim));
    KVSTASH_ASSIGN_OR_RETURN(l.wk, Matrix(f, p + "attn_k.weight", c.kv_dim(), c.dim));
    KVSTASH_ASSIGN_OR_RETURN(l.wv, Matrix(f, p + "attn_v.weight", c.kv_dim(), c.dim));
    KVSTASH_ASSIGN_OR_RETURN(l.wo, Matrix(f, p + "attn_output.weight", c.dim, c.q_dim()));
    KVSTASH_ASSIGN_OR_RETURN(l.ffn_norm, Vector(f, p + "ffn_norm.weight", c.dim));
    KVSTASH_ASSIGN_OR_RETURN(l.w_gate, Matrix(f, p + "ffn_gate.weight", c.ffn_dim, c.dim));
    KVSTASH_ASSIGN_OR_RETURN(l.w_up, Matrix(f, p + "ffn_up.weight", c.ffn_dim, c.dim));
    KVSTASH_ASSIGN_OR_RETURN(l.w_down, Matrix(f, p + "ffn_down.weight", c.dim, c.ffn_dim));
  }
  KVSTASH_ASSIGN_OR_RETURN(w.output_norm, Vector(f, "output_norm.weight", c.dim));
  if (c.tied_output) {
    w.output = w.token_embedding;
  } else {
    KVSTASH_ASSIGN_OR_RETURN(w.output, Matrix(f, "output.weight", c.vocab_size, c.dim));
  }

  model->format_ = ModelFormat::kGguf;
  model->path_ = path;
  auto name = f.GetString("general.name");
  model->model_id_ = "gguf:" + (name.ok() ? *name : std::filesystem::path(path).stem().string());
  model->gguf_ = std::move(gguf);
  return std::shared_ptr<const Model>(std::move(model));
}

}  // namespace kvstash::engine
