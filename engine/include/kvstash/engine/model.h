// A loaded Llama-architecture model: configuration, weights and identity.
//
// Formats (picked from the file's first bytes by Model::Load):
//   GGUF (general.architecture "llama"): tensors F32, F16, Q4_0, Q4_1, Q8_0. Any other tensor
//     type fails with InvalidArgument naming the tensor and its type. GGUF llama stores Q/K rows
//     permuted for adjacent-pair RoPE, so its convention is kGptj.
//   llama2.c legacy checkpoint (7 x int32 header, f32 weights; negative vocab_size means a
//     separate classifier follows): RoPE on adjacent pairs (kGptj), theta 10000, eps 1e-5.
//
// A Model is immutable after Load and may be shared by any number of engines and threads.
#ifndef KVSTASH_ENGINE_MODEL_H_
#define KVSTASH_ENGINE_MODEL_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "kvstash/common/key.h"
#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"
#include "kvstash/engine/weights.h"

namespace kvstash::engine {

class GgufFile;
class MappedFile;

enum class ModelFormat { kGguf, kLlama2c };

struct ModelConfig {
  std::string architecture = "llama";
  uint32_t num_layers = 0;
  uint32_t dim = 0;  // residual stream width
  uint32_t ffn_dim = 0;
  uint32_t num_heads = 0;
  uint32_t num_kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t vocab_size = 0;
  uint32_t max_seq_len = 0;  // context length the model was trained for
  float rms_eps = 1e-5f;
  RopeConvention rope = RopeConvention::kGptj;
  float rope_theta = 10000.0f;
  uint32_t rotary_dim = 0;  // dimensions rotated per head (== head_dim for every model we load)
  bool tied_output = true;  // the output head reuses the token embedding

  uint32_t q_dim() const { return num_heads * head_dim; }
  uint32_t kv_dim() const { return num_kv_heads * head_dim; }
  // InvalidArgument naming the first inconsistent field.
  Status Validate() const;
};

struct LoadOptions {
  // kNone: the format's convention (kGptj for both formats). kNeox or kGptj override it, for a
  // checkpoint whose Q/K rows are laid out for the other pairing (e.g. unpermuted HF weights).
  RopeConvention rope = RopeConvention::kNone;
};

class Model {
 public:
  // Loads a GGUF file or a llama2.c checkpoint (detected by the GGUF magic). NotFound for a
  // missing file; InvalidArgument for a malformed file, an unsupported architecture or tensor
  // type, or shapes that disagree with the configuration.
  static Result<std::shared_ptr<const Model>> Load(const std::string& path,
                                                   const LoadOptions& options = {});

  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  ModelFormat format() const { return format_; }
  const std::string& path() const { return path_; }
  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  // The parsed GGUF container (tokenizer metadata lives there); nullptr for llama2.c.
  const GgufFile* gguf() const { return gguf_.get(); }

  // Human-readable id: GGUF general.name (else the file name), or the llama2.c file name.
  const std::string& model_id() const { return model_id_; }
  // sha256 of the whole model file as 64 lowercase hex digits; computed on first call (reads the
  // file once), cached, thread-safe.
  const std::string& WeightsSha256() const;
  // The identity kvstash::ModelFingerprint hashes, for KV of this model stored as `kv_dtype`,
  // covering every layer and KV head.
  ModelSpec Spec(DType kv_dtype) const;

 private:
  Model();
  friend Result<std::shared_ptr<const Model>> LoadGgufModel(const std::string& path,
                                                            const LoadOptions& options);
  friend Result<std::shared_ptr<const Model>> LoadLlama2cModel(const std::string& path,
                                                               const LoadOptions& options);

  ModelFormat format_ = ModelFormat::kGguf;
  std::string path_;
  std::string model_id_;
  ModelConfig config_;
  ModelWeights weights_;
  std::unique_ptr<GgufFile> gguf_;
  std::unique_ptr<MappedFile> file_;  // llama2.c mapping
  mutable std::once_flag sha_once_;
  mutable std::string sha256_;
};

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_MODEL_H_
