// TieredStore: the arena's zones (one per arena segment: the shared arena, tenants' arenas),
// tenant arenas added while the store runs (AddTenantArena), and objects moved into their
// namespace's arena when a reader that maps only that arena acquires them (AcquireInOwnArena).
#include <algorithm>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "kvstash/common/crc32c.h"
#include "spdlog/spdlog.h"
#include "tiered_store.h"

namespace kvstash::storage {

Result<TieredStore::Zone> TieredStore::MakeZone(const std::string& name_space,
                                                const Arena::Segment& seg) {
  MetricsRegistry* registry = options_.metrics != nullptr ? options_.metrics : metrics_.owned.get();
  Zone zone;
  zone.name_space = name_space;
  zone.offset = seg.offset;
  zone.capacity_bytes = seg.bytes;
  const std::string label = name_space.empty() ? std::string("shared") : "tenant:" + name_space;
  zone.used_bytes =
      registry->GetGauge("kvstash_storage_arena_used_bytes",
                         "Bytes allocated in each arena of the CPU tier (shared, or one tenant's)",
                         {{"arena", label}});
  registry
      ->GetGauge("kvstash_storage_arena_capacity_bytes",
                 "Capacity of each arena of the CPU tier (shared, or one tenant's)",
                 {{"arena", label}})
      ->Set(static_cast<double>(zone.capacity_bytes));
  zone.used_bytes->Set(0);
  KVSTASH_ASSIGN_OR_RETURN(std::unique_ptr<EvictionPolicy> policy,
                           MakeEvictionPolicy(options_.cpu_eviction_policy));
  {
    MutexLock lock(&cpu_policy_mu_);
    cpu_policies_.push_back(std::move(policy));
  }
  {
    MutexLock lock(&arena_mu_);
    allocators_.emplace_back(zone.capacity_bytes);
  }
  return zone;
}

ArenaSegment TieredStore::arena_segment(const std::string& name_space) const {
  const ZoneTable& table = Zones();
  auto it = table.of_namespace.find(name_space);
  const size_t zone = it == table.of_namespace.end() ? 0 : it->second;
  const Arena::Segment& seg = arena_->segment(zone);
  ArenaSegment out;
  out.index = static_cast<uint32_t>(zone);
  out.name_space = table.zones[zone].name_space;
  out.fd = seg.fd;
  out.read_only_fd = seg.read_only_fd;
  out.offset = seg.offset;
  out.bytes = seg.bytes;
  return out;
}

size_t TieredStore::ZoneFor(const std::string& name_space) const {
  const ZoneTable& table = Zones();
  if (table.of_namespace.empty()) return 0;
  auto it = table.of_namespace.find(name_space);
  return it == table.of_namespace.end() ? 0 : it->second;
}

size_t TieredStore::ZoneOfOffset(uint64_t offset) const {
  // Zones are in offset order: the last one starting at or before `offset`.
  const std::vector<Zone>& zones = Zones().zones;
  auto after = std::upper_bound(zones.begin(), zones.end(), offset,
                                [](uint64_t o, const Zone& z) { return o < z.offset; });
  return after == zones.begin() ? 0 : static_cast<size_t>(after - zones.begin()) - 1;
}

Result<ArenaSegment> TieredStore::AddTenantArena(const TenantArenaOptions& arena) {
  std::shared_lock<std::shared_mutex> guard(close_mu_);
  KVSTASH_RETURN_IF_ERROR(CheckOpen());
  if (arena.name_space.empty()) {
    return absl::InvalidArgumentError("a tenant arena needs a namespace");
  }
  if (arena.bytes < PageAllocator::kPageBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("the arena of tenant '", arena.name_space, "' must be at least 4096 bytes"));
  }
  MutexLock lock(&zone_add_mu_);
  const ZoneTable& current = Zones();
  if (current.of_namespace.count(arena.name_space) > 0) {
    return absl::AlreadyExistsError(
        absl::StrCat("tenant '", arena.name_space, "' already has an arena"));
  }
  // Mapped and counted by the arena first, then its allocator and policy, then the table that
  // names it: a reader that finds the zone finds everything it indexes.
  Result<Arena::Segment> seg = arena_->AddSegment(arena.bytes, options_.prefault_arena);
  if (!seg.ok()) {
    return Status(seg.status().code(), absl::StrCat("arena of tenant '", arena.name_space,
                                                    "': ", std::string(seg.status().message())));
  }
  arena_spare_bytes_->Set(static_cast<double>(arena_->reserved_bytes() - arena_->bytes()));
  KVSTASH_ASSIGN_OR_RETURN(Zone zone, MakeZone(arena.name_space, *seg));
  auto table = std::make_unique<ZoneTable>(current);
  const size_t index = table->zones.size();
  table->of_namespace[arena.name_space] = index;
  table->zones.push_back(std::move(zone));
  zone_table_.store(table.get(), std::memory_order_release);
  tables_.push_back(std::move(table));
  metrics_.cpu.capacity_bytes->Set(static_cast<double>(arena_->bytes()));
  ArenaSegment out;
  out.index = static_cast<uint32_t>(index);
  out.name_space = arena.name_space;
  out.fd = seg->fd;
  out.read_only_fd = seg->read_only_fd;
  out.offset = seg->offset;
  out.bytes = seg->bytes;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Moving an object into its namespace's arena

namespace {
// Bounds the retries when the object keeps changing under a move (another reader moved it,
// a newer commit replaced it): each retry looks it up again.
constexpr int kMoveAttempts = 4;
}  // namespace

Result<Lease> TieredStore::AcquireInOwnArena(const Hash128& storage_key, uint32_t lease_ms) {
  std::shared_lock<std::shared_mutex> guard(close_mu_);
  KVSTASH_RETURN_IF_ERROR(CheckOpen());
  std::shared_ptr<ObjectRec> rec;
  for (int attempt = 0;; ++attempt) {
    KVSTASH_ASSIGN_OR_RETURN(Lease lease, AcquireImpl(storage_key, lease_ms, &rec));
    // The namespace's zone and the zone of the leased bytes: the zone table only grows, and a
    // leased rec's bytes do not move, so both stay true while the lease is held.
    const size_t own = ZoneFor(rec->name.name_space);
    if (own == 0 || ZoneOfOffset(lease.arena_offset) == own) return lease;
    if (attempt == kMoveAttempts) {
      (void)ReleaseImpl(lease.id);
      const Status why = absl::FailedPreconditionError(absl::StrCat(
          "object ", storage_key.ToHex(), " kept changing while it was being moved into the arena ",
          "of tenant '", rec->name.name_space, "'; read it over the byte stream (Get)"));
      NoteMove(MoveOutcome::kRaced, *rec, why);
      return why;
    }
    bool stale = false;
    Result<Lease> moved = MoveToZone(rec, lease, own, lease_ms, &stale);
    if (!stale) return moved;
  }
}

Result<Lease> TieredStore::MoveToZone(const std::shared_ptr<ObjectRec>& rec, const Lease& held,
                                      size_t zone, uint32_t lease_ms, bool* stale) {
  *stale = false;
  const Hash128& key = rec->name.storage_key;
  // rec.info does not change while a lease is held (tiered_store.h; `info` is read only before
  // `held` is released), and `held` keeps the old bytes where they are.
  const ObjectInfo& info = rec->info;
  Result<PageAllocator::Extent> extent = AllocateArena(info.payload_bytes, zone);
  if (!extent.ok()) {
    (void)ReleaseImpl(held.id);
    const Status why = absl::FailedPreconditionError(
        absl::StrCat("object ", key.ToHex(),
                     " is in another arena and cannot be moved into the arena of "
                     "tenant '",
                     rec->name.name_space, "' (", std::string(extent.status().message()),
                     "); read it over the byte stream (Get)"));
    NoteMove(MoveOutcome::kNoRoom, *rec, why);
    return why;
  }
  // No lock held: the source is leased, the destination is ours until published below.
  uint8_t* dst = arena_->base() + extent->offset;
  std::memcpy(dst, arena_->base() + held.arena_offset, info.payload_bytes);
  if (Crc32c(dst, info.payload_bytes) != info.payload_crc32c) {
    FreeExtent(extent->offset);
    (void)ReleaseImpl(held.id);
    const Status why = absl::FailedPreconditionError(
        absl::StrCat("the copy of object ", key.ToHex(), " moved into the arena of tenant '",
                     rec->name.name_space, "' failed its crc32c; read it over the byte stream"));
    NoteMove(MoveOutcome::kCheckFailed, *rec, why);
    return why;
  }
  std::shared_ptr<ObjectRec> fresh;
  Deferred later;
  {
    Shard& shard = ShardFor(key);
    MutexLock lock(&shard.mu);
    auto it = shard.objects.find(key);
    if (it != shard.objects.end() && it->second == rec && rec->visible && rec->in_cpu) {
      // The new copy becomes the object, as a newer commit of the same bytes would; the old rec
      // keeps its bytes for the leases on it (`held` included) and frees them after the last.
      fresh = std::make_shared<ObjectRec>(rec->name, rec->info);
      fresh->in_cpu = true;
      fresh->arena_offset = extent->offset;
      AddCpuUsage(*fresh, true);
      fresh->pins = rec->pins;
      fresh->hits = rec->hits;  // this read is counted already (AcquireImpl)
      fresh->last_access_ns = WallNs();
      fresh->value = rec->value;
      fresh->leases = 1;  // the lease registered below
      // Finished lower copies go with the object (their policy entries, keyed by storage key,
      // stay; usage is per namespace, unchanged). A copy being written or moved stays with the
      // old rec, whose writer drops it as for any replaced version; the new rec writes its own.
      for (const auto& lt : lower_) {
        LowerCopy& copy = rec->lower[lt->index];
        fresh->lower[lt->index].failed = copy.failed;
        if (copy.state != CopyState::kStored || copy.moving) continue;
        fresh->lower[lt->index] = copy;
        copy = LowerCopy{};
      }
      HideLocked(shard, rec, later);
      shard.objects[key] = fresh;
      if (options_.ssd_admission_hits == 0 && NeedsWriteDownLocked(*fresh)) {
        QueueWriteLocked(shard, fresh, later);
      } else {
        UpdatePoliciesLocked(shard, *fresh);
      }
    }
  }
  RunDeferred(later);
  (void)ReleaseImpl(held.id);
  if (fresh == nullptr) {
    FreeExtent(extent->offset);
    *stale = true;
    return absl::AbortedError("object changed while it was being moved");
  }
  metrics_.cpu.bytes_written->Increment(fresh->info.payload_bytes);
  NoteMove(MoveOutcome::kMoved, *fresh, OkStatus());
  return RegisterLease(fresh, ClampMs(lease_ms, options_.default_lease_ms), held.served_from);
}

void TieredStore::NoteMove(MoveOutcome outcome, const ObjectRec& rec, const Status& why) {
  const size_t i = static_cast<size_t>(outcome);
  move_counters_[i]->Increment();
  // Once per outcome for the store's life: a tenant that reads back many early objects moves
  // each of them, and the counter has the numbers.
  std::call_once(move_logged_[i], [&] {
    if (outcome == MoveOutcome::kMoved) {
      spdlog::info(
          "event=arena_object_migrated tenant={} bytes={} (first; later ones are counted in "
          "kvstash_storage_arena_migrations_total{{outcome=\"moved\"}})",
          rec.name.name_space, rec.info.payload_bytes);
    } else {
      spdlog::warn(
          "event=arena_migration_fallback tenant={} error=\"{}\" (first of its kind; counted in "
          "kvstash_storage_arena_migrations_total)",
          rec.name.name_space, std::string(why.message()));
    }
  });
}

}  // namespace kvstash::storage
