// TieredStore: the ObjectStore implementation (CPU arena + an ordered list of lower tiers; today
// the optional SSD tier is the only one).
//
// State lives in ObjectRec, one per committed object version, shared by the index (while the
// version is visible), by leases and by queued SSD writes. Every mutable field of a rec is
// guarded by the mutex of the index shard its storage key hashes to.
//
// Lock order (never acquire leftwards while holding rightwards):
//   close_mu_ (shared) -> shard.mu -> {arena_mu_, cpu_policy_mu_, LowerTier::policy_mu,
//   lease_mu_, res_mu_, write_mu_, check_mu_}
//   close_mu_ (shared) -> zone_add_mu_ -> {arena_mu_, cpu_policy_mu_} (AddTenantArena)
// The policy, arena, lease, reservation and write-queue mutexes are leaves. Slow work (crc32c,
// SSD I/O, synced index writes) runs with no lock held.
//
// Eviction policies hold exactly the evictable objects of their tier; UpdatePoliciesLocked()
// keeps that true after every state change, so a victim is evictable unless its state changed
// between the policy lookup and taking its shard lock, which is re-checked.
#ifndef KVSTASH_STORAGE_TIERED_STORE_H_
#define KVSTASH_STORAGE_TIERED_STORE_H_

#include <array>
#include <atomic>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "arena.h"
#include "kvstash/common/mutex.h"
#include "kvstash/storage/eviction_policy.h"
#include "kvstash/storage/object_store.h"
#include "kvstash/storage/storage_tier.h"
#include "page_allocator.h"
#include "store_metrics.h"

namespace kvstash::storage {

// Nanoseconds since the Unix epoch (last-access times, persisted across restarts).
uint64_t WallNs();

// At most this many lower tiers (ObjectRec keeps one LowerCopy per tier, inline).
inline constexpr size_t kMaxLowerTiers = 2;

// One object's copy in one lower tier (ObjectRec::lower[i] is its copy in TieredStore::lower_[i]).
enum class CopyState : uint8_t {
  kNone,     // no copy
  kPending,  // queued or being written; the writer owns the outcome
  kStored,   // written and its record put (StorageTier::PutRecord)
};

struct LowerCopy {
  CopyState state = CopyState::kNone;
  bool failed = false;     // a write was tried and failed; not retried on eviction
  bool in_policy = false;  // in the tier's eviction policy (exactly when evictable)
  bool moving = false;     // being moved down to the next tier (out of the policy meanwhile)
  uint64_t seq = 0;        // the version on the tier (valid when kStored)
  // The stored payload's info, what decoding it yields, and whether it is a TierCodec encoding
  // (else the payload verbatim); valid when kStored.
  ObjectInfo info;
  ObjectInfo served;
  bool encoded = false;
};

struct Promotion;

// One lower tier and the store's state for it. TieredStore::lower_ holds them in order: the CPU
// arena writes down (write-through, demotion) into lower_[0]; a copy evicted from lower_[i]
// moves down into lower_[i + 1] when there is one (else it is dropped); a read of an object not
// in the arena promotes it from the first tier, in that order, that holds a stored copy;
// recovery, eviction (each tier has its own policy and watermarks over its own capacity), flush,
// close and stats run per tier. The SSD tier of StoreOptions is lower_[0]; further tiers come
// from TieredStore::Create's `more_lower`.
struct LowerTier {
  size_t index = 0;  // position in TieredStore::lower_ and in ObjectRec::lower
  std::unique_ptr<StorageTier> tier;
  TierMetrics own_metrics{};       // tiers after the SSD tier: labelled "<tier name>_<index>"
  TierMetrics* metrics = nullptr;  // &metrics_.ssd for the SSD tier, else &own_metrics
  // Holds exactly the objects whose copy here is evictable (LowerCopy::in_policy). A leaf lock.
  Mutex policy_mu;
  std::unique_ptr<EvictionPolicy> policy ABSL_PT_GUARDED_BY(policy_mu);
};

// Whether an object's arena bytes match its crc32c (ObjectRec::arena_check).
enum class ArenaCheck : uint8_t {
  kPassed,   // checked, or written by the store itself (promotion, a checked commit)
  kPending,  // committed over shared memory; the checker or the first reader checks it
  kFailed,   // the bytes do not match: the rec is hidden and never served
};

struct ObjectRec {
  ObjectRec(StoredName n, ObjectInfo i);

  const StoredName name;
  // What readers get. Guarded by the shard mutex; only payload_crc32c and lossy ever change (when
  // the exact arena copy is dropped and the only copy left is an encoded SSD one), and never
  // while the rec holds a lease, so a lease holder may read it without the lock.
  ObjectInfo info;
  const uint64_t extent_bytes;  // arena bytes while resident (payload rounded up to pages)

  // Guarded by the shard mutex.
  std::array<LowerCopy, kMaxLowerTiers> lower;  // the copy in each lower tier, in tier order
  bool visible = true;                          // reachable through the index
  bool in_cpu = false;
  uint64_t arena_offset = 0;
  bool in_cpu_policy = false;
  uint32_t cpu_policy_zone = 0;  // the zone whose policy holds it, while in_cpu_policy
  uint32_t pins = 0;
  uint32_t leases = 0;
  uint32_t io_refs = 0;  // SSD writes and the checker reading the arena bytes
  uint64_t hits = 0;
  uint64_t last_access_ns = 0;
  double value = 0.0;
  std::shared_ptr<Promotion> promotion;  // SSD -> arena read in flight

  // Set at Commit, then changed only once, inside arena_check_once (CheckArenaBytes); readable
  // without the shard lock.
  std::atomic<ArenaCheck> arena_check{ArenaCheck::kPassed};
  std::once_flag arena_check_once;
};

// Single flight of one promotion: later readers of the same object wait for the first.
struct Promotion {
  Mutex mu;
  CondVar cv;
  bool done ABSL_GUARDED_BY(mu) = false;
};

class TieredStore final : public ObjectStore {
 public:
  static Result<std::unique_ptr<ObjectStore>> Create(const StoreOptions& options);
  // The same with more lower tiers after the SSD tier of `options` (or as the only ones when
  // options.ssd_capacity_bytes is 0), in order; at most kMaxLowerTiers in all (InvalidArgument).
  // The store owns them and calls their Recover. StoreOptions has no field for them yet.
  static Result<std::unique_ptr<ObjectStore>> Create(
      const StoreOptions& options, std::vector<std::unique_ptr<StorageTier>> more_lower);
  ~TieredStore() override;

  int arena_fd() const override { return arena_->fd(); }
  uint8_t* arena_base() const override { return arena_->base(); }
  uint64_t arena_bytes() const override { return arena_->bytes(); }
  uint64_t arena_generation() const override { return arena_->generation(); }
  uint64_t arena_reserved_bytes() const override { return arena_->reserved_bytes(); }
  ArenaSegment arena_segment(const std::string& name_space) const override;
  Result<ArenaSegment> AddTenantArena(const TenantArenaOptions& arena) override;

  LookupEntry Lookup(const Hash128& storage_key) override;
  Result<Reservation> Reserve(const StoredName& name, const ObjectInfo& info, uint32_t lease_ms,
                              bool overwrite) override;
  Status Commit(uint64_t reservation_id, uint32_t payload_crc32c, bool durable) override;
  Status CommitChecked(uint64_t reservation_id, uint32_t payload_crc32c, bool durable) override;
  Status Abort(uint64_t reservation_id) override;
  Result<Reservation> ReserveInTier(Tier tier, const StoredName& name, const ObjectInfo& info,
                                    uint32_t lease_ms, bool overwrite) override;
  Result<Lease> Acquire(const Hash128& storage_key, uint32_t lease_ms) override;
  Result<Lease> AcquireInOwnArena(const Hash128& storage_key, uint32_t lease_ms) override;
  Status Release(uint64_t lease_id) override;
  Status Delete(const Hash128& storage_key) override;
  Status Pin(const Hash128& storage_key) override;
  Status Unpin(const Hash128& storage_key) override;
  Result<ListPage> List(const std::string& name_space, bool all_namespaces, uint32_t limit,
                        const std::string& page_token) override;
  StoreStats Stats() override;
  NamespaceUsage Usage(const std::string& name_space) override;
  Status Flush() override;
  Status Close() override;

 private:
  static constexpr size_t kShards = 64;
  struct Shard {
    Mutex mu;
    std::map<Hash128, std::shared_ptr<ObjectRec>> objects ABSL_GUARDED_BY(mu);
  };
  struct ReservationRec {
    StoredName name;
    ObjectInfo info;
    PageAllocator::Extent extent;  // in the arena, unless `lower` says otherwise
    uint64_t deadline_ns = 0;
    bool committing = false;
    // ReserveInTier: the lower tier (index into lower_) whose landing at `tier_offset` holds
    // the payload instead of an arena extent; -1 for an arena reservation.
    int lower = -1;
    uint64_t tier_offset = 0;
  };
  enum class Ended : uint8_t { kCommitted, kAborted, kExpired };
  struct LeaseRec {
    std::shared_ptr<ObjectRec> rec;
    uint64_t deadline_ns = 0;
  };
  struct WriteJob {
    std::shared_ptr<ObjectRec> rec;
    std::shared_ptr<std::promise<Status>> done;  // set for durable commits
  };
  // Work found under a shard lock that must run after it is released.
  struct Deferred {
    std::vector<WriteJob> writes;
    struct LowerRemoval {
      LowerTier* tier;
      std::shared_ptr<ObjectRec> rec;
      uint64_t seq;
      uint64_t stored_bytes;  // payload bytes of the stored copy
    };
    std::vector<LowerRemoval> lower_removals;
  };

  explicit TieredStore(const StoreOptions& options);
  Status Init(std::vector<std::unique_ptr<StorageTier>> more_lower);

  Shard& ShardFor(const Hash128& key) { return shards_[Hash128Hasher{}(key) % kShards]; }
  Status CheckOpen() const;
  // What Reserve and ReserveInTier refuse before reserving anything: an invalid `info`, a
  // namespace over kMaxNamespaceBytes (1024), and (unless `overwrite`) a key already committed.
  // Takes the key's shard lock for the last.
  Status CheckReservable(const StoredName& name, const ObjectInfo& info, bool overwrite);
  uint32_t ClampMs(uint32_t ms, uint32_t fallback) const;
  bool Admitted(const ObjectRec& rec) const;

  // --- under the rec's shard lock ---
  // `shard` is the rec's (ShardFor(rec.name.storage_key)): the analysis checks that a shard lock
  // is held; debug builds assert that it is the rec's.
  void UpdatePoliciesLocked(Shard& shard, ObjectRec& rec) ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);
  EvictionMeta MetaFor(const ObjectRec& rec, uint64_t bytes) const;
  // Takes `rec` by value: callers often pass the index's own shared_ptr, which this erases.
  void HideLocked(Shard& shard, std::shared_ptr<ObjectRec> rec, Deferred& later)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);
  void MaybeFreeArenaLocked(Shard& shard, ObjectRec& rec) ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);
  // Whether rec's arena bytes should be written down (no lower copy, stored or on its way).
  bool NeedsWriteDownLocked(const ObjectRec& rec) const;
  void QueueWriteLocked(Shard& shard, const std::shared_ptr<ObjectRec>& rec, Deferred& later,
                        std::shared_ptr<std::promise<Status>> done = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);
  void PersistPinsLocked(Shard& shard, const ObjectRec& rec)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);
  void ReleaseLeaseRef(const std::shared_ptr<ObjectRec>& rec);
  void RunDeferred(Deferred& later);

  // --- arena ---
  struct Zone;
  // Makes the zone of arena segment `seg` (tiered_store_arenas.cc): its gauges, and appends its
  // eviction policy and allocator (so the zone's index is the count of zones before it).
  Result<Zone> MakeZone(const std::string& name_space, const Arena::Segment& seg);
  // Arena segment (zone) of a namespace's objects: its own, else 0 (the shared arena).
  size_t ZoneFor(const std::string& name_space) const;
  // The zone holding global arena offset `offset`.
  size_t ZoneOfOffset(uint64_t offset) const;
  uint64_t ArenaUsedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(arena_mu_);
  void SetArenaUsedLocked(size_t zone) ABSL_EXCLUSIVE_LOCKS_REQUIRED(arena_mu_);
  bool ZoneAboveHighLocked(size_t zone) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(arena_mu_);
  void FreeExtent(uint64_t offset);
  void SignalArena();  // wakes allocations waiting for evictable bytes
  // Allocates in `zone`, evicting that zone's objects (and waiting for in-flight SSD demotions)
  // as needed. The extent's offset is global (arena_base() + offset).
  Result<PageAllocator::Extent> AllocateArena(uint64_t bytes, size_t zone);
  // One step of CPU eviction: frees the policy's next victim, or starts demoting it to SSD first
  // (its bytes are freed once the write lands and it is picked again).
  struct EvictStep {
    bool found = false;           // the policy had a victim
    uint64_t freed_bytes = 0;     // arena bytes freed now
    uint64_t demoting_bytes = 0;  // arena bytes that a queued demotion will make evictable
  };
  EvictStep EvictOneCpu(size_t zone);
  bool ZoneAboveHigh(size_t zone);

  // --- lower tiers (tiered_store_ssd.cc) ---
  // The first lower tier (write-through and demotion go there); null when there is none.
  LowerTier* first_lower() const { return lower_.empty() ? nullptr : lower_.front().get(); }
  // Index of the first lower tier holding a stored copy of rec, or -1. Under the shard lock.
  static int FirstStoredLocked(const ObjectRec& rec, size_t tiers);
  // One step of eviction from `lt`: removes its policy's next victim's copy (the object goes
  // when no other copy is left). False when the policy holds nothing.
  bool EvictOneLower(LowerTier& lt);
  // Reserves `bytes` on lt, evicting from it (above its high watermark, down to its low one)
  // as needed; false when nothing more can be evicted and the capacity is reached.
  bool ReserveOnLower(LowerTier& lt, uint64_t bytes);
  // Moves rec's copy `src` (picked for eviction from `from`, marked moving) into `to`, the next
  // tier; the copy leaves `from` whether or not the move succeeds.
  void MoveDown(LowerTier& from, LowerTier& to, const std::shared_ptr<ObjectRec>& rec,
                const LowerCopy& src);
  void WriterLoop();
  // Writes rec's arena bytes into the first lower tier (a queued WriteJob).
  Status WriteDown(const std::shared_ptr<ObjectRec>& rec, bool durable);
  // Reads the copy of the first tier that holds one into a fresh arena extent and leases it.
  // *retry is set when that copy moved down meanwhile (the caller looks the object up again).
  Result<Lease> Promote(const std::shared_ptr<ObjectRec>& rec, uint32_t lease_ms, bool* retry);
  // Reads lt's copy into `dst` (room for served.payload_bytes rounded up to a page),
  // decoding it when it is encoded; DataLoss unless the result matches served's crc32c.
  Status ReadLowerCopy(LowerTier& lt, const Hash128& key, const LowerCopy& copy, uint8_t* dst);
  TierRecord RecordOf(const ObjectRec& rec, size_t tier_index) const;
  // Installs what lt.tier->Recover() returned (tiers are recovered in order).
  void RecoverLower(LowerTier& lt, std::vector<TierRecord> records);

  // --- reservations that land in a lower tier (tiered_store_landing.cc) ---
  // Frees what an ended (aborted, expired, failed) reservation held: its arena extent or its
  // landing.
  void FreeReservationSpace(const ReservationRec& res);
  // Commit of a ReserveInTier reservation (res.lower >= 0), already marked committing: checks
  // the landed bytes' crc32c, adopts them as the object's only copy, ends the reservation.
  Status CommitLanding(uint64_t reservation_id, const ReservationRec& res, uint32_t payload_crc32c,
                       uint64_t start_ns);

  // --- checks of committed bytes (tiered_store_check.cc) ---
  // `checked`: the caller verified the payload itself (CommitChecked).
  Status CommitImpl(uint64_t reservation_id, uint32_t payload_crc32c, bool durable, bool checked);
  // OK once rec's arena bytes match info.payload_crc32c, checking them on the first call (other
  // callers wait for it); DataLoss when they do not. The caller holds a lease or an io_ref, so
  // the bytes stay where they are. `yielding`: give up the CPU between pieces of the pass (the
  // background checker; readers check in one go).
  Status CheckArenaBytes(ObjectRec& rec, bool yielding = false);
  // Hands a rec with a pending check to the background checker.
  void QueueCheck(std::shared_ptr<ObjectRec> rec);
  // Undoes Acquire's lease reference on a rec whose bytes failed the check, hiding the rec.
  void DropFailedLease(const std::shared_ptr<ObjectRec>& rec);
  void CheckerLoop();

  // --- moving objects between arenas (tiered_store_arenas.cc) ---
  // Acquire and Release without taking close_mu_ (the caller holds it shared). *rec_out (when
  // given) is set to the leased rec.
  Result<Lease> AcquireImpl(const Hash128& storage_key, uint32_t lease_ms,
                            std::shared_ptr<ObjectRec>* rec_out);
  Status ReleaseImpl(uint64_t lease_id);
  // Copies leased rec's bytes (lease `held`) into `zone` and replaces rec in the index by a rec
  // of the new copy, leased for lease_ms; releases `held` whatever the outcome. *stale is set
  // when rec changed meanwhile (deleted, replaced, moved by another reader): nothing moved, the
  // caller looks the object up again.
  Result<Lease> MoveToZone(const std::shared_ptr<ObjectRec>& rec, const Lease& held, size_t zone,
                           uint32_t lease_ms, bool* stale);
  enum class MoveOutcome : uint8_t { kMoved, kNoRoom, kCheckFailed, kRaced, kCount };
  // Counts an outcome (kvstash_storage_arena_migrations_total) and logs its first occurrence.
  void NoteMove(MoveOutcome outcome, const ObjectRec& rec, const Status& why);
  std::array<Counter*, static_cast<size_t>(MoveOutcome::kCount)> move_counters_{};
  std::array<std::once_flag, static_cast<size_t>(MoveOutcome::kCount)> move_logged_;

  // --- leases and reservations ---
  Lease RegisterLease(const std::shared_ptr<ObjectRec>& rec, uint32_t lease_ms, Tier from);
  void RememberEnded(uint64_t reservation_id, Ended how) ABSL_EXCLUSIVE_LOCKS_REQUIRED(res_mu_);
  void ReaperLoop();
  void EvictorLoop();
  void StopThreads();

  const StoreOptions options_;
  StoreMetrics metrics_;
  // Per-namespace bytes per tier (Usage). Changed under the rec's shard lock wherever in_cpu or
  // a lower copy's state == kStored changes; usage_mu_ is a leaf.
  Mutex usage_mu_;
  std::unordered_map<std::string, NamespaceUsage> usage_ ABSL_GUARDED_BY(usage_mu_);
  void AddCpuUsage(const ObjectRec& rec, bool add);
  void AddLowerUsage(const ObjectRec& rec, const LowerTier& lt, bool add);
  std::unique_ptr<Arena> arena_;
  // The lower tiers, in order (at most kMaxLowerTiers); fixed after Init, emptied by Close.
  std::vector<std::unique_ptr<LowerTier>> lower_;
  std::atomic<bool> closed_{false};
  mutable std::shared_mutex close_mu_;  // shared by every public call; Close takes it exclusively

  Shard shards_[kShards];

  Mutex arena_mu_;
  CondVar arena_cv_;  // arena bytes freed or a demotion finished
  // Bumped with every arena_cv_ signal.
  uint64_t arena_epoch_ ABSL_GUARDED_BY(arena_mu_) = 0;
  // The arena's segments (zones): zone 0 the shared arena, zone i the tenant arena
  // options_.tenant_arenas[i - 1], then those AddTenantArena added. A zone never changes and is
  // never removed, so a zone index stays valid for the store's life.
  struct Zone {
    std::string name_space;
    uint64_t offset = 0;          // global arena offset of its first byte
    uint64_t capacity_bytes = 0;  // whole pages
    Gauge* used_bytes = nullptr;  // kvstash_storage_arena_used_bytes{arena=...}
  };
  // Readers (every Reserve, eviction, free, policy update) consult the zones without a lock:
  // they read the table zone_table_ points to, which is immutable. AddTenantArena copies it with
  // the new zone appended (after that zone's allocator and policy exist) and publishes the copy
  // with a release store; every table stays alive until the store is destroyed (tables_),
  // so a reader still holding one (or a Zone& into it) is never left dangling.
  struct ZoneTable {
    std::vector<Zone> zones;
    std::unordered_map<std::string, size_t> of_namespace;
  };
  const ZoneTable& Zones() const { return *zone_table_.load(std::memory_order_acquire); }
  std::atomic<const ZoneTable*> zone_table_{nullptr};
  Mutex zone_add_mu_;  // one AddTenantArena at a time; taken before arena_mu_ / cpu_policy_mu_
  std::vector<std::unique_ptr<const ZoneTable>> tables_ ABSL_GUARDED_BY(zone_add_mu_);
  Gauge* arena_spare_bytes_ = nullptr;  // kvstash_storage_arena_spare_bytes
  // One allocator per zone, offsets relative to the zone's start (appended by AddTenantArena).
  std::vector<PageAllocator> allocators_ ABSL_GUARDED_BY(arena_mu_);

  Mutex cpu_policy_mu_;
  // One eviction policy per zone.
  std::vector<std::unique_ptr<EvictionPolicy>> cpu_policies_ ABSL_GUARDED_BY(cpu_policy_mu_);

  Mutex lease_mu_;
  std::atomic<uint64_t> next_lease_id_{1};
  std::unordered_map<uint64_t, LeaseRec> leases_ ABSL_GUARDED_BY(lease_mu_);
  // (deadline, id)
  std::set<std::pair<uint64_t, uint64_t>> lease_deadlines_ ABSL_GUARDED_BY(lease_mu_);

  Mutex res_mu_;
  std::atomic<uint64_t> next_reservation_id_{1};
  std::unordered_map<uint64_t, ReservationRec> reservations_ ABSL_GUARDED_BY(res_mu_);
  // (deadline, id)
  std::set<std::pair<uint64_t, uint64_t>> reservation_deadlines_ ABSL_GUARDED_BY(res_mu_);
  // Bounded: the most recent kEndedMemory ids.
  std::unordered_map<uint64_t, Ended> ended_ ABSL_GUARDED_BY(res_mu_);
  std::deque<uint64_t> ended_order_ ABSL_GUARDED_BY(res_mu_);
  uint64_t reservations_expired_ ABSL_GUARDED_BY(res_mu_) = 0;

  Mutex write_mu_;
  CondVar write_cv_;  // work queued or stopping
  CondVar idle_cv_;   // pending_writes_ reached 0
  std::deque<WriteJob> write_queue_ ABSL_GUARDED_BY(write_mu_);
  uint64_t pending_writes_ ABSL_GUARDED_BY(write_mu_) = 0;  // queued + running
  bool writers_stop_ ABSL_GUARDED_BY(write_mu_) = false;
  std::vector<std::thread> writers_;

  Mutex bg_mu_;
  CondVar bg_cv_;
  bool bg_stop_ ABSL_GUARDED_BY(bg_mu_) = false;
  std::thread reaper_;
  Mutex check_mu_;  // leaf
  CondVar check_cv_;
  std::deque<std::shared_ptr<ObjectRec>> check_queue_ ABSL_GUARDED_BY(check_mu_);
  bool checker_stop_ ABSL_GUARDED_BY(check_mu_) = false;
  std::thread checker_;
  std::thread evictor_;
};

}  // namespace kvstash::storage

#endif  // KVSTASH_STORAGE_TIERED_STORE_H_
