// Describes the KV bytes of one stored object (one chunk of tokens for one model layout).
//
// Object payloads are layer-major: [layer][K|V][token][kv_head][head_dim], so one layer can be
// loaded while the previous one computes. `KvLayout` is a plain value type: copyable, no
// invariants enforced on construction; call Validate() on anything that came from outside.
#ifndef KVSTASH_COMMON_LAYOUT_H_
#define KVSTASH_COMMON_LAYOUT_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kvstash/common/status.h"

namespace kvstash {

enum class DType : uint8_t { kF16 = 1, kBF16 = 2, kF32 = 3 };

// Bytes per element; 0 for an unknown value.
size_t DTypeSize(DType dtype);
std::string_view DTypeName(DType dtype);

// How K was rotated before it was stored.
enum class RopeConvention : uint8_t {
  kNone = 0,  // K stored before RoPE (or the model has no RoPE)
  kNeox = 1,  // rotate halves: pairs (i, i + rotary_dim/2)       (HF Llama, GGUF llama)
  kGptj = 2,  // rotate adjacent pairs: (2i, 2i+1)                 (llama2.c, GPT-J)
};
std::string_view RopeConventionName(RopeConvention rope);

enum class Encoding : uint8_t {
  kRaw = 0,       // payload is the layer-major tensor in `dtype`
  kCacheGen = 1,  // payload is a CacheGen container (codec/); level in ObjectInfo
};
std::string_view EncodingName(Encoding encoding);

struct KvLayout {
  uint32_t num_layers = 0;      // layers held in this object
  uint32_t layer_begin = 0;     // first model layer held
  uint32_t total_kv_heads = 0;  // KV heads of the model
  uint32_t head_begin = 0;      // first KV head held
  uint32_t head_end = 0;        // one past the last KV head held
  uint32_t head_dim = 0;
  DType dtype = DType::kF16;
  uint32_t num_tokens = 0;
  // RoPE state of the stored K: tokens sit at positions [position_start,
  // position_start+num_tokens).
  RopeConvention rope = RopeConvention::kNone;
  float rope_theta = 10000.0f;
  uint32_t rotary_dim = 0;  // 0 means head_dim
  int64_t position_start = 0;

  uint32_t heads() const { return head_end - head_begin; }
  // Elements of one K (or V) row of one layer: tokens x heads x head_dim.
  size_t ElementsPerLayerHalf() const { return size_t{num_tokens} * heads() * head_dim; }
  // Bytes of the raw (unencoded) payload.
  size_t RawBytes() const {
    return size_t{num_layers} * 2 * ElementsPerLayerHalf() * DTypeSize(dtype);
  }

  // InvalidArgument naming the first bad field; limits keep RawBytes() far from overflow.
  Status Validate() const;

  bool operator==(const KvLayout&) const = default;
};

// What the service knows about a stored object besides its key.
struct ObjectInfo {
  KvLayout layout;
  Encoding encoding = Encoding::kRaw;
  uint8_t encoding_level = 0;  // container level: CacheGen 1..3, KVQ 1..4; 0 for raw
  uint64_t payload_bytes = 0;
  uint32_t payload_crc32c = 0;
  // The payload is a lossy reconstruction of what the writer stored (a raw object served from a
  // CacheGen-encoded storage tier, docs/storage.md "Per-tier encoding"); payload_crc32c is that
  // of these bytes. Not part of the 64-byte object header: the SSD tier keeps it in its index.
  bool lossy = false;

  // Validate() of the layout plus encoding rules (raw: payload_bytes == RawBytes()).
  Status Validate() const;

  bool operator==(const ObjectInfo&) const = default;
};

// Upper limits accepted by Validate(); far above any real model, low enough to rule out overflow.
inline constexpr uint32_t kMaxLayers = 1024;
inline constexpr uint32_t kMaxKvHeads = 1024;
inline constexpr uint32_t kMaxHeadDim = 1024;
inline constexpr uint32_t kMaxTokensPerObject = 1u << 20;
inline constexpr uint64_t kMaxObjectBytes = uint64_t{16} << 30;

}  // namespace kvstash

#endif  // KVSTASH_COMMON_LAYOUT_H_
