// TieredStore: the SSD side (write-through and demotion, promotion, SSD eviction, recovery).
#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"
#include "tiered_store.h"

namespace kvstash::storage {

uint64_t WallNs();

namespace {
uint64_t SteadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

SsdRecord TieredStore::RecordOf(const ObjectRec& rec) const {
  SsdRecord r;
  r.name = rec.name;
  r.info = rec.info;
  r.seq = rec.ssd_seq;
  r.hits = rec.hits;
  r.last_access_ns = rec.last_access_ns;
  r.pins = rec.pins;
  return r;
}

void TieredStore::RecoverSsd(std::vector<SsdRecord> records) {
  // Oldest first, so the SSD policy sees the recorded recency.
  std::sort(records.begin(), records.end(), [](const SsdRecord& a, const SsdRecord& b) {
    return a.last_access_ns < b.last_access_ns;
  });
  for (SsdRecord& r : records) {
    auto rec = std::make_shared<ObjectRec>(r.name, r.info);
    rec->ssd = SsdState::kOnSsd;
    rec->ssd_seq = r.seq;
    rec->hits = r.hits;
    rec->pins = r.pins;
    rec->last_access_ns = r.last_access_ns;
    Shard& shard = ShardFor(r.name.storage_key);
    std::lock_guard<std::mutex> lock(shard.mu);
    shard.objects[r.name.storage_key] = rec;
    UpdatePoliciesLocked(*rec);
  }
  metrics_.ssd.used_bytes->Set(static_cast<double>(ssd_->used_bytes()));
}

bool TieredStore::EvictOneSsd() {
  std::optional<Hash128> victim;
  {
    std::lock_guard<std::mutex> lock(ssd_policy_mu_);
    victim = ssd_policy_->Victim();
  }
  if (!victim) return false;
  std::shared_ptr<ObjectRec> rec;
  uint64_t seq = 0;
  {
    Shard& shard = ShardFor(*victim);
    std::lock_guard<std::mutex> lock(shard.mu);
    auto it = shard.objects.find(*victim);
    if (it == shard.objects.end() || !it->second->in_ssd_policy) return true;  // changed; retry
    rec = it->second;
    seq = rec->ssd_seq;
    rec->ssd = SsdState::kNone;
    if (!rec->in_cpu) {
      shard.objects.erase(it);
      rec->visible = false;
    }
    UpdatePoliciesLocked(*rec);
  }
  ssd_->Remove(rec->name.storage_key, seq, rec->info.payload_bytes);
  metrics_.ssd.evictions->Increment();
  metrics_.ssd.used_bytes->Set(static_cast<double>(ssd_->used_bytes()));
  return true;
}

void TieredStore::WriterLoop() {
  for (;;) {
    WriteJob job;
    {
      std::unique_lock<std::mutex> lock(write_mu_);
      write_cv_.wait(lock, [&] { return writers_stop_ || !write_queue_.empty(); });
      if (write_queue_.empty()) return;  // stopping, and every queued write is done
      job = std::move(write_queue_.front());
      write_queue_.pop_front();
    }
    Status status = WriteToSsd(job.rec);
    if (job.done) job.done->set_value(status);
    job.rec.reset();
    {
      std::lock_guard<std::mutex> lock(write_mu_);
      if (--pending_writes_ == 0) idle_cv_.notify_all();
    }
    arena_cv_.notify_all();  // a demoted object may now be evictable
  }
}

Status TieredStore::WriteToSsd(const std::shared_ptr<ObjectRec>& rec) {
  uint64_t start = SteadyNs();
  Shard& shard = ShardFor(rec->name.storage_key);
  const Hash128& key = rec->name.storage_key;
  const uint64_t payload_bytes = rec->info.payload_bytes;
  SsdRecord record;
  bool visible;
  {
    std::lock_guard<std::mutex> lock(shard.mu);
    visible = rec->visible;
    if (visible) {
      rec->ssd_seq = ssd_->NextSeq();
      record = RecordOf(*rec);
    }
  }
  Status status = OkStatus();
  bool written = false;  // the file exists (and its bytes are accounted)
  bool indexed = false;  // the index record was put
  if (visible) {
    const uint64_t file_bytes = SsdTier::FileBytes(payload_bytes);
    const double capacity = static_cast<double>(ssd_->capacity_bytes());
    const auto high = static_cast<uint64_t>(options_.high_watermark * capacity);
    const auto low = static_cast<uint64_t>(options_.low_watermark * capacity);
    // Crossing the high watermark evicts LRU objects down to the low one; the hard limit is the
    // capacity itself.
    bool reserved = ssd_->TryReserve(file_bytes, high);
    while (!reserved) {
      reserved = ssd_->TryReserve(file_bytes, low);
      if (reserved || !EvictOneSsd()) break;
    }
    if (!reserved) reserved = ssd_->TryReserve(file_bytes, ssd_->capacity_bytes());
    if (!reserved) {
      metrics_.ssd_write_errors_capacity->Increment();
      status = absl::ResourceExhaustedError(absl::StrCat(
          "SSD tier full: ", ssd_->used_bytes(), " of ", ssd_->capacity_bytes(),
          " bytes used and nothing evictable for an object of ", file_bytes, " bytes"));
    } else {
      // The arena bytes cannot move or be freed while io_refs > 0.
      status = ssd_->WriteFile(record, arena_->base() + rec->arena_offset);
      if (status.ok()) {
        written = true;
      } else if (absl::IsResourceExhausted(status)) {
        metrics_.ssd_write_errors_enospc->Increment();
      } else {
        metrics_.ssd_write_errors_io->Increment();
      }
    }
    if (written) {
      {
        std::lock_guard<std::mutex> lock(shard.mu);
        visible = rec->visible;
        record.pins = rec->pins;
        record.hits = rec->hits;
      }
      if (visible) {
        status = ssd_->PutRecord(record, /*sync=*/true);
        indexed = status.ok();
        if (!indexed) metrics_.ssd_write_errors_io->Increment();
      }
    }
    if (!status.ok()) {
      spdlog::warn("kvstash storage: SSD write of {} failed: {}", key.ToHex(), status.ToString());
    }
  }
  bool remove = written && !indexed;
  {
    std::lock_guard<std::mutex> lock(shard.mu);
    --rec->io_refs;
    if (indexed && rec->visible) {
      rec->ssd = SsdState::kOnSsd;
      if (rec->pins != record.pins || rec->hits != record.hits) PersistPinsLocked(*rec);
    } else {
      // Deleted or replaced while being written, or the write failed.
      remove = remove || indexed;
      rec->ssd = SsdState::kNone;
      if (!status.ok()) rec->ssd_failed = true;
    }
    UpdatePoliciesLocked(*rec);
    MaybeFreeArenaLocked(*rec);
  }
  if (remove) ssd_->Remove(key, record.seq, payload_bytes);
  if (indexed && !remove) {
    metrics_.ssd.bytes_written->Increment(payload_bytes);
    metrics_.ssd_write_seconds->Observe((SteadyNs() - start) * 1e-9);
  }
  metrics_.ssd.used_bytes->Set(static_cast<double>(ssd_->used_bytes()));
  return status;
}

Result<Lease> TieredStore::Promote(const std::shared_ptr<ObjectRec>& rec, uint32_t lease_ms) {
  Shard& shard = ShardFor(rec->name.storage_key);
  const Hash128& key = rec->name.storage_key;
  uint64_t seq;
  {
    std::lock_guard<std::mutex> lock(shard.mu);
    seq = rec->ssd_seq;
  }
  Result<PageAllocator::Extent> extent = AllocateArena(rec->info.payload_bytes);
  Status status = extent.status();
  if (extent.ok()) {
    uint64_t start = SteadyNs();
    status = ssd_->ReadObject(key, seq, rec->info, arena_->base() + extent->offset);
    metrics_.ssd_read_seconds->Observe((SteadyNs() - start) * 1e-9);
  }
  bool unreadable = absl::IsDataLoss(status) || absl::IsNotFound(status);
  if (absl::IsDataLoss(status)) {
    metrics_.checksum_failures->Increment();
    spdlog::error("kvstash storage: dropping SSD object {} (file {}): {}", key.ToHex(), seq,
                  status.ToString());
  }
  Deferred later;
  bool served = false;
  {
    std::lock_guard<std::mutex> lock(shard.mu);
    std::shared_ptr<Promotion> promotion = std::move(rec->promotion);
    rec->promotion = nullptr;
    if (status.ok() && rec->visible) {
      rec->in_cpu = true;
      rec->arena_offset = extent->offset;
      ++rec->leases;
      ++rec->hits;
      rec->last_access_ns = WallNs();
      served = true;
      UpdatePoliciesLocked(*rec);
    } else {
      if (extent.ok()) FreeExtent(extent->offset);
      if (unreadable && rec->visible) {
        HideLocked(shard, rec, later);
      } else {
        UpdatePoliciesLocked(*rec);
      }
    }
    {
      std::lock_guard<std::mutex> plock(promotion->mu);
      promotion->done = true;
    }
    promotion->cv.notify_all();
  }
  RunDeferred(later);
  if (!served) {
    metrics_.ssd.misses->Increment();
    if (status.ok() || unreadable) {
      return absl::NotFoundError(
          absl::StrCat("object ", key.ToHex(), status.ok() ? " was deleted" : " is unreadable"));
    }
    return status;
  }
  metrics_.ssd.hits->Increment();
  metrics_.ssd.bytes_read->Increment(rec->info.payload_bytes);
  metrics_.cpu.bytes_written->Increment(rec->info.payload_bytes);
  return RegisterLease(rec, lease_ms, Tier::kSsd);
}

}  // namespace kvstash::storage
