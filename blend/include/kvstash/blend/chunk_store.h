// Where blending finds and keeps chunk KV: the ChunkKvStore interface, what a stored chunk cache
// carries (ChunkRecord), and an in-process implementation for tests. The cachesvc-backed
// implementation is service_store.h.
//
// Two kinds of chunk cache exist for one chunk (keyed by ChunkKey of its tokens):
//  - kAlone: the chunk prefilled alone (CacheBlend's cache), at most one per chunk;
//  - kVariant: the chunk's KV taken from the full prefill of a prompt it appeared in, with the
//    Cache-Craft attention statistics of that prefill (ChunkStats); up to a few per chunk, in
//    slots 0..N-1.
// Either way the KV covers the chunk's tokens only, every model layer, in the object layout of
// common/layout.h ([layer][K|V][token][head][dim]); K is stored after RoPE at the positions
// [layout.position_start, + num_tokens) and in layout.rope's pair convention.
#ifndef KVSTASH_BLEND_CHUNK_STORE_H_
#define KVSTASH_BLEND_CHUNK_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kvstash/common/key.h"
#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"
#include "kvstash/common/tier.h"

namespace kvstash::blend {

// Cache-Craft statistics of one chunk cache C(C_i | S_old), from the explicit softmax of the
// prefill that created it, averaged over query heads.
struct ChunkStats {
  std::vector<Hash128> context;          // S_old: keys of the segments before C_i, in order
  std::vector<uint32_t> context_tokens;  // |C_j| of each
  uint32_t num_layers = 0;
  std::vector<double> inter;  // [layer][j]: sum over k in C_i, m in C_j of a(k, m)
  std::vector<double> intra;  // [layer]: sum over k, m in C_i, m <= k of a(k, m)
  // Per chunk token t: sum over m before C_i of a(t, m), averaged over layers (Eq. 14's score).
  std::vector<float> token_scores;
  uint64_t created = 0;  // creation order among the chunk's variants; larger is newer

  // InvalidArgument when sizes disagree (inter = num_layers x context, intra = num_layers).
  Status Validate(uint32_t num_tokens) const;
  bool operator==(const ChunkStats&) const = default;
};

enum class CacheKind : uint8_t { kAlone = 0, kVariant = 1 };

struct ChunkRecord {
  Hash128 chunk;  // ChunkKey of the chunk's tokens
  CacheKind kind = CacheKind::kAlone;
  uint32_t slot = 0;  // variant slot (kVariant)
  KvLayout layout;    // every layer; num_tokens = chunk length; position_start; rope state
  ChunkStats stats;   // kVariant only
  // Tier the object was found in, as far as the store knows (the loading controller uses it):
  // Tier::kProcess for the in-process store, the service's answer for ServiceChunkStore.
  Tier tier = Tier::kUnknown;  // set by Lookup
};

// What is stored for one chunk.
struct ChunkEntries {
  std::optional<ChunkRecord> alone;
  std::vector<ChunkRecord> variants;  // in slot order
};

// An opened chunk cache. Layer() may be called from one thread at a time (the blending loader
// thread); the returned bytes stay valid until the handle is destroyed.
class ChunkKv {
 public:
  virtual ~ChunkKv() = default;
  virtual const KvLayout& layout() const = 0;
  // The [K|V][token][head][dim] slab of model layer `layer` (ChunkLayerBytes(layout) bytes, in
  // layout.dtype). InvalidArgument for a layer outside the object.
  virtual Result<std::span<const uint8_t>> Layer(uint32_t layer) = 0;
  // Tier the bytes came from.
  virtual Tier tier() const = 0;
};

// Thread-safe: the blender may look up and fetch while another thread stores.
class ChunkKvStore {
 public:
  virtual ~ChunkKvStore() = default;
  // Stored caches of each chunk key, in order. An unreachable backend is an error; absent
  // chunks are empty entries.
  virtual Result<std::vector<ChunkEntries>> Lookup(std::span<const Hash128> chunks) = 0;
  // Opens the KV of `records` (as returned by Lookup), in order. NotFound when one vanished
  // since the lookup (evicted); the caller then recomputes.
  virtual Result<std::vector<std::unique_ptr<ChunkKv>>> Fetch(
      std::span<const ChunkRecord> records) = 0;
  // Stores `kv` (record.layout.RawBytes() bytes) as `record`, replacing what the same kind and
  // slot held. InvalidArgument for a bad layout, sizes that disagree, or bad stats.
  virtual Status Put(const ChunkRecord& record, std::span<const uint8_t> kv) = 0;
};

// The argument checks every ChunkKvStore::Put makes (InvalidArgument cases above), shared by the
// implementations so they reject the same inputs with the same messages.
Status CheckPutArguments(const ChunkRecord& record, std::span<const uint8_t> kv);

// Keeps everything in process memory (tests, and the no-service fallback).
std::unique_ptr<ChunkKvStore> NewInProcessChunkStore();

// Serialised form of ChunkStats (little-endian, versioned), as stored next to a variant's KV.
std::vector<uint8_t> EncodeStats(const ChunkStats& stats);
// InvalidArgument / DataLoss for bytes that are not a well-formed encoding.
Result<ChunkStats> DecodeStats(std::span<const uint8_t> bytes);

}  // namespace kvstash::blend

#endif  // KVSTASH_BLEND_CHUNK_STORE_H_
