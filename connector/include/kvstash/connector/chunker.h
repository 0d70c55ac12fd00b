// Chunking and naming of a prompt's KV for the cache (docs/connector.md, docs/hashing.md).
//
// A prompt is cut into chunks of `chunk_tokens` tokens (default 256). Chunk i covers positions
// [i * chunk_tokens, (i + 1) * chunk_tokens) and is named by the prefix-chained token hash of
// common/key.h (h_i commits to every token before it), the model fingerprint and the namespace.
// Only full chunks have names: a trailing partial chunk is never stored nor loaded (its tokens
// are always computed), so an object's KV is a pure function of its name.
//
// Objects are raw, layer-major [layer][K|V][token][kv_head][head_dim] in the engine's KV dtype,
// K after RoPE at the chunk's own positions (KvLayout::position_start = chunk start), so a hit
// is bit-identical to what the engine would have computed.
//
// A Chunker is an immutable value; all methods are thread-safe.
#ifndef KVSTASH_CONNECTOR_CHUNKER_H_
#define KVSTASH_CONNECTOR_CHUNKER_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvstash/common/key.h"
#include "kvstash/common/layout.h"
#include "kvstash/common/object_name.h"
#include "kvstash/common/status.h"

namespace kvstash::connector {

inline constexpr uint32_t kDefaultChunkTokens = 256;

// The names of a prompt's full chunks, in order.
struct ChunkPlan {
  uint32_t chunk_tokens = 0;
  uint32_t prompt_tokens = 0;
  std::vector<Hash128> token_hashes;  // h_0, h_1, ... of the full chunks
  std::vector<ObjectName> names;      // same order

  uint32_t full_chunks() const { return static_cast<uint32_t>(names.size()); }
};

class Chunker {
 public:
  // InvalidArgument when chunk_tokens is 0 or the spec does not describe a valid layout (layer
  // or head range empty or out of bounds, unknown dtype or RoPE convention, head_dim 0), or the
  // namespace is longer than kMaxNamespaceBytes.
  static Result<Chunker> Create(const ModelSpec& spec, std::string name_space,
                                uint32_t chunk_tokens = kDefaultChunkTokens);

  const ModelSpec& spec() const { return spec_; }
  const std::string& name_space() const { return name_space_; }
  uint32_t chunk_tokens() const { return chunk_tokens_; }
  const Hash128& fingerprint() const { return fingerprint_; }

  // Hashes and names every full chunk of `tokens` (token ids as u32 little-endian). Negative ids
  // are hashed as their u32 bit pattern.
  ChunkPlan Plan(std::span<const int32_t> tokens) const;

  // Layout and raw ObjectInfo of chunk `index` (payload_crc32c left 0).
  KvLayout ChunkLayout(uint32_t index) const;
  ObjectInfo ChunkInfo(uint32_t index) const;

 private:
  Chunker() = default;
  ModelSpec spec_;
  std::string name_space_;
  uint32_t chunk_tokens_ = kDefaultChunkTokens;
  Hash128 fingerprint_;
};

}  // namespace kvstash::connector

#endif  // KVSTASH_CONNECTOR_CHUNKER_H_
