// TieredStore: the arena's zones (one per arena segment: the shared arena, tenants' arenas) and
// tenant arenas added while the store runs (AddTenantArena).
#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
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

}  // namespace kvstash::storage
