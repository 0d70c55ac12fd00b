// EvictionPolicy: chooses which object a tier gives up when it needs room.
//
// The store keeps one policy per tier and feeds it only objects that are evictable right now:
// an object enters with OnInsert when it becomes evictable (committed, resident, not pinned, not
// leased, not being written or read) and leaves with OnRemove when it stops being evictable or
// leaves the tier. So a policy never has to know about pins, leases or reservations: everything
// it holds may be evicted, and Victim() is an O(1)/O(log n) question for the policies here.
//
// A policy ranks objects by the metadata the store passes in (size, hits, last access and an
// opaque per-object `value` score that a cost-aware policy may use, e.g. the recompute cost the
// service attaches). Keys are the 128-bit storage keys; each key is held at most once.
//
// Threading: not thread-safe; the store serialises every call under its own mutex.
#ifndef KVSTASH_STORAGE_EVICTION_POLICY_H_
#define KVSTASH_STORAGE_EVICTION_POLICY_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "kvstash/common/key.h"
#include "kvstash/common/status.h"

namespace kvstash::storage {

struct EvictionMeta {
  Hash128 key;
  uint64_t bytes = 0;           // bytes the object occupies in this tier
  uint64_t hits = 0;            // reads served since it was committed (all tiers)
  uint64_t last_access_ns = 0;  // nanoseconds since the Unix epoch of the last commit or read
  uint32_t num_tokens = 0;      // tokens the object covers (from its layout)
  double value = 0.0;           // opaque score set by the service; 0 when unknown
};

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;

  virtual std::string_view name() const = 0;

  // `meta.key` becomes evictable. Inserting a key already held updates it (as OnAccess).
  virtual void OnInsert(const EvictionMeta& meta) = 0;
  // The object was read (or its metadata changed) while evictable. Unknown keys are ignored.
  virtual void OnAccess(const EvictionMeta& meta) = 0;
  // `key` is no longer evictable or no longer in the tier. Unknown keys are ignored.
  virtual void OnRemove(const Hash128& key) = 0;

  // The object the policy would evict next, without removing it (the store calls OnRemove once it
  // has actually evicted it, or when it finds the object no longer evictable). nullopt if empty.
  virtual std::optional<Hash128> Victim() = 0;

  virtual size_t size() const = 0;
};

// Least recently used: Victim() is the object with the oldest last_access_ns (ties by key).
std::unique_ptr<EvictionPolicy> NewLruPolicy();

// Cost-aware (Greedy-Dual-Size-Frequency): priority = L + saved * (hits + 1) / bytes, where
// `saved` is meta.value (the compute a hit saves, e.g. prefill FLOPs x (1 - CFO) of a chunk
// variant) or, when value is 0, num_tokens (compute grows with the tokens a hit skips), and L is
// the priority of the last object evicted (aging: objects nobody reads fall behind new ones).
// Victim() is the lowest priority; ties go to the older last access, then the smaller key.
// Removing the key Victim() last returned counts as its eviction and advances L.
std::unique_ptr<EvictionPolicy> NewCostAwarePolicy();

// Policy by name: "lru" or "cost". InvalidArgument for an unknown name.
Result<std::unique_ptr<EvictionPolicy>> MakeEvictionPolicy(std::string_view name);

}  // namespace kvstash::storage

#endif  // KVSTASH_STORAGE_EVICTION_POLICY_H_
