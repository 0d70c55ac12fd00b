#include "kvstash/engine/model.h"

#include <cstring>

#include "kvstash/common/half.h"
#include "kvstash/engine/gguf.h"
#include "mapped_file.h"

namespace kvstash::engine {

Result<std::shared_ptr<const Model>> LoadGgufModel(const std::string& path,
                                                   const LoadOptions& options);
Result<std::shared_ptr<const Model>> LoadLlama2cModel(const std::string& path,
                                                      const LoadOptions& options);

std::string GgmlTypeName(uint32_t raw_type) {
  static const char* const kNames[] = {
      "F32",     "F16",    "Q4_0",    "Q4_1",  "Q4_2",   "Q4_3",  "Q5_0",  "Q5_1",
      "Q8_0",    "Q8_1",   "Q2_K",    "Q3_K",  "Q4_K",   "Q5_K",  "Q6_K",  "Q8_K",
      "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
      "I8",      "I16",    "I32",     "I64",   "F64",    "IQ1_M", "BF16"};
  if (raw_type < sizeof(kNames) / sizeof(kNames[0])) return kNames[raw_type];
  return "type#" + std::to_string(raw_type);
}

GgmlType GgmlTypeFromId(uint32_t raw_type) {
  switch (raw_type) {
    case 0:
      return GgmlType::kF32;
    case 1:
      return GgmlType::kF16;
    case 2:
      return GgmlType::kQ4_0;
    case 3:
      return GgmlType::kQ4_1;
    case 8:
      return GgmlType::kQ8_0;
    default:
      return GgmlType::kUnsupported;
  }
}

size_t GgmlBlockWeights(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
      return 1;
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ8_0:
      return 32;
    default:
      return 0;
  }
}

size_t GgmlBlockBytes(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
      return 4;
    case GgmlType::kF16:
      return 2;
    case GgmlType::kQ4_0:
      return 18;
    case GgmlType::kQ4_1:
      return 20;
    case GgmlType::kQ8_0:
      return 34;
    default:
      return 0;
  }
}

Result<size_t> GgmlRowBytes(GgmlType type, uint64_t cols) {
  size_t block = GgmlBlockWeights(type);
  if (block == 0) return absl::InvalidArgumentError("unsupported tensor type");
  if (cols == 0 || cols % block != 0 || cols > (uint64_t{1} << 32)) {
    return absl::InvalidArgumentError("row of " + std::to_string(cols) +
                                      " weights is not a whole number of blocks");
  }
  return static_cast<size_t>(cols / block * GgmlBlockBytes(type));
}

void DequantizeRow(const WeightMatrix& w, uint32_t r, float* out) {
  const uint8_t* row = w.Row(r);
  switch (w.type) {
    case GgmlType::kF32:
      std::memcpy(out, row, size_t{w.cols} * 4);
      return;
    case GgmlType::kF16:
      F16ToF32(reinterpret_cast<const uint16_t*>(row), out, w.cols);
      return;
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ8_0:
      break;
    default:
      return;
  }
  size_t block_bytes = GgmlBlockBytes(w.type);
  for (uint32_t b = 0; b < w.cols / 32; ++b) {
    const uint8_t* blk = row + b * block_bytes;
    uint16_t dh, mh;
    std::memcpy(&dh, blk, 2);
    float d = F16ToF32(dh);
    float* o = out + b * 32;
    if (w.type == GgmlType::kQ8_0) {
      for (int j = 0; j < 32; ++j) o[j] = static_cast<float>(static_cast<int8_t>(blk[2 + j])) * d;
    } else if (w.type == GgmlType::kQ4_0) {
      for (int j = 0; j < 16; ++j) {
        o[j] = static_cast<float>((blk[2 + j] & 15) - 8) * d;
        o[j + 16] = static_cast<float>((blk[2 + j] >> 4) - 8) * d;
      }
    } else {
      std::memcpy(&mh, blk + 2, 2);
      float m = F16ToF32(mh);
      for (int j = 0; j < 16; ++j) {
        o[j] = static_cast<float>(blk[4 + j] & 15) * d + m;
        o[j + 16] = static_cast<float>(blk[4 + j] >> 4) * d + m;
      }
    }
  }
}

Status ModelConfig::Validate() const {
  auto bad = [](const std::string& what) {
    return absl::InvalidArgumentError("model config: " + what);
  };
  if (num_layers == 0 || num_layers > kMaxLayers) return bad("num_layers out of range");
  if (dim == 0 || ffn_dim == 0) return bad("dim and ffn_dim must be positive");
  if (num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0) {
    return bad("num_heads must be a positive multiple of num_kv_heads");
  }
  if (num_kv_heads > kMaxKvHeads) return bad("num_kv_heads out of range");
  if (head_dim == 0 || head_dim % 2 != 0 || head_dim > kMaxHeadDim) {
    return bad("head_dim must be even and at most " + std::to_string(kMaxHeadDim));
  }
  if (rotary_dim == 0 || rotary_dim % 2 != 0 || rotary_dim > head_dim) {
    return bad("rotary_dim must be even and at most head_dim");
  }
  if (vocab_size == 0) return bad("vocab_size must be positive");
  if (max_seq_len == 0) return bad("max_seq_len must be positive");
  if (!(rms_eps > 0.0f)) return bad("rms_eps must be positive");
  if (!(rope_theta > 0.0f)) return bad("rope_theta must be positive");
  if (rope != RopeConvention::kNeox && rope != RopeConvention::kGptj) {
    return bad("rope convention must be neox or gptj");
  }
  return OkStatus();
}

Result<std::shared_ptr<const Model>> Model::Load(const std::string& path,
                                                 const LoadOptions& options) {
  KVSTASH_ASSIGN_OR_RETURN(auto probe, MappedFile::Open(path));
  auto bytes = probe->bytes();
  bool gguf = bytes.size() >= 4 && std::memcmp(bytes.data(), "GGUF", 4) == 0;
  probe.reset();
  return gguf ? LoadGgufModel(path, options) : LoadLlama2cModel(path, options);
}

Model::Model() = default;
Model::~Model() = default;

const std::string& Model::WeightsSha256() const {
  std::call_once(sha_once_, [this] {
    auto bytes = gguf_ != nullptr ? gguf_->bytes() : file_->bytes();
    sha256_ = Sha256Hex(bytes);
  });
  return sha256_;
}

ModelSpec Model::Spec(DType kv_dtype) const {
  ModelSpec spec;
  spec.model_id = model_id_;
  spec.weights_revision = "sha256:" + WeightsSha256();
  spec.dtype = kv_dtype;
  spec.num_layers = config_.num_layers;
  spec.layer_begin = 0;
  spec.layer_end = config_.num_layers;
  spec.total_kv_heads = config_.num_kv_heads;
  spec.head_begin = 0;
  spec.head_end = config_.num_kv_heads;
  spec.head_dim = config_.head_dim;
  spec.rope = config_.rope;
  spec.rope_theta = config_.rope_theta;
  return spec;
}

}  // namespace kvstash::engine
