// Object keys and token hashes, specified bit for bit (docs/hashing.md has the golden vectors).
//
// All hashes are XXH3-128 with seed 0 over explicit little-endian byte strings: never a
// process-seeded hash, so every process, host and restart computes the same keys.
//
//   token chunk, prefix-chained:      h_i = H("KVS1PFX\0" || h_{i-1} || tokens_i)   h_{-1} = 0^16
//   token chunk, position-independent: h = H("KVS1IND\0" || tokens)
//   chunk variant (Cache-Craft):       H("KVS1VAR\0" || chunk hash || u32 slot || u32 part)
//   model fingerprint:                 H("KVS1MDL\0" || fields of ModelSpec, see key.cc)
//   object key:                        H("KVS1KEY\0" || u32 len(ns) || ns || fingerprint || token
//   hash)
//
// tokens are u32 little-endian; a Hash128 is serialised as lo (u64 LE) then hi (u64 LE).
// All functions are pure and thread-safe.
#ifndef KVSTASH_COMMON_KEY_H_
#define KVSTASH_COMMON_KEY_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"

namespace kvstash {

struct Hash128 {
  uint64_t lo = 0;
  uint64_t hi = 0;

  std::array<uint8_t, 16> Bytes() const;  // lo LE then hi LE
  // InvalidArgument unless `bytes` is exactly 16 bytes.
  static Result<Hash128> FromBytes(std::string_view bytes);
  std::string ToHex() const;  // 32 lowercase hex digits of Bytes()
  static Result<Hash128> FromHex(std::string_view hex);

  bool IsZero() const { return lo == 0 && hi == 0; }
  bool operator==(const Hash128&) const = default;
  auto operator<=>(const Hash128&) const = default;  // NOLINT(modernize-use-nullptr): llvm#53961
};

struct Hash128Hasher {
  size_t operator()(const Hash128& h) const {
    return static_cast<size_t>(h.lo ^ (h.hi * 0x9E3779B97F4A7C15ull));
  }
};

enum class TokenHashMode {
  kPrefixChained,        // a chunk's hash commits to every token before it (prefix reuse)
  kPositionIndependent,  // a chunk's hash depends on its own tokens only (RAG chunk reuse)
};

// h_i for one chunk given its parent's hash (zero for the first chunk).
Hash128 ChainTokenHash(const Hash128& parent, std::span<const uint32_t> tokens);
// Hash of a chunk independent of its position and prefix.
Hash128 IndependentTokenHash(std::span<const uint32_t> tokens);

// Token hash of one stored variant of a chunk (Cache-Craft keeps several KV caches of the same
// chunk, computed after different prefixes): `chunk_hash` is the chunk's IndependentTokenHash,
// `slot` the variant's slot, `part` what the object holds (kVariantKv, kVariantStats).
inline constexpr uint32_t kVariantKv = 0;
inline constexpr uint32_t kVariantStats = 1;
Hash128 ChunkVariantHash(const Hash128& chunk_hash, uint32_t slot, uint32_t part);

// Splits `tokens` into chunks of `chunk_tokens` and hashes each. The last chunk may be shorter
// when `include_partial` is true; otherwise a trailing partial chunk is dropped.
std::vector<Hash128> ChunkTokenHashes(std::span<const uint32_t> tokens, size_t chunk_tokens,
                                      TokenHashMode mode, bool include_partial);

// What makes two KV caches interchangeable: same weights, same numerics, same slice of the model.
// Keys carry the head range, not a tensor-parallel rank, so different TP layouts can share hits.
struct ModelSpec {
  std::string model_id;          // e.g. "HuggingFaceTB/SmolLM2-135M-Instruct"
  std::string weights_revision;  // e.g. a file sha256 or a commit id
  DType dtype = DType::kF16;
  uint32_t num_layers = 0;   // layers of the model
  uint32_t layer_begin = 0;  // slice held by objects of this fingerprint
  uint32_t layer_end = 0;
  uint32_t total_kv_heads = 0;
  uint32_t head_begin = 0;
  uint32_t head_end = 0;
  uint32_t head_dim = 0;
  RopeConvention rope = RopeConvention::kNone;
  float rope_theta = 0.0f;
};
Hash128 ModelFingerprint(const ModelSpec& spec);

// The 128-bit storage key of one object. `name_space` is the tenant / cache salt.
Hash128 ObjectKey(std::string_view name_space, const Hash128& model_fingerprint,
                  const Hash128& token_hash);

}  // namespace kvstash

template <>
struct std::hash<kvstash::Hash128> : kvstash::Hash128Hasher {};

#endif  // KVSTASH_COMMON_KEY_H_
