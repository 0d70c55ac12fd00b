#include "tiered_store.h"

#include <algorithm>
#include <cassert>
#include <chrono>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "kvstash/common/crc32c.h"
#include "spdlog/spdlog.h"
#include "ssd_tier.h"

namespace kvstash::storage {
namespace {

constexpr size_t kEndedMemory = 1 << 16;  // reservation outcomes remembered for error codes
constexpr uint32_t kDefaultListLimit = 1000;
constexpr uint32_t kMaxListLimit = 10000;
constexpr size_t kMaxNamespaceBytes = 1024;
// How long Reserve/Acquire wait for in-flight SSD demotions to make arena bytes evictable.
constexpr auto kMaxDemotionWait = std::chrono::seconds(10);

uint64_t SteadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double SecondsSince(uint64_t start_ns) { return (SteadyNs() - start_ns) * 1e-9; }

}  // namespace

uint64_t WallNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

ObjectRec::ObjectRec(StoredName n, ObjectInfo i)
    : name(std::move(n)), info(i), extent_bytes(PageAllocator::RoundUp(i.payload_bytes)) {}

Result<std::unique_ptr<ObjectStore>> ObjectStore::Open(const StoreOptions& options) {
  return TieredStore::Create(options);
}

Result<std::unique_ptr<ObjectStore>> TieredStore::Create(const StoreOptions& options) {
  return Create(options, {});
}

Result<std::unique_ptr<ObjectStore>> TieredStore::Create(
    const StoreOptions& options, std::vector<std::unique_ptr<StorageTier>> more_lower) {
  const size_t tiers = (options.ssd_capacity_bytes > 0 ? 1 : 0) + more_lower.size();
  if (tiers > kMaxLowerTiers) {
    return absl::InvalidArgumentError(
        absl::StrCat(tiers, " lower tiers; the store takes at most ", kMaxLowerTiers));
  }
  for (const auto& t : more_lower) {
    if (t == nullptr) return absl::InvalidArgumentError("a lower tier is null");
  }
  if (!(options.low_watermark > 0 && options.low_watermark <= options.high_watermark &&
        options.high_watermark <= 1.0)) {
    return absl::InvalidArgumentError("watermarks must satisfy 0 < low <= high <= 1");
  }
  if (options.ssd_io_threads < 1) return absl::InvalidArgumentError("ssd_io_threads must be >= 1");
  std::set<std::string> tenant_namespaces;
  for (const TenantArenaOptions& t : options.tenant_arenas) {
    if (t.name_space.empty()) {
      return absl::InvalidArgumentError("a tenant arena needs a namespace");
    }
    if (!tenant_namespaces.insert(t.name_space).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("two tenant arenas for namespace '", t.name_space, "'"));
    }
    if (t.bytes < PageAllocator::kPageBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("the arena of tenant '", t.name_space, "' must be at least 4096 bytes"));
    }
  }
  std::unique_ptr<TieredStore> store(new TieredStore(options));
  KVSTASH_RETURN_IF_ERROR(store->Init(std::move(more_lower)));
  return std::unique_ptr<ObjectStore>(std::move(store));
}

TieredStore::TieredStore(const StoreOptions& options)
    : options_(options), metrics_(options.metrics) {}

Status TieredStore::Init(std::vector<std::unique_ptr<StorageTier>> more_lower) {
  std::vector<uint64_t> segment_bytes = {options_.cpu_capacity_bytes};
  for (const TenantArenaOptions& t : options_.tenant_arenas) segment_bytes.push_back(t.bytes);
  KVSTASH_ASSIGN_OR_RETURN(arena_, Arena::Create(segment_bytes, options_.prefault_arena,
                                                 options_.tenant_arena_reserve_bytes));
  MetricsRegistry* registry = options_.metrics != nullptr ? options_.metrics : metrics_.owned.get();
  arena_spare_bytes_ =
      registry->GetGauge("kvstash_storage_arena_spare_bytes",
                         "Address space left for tenant arenas added while the store runs");
  arena_spare_bytes_->Set(static_cast<double>(arena_->reserved_bytes() - arena_->bytes()));
  static constexpr const char* kMoveOutcomes[] = {"moved", "no_room", "check_failed", "raced"};
  for (size_t i = 0; i < move_counters_.size(); ++i) {
    move_counters_[i] = registry->GetCounter(
        "kvstash_storage_arena_migrations_total",
        "Objects AcquireInOwnArena moved into their namespace's arena from another one (moved), "
        "or left where they were (no_room, check_failed, raced: the reader streams them)",
        {{"outcome", kMoveOutcomes[i]}});
  }
  auto table = std::make_unique<ZoneTable>();
  for (size_t i = 0; i < arena_->segment_count(); ++i) {
    const std::string name_space = i > 0 ? options_.tenant_arenas[i - 1].name_space : "";
    KVSTASH_ASSIGN_OR_RETURN(Zone zone, MakeZone(name_space, arena_->segment(i)));
    if (i > 0) table->of_namespace[zone.name_space] = i;
    table->zones.push_back(std::move(zone));
  }
  zone_table_.store(table.get(), std::memory_order_release);
  {
    MutexLock lock(&zone_add_mu_);
    tables_.push_back(std::move(table));
  }
  metrics_.cpu.capacity_bytes->Set(static_cast<double>(arena_->bytes()));
  metrics_.cpu.used_bytes->Set(0);
  if (options_.ssd_capacity_bytes > 0) {
    SsdTier::Options so;
    so.dir = options_.data_dir + "/ssd";
    so.capacity_bytes = options_.ssd_capacity_bytes;
    so.io_threads = options_.ssd_io_threads;
    auto lt = std::make_unique<LowerTier>();
    lt->index = lower_.size();
    KVSTASH_ASSIGN_OR_RETURN(lt->tier, SsdTier::Open(so, &metrics_));
    lt->metrics = &metrics_.ssd;
    KVSTASH_ASSIGN_OR_RETURN(lt->policy, MakeEvictionPolicy(options_.ssd_eviction_policy));
    lower_.push_back(std::move(lt));
  }
  for (auto& tier : more_lower) {
    auto lt = std::make_unique<LowerTier>();
    lt->index = lower_.size();
    lt->own_metrics =
        metrics_.ForTier(absl::StrCat(std::string(TierName(tier->tier())), "_", lt->index));
    lt->metrics = &lt->own_metrics;
    lt->tier = std::move(tier);
    KVSTASH_ASSIGN_OR_RETURN(lt->policy, MakeEvictionPolicy(options_.ssd_eviction_policy));
    lower_.push_back(std::move(lt));
  }
  // Recovered in order, so an object a higher tier holds keeps that tier's version.
  for (auto& lt : lower_) {
    KVSTASH_ASSIGN_OR_RETURN(std::vector<TierRecord> records, lt->tier->Recover());
    RecoverLower(*lt, std::move(records));
    lt->metrics->capacity_bytes->Set(static_cast<double>(lt->tier->capacity_bytes()));
  }
  // The writer pool writes down into the first lower tier.
  if (!lower_.empty()) {
    for (int i = 0; i < options_.ssd_io_threads; ++i)
      writers_.emplace_back([this] { WriterLoop(); });
  }
  reaper_ = std::thread([this] { ReaperLoop(); });
  evictor_ = std::thread([this] { EvictorLoop(); });
  if (options_.background_commit_checks) checker_ = std::thread([this] { CheckerLoop(); });
  return OkStatus();
}

TieredStore::~TieredStore() {
  Status s = Close();
  if (!s.ok()) spdlog::warn("kvstash storage: close failed: {}", s.ToString());
}

Status TieredStore::CheckOpen() const {
  if (closed_.load(std::memory_order_acquire)) return absl::UnavailableError("store is closed");
  return OkStatus();
}

uint32_t TieredStore::ClampMs(uint32_t ms, uint32_t fallback) const {
  if (ms == 0) ms = fallback;
  return std::min(ms, options_.max_lease_ms);
}

bool TieredStore::Admitted(const ObjectRec& rec) const {
  return options_.ssd_admission_hits == 0 || rec.hits >= options_.ssd_admission_hits;
}

// ---------------------------------------------------------------------------------------------
// State helpers (caller holds the rec's shard lock)

EvictionMeta TieredStore::MetaFor(const ObjectRec& rec, uint64_t bytes) const {
  return EvictionMeta{rec.name.storage_key,       bytes,    rec.hits, rec.last_access_ns,
                      rec.info.layout.num_tokens, rec.value};
}

void TieredStore::UpdatePoliciesLocked(Shard& shard, ObjectRec& rec) {
  assert(&shard == &ShardFor(rec.name.storage_key));
  bool cpu_evictable = rec.visible && rec.in_cpu && rec.pins == 0 && rec.leases == 0 &&
                       rec.io_refs == 0 && rec.promotion == nullptr;
  if (cpu_evictable != rec.in_cpu_policy) {
    // The policy of the zone its bytes are in, which is its namespace's unless the namespace got
    // an arena (AddTenantArena) after these bytes were placed in the shared one; removal asks the
    // policy the rec was inserted into.
    if (cpu_evictable) rec.cpu_policy_zone = static_cast<uint32_t>(ZoneOfOffset(rec.arena_offset));
    MutexLock lock(&cpu_policy_mu_);
    if (cpu_evictable) {
      cpu_policies_[rec.cpu_policy_zone]->OnInsert(MetaFor(rec, rec.extent_bytes));
    } else {
      cpu_policies_[rec.cpu_policy_zone]->OnRemove(rec.name.storage_key);
    }
    rec.in_cpu_policy = cpu_evictable;
  }
  for (const auto& lt : lower_) {
    LowerCopy& copy = rec.lower[lt->index];
    bool evictable = rec.visible && copy.state == CopyState::kStored && !copy.moving &&
                     rec.pins == 0 && rec.promotion == nullptr;
    if (evictable == copy.in_policy) continue;
    MutexLock lock(&lt->policy_mu);
    if (evictable) {
      lt->policy->OnInsert(MetaFor(rec, lt->tier->StoredBytes(copy.info.payload_bytes)));
    } else {
      lt->policy->OnRemove(rec.name.storage_key);
    }
    copy.in_policy = evictable;
  }
}

void TieredStore::MaybeFreeArenaLocked(Shard& shard, ObjectRec& rec) {
  assert(&shard == &ShardFor(rec.name.storage_key));
  if (rec.in_cpu && !rec.visible && rec.leases == 0 && rec.io_refs == 0 &&
      rec.promotion == nullptr) {
    rec.in_cpu = false;
    AddCpuUsage(rec, false);
    FreeExtent(rec.arena_offset);
  }
}

void TieredStore::AddCpuUsage(const ObjectRec& rec, bool add) {
  MutexLock lock(&usage_mu_);
  uint64_t& bytes = usage_[rec.name.name_space].cpu_bytes;
  const uint64_t n = rec.info.payload_bytes;
  bytes = add ? bytes + n : (bytes > n ? bytes - n : 0);
}

void TieredStore::AddLowerUsage(const ObjectRec& rec, const LowerTier& lt, bool add) {
  // NamespaceUsage has a field for the SSD tier only (tenant quotas are per cpu/ssd).
  if (lt.tier->tier() != Tier::kSsd) return;
  MutexLock lock(&usage_mu_);
  uint64_t& bytes = usage_[rec.name.name_space].ssd_bytes;
  const uint64_t n = rec.lower[lt.index].info.payload_bytes;
  bytes = add ? bytes + n : (bytes > n ? bytes - n : 0);
}

NamespaceUsage TieredStore::Usage(const std::string& name_space) {
  MutexLock lock(&usage_mu_);
  auto it = usage_.find(name_space);
  return it == usage_.end() ? NamespaceUsage{} : it->second;
}

// By value, not by reference: callers pass the map's own entry (it->second), which this erases;
// the copy keeps the object alive for the rest of the function.
// NOLINTNEXTLINE(performance-unnecessary-value-param)
void TieredStore::HideLocked(Shard& shard, std::shared_ptr<ObjectRec> rec, Deferred& later) {
  auto it = shard.objects.find(rec->name.storage_key);
  if (it != shard.objects.end() && it->second == rec) shard.objects.erase(it);
  rec->visible = false;
  UpdatePoliciesLocked(shard, *rec);
  MaybeFreeArenaLocked(shard, *rec);
  // A pending write notices !visible and removes what it wrote; finished ones are removed here.
  for (const auto& lt : lower_) {
    LowerCopy& copy = rec->lower[lt->index];
    if (copy.state != CopyState::kStored) continue;
    copy.state = CopyState::kNone;
    AddLowerUsage(*rec, *lt, false);
    later.lower_removals.push_back({lt.get(), rec, copy.seq, copy.info.payload_bytes});
  }
}

bool TieredStore::NeedsWriteDownLocked(const ObjectRec& rec) const {
  // A stored copy in any lower tier is enough (it is where eviction from the first put it); a
  // failed write into the first tier is not retried.
  return !lower_.empty() && rec.lower[0].state == CopyState::kNone && !rec.lower[0].failed &&
         FirstStoredLocked(rec, lower_.size()) < 0;
}

void TieredStore::QueueWriteLocked(Shard& shard, const std::shared_ptr<ObjectRec>& rec,
                                   Deferred& later, std::shared_ptr<std::promise<Status>> done) {
  rec->lower[0].state = CopyState::kPending;
  ++rec->io_refs;
  UpdatePoliciesLocked(shard, *rec);
  later.writes.push_back(WriteJob{rec, std::move(done)});
}

void TieredStore::RunDeferred(Deferred& later) {
  for (auto& removal : later.lower_removals) {
    StorageTier& tier = *removal.tier->tier;
    tier.Remove(removal.rec->name.storage_key, removal.seq, removal.stored_bytes);
    removal.tier->metrics->used_bytes->Set(static_cast<double>(tier.used_bytes()));
  }
  later.lower_removals.clear();
  if (!later.writes.empty()) {
    {
      MutexLock lock(&write_mu_);
      for (auto& job : later.writes) {
        write_queue_.push_back(std::move(job));
        ++pending_writes_;
      }
    }
    write_cv_.SignalAll();
    later.writes.clear();
  }
}

void TieredStore::ReleaseLeaseRef(const std::shared_ptr<ObjectRec>& rec) {
  Shard& shard = ShardFor(rec->name.storage_key);
  MutexLock lock(&shard.mu);
  --rec->leases;
  UpdatePoliciesLocked(shard, *rec);
  MaybeFreeArenaLocked(shard, *rec);
}

// ---------------------------------------------------------------------------------------------
// Arena

uint64_t TieredStore::ArenaUsedLocked() const {
  uint64_t used = 0;
  for (const PageAllocator& a : allocators_) used += a.used_bytes();
  return used;
}

void TieredStore::SetArenaUsedLocked(size_t zone) {
  Zones().zones[zone].used_bytes->Set(static_cast<double>(allocators_[zone].used_bytes()));
  metrics_.cpu.used_bytes->Set(static_cast<double>(ArenaUsedLocked()));
}

bool TieredStore::ZoneAboveHighLocked(size_t zone) const {
  return allocators_[zone].used_bytes() >
         options_.high_watermark * static_cast<double>(allocators_[zone].capacity_bytes());
}

void TieredStore::FreeExtent(uint64_t offset) {
  const size_t zone = ZoneOfOffset(offset);
  {
    MutexLock lock(&arena_mu_);
    Status s = allocators_[zone].Free(offset - Zones().zones[zone].offset);
    if (!s.ok()) spdlog::error("kvstash storage: arena free: {}", s.ToString());
    SetArenaUsedLocked(zone);
    ++arena_epoch_;
  }
  arena_cv_.SignalAll();
}

void TieredStore::SignalArena() {
  {
    MutexLock lock(&arena_mu_);
    ++arena_epoch_;
  }
  arena_cv_.SignalAll();
}

bool TieredStore::ZoneAboveHigh(size_t zone) {
  MutexLock lock(&arena_mu_);
  return ZoneAboveHighLocked(zone);
}

Result<PageAllocator::Extent> TieredStore::AllocateArena(uint64_t bytes, size_t zone) {
  uint64_t rounded = PageAllocator::RoundUp(bytes);
  const Zone& z = Zones().zones[zone];  // tables live as long as the store
  const std::string which =
      zone == 0 ? std::string("the arena") : "the arena of tenant '" + z.name_space + "'";
  if (rounded > z.capacity_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("object of ", bytes, " bytes is larger than ",
                                                     which, " (", z.capacity_bytes, " bytes)"));
  }
  auto deadline = std::chrono::steady_clock::now() + kMaxDemotionWait;
  uint64_t demoting = 0;  // bytes this call is already waiting on
  for (;;) {
    uint64_t epoch;
    {
      MutexLock lock(&arena_mu_);
      epoch = arena_epoch_;
      if (auto extent = allocators_[zone].Allocate(rounded)) {
        SetArenaUsedLocked(zone);
        if (ZoneAboveHighLocked(zone)) bg_cv_.SignalAll();
        extent->offset += z.offset;
        return *extent;
      }
    }
    if (demoting < rounded) {
      EvictStep step = EvictOneCpu(zone);
      demoting += step.demoting_bytes;
      if (step.found) continue;
    }
    // Nothing is evictable now (or enough is being demoted). Objects being demoted to SSD become
    // evictable when their write finishes, so wait for that; leases and pins are not waited for.
    MutexLock lock(&arena_mu_);
    // Bytes may have been freed (a lease released, another evictor) since the first attempt.
    if (auto extent = allocators_[zone].Allocate(rounded)) {
      SetArenaUsedLocked(zone);
      extent->offset += z.offset;
      return *extent;
    }
    bool writes_pending;
    {
      MutexLock wlock(&write_mu_);
      writes_pending = pending_writes_ > 0;
    }
    if (!writes_pending || std::chrono::steady_clock::now() >= deadline) {
      return absl::ResourceExhaustedError(
          absl::StrCat("no room in ", which, " for ", rounded,
                       " bytes: ", allocators_[zone].free_bytes(), " bytes free (largest extent ",
                       allocators_[zone].largest_free_bytes(), "), nothing evictable"));
    }
    // Anything freed or made evictable since this attempt began bumped the epoch: no lost wakeup.
    const auto wait_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
    while (arena_epoch_ == epoch && std::chrono::steady_clock::now() < wait_until) {
      arena_cv_.WaitFor(&arena_mu_, wait_until - std::chrono::steady_clock::now());
    }
    demoting = 0;  // finished demotions put their objects back in the policy as old victims
  }
}

TieredStore::EvictStep TieredStore::EvictOneCpu(size_t zone) {
  EvictStep step;
  std::optional<Hash128> victim;
  {
    MutexLock lock(&cpu_policy_mu_);
    victim = cpu_policies_[zone]->Victim();
  }
  if (!victim) return step;
  step.found = true;
  Deferred later;
  {
    Shard& shard = ShardFor(*victim);
    MutexLock lock(&shard.mu);
    auto it = shard.objects.find(*victim);
    // Its state changed since the policy named it; the policy no longer holds it, try the next.
    if (it == shard.objects.end() || !it->second->in_cpu_policy) return step;
    std::shared_ptr<ObjectRec> rec = it->second;
    LowerTier* first = first_lower();
    if (first != nullptr && NeedsWriteDownLocked(*rec) && Admitted(*rec)) {
      // Demote first; the write's completion makes it evictable again (it keeps its old last
      // access, so it is the next victim), then it is just freed.
      QueueWriteLocked(shard, rec, later);
      step.demoting_bytes = rec->extent_bytes;
    } else {
      step.freed_bytes = rec->extent_bytes;
      rec->in_cpu = false;
      AddCpuUsage(*rec, false);
      FreeExtent(rec->arena_offset);
      const int stored = FirstStoredLocked(*rec, lower_.size());
      if (stored >= 0) {
        // From now on readers get what the first lower copy decodes to (the same bytes when it
        // is raw), as promotion reads that copy.
        rec->info.payload_crc32c = rec->lower[stored].served.payload_crc32c;
        rec->info.lossy = rec->lower[stored].served.lossy;
      }
      metrics_.cpu.evictions->Increment();
      if (stored < 0) {
        if (first != nullptr && !Admitted(*rec)) metrics_.ssd_admission_dropped->Increment();
        shard.objects.erase(it);
        rec->visible = false;
      }
      UpdatePoliciesLocked(shard, *rec);
    }
  }
  RunDeferred(later);
  return step;
}

// ---------------------------------------------------------------------------------------------
// Public API

LookupEntry TieredStore::Lookup(const Hash128& storage_key) {
  std::shared_lock<std::shared_mutex> guard(close_mu_);
  LookupEntry entry;
  if (!CheckOpen().ok()) return entry;
  Shard& shard = ShardFor(storage_key);
  MutexLock lock(&shard.mu);
  auto it = shard.objects.find(storage_key);
  if (it == shard.objects.end()) return entry;
  const ObjectRec& rec = *it->second;
  entry.present = true;
  const int stored = rec.in_cpu ? -1 : FirstStoredLocked(rec, lower_.size());
  entry.tier = rec.in_cpu ? Tier::kCpu : stored >= 0 ? lower_[stored]->tier->tier() : Tier::kSsd;
  entry.info = rec.info;
  return entry;
}

Status TieredStore::CheckReservable(const StoredName& name, const ObjectInfo& info,
                                    bool overwrite) {
  KVSTASH_RETURN_IF_ERROR(info.Validate());
  if (name.name_space.size() > kMaxNamespaceBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("namespace longer than ", kMaxNamespaceBytes, " bytes"));
  }
  if (!overwrite) {
    Shard& shard = ShardFor(name.storage_key);
    MutexLock lock(&shard.mu);
    if (shard.objects.count(name.storage_key) > 0) {
      return absl::AlreadyExistsError(
          absl::StrCat("object ", name.storage_key.ToHex(), " is already committed"));
    }
  }
  return OkStatus();
}

Result<Reservation> TieredStore::Reserve(const StoredName& name, const ObjectInfo& info,
                                         uint32_t lease_ms, bool overwrite) {
  std::shared_lock<std::shared_mutex> guard(close_mu_);
  KVSTASH_RETURN_IF_ERROR(CheckOpen());
  uint64_t start = SteadyNs();
  KVSTASH_RETURN_IF_ERROR(CheckReservable(name, info, overwrite));
  KVSTASH_ASSIGN_OR_RETURN(PageAllocator::Extent extent,
                           AllocateArena(info.payload_bytes, ZoneFor(name.name_space)));
  uint32_t ms = ClampMs(lease_ms, options_.default_reservation_ms);
  uint64_t id = next_reservation_id_.fetch_add(1);
  {
    MutexLock lock(&res_mu_);
    ReservationRec r{name, info, extent, SteadyNs() + uint64_t{ms} * 1'000'000, false};
    reservation_deadlines_.emplace(r.deadline_ns, id);
    reservations_.emplace(id, std::move(r));
  }
  metrics_.reserve_seconds->Observe(SecondsSince(start));
  return Reservation{id, extent.offset, ms};
}

void TieredStore::RememberEnded(uint64_t reservation_id, Ended how) {
  if (ended_.emplace(reservation_id, how).second) ended_order_.push_back(reservation_id);
  while (ended_order_.size() > kEndedMemory) {
    ended_.erase(ended_order_.front());
    ended_order_.pop_front();
  }
}

namespace {
Status EndedStatus(uint64_t id, bool known, int how) {
  if (!known) return absl::NotFoundError(absl::StrCat("unknown reservation ", id));
  switch (how) {
    case 0:
      return absl::FailedPreconditionError(absl::StrCat("reservation ", id, " already committed"));
    case 1:
      return absl::FailedPreconditionError(absl::StrCat("reservation ", id, " was aborted"));
    default:
      return absl::FailedPreconditionError(absl::StrCat("reservation ", id, " expired"));
  }
}
}  // namespace

Status TieredStore::Commit(uint64_t reservation_id, uint32_t payload_crc32c, bool durable) {
  return CommitImpl(reservation_id, payload_crc32c, durable, /*checked=*/false);
}

Status TieredStore::CommitChecked(uint64_t reservation_id, uint32_t payload_crc32c, bool durable) {
  return CommitImpl(reservation_id, payload_crc32c, durable, /*checked=*/true);
}

Status TieredStore::CommitImpl(uint64_t reservation_id, uint32_t payload_crc32c, bool durable,
                               bool checked) {
  std::shared_lock<std::shared_mutex> guard(close_mu_);
  KVSTASH_RETURN_IF_ERROR(CheckOpen());
  uint64_t start = SteadyNs();
  ReservationRec res;
  {
    MutexLock lock(&res_mu_);
    auto it = reservations_.find(reservation_id);
    if (it == reservations_.end()) {
      auto ended = ended_.find(reservation_id);
      return EndedStatus(reservation_id, ended != ended_.end(),
                         ended != ended_.end() ? static_cast<int>(ended->second) : 0);
    }
    if (it->second.committing) {
      return absl::FailedPreconditionError(
          absl::StrCat("reservation ", reservation_id, " is being committed"));
    }
    if (durable && lower_.empty()) {
      return absl::FailedPreconditionError(
          "durable commit needs the SSD tier (ssd_capacity_bytes is 0)");
    }
    if (durable && it->second.lower >= 0) {
      return absl::FailedPreconditionError(
          "durable commit of an object landed in the GPU tier (the pool is volatile)");
    }
    it->second.committing = true;
    reservation_deadlines_.erase({it->second.deadline_ns, reservation_id});
    res = it->second;
  }
  if (res.lower >= 0) return CommitLanding(reservation_id, res, payload_crc32c, start);
  // A durable commit checks the payload before it returns (the caller waits for the SSD write
  // anyway); any other shared-memory commit leaves it to the checker, off the writer's path.
  // The checksum runs with no lock held: it reads up to the whole object.
  const bool check_now = durable && !checked;
  const bool matches = !check_now || Crc32c(arena_->base() + res.extent.offset,
                                            res.info.payload_bytes) == payload_crc32c;
  {
    MutexLock lock(&res_mu_);
    reservations_.erase(reservation_id);
    RememberEnded(reservation_id, matches ? Ended::kCommitted : Ended::kAborted);
  }
  if (!matches) {
    FreeExtent(res.extent.offset);
    return absl::InvalidArgumentError(absl::StrCat("payload crc32c mismatch: client says ",
                                                   payload_crc32c,
                                                   ", the arena holds other bytes; reservation "
                                                   "aborted"));
  }
  ObjectInfo info = res.info;
  info.payload_crc32c = payload_crc32c;
  auto rec = std::make_shared<ObjectRec>(res.name, info);
  const bool check_later = !checked && !check_now;
  if (check_later) rec->arena_check.store(ArenaCheck::kPending, std::memory_order_relaxed);
  rec->in_cpu = true;
  AddCpuUsage(*rec, true);
  rec->arena_offset = res.extent.offset;
  rec->last_access_ns = WallNs();
  std::shared_ptr<std::promise<Status>> done;
  std::future<Status> durable_result;
  Deferred later;
  {
    Shard& shard = ShardFor(res.name.storage_key);
    MutexLock lock(&shard.mu);
    auto it = shard.objects.find(res.name.storage_key);
    // A newer commit of the same key replaces the old version; readers holding leases on the old
    // one keep its bytes until they release.
    if (it != shard.objects.end()) HideLocked(shard, it->second, later);
    shard.objects[res.name.storage_key] = rec;
    if (!lower_.empty() && (durable || options_.ssd_admission_hits == 0)) {
      if (durable) {
        done = std::make_shared<std::promise<Status>>();
        durable_result = done->get_future();
      }
      QueueWriteLocked(shard, rec, later, done);
    } else {
      UpdatePoliciesLocked(shard, *rec);
    }
  }
  RunDeferred(later);
  if (check_later && options_.background_commit_checks) QueueCheck(rec);
  metrics_.cpu.bytes_written->Increment(info.payload_bytes);
  Status status = OkStatus();
  if (done) status = durable_result.get();
  metrics_.commit_seconds->Observe(SecondsSince(start));
  if (status.ok() && options_.on_commit) status = options_.on_commit(res.name);
  return status;
}

Status TieredStore::Abort(uint64_t reservation_id) {
  std::shared_lock<std::shared_mutex> guard(close_mu_);
  KVSTASH_RETURN_IF_ERROR(CheckOpen());
  ReservationRec ended;
  {
    MutexLock lock(&res_mu_);
    auto it = reservations_.find(reservation_id);
    if (it == reservations_.end()) {
      auto ended = ended_.find(reservation_id);
      return EndedStatus(reservation_id, ended != ended_.end(),
                         ended != ended_.end() ? static_cast<int>(ended->second) : 0);
    }
    if (it->second.committing) {
      return absl::FailedPreconditionError(
          absl::StrCat("reservation ", reservation_id, " is being committed"));
    }
    ended = std::move(it->second);
    reservation_deadlines_.erase({ended.deadline_ns, reservation_id});
    reservations_.erase(it);
    RememberEnded(reservation_id, Ended::kAborted);
  }
  FreeReservationSpace(ended);
  return OkStatus();
}

Lease TieredStore::RegisterLease(const std::shared_ptr<ObjectRec>& rec, uint32_t lease_ms,
                                 Tier from) {
  uint64_t id = next_lease_id_.fetch_add(1);
  uint64_t deadline = SteadyNs() + uint64_t{lease_ms} * 1'000'000;
  {
    MutexLock lock(&lease_mu_);
    leases_.emplace(id, LeaseRec{rec, deadline});
    lease_deadlines_.emplace(deadline, id);
  }
  return Lease{id, rec->arena_offset, rec->info, from, lease_ms};
}

Result<Lease> TieredStore::Acquire(const Hash128& storage_key, uint32_t lease_ms) {
  std::shared_lock<std::shared_mutex> guard(close_mu_);
  KVSTASH_RETURN_IF_ERROR(CheckOpen());
  return AcquireImpl(storage_key, lease_ms, nullptr);
}

Result<Lease> TieredStore::AcquireImpl(const Hash128& storage_key, uint32_t lease_ms,
                                       std::shared_ptr<ObjectRec>* rec_out) {
  uint64_t start = SteadyNs();
  uint32_t ms = ClampMs(lease_ms, options_.default_lease_ms);
  Shard& shard = ShardFor(storage_key);
  for (;;) {
    std::shared_ptr<ObjectRec> rec;
    std::shared_ptr<Promotion> wait_for;
    bool promote = false;
    Deferred later;
    {
      MutexLock lock(&shard.mu);
      auto it = shard.objects.find(storage_key);
      if (it == shard.objects.end()) {
        metrics_.cpu.misses->Increment();
        for (const auto& lt : lower_) lt->metrics->misses->Increment();
        return absl::NotFoundError(absl::StrCat("object ", storage_key.ToHex(), " not found"));
      }
      rec = it->second;
      if (rec->promotion) {
        wait_for = rec->promotion;
      } else if (rec->in_cpu) {
        ++rec->leases;
        ++rec->hits;
        rec->last_access_ns = WallNs();
        UpdatePoliciesLocked(shard, *rec);
        if (!lower_.empty() && options_.ssd_admission_hits > 0 && NeedsWriteDownLocked(*rec) &&
            Admitted(*rec)) {
          QueueWriteLocked(shard, rec, later);
        }
      } else {
        rec->promotion = std::make_shared<Promotion>();
        promote = true;
        UpdatePoliciesLocked(shard, *rec);
      }
    }
    if (wait_for) {
      MutexLock lock(&wait_for->mu);
      while (!wait_for->done) wait_for->cv.Wait(&wait_for->mu);
      continue;
    }
    if (promote) {
      metrics_.cpu.misses->Increment();
      bool retry = false;
      Result<Lease> lease = Promote(rec, ms, &retry);
      if (retry) continue;  // the copy it read moved down a tier meanwhile
      metrics_.acquire_seconds->Observe(SecondsSince(start));
      if (rec_out != nullptr && lease.ok()) *rec_out = rec;
      return lease;
    }
    RunDeferred(later);
    if (!CheckArenaBytes(*rec).ok()) {
      DropFailedLease(rec);
      metrics_.cpu.misses->Increment();
      return absl::NotFoundError(
          absl::StrCat("object ", storage_key.ToHex(), " failed its crc32c check and was removed"));
    }
    metrics_.cpu.hits->Increment();
    metrics_.cpu.bytes_read->Increment(rec->info.payload_bytes);
    Lease lease = RegisterLease(rec, ms, Tier::kCpu);
    metrics_.acquire_seconds->Observe(SecondsSince(start));
    if (rec_out != nullptr) *rec_out = std::move(rec);
    return lease;
  }
}

Status TieredStore::Release(uint64_t lease_id) {
  std::shared_lock<std::shared_mutex> guard(close_mu_);
  KVSTASH_RETURN_IF_ERROR(CheckOpen());
  return ReleaseImpl(lease_id);
}

Status TieredStore::ReleaseImpl(uint64_t lease_id) {
  std::shared_ptr<ObjectRec> rec;
  {
    MutexLock lock(&lease_mu_);
    auto it = leases_.find(lease_id);
    if (it == leases_.end()) {
      return absl::NotFoundError(absl::StrCat("unknown or expired lease ", lease_id));
    }
    rec = std::move(it->second.rec);
    lease_deadlines_.erase({it->second.deadline_ns, lease_id});
    leases_.erase(it);
  }
  ReleaseLeaseRef(rec);
  return OkStatus();
}

Status TieredStore::Delete(const Hash128& storage_key) {
  std::shared_lock<std::shared_mutex> guard(close_mu_);
  KVSTASH_RETURN_IF_ERROR(CheckOpen());
  Deferred later;
  {
    Shard& shard = ShardFor(storage_key);
    MutexLock lock(&shard.mu);
    auto it = shard.objects.find(storage_key);
    if (it == shard.objects.end()) {
      return absl::NotFoundError(absl::StrCat("object ", storage_key.ToHex(), " not found"));
    }
    HideLocked(shard, it->second, later);
  }
  RunDeferred(later);
  return OkStatus();
}

Status TieredStore::Pin(const Hash128& storage_key) {
  std::shared_lock<std::shared_mutex> guard(close_mu_);
  KVSTASH_RETURN_IF_ERROR(CheckOpen());
  Shard& shard = ShardFor(storage_key);
  MutexLock lock(&shard.mu);
  auto it = shard.objects.find(storage_key);
  if (it == shard.objects.end()) {
    return absl::NotFoundError(absl::StrCat("object ", storage_key.ToHex(), " not found"));
  }
  ObjectRec& rec = *it->second;
  ++rec.pins;
  UpdatePoliciesLocked(shard, rec);
  PersistPinsLocked(shard, rec);
  return OkStatus();
}

Status TieredStore::Unpin(const Hash128& storage_key) {
  std::shared_lock<std::shared_mutex> guard(close_mu_);
  KVSTASH_RETURN_IF_ERROR(CheckOpen());
  Shard& shard = ShardFor(storage_key);
  MutexLock lock(&shard.mu);
  auto it = shard.objects.find(storage_key);
  if (it == shard.objects.end()) {
    return absl::NotFoundError(absl::StrCat("object ", storage_key.ToHex(), " not found"));
  }
  ObjectRec& rec = *it->second;
  if (rec.pins == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("object ", storage_key.ToHex(), " is not pinned"));
  }
  --rec.pins;
  UpdatePoliciesLocked(shard, rec);
  PersistPinsLocked(shard, rec);
  return OkStatus();
}

void TieredStore::PersistPinsLocked(Shard& shard, const ObjectRec& rec) {
  assert(&shard == &ShardFor(rec.name.storage_key));
  // Only a finished lower copy has a record to update; a pending writer re-checks pins after its
  // synced put. The write is not synced: pins are a hint that survives a clean restart.
  for (const auto& lt : lower_) {
    if (rec.lower[lt->index].state != CopyState::kStored) continue;
    Status s = lt->tier->PutRecord(RecordOf(rec, lt->index), /*sync=*/false);
    if (!s.ok()) spdlog::warn("kvstash storage: persisting pins failed: {}", s.ToString());
  }
}

Result<ListPage> TieredStore::List(const std::string& name_space, bool all_namespaces,
                                   uint32_t limit, const std::string& page_token) {
  std::shared_lock<std::shared_mutex> guard(close_mu_);
  KVSTASH_RETURN_IF_ERROR(CheckOpen());
  if (limit == 0) limit = kDefaultListLimit;
  limit = std::min(limit, kMaxListLimit);
  std::optional<Hash128> after;
  if (!page_token.empty()) {
    Result<Hash128> token = Hash128::FromHex(page_token);
    if (!token.ok()) return absl::InvalidArgumentError("malformed page token");
    after = *token;
  }
  // Each shard's map is ordered by key: take up to limit + 1 matches from each and merge.
  std::vector<ListedObject> found;
  for (Shard& shard : shards_) {
    MutexLock lock(&shard.mu);
    auto it = after ? shard.objects.upper_bound(*after) : shard.objects.begin();
    size_t taken = 0;
    for (; it != shard.objects.end() && taken <= limit; ++it) {
      const ObjectRec& rec = *it->second;
      if (!all_namespaces && rec.name.name_space != name_space) continue;
      Tier where = Tier::kCpu;
      if (!rec.in_cpu) {
        const int stored = FirstStoredLocked(rec, lower_.size());
        where = stored >= 0 ? lower_[stored]->tier->tier() : Tier::kSsd;
      }
      found.push_back(ListedObject{rec.name, rec.info, where, rec.pins > 0, rec.hits});
      ++taken;
    }
  }
  std::sort(found.begin(), found.end(), [](const ListedObject& a, const ListedObject& b) {
    return a.name.storage_key < b.name.storage_key;
  });
  ListPage page;
  if (found.size() > limit) {
    found.resize(limit);
    page.next_page_token = found.back().name.storage_key.ToHex();
  }
  page.objects = std::move(found);
  return page;
}

StoreStats TieredStore::Stats() {
  std::shared_lock<std::shared_mutex> guard(close_mu_);
  StoreStats stats;
  uint64_t cpu_objects = 0, pinned = 0, cpu_logical = 0;
  std::array<uint64_t, kMaxLowerTiers> lower_objects{}, lower_logical{};
  for (Shard& shard : shards_) {
    MutexLock lock(&shard.mu);
    for (const auto& [key, rec] : shard.objects) {
      if (rec->in_cpu) {
        ++cpu_objects;
        cpu_logical += rec->info.payload_bytes;
      }
      for (size_t i = 0; i < lower_.size(); ++i) {
        if (rec->lower[i].state != CopyState::kStored) continue;
        ++lower_objects[i];
        lower_logical[i] += rec->lower[i].served.payload_bytes;
      }
      pinned += rec->pins > 0 ? 1 : 0;
    }
  }
  auto tier = [](Tier t, const TierMetrics& m, uint64_t objects, uint64_t logical) {
    TierStats s;
    s.tier = t;
    s.logical_bytes = logical;
    s.capacity_bytes = static_cast<uint64_t>(m.capacity_bytes->Value());
    s.used_bytes = static_cast<uint64_t>(m.used_bytes->Value());
    s.objects = objects;
    s.hits = m.hits->Value();
    s.misses = m.misses->Value();
    s.evictions = m.evictions->Value();
    s.bytes_read = m.bytes_read->Value();
    s.bytes_written = m.bytes_written->Value();
    return s;
  };
  {
    MutexLock lock(&arena_mu_);
    metrics_.cpu.used_bytes->Set(static_cast<double>(ArenaUsedLocked()));
  }
  stats.tiers.push_back(tier(Tier::kCpu, metrics_.cpu, cpu_objects, cpu_logical));
  for (const auto& lt : lower_) {
    lt->metrics->used_bytes->Set(static_cast<double>(lt->tier->used_bytes()));
    stats.tiers.push_back(
        tier(lt->tier->tier(), *lt->metrics, lower_objects[lt->index], lower_logical[lt->index]));
  }
  stats.checksum_failures = metrics_.checksum_failures->Value();
  stats.reservations_expired = metrics_.reservations_expired->Value();
  stats.pinned_objects = pinned;
  {
    MutexLock lock(&res_mu_);
    stats.reservations_active = reservations_.size();
  }
  {
    MutexLock lock(&lease_mu_);
    stats.leases_active = leases_.size();
  }
  return stats;
}

Status TieredStore::Flush() {
  std::shared_lock<std::shared_mutex> guard(close_mu_);
  KVSTASH_RETURN_IF_ERROR(CheckOpen());
  {
    MutexLock lock(&write_mu_);
    while (pending_writes_ != 0) idle_cv_.Wait(&write_mu_);
  }
  // Write-through records are put without a WAL sync; make them all durable now.
  Status status = OkStatus();
  for (const auto& lt : lower_) {
    Status synced = lt->tier->Sync();
    if (status.ok()) status = synced;
  }
  return status;
}

Status TieredStore::Close() {
  if (closed_.exchange(true)) return OkStatus();
  // Wait for every public call in flight (a durable commit waits for its write) to finish.
  std::unique_lock<std::shared_mutex> guard(close_mu_);
  {
    MutexLock lock(&write_mu_);
    while (pending_writes_ != 0) idle_cv_.Wait(&write_mu_);
  }
  StopThreads();
  Status status = OkStatus();
  for (const auto& lt : lower_) {
    // Persist hit counts and pins of everything on the tier so a restart keeps admission and
    // LRU history; one sync for the lot.
    std::vector<TierRecord> records;
    for (Shard& shard : shards_) {
      MutexLock lock(&shard.mu);
      for (const auto& [key, rec] : shard.objects) {
        if (rec->lower[lt->index].state == CopyState::kStored) {
          records.push_back(RecordOf(*rec, lt->index));
        }
      }
    }
    Status put = lt->tier->PutRecords(records);
    Status synced = lt->tier->Sync();
    if (status.ok()) status = put;
    if (status.ok()) status = synced;
  }
  lower_.clear();
  return status;
}

void TieredStore::StopThreads() {
  // The evictor can queue demotions, so it stops first; writers then drain whatever is queued.
  {
    MutexLock lock(&bg_mu_);
    bg_stop_ = true;
  }
  bg_cv_.SignalAll();
  if (reaper_.joinable()) reaper_.join();
  if (evictor_.joinable()) evictor_.join();
  // The checker finishes its queue (so queued SSD writes find the bytes checked or failed).
  {
    MutexLock lock(&check_mu_);
    checker_stop_ = true;
  }
  check_cv_.SignalAll();
  if (checker_.joinable()) checker_.join();
  {
    MutexLock lock(&write_mu_);
    writers_stop_ = true;
  }
  write_cv_.SignalAll();
  for (auto& t : writers_) t.join();
  writers_.clear();
}

// ---------------------------------------------------------------------------------------------
// Background threads

void TieredStore::ReaperLoop() {
  bg_mu_.Lock();
  while (!bg_stop_) {
    bg_cv_.WaitFor(&bg_mu_, std::chrono::milliseconds(10));
    if (bg_stop_) break;
    bg_mu_.Unlock();
    uint64_t now = SteadyNs();
    std::vector<ReservationRec> expired_reservations;
    {
      MutexLock lock(&res_mu_);
      while (!reservation_deadlines_.empty() && reservation_deadlines_.begin()->first <= now) {
        uint64_t id = reservation_deadlines_.begin()->second;
        reservation_deadlines_.erase(reservation_deadlines_.begin());
        auto it = reservations_.find(id);
        if (it == reservations_.end() || it->second.committing) continue;
        expired_reservations.push_back(std::move(it->second));
        reservations_.erase(it);
        RememberEnded(id, Ended::kExpired);
      }
    }
    for (const ReservationRec& res : expired_reservations) {
      FreeReservationSpace(res);
      metrics_.reservations_expired->Increment();
    }
    std::vector<std::shared_ptr<ObjectRec>> expired_leases;
    {
      MutexLock lock(&lease_mu_);
      while (!lease_deadlines_.empty() && lease_deadlines_.begin()->first <= now) {
        uint64_t id = lease_deadlines_.begin()->second;
        lease_deadlines_.erase(lease_deadlines_.begin());
        auto it = leases_.find(id);
        if (it == leases_.end()) continue;
        expired_leases.push_back(std::move(it->second.rec));
        leases_.erase(it);
      }
    }
    for (const auto& rec : expired_leases) {
      ReleaseLeaseRef(rec);
      metrics_.leases_expired->Increment();
    }
    bg_mu_.Lock();
  }
  bg_mu_.Unlock();
}

void TieredStore::EvictorLoop() {
  bg_mu_.Lock();
  while (!bg_stop_) {
    bg_cv_.WaitFor(&bg_mu_, std::chrono::milliseconds(50));
    if (bg_stop_) break;
    bg_mu_.Unlock();
    // Each arena (shared, or a tenant's) by its own watermarks, from its own objects.
    const size_t zones = Zones().zones.size();
    for (size_t zone = 0; zone < zones; ++zone) {
      if (!ZoneAboveHigh(zone)) continue;
      // Demotions free their bytes later; count them so one pass does not demote everything.
      uint64_t demoting = 0;
      for (;;) {
        {
          MutexLock lock(&arena_mu_);
          const PageAllocator& a = allocators_[zone];
          double low = options_.low_watermark * static_cast<double>(a.capacity_bytes());
          if (static_cast<double>(a.used_bytes()) - static_cast<double>(demoting) <= low) break;
        }
        EvictStep step = EvictOneCpu(zone);
        if (!step.found) break;
        demoting += step.demoting_bytes;
      }
    }
    bg_mu_.Lock();
  }
  bg_mu_.Unlock();
}

}  // namespace kvstash::storage
