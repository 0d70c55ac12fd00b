// Handoffs of a prefill node: objects pinned for a decode node until it has pulled them.
//
// Offer pins each present object (ObjectStore::Pin, so neither eviction nor the capacity policy
// drops it) under one handoff id with a deadline. Extend (the decode side's heartbeat while its
// request waits) moves the deadline; Release, or the deadline passing, unpins them. Ids are
// random 64-bit values, so a stale or guessed id finds nothing (NotFound).
//
// Each handoff belongs to the tenant that offered it (empty: single-tenant mode or a peer). A
// call naming a tenant (`tenant` non-empty) on another tenant's handoff is PermissionDenied and
// changes nothing; an empty `tenant` (single-tenant callers, peers without a tenant) may act on
// any handoff. The id alone is therefore not enough to end or extend another tenant's handoff.
//
// Threading: thread-safe; a background thread unpins expired handoffs.
#ifndef KVSTASH_CACHESVC_HANDOFFS_H_
#define KVSTASH_CACHESVC_HANDOFFS_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "kvstash/common/key.h"
#include "kvstash/common/metrics.h"
#include "kvstash/common/mutex.h"
#include "kvstash/proto/convert.h"
#include "kvstash/storage/object_store.h"

namespace kvstash::cachesvc {

class HandoffRegistry {
 public:
  using Clock = std::chrono::steady_clock;

  struct Offered {
    uint64_t id = 0;
    std::vector<Status> results;          // per name: OK (pinned), NotFound, ...
    std::vector<size_t> pinned;           // indices of the names pinned, in order
    std::vector<uint64_t> payload_bytes;  // per pinned name
    uint64_t expires_in_ms = 0;
  };

  // `store` and `metrics` must outlive the registry. `default_ms` / `max_ms` bound lifetimes.
  HandoffRegistry(storage::ObjectStore* store, MetricsRegistry* metrics, uint32_t default_ms,
                  uint32_t max_ms);
  ~HandoffRegistry();  // unpins whatever is still offered
  HandoffRegistry(const HandoffRegistry&) = delete;
  HandoffRegistry& operator=(const HandoffRegistry&) = delete;

  // ResourceExhausted when nothing of `names` is present (no handoff is created then).
  Result<Offered> Offer(const std::vector<ObjectName>& names, uint32_t handoff_ms,
                        const std::string& tenant = "");
  // The new lifetime in ms. NotFound for an unknown or expired id; PermissionDenied (see above).
  Result<uint64_t> Extend(uint64_t id, uint32_t handoff_ms, const std::string& tenant = "");
  // NotFound for an unknown or expired id; PermissionDenied (see above).
  Status Release(uint64_t id, const std::string& tenant = "");
  // What Release would answer, without releasing.
  Status Check(uint64_t id, const std::string& tenant) const;

  size_t active() const;

 private:
  struct Handoff {
    std::vector<Hash128> keys;  // pinned
    Clock::time_point deadline;
    std::string tenant;  // who offered it; empty: anyone may act on it
  };
  static Status CheckOwner(const Handoff& h, const std::string& tenant);
  uint32_t Clamp(uint32_t ms) const;
  void Unpin(const Handoff& h);
  void ReaperLoop();

  storage::ObjectStore* store_;
  const uint32_t default_ms_, max_ms_;
  Gauge* active_gauge_;
  Counter* expired_;
  Counter* offered_;
  mutable Mutex mu_;
  CondVar cv_;
  std::map<uint64_t, Handoff> handoffs_ ABSL_GUARDED_BY(mu_);
  std::mt19937_64 ids_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread reaper_;
};

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_HANDOFFS_H_
