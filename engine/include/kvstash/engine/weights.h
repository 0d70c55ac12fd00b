// Weight tensors as the engine reads them: row-major matrices in a GGML storage type.
//
// A WeightMatrix never owns its bytes: they live in the model file's mapping (or in a buffer the
// Model owns) and stay valid for the Model's lifetime. Quantised types store blocks of 32 weights
// along a row (the input dimension):
//   Q4_0: f16 d, 16 bytes of nibbles     w = d * (q - 8)
//   Q4_1: f16 d, f16 m, 16 bytes nibbles w = d * q + m
//   Q8_0: f16 d, 32 int8                 w = d * q
// Nibble j (j < 16) of a block is the low half of byte j, nibble j + 16 its high half.
#ifndef KVSTASH_ENGINE_WEIGHTS_H_
#define KVSTASH_ENGINE_WEIGHTS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kvstash/common/status.h"

namespace kvstash::engine {

// Values are the GGML type ids where one exists.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ8_0 = 8,
  kUnsupported = 0xFFFFFFFFu,
};

// Name of a GGML type id, including ids the engine does not support ("Q4_K", ...).
std::string GgmlTypeName(uint32_t raw_type);
// Maps a stored type id to a supported type, or kUnsupported.
GgmlType GgmlTypeFromId(uint32_t raw_type);
// Weights per block (1 for F32/F16) and bytes per block; 0 for kUnsupported.
size_t GgmlBlockWeights(GgmlType type);
size_t GgmlBlockBytes(GgmlType type);
// Bytes of one row of `cols` weights; InvalidArgument when cols is not a multiple of the block.
Result<size_t> GgmlRowBytes(GgmlType type, uint64_t cols);

struct WeightMatrix {
  GgmlType type = GgmlType::kF32;
  uint32_t rows = 0;  // output features
  uint32_t cols = 0;  // input features
  const uint8_t* data = nullptr;
  size_t row_bytes = 0;

  const uint8_t* Row(uint32_t r) const { return data + size_t{r} * row_bytes; }
};

// Writes row `r` of `w` as f32 into out[0, w.cols). Exact (the per-weight formulas above).
void DequantizeRow(const WeightMatrix& w, uint32_t r, float* out);

struct LayerWeights {
  std::vector<float> attn_norm;  // [dim]
  WeightMatrix wq;               // [num_heads * head_dim][dim]
  WeightMatrix wk;               // [num_kv_heads * head_dim][dim]
  WeightMatrix wv;               // [num_kv_heads * head_dim][dim]
  WeightMatrix wo;               // [dim][num_heads * head_dim]
  std::vector<float> ffn_norm;   // [dim]
  WeightMatrix w_gate;           // [ffn_dim][dim]   (w1)
  WeightMatrix w_up;             // [ffn_dim][dim]   (w3)
  WeightMatrix w_down;           // [dim][ffn_dim]   (w2)
};

struct ModelWeights {
  WeightMatrix token_embedding;  // [vocab][dim]
  std::vector<LayerWeights> layers;
  std::vector<float> output_norm;  // [dim]
  WeightMatrix output;             // [vocab][dim]; same bytes as token_embedding when tied
};

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_WEIGHTS_H_
