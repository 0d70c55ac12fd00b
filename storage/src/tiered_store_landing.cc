// Reservations that land in a lower tier's own memory (ObjectStore::ReserveInTier): a peer fetch
// or handoff that asks for the GPU tier reserves an extent of the GPU pool, a transport fills it
// (UCX reads into CUDA memory), and Commit checks the landed bytes and makes them the object's
// only copy, in that tier. Reservation ids, deadlines, the reaper and the outcomes remembered for
// error codes are the arena reservations' own (tiered_store.cc).
#include <chrono>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "tiered_store.h"

namespace kvstash::storage {
namespace {

uint64_t SteadyNowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

Result<Reservation> TieredStore::ReserveInTier(Tier tier, const StoredName& name,
                                               const ObjectInfo& info, uint32_t lease_ms,
                                               bool overwrite) {
  if (tier == Tier::kCpu) return Reserve(name, info, lease_ms, overwrite);
  std::shared_lock<std::shared_mutex> guard(close_mu_);
  KVSTASH_RETURN_IF_ERROR(CheckOpen());
  const uint64_t start = SteadyNowNs();
  if (tier != Tier::kGpu) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a transfer cannot land in the ", std::string(TierName(tier)), " tier (only cpu or gpu)"));
  }
  LowerTier* lt = nullptr;
  for (const auto& candidate : lower_) {
    if (candidate->tier->tier() == tier) {
      lt = candidate.get();
      break;
    }
  }
  if (lt == nullptr) {
    return absl::FailedPreconditionError(
        "this store has no GPU pool tier (cachesvc --gpu-pool-capacity): nothing can land in "
        "the gpu tier");
  }
  KVSTASH_RETURN_IF_ERROR(CheckReservable(name, info, overwrite));
  StorageTier& medium = *lt->tier;
  const uint64_t stored = medium.StoredBytes(info.payload_bytes);
  if (!ReserveOnLower(*lt, stored)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        std::string(TierName(tier)), " tier full: ", medium.used_bytes(), " of ",
        medium.capacity_bytes(), " bytes used, nothing evictable for ", stored, " more"));
  }
  KVSTASH_ASSIGN_OR_RETURN(uint64_t offset, medium.AllocateLanding(info.payload_bytes));
  lt->metrics->used_bytes->Set(static_cast<double>(medium.used_bytes()));
  const uint32_t ms = ClampMs(lease_ms, options_.default_reservation_ms);
  const uint64_t id = next_reservation_id_.fetch_add(1);
  {
    MutexLock lock(&res_mu_);
    ReservationRec r;
    r.name = name;
    r.info = info;
    r.deadline_ns = SteadyNowNs() + uint64_t{ms} * 1'000'000;
    r.lower = static_cast<int>(lt->index);
    r.tier_offset = offset;
    reservation_deadlines_.emplace(r.deadline_ns, id);
    reservations_.emplace(id, std::move(r));
  }
  metrics_.reserve_seconds->Observe((SteadyNowNs() - start) * 1e-9);
  Reservation out;
  out.id = id;
  out.expires_in_ms = ms;
  out.tier = tier;
  out.tier_offset = offset;
  return out;
}

void TieredStore::FreeReservationSpace(const ReservationRec& res) {
  if (res.lower < 0) {
    FreeExtent(res.extent.offset);
    return;
  }
  LowerTier& lt = *lower_[static_cast<size_t>(res.lower)];
  lt.tier->FreeLanding(res.tier_offset);
  lt.metrics->used_bytes->Set(static_cast<double>(lt.tier->used_bytes()));
}

Status TieredStore::CommitLanding(uint64_t reservation_id, const ReservationRec& res,
                                  uint32_t payload_crc32c, uint64_t start_ns) {
  LowerTier& lt = *lower_[static_cast<size_t>(res.lower)];
  // Whoever filled the landing (a peer's UCX reads), the store reads it back and checks it:
  // bytes that do not match are never committed.
  Result<uint32_t> landed = lt.tier->LandedCrc32c(res.tier_offset, res.info.payload_bytes);
  const bool matches = landed.ok() && *landed == payload_crc32c;
  TierRecord record;
  record.name = res.name;
  record.info = res.info;
  record.info.payload_crc32c = payload_crc32c;
  record.info.lossy = false;
  record.served = record.info;
  record.last_access_ns = WallNs();
  Status adopted = matches ? lt.tier->AdoptLanding(res.tier_offset, &record) : OkStatus();
  {
    MutexLock lock(&res_mu_);
    reservations_.erase(reservation_id);
    RememberEnded(reservation_id, matches && adopted.ok() ? Ended::kCommitted : Ended::kAborted);
  }
  if (!matches) {
    lt.tier->FreeLanding(res.tier_offset);
    lt.metrics->used_bytes->Set(static_cast<double>(lt.tier->used_bytes()));
    if (!landed.ok()) return landed.status();
    return absl::InvalidArgumentError(absl::StrCat(
        "payload crc32c mismatch: client says ", payload_crc32c, ", the ",
        std::string(TierName(lt.tier->tier())), " tier holds other bytes; reservation aborted"));
  }
  lt.metrics->used_bytes->Set(static_cast<double>(lt.tier->used_bytes()));
  if (!adopted.ok()) return adopted;  // the landing is gone either way
  auto rec = std::make_shared<ObjectRec>(res.name, record.info);
  rec->last_access_ns = record.last_access_ns;
  Deferred later;
  {
    Shard& shard = ShardFor(res.name.storage_key);
    MutexLock lock(&shard.mu);
    auto it = shard.objects.find(res.name.storage_key);
    if (it != shard.objects.end()) HideLocked(shard, it->second, later);  // last commit wins
    shard.objects[res.name.storage_key] = rec;
    LowerCopy& copy = rec->lower[lt.index];
    copy.info = record.info;
    copy.served = record.info;
    copy.encoded = false;
    copy.seq = record.seq;
    copy.state = CopyState::kStored;
    AddLowerUsage(*rec, lt, true);
    UpdatePoliciesLocked(shard, *rec);
  }
  RunDeferred(later);
  lt.metrics->bytes_written->Increment(record.info.payload_bytes);
  metrics_.commit_seconds->Observe((SteadyNowNs() - start_ns) * 1e-9);
  if (options_.on_commit) return options_.on_commit(res.name);
  return OkStatus();
}

}  // namespace kvstash::storage
