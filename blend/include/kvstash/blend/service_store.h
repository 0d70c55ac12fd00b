// ChunkKvStore on cachesvc through KvClient: chunk caches are ordinary cachesvc objects, so they
// share the service's tiers (CPU shared memory, SSD), eviction, durability and metrics.
//
// Object names (ObjectKey(name_space, model fingerprint, token hash), docs/hashing.md):
//   alone cache:         token hash = ChunkKey(chunk tokens)                  ("KVS1IND")
//   variant v, its KV:   token hash = ChunkVariantHash(chunk, v, kVariantKv)   ("KVS1VAR")
//   variant v, stats:    token hash = ChunkVariantHash(chunk, v, kVariantStats)
// KV objects are raw layer-major KV with the chunk's KvLayout (positions and RoPE state in the
// layout). A stats object is a byte string (u32 length, EncodeStats bytes, zero padding) stored
// under a nominal raw layout of 1 layer, 1 head, head_dim 1, f32, num_tokens = bytes / 8.
//
// Lookup probes the alone key and every variant slot of every chunk in one Lookup RPC, then
// reads the present stats objects in one AcquireMany (or Get per object without shared memory).
// Fetch leases the KV objects in one AcquireMany and serves layers from the shared arena in place
// (Get copies without shared memory). Leases are released when the ChunkKv handles go.
//
// Thread-safe (KvClient is); the client must outlive the store and its handles.
#ifndef KVSTASH_BLEND_SERVICE_STORE_H_
#define KVSTASH_BLEND_SERVICE_STORE_H_

#include <memory>
#include <string>

#include "kvstash/blend/chunk_store.h"
#include "kvstash/client/kv_client.h"
#include "kvstash/common/key.h"

namespace kvstash::blend {

struct ServiceStoreOptions {
  std::string name_space = "blend";
  uint32_t max_variants = 5;  // variant slots Lookup probes
  bool durable = false;       // Put waits for the SSD copy
};

std::unique_ptr<ChunkKvStore> NewServiceChunkStore(client::KvClient* client,
                                                   const Hash128& model_fingerprint,
                                                   const ServiceStoreOptions& options = {});

}  // namespace kvstash::blend

#endif  // KVSTASH_BLEND_SERVICE_STORE_H_
