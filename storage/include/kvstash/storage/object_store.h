// ObjectStore: the tiered store behind cachesvc (CPU shared-memory arena -> SSD).
//
// Objects are immutable byte strings (a KV chunk, raw or encoded) named by a 128-bit storage key
// and described by an ObjectInfo. Writers use two phases: Reserve space in the arena, write the
// payload there (through the shared mapping or by copying), then Commit (the object becomes
// visible atomically) or Abort. Readers Acquire a lease that pins the bytes in the arena until
// Release or expiry, so eviction never frees bytes under a reader. An object found only on SSD is
// promoted into the arena by Acquire.
//
// Checksums of new objects: a non-durable Commit returns without reading the payload. The store
// checks the arena bytes against the committed crc32c afterwards: a background checker does it
// right away (StoreOptions::background_commit_checks), and the first Acquire or SSD write checks
// (or waits for the checker) if it has not happened yet. So no reader and no SSD copy ever sees
// bytes that fail their crc32c. Such an object is removed as if evicted (Lookup stops reporting
// it, Acquire answers NotFound) and counted in checksum_failures. Until checked, an object may be
// evicted like any other. A durable Commit checks before it returns, and so does CommitChecked's
// caller, who checked while writing.
//
// Durability: committed objects are written through to SSD asynchronously by a pool of writers
// (never a single writer thread). Commit(durable=true) returns only once the SSD copy and its index
// entry are synced. After a crash, exactly the objects whose SSD write completed are visible, each
// verified by crc32c before it is served; a checksum failure is a miss plus a counter, never bytes.
//
// Threading: every method is thread-safe. Background threads reclaim expired reservations and
// leases, evict by watermark and write to SSD; Close() (or the destructor) stops them after
// finishing queued SSD writes.
//
// Arenas: objects live in their namespace's arena (StoreOptions::tenant_arenas, AddTenantArena)
// or the shared one; offsets are global across all of them (arena_segment says which range is
// whose).
//
// Errors (kvstash::Status codes, see common/status.h):
//   Reserve:  InvalidArgument (bad info), AlreadyExists (committed and !overwrite),
//             ResourceExhausted (object larger than its arena, or nothing there evictable)
//   Commit:   NotFound (unknown reservation), FailedPrecondition (expired, already committed or
//             aborted). durable=true only: InvalidArgument on a checksum mismatch (the reservation
//             is aborted; a non-durable mismatch is found after Commit, see above);
//             FailedPrecondition when the SSD tier is disabled (the reservation is
//             left open); ResourceExhausted when the SSD copy could not be written (tier full,
//             ENOSPC) -- the object is still committed in the CPU tier, just not durable.
//   Acquire:  NotFound (absent or unreadable), ResourceExhausted (no room to promote)
//   Release:  NotFound (unknown or expired lease)
//   Pin/Unpin/Delete: NotFound for an unknown key; Unpin: FailedPrecondition if not pinned
//   any:      Unavailable after Close()
//
// Per-tier encoding (docs/storage.md): with StoreOptions::ssd_codec set, the SSD writers encode
// each object the codec accepts before writing it. While the exact copy is in the arena readers
// get it; once only the encoded copy is left, Lookup/List/Acquire report the decoded object's
// ObjectInfo (its crc32c, lossy = true for a lossy codec) and Acquire decodes into the arena, after
// which the arena copy is the decoded one.
//
// Details fixed by the implementation (docs/storage.md): lease_ms / reservation lease 0 means the
// default and is capped at max_lease_ms; a commit of a key that another writer committed
// meanwhile replaces it (last commit wins); List orders by Hash128::operator< and its page token
// is the hex storage key of the last object returned; Reserve blocks (bounded) while arena bytes
// are being demoted to SSD.
#ifndef KVSTASH_STORAGE_OBJECT_STORE_H_
#define KVSTASH_STORAGE_OBJECT_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvstash/common/key.h"
#include "kvstash/common/layout.h"
#include "kvstash/common/metrics.h"
#include "kvstash/common/status.h"
#include "kvstash/common/tier.h"
#include "kvstash/storage/tier_codec.h"

namespace kvstash::storage {

// Tier and TierName: kvstash/common/tier.h.
using ::kvstash::Tier;

// The parts of an object's name the store keeps for listing and tenant filtering.
struct StoredName {
  Hash128 storage_key;  // ObjectKey(name_space, model_fingerprint, token_hash)
  std::string name_space;
  Hash128 model_fingerprint;
  Hash128 token_hash;
};

// A tenant's own part of the CPU tier (StoreOptions::tenant_arenas).
struct TenantArenaOptions {
  std::string name_space;  // the objects of this namespace, and only they, live in it
  uint64_t bytes = 0;      // rounded down to 4 KiB pages; at least one page
};

struct StoreOptions {
  std::string data_dir = "./data";  // SSD tier lives in data_dir/ssd
  // The shared arena: objects of every namespace without an arena of its own.
  uint64_t cpu_capacity_bytes = 1ull << 30;
  // One arena per entry, each its own memfd (its own fds to hand to that tenant's clients), with
  // its own allocator, watermarks and eviction policy: the objects of `name_space` are reserved,
  // promoted from SSD and evicted only there, so a tenant's puts never evict another namespace's
  // objects and a full tenant arena is ResourceExhausted once nothing in it is evictable. The
  // CPU tier's capacity is cpu_capacity_bytes plus these. Namespaces must be distinct.
  std::vector<TenantArenaOptions> tenant_arenas;
  // Address space reserved after those arenas for tenant arenas added while the store runs
  // (AddTenantArena). Costs no memory: an added arena's pages are allocated when written (or at
  // once with prefault_arena). 0: nothing can be added.
  uint64_t tenant_arena_reserve_bytes = 0;
  // Allocate every arena page at Open (MAP_POPULATE) instead of on first touch. Costs the whole
  // capacity in RAM up front; saves a page fault per 4 KiB on the first pass over the arena
  // (which halves write throughput of large objects until the arena has been used once).
  bool prefault_arena = false;
  uint64_t ssd_capacity_bytes = 8ull << 30;  // 0 disables the SSD tier
  double high_watermark = 0.90;              // evict from a tier above this fill ...
  double low_watermark = 0.80;               // ... down to this fill
  uint32_t default_reservation_ms = 30'000;
  uint32_t default_lease_ms = 30'000;
  uint32_t max_lease_ms = 600'000;
  uint32_t ssd_admission_hits = 0;  // 0: write every committed object through to SSD;
                                    // N: only once it has been read N times
  int ssd_io_threads = 4;           // parallel SSD writers/readers
  // Check committed shared-memory payloads in a background thread right after Commit (see
  // "Checksums of new objects"). Off: only the first Acquire or SSD write checks, which keeps
  // arena accounting synchronous (tests) but puts the check on the first reader's path.
  bool background_commit_checks = true;
  std::string cpu_eviction_policy = "lru";  // see eviction_policy.h
  std::string ssd_eviction_policy = "lru";
  // Encoding of the SSD tier (tier_codec.h). Null: objects are written as they are, and SSD
  // copies written encoded by an earlier run cannot be read (they are dropped as unreadable).
  // Not owned; must outlive the store. (A remote tier would take its own codec the same way.)
  TierCodec* ssd_codec = nullptr;
  MetricsRegistry* metrics = nullptr;  // optional; not owned; must outlive the store
  // Called after every successful Commit / CommitChecked with the committed object's name, on
  // the committing thread, holding no shard or reservation lock (the cluster forwards objects to
  // their other owners). Its status becomes the commit's: an error is returned to the caller,
  // but the object stays committed here (the cluster's synchronous replication reports so that
  // too few owners hold it). It may block for a bounded time (the synchronous replication waits
  // for other nodes, which read the object through this store) but must not commit, abort or
  // close through this store itself.
  std::function<Status(const StoredName&)> on_commit;
};

// One arena of the CPU tier (ObjectStore::arena_segment). Its bytes are arena offsets
// [offset, offset + bytes) of arena_base(); a client that maps `fd` (or `read_only_fd`) sees
// arena offset o at its mapping + (o - offset).
struct ArenaSegment {
  // 0: the shared arena; i > 0: StoreOptions::tenant_arenas[i - 1], then the arenas
  // AddTenantArena added, in order.
  uint32_t index = 0;
  std::string name_space;  // empty for the shared arena
  int fd = -1;             // read-write memfd; owned by the store (send a dup)
  // The same memory opened O_RDONLY: a mapping of it can never be made writable. Owned by the
  // store. Both fds are sealed against resizing.
  int read_only_fd = -1;
  uint64_t offset = 0;
  uint64_t bytes = 0;
};

struct Reservation {
  uint64_t id = 0;
  uint64_t arena_offset = 0;
  uint64_t expires_in_ms = 0;
  // Where the payload is to be written: the arena (kCpu, at arena_offset), or for ReserveInTier
  // of a lower tier (kGpu) that tier's memory at tier_offset (the GPU pool: GpuPoolRegion's
  // device_base + tier_offset); arena_offset is then 0 and means nothing.
  Tier tier = Tier::kCpu;
  uint64_t tier_offset = 0;
};

struct Lease {
  uint64_t id = 0;
  uint64_t arena_offset = 0;
  ObjectInfo info;
  Tier served_from = Tier::kCpu;
  uint64_t expires_in_ms = 0;
};

struct LookupEntry {
  bool present = false;
  Tier tier = Tier::kCpu;  // fastest tier holding it
  ObjectInfo info;
};

struct ListedObject {
  StoredName name;
  ObjectInfo info;
  Tier tier = Tier::kCpu;
  bool pinned = false;
  uint64_t hits = 0;
};

struct ListPage {
  std::vector<ListedObject> objects;
  std::string next_page_token;  // empty at the end
};

struct TierStats {
  Tier tier = Tier::kCpu;
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;
  uint64_t objects = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t evictions = 0;
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  // Payload bytes readers get back from the tier's objects. used_bytes is what the tier occupies
  // (for SSD: files, so headers and encoding included); logical / used is the compression ratio.
  uint64_t logical_bytes = 0;
};

// Payload bytes one namespace has in each tier (tenant quotas): an object counts in the CPU tier
// while its bytes occupy the arena, and in the SSD tier (its stored, possibly encoded, size)
// while its copy there is written.
struct NamespaceUsage {
  uint64_t cpu_bytes = 0;
  uint64_t ssd_bytes = 0;
};

struct StoreStats {
  std::vector<TierStats> tiers;
  uint64_t checksum_failures = 0;
  uint64_t reservations_active = 0;
  uint64_t reservations_expired = 0;
  uint64_t leases_active = 0;
  uint64_t pinned_objects = 0;
};

class ObjectStore {
 public:
  // Creates data_dir if needed, opens (and recovers) the SSD tier, creates the arena.
  static Result<std::unique_ptr<ObjectStore>> Open(const StoreOptions& options);

  virtual ~ObjectStore() = default;
  ObjectStore(const ObjectStore&) = delete;
  ObjectStore& operator=(const ObjectStore&) = delete;

  // The shared arena's memfd (segment 0). The fd stays owned by the store; clients receive a dup.
  virtual int arena_fd() const = 0;
  // Every arena, contiguous from arena_base(): arena offsets index this whole range.
  virtual uint8_t* arena_base() const = 0;
  virtual uint64_t arena_bytes() const = 0;
  // The arena that holds `name_space`'s objects: its own when StoreOptions::tenant_arenas names
  // it, else the shared one (index 0).
  virtual ArenaSegment arena_segment(const std::string& name_space) const = 0;
  // Changes whenever the arena is recreated (each Open); clients must re-attach on mismatch.
  virtual uint64_t arena_generation() const = 0;
  // The address range reserved for arenas from arena_base(): arena_bytes() (every arena mapped
  // now) plus what is left of StoreOptions::tenant_arena_reserve_bytes. Fixed after Open, so a
  // registration of this whole range (UCX) covers every arena AddTenantArena adds later.
  virtual uint64_t arena_reserved_bytes() const = 0;
  // Adds an arena for `arena.name_space` in the reserved range, after the last one, made as
  // those of StoreOptions::tenant_arenas (its own sealed memfd, read-only fd, allocator,
  // watermarks and eviction policy), while every other call goes on: from its return the
  // namespace's reservations and promotions land in it and arena_segment() names it. Objects the
  // namespace already has in the shared arena stay there (until evicted or deleted). Errors:
  // InvalidArgument (empty namespace, less than a page), AlreadyExists (the namespace has an
  // arena), ResourceExhausted (not enough of the reserve left, or too many arenas added),
  // Internal (memfd or mmap failed), Unavailable after Close.
  virtual Result<ArenaSegment> AddTenantArena(const TenantArenaOptions& arena) = 0;

  virtual LookupEntry Lookup(const Hash128& storage_key) = 0;

  virtual Result<Reservation> Reserve(const StoredName& name, const ObjectInfo& info,
                                      uint32_t lease_ms, bool overwrite) = 0;
  virtual Status Commit(uint64_t reservation_id, uint32_t payload_crc32c, bool durable) = 0;
  // Commit for a payload the caller copied into the arena itself and checked against
  // payload_crc32c while copying (the service's gRPC stream path): the store does not read it
  // again. Errors as Commit.
  virtual Status CommitChecked(uint64_t reservation_id, uint32_t payload_crc32c, bool durable) = 0;
  virtual Status Abort(uint64_t reservation_id) = 0;

  // Reserve for a transfer that lands straight in `tier` (a peer fetch or handoff that asks for
  // the GPU tier): kCpu is Reserve itself; kGpu reserves an extent of the GPU pool (evicting from
  // the pool as its watermarks say) that the caller fills, e.g. with UCX reads into CUDA memory.
  // The reservation has the same id space, lease (expiry) and ownership rules as an arena one and
  // ends the same way: Commit and CommitChecked always read the landed bytes back and check their
  // crc32c (a mismatch aborts it: InvalidArgument), then the object is committed with its only
  // copy in that tier (Lookup reports it there, Acquire promotes it into the arena, eviction
  // drops it); durable=true is FailedPrecondition (the pool is volatile; the reservation stays
  // open). Abort and expiry free the extent. Errors: FailedPrecondition when the store has no
  // such tier (no GPU pool configured), InvalidArgument for a tier nothing can land in (kSsd,
  // kRemote, kProcess), ResourceExhausted when the tier cannot make room, and Reserve's.
  virtual Result<Reservation> ReserveInTier(Tier tier, const StoredName& name,
                                            const ObjectInfo& info, uint32_t lease_ms,
                                            bool overwrite) = 0;

  virtual Result<Lease> Acquire(const Hash128& storage_key, uint32_t lease_ms) = 0;
  // Acquire for a reader that maps only the arena of the object's namespace (a tenant's client on
  // a multi-tenant node). As Acquire, and when the namespace has an arena of its own but the
  // object's bytes are in another one (put or fetched before AddTenantArena gave the namespace
  // its arena), first moves them there: reserves in the namespace's arena (evicting only its
  // objects, as a promotion does), copies, checks the copy against the object's crc32c, makes it
  // the object's bytes (pins, hits and lower-tier copies go with it) and frees the old bytes once
  // the last lease on them ends (leases already handed out stay valid). The lease is then on the
  // new copy. Counted in kvstash_storage_arena_migrations_total{outcome}. Errors: Acquire's, and
  // FailedPrecondition when the object cannot be moved (no room in the namespace's arena, nothing
  // there evictable, or the copy failed its check): nothing changed, no lease held, and Acquire
  // (or a stream read of it) still serves the bytes where they are.
  virtual Result<Lease> AcquireInOwnArena(const Hash128& storage_key, uint32_t lease_ms) = 0;
  virtual Status Release(uint64_t lease_id) = 0;

  // Removes from every tier; bytes under a lease are freed when the last lease ends.
  virtual Status Delete(const Hash128& storage_key) = 0;
  // A pinned object is never evicted from the tier it is in (pins count; Unpin undoes one Pin).
  virtual Status Pin(const Hash128& storage_key) = 0;
  virtual Status Unpin(const Hash128& storage_key) = 0;

  // Objects of `name_space` (all namespaces when `all_namespaces`), in storage-key order.
  virtual Result<ListPage> List(const std::string& name_space, bool all_namespaces, uint32_t limit,
                                const std::string& page_token) = 0;

  virtual StoreStats Stats() = 0;
  // What `name_space` occupies now. Thread-safe; a snapshot that concurrent puts, evictions and
  // deletes change right after.
  virtual NamespaceUsage Usage(const std::string& name_space) = 0;

  // Waits until every committed object queued for SSD is written and synced.
  virtual Status Flush() = 0;
  // Stops accepting work, flushes, stops background threads. Idempotent.
  virtual Status Close() = 0;

 protected:
  ObjectStore() = default;
};

}  // namespace kvstash::storage

#endif  // KVSTASH_STORAGE_OBJECT_STORE_H_
