// TieredStore: the lower tiers (write-through and demotion into the first one, promotion from the
// first that holds a copy, per-tier eviction and recovery). The SSD tier is the only one built.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kvstash/common/crc32c.h"
#include "spdlog/spdlog.h"
#include "tiered_store.h"

namespace kvstash::storage {
namespace {
uint64_t SteadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A page-aligned buffer for an encoded payload: O_DIRECT I/O reads and writes whole blocks, so the
// length is rounded up to one and the tail is zeroed.
struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};
using PageBuffer = std::unique_ptr<uint8_t, FreeDeleter>;
PageBuffer NewPageBuffer(uint64_t bytes) {
  uint64_t rounded = (bytes + 4095) / 4096 * 4096;
  if (rounded == 0) rounded = 4096;
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(4096, rounded));
  if (p != nullptr) std::memset(p + bytes, 0, rounded - bytes);
  return PageBuffer(p);
}
}  // namespace

int TieredStore::FirstStoredLocked(const ObjectRec& rec, size_t tiers) {
  for (size_t i = 0; i < tiers; ++i) {
    if (rec.lower[i].state == CopyState::kStored) return static_cast<int>(i);
  }
  return -1;
}

TierRecord TieredStore::RecordOf(const ObjectRec& rec, size_t tier_index) const {
  const LowerCopy& copy = rec.lower[tier_index];
  TierRecord r;
  r.name = rec.name;
  r.info = copy.info;
  r.served = copy.served;
  r.encoded = copy.encoded;
  r.seq = copy.seq;
  r.hits = rec.hits;
  r.last_access_ns = rec.last_access_ns;
  r.pins = rec.pins;
  return r;
}

void TieredStore::RecoverLower(LowerTier& lt, std::vector<TierRecord> records) {
  // Oldest first, so the tier's policy sees the recorded recency.
  std::sort(records.begin(), records.end(), [](const TierRecord& a, const TierRecord& b) {
    return a.last_access_ns < b.last_access_ns;
  });
  std::vector<TierRecord> stale;
  for (TierRecord& r : records) {
    Shard& shard = ShardFor(r.name.storage_key);
    MutexLock lock(&shard.mu);
    auto it = shard.objects.find(r.name.storage_key);
    std::shared_ptr<ObjectRec> rec;
    if (it == shard.objects.end()) {
      rec = std::make_shared<ObjectRec>(r.name, r.served);
      rec->hits = r.hits;
      rec->pins = r.pins;
      rec->last_access_ns = r.last_access_ns;
      shard.objects[r.name.storage_key] = rec;
    } else if (it->second->info.payload_bytes == r.served.payload_bytes &&
               it->second->info.payload_crc32c == r.served.payload_crc32c) {
      rec = it->second;  // a higher tier recovered the same bytes: one more copy of them
    } else {
      stale.push_back(r);  // a higher tier holds another version of the key: it wins
      continue;
    }
    LowerCopy& copy = rec->lower[lt.index];
    copy.info = r.info;
    copy.served = r.served;
    copy.encoded = r.encoded;
    copy.state = CopyState::kStored;
    AddLowerUsage(*rec, lt, true);
    copy.seq = r.seq;
    UpdatePoliciesLocked(shard, *rec);
  }
  for (const TierRecord& r : stale) {
    lt.tier->Remove(r.name.storage_key, r.seq, r.info.payload_bytes);
  }
  lt.metrics->used_bytes->Set(static_cast<double>(lt.tier->used_bytes()));
}

bool TieredStore::EvictOneLower(LowerTier& lt) {
  std::optional<Hash128> victim;
  {
    MutexLock lock(&lt.policy_mu);
    victim = lt.policy->Victim();
  }
  if (!victim) return false;
  LowerTier* next = lt.index + 1 < lower_.size() ? lower_[lt.index + 1].get() : nullptr;
  std::shared_ptr<ObjectRec> rec;
  uint64_t seq = 0;
  uint64_t stored_bytes = 0;
  bool move = false;
  LowerCopy move_src;
  {
    Shard& shard = ShardFor(*victim);
    MutexLock lock(&shard.mu);
    auto it = shard.objects.find(*victim);
    if (it == shard.objects.end() || !it->second->lower[lt.index].in_policy) {
      return true;  // changed; retry
    }
    rec = it->second;
    LowerCopy& copy = rec->lower[lt.index];
    if (next != nullptr && rec->lower[next->index].state == CopyState::kNone &&
        !rec->lower[next->index].failed) {
      // Cascade: the copy moves down instead of being dropped.
      copy.moving = true;
      rec->lower[next->index].state = CopyState::kPending;
      move_src = copy;
      move = true;
      UpdatePoliciesLocked(shard, *rec);
    } else {
      seq = copy.seq;
      stored_bytes = copy.info.payload_bytes;
      copy.state = CopyState::kNone;
      AddLowerUsage(*rec, lt, false);
      const int stored = FirstStoredLocked(*rec, lower_.size());
      if (!rec->in_cpu && stored < 0) {
        shard.objects.erase(it);
        rec->visible = false;
      } else if (!rec->in_cpu) {
        // Readers now get what the next copy decodes to (promotion reads the first one left).
        rec->info.payload_crc32c = rec->lower[stored].served.payload_crc32c;
        rec->info.lossy = rec->lower[stored].served.lossy;
      }
      UpdatePoliciesLocked(shard, *rec);
    }
  }
  if (move) {
    MoveDown(lt, *next, rec, move_src);
    lt.metrics->evictions->Increment();
    return true;
  }
  lt.tier->Remove(rec->name.storage_key, seq, stored_bytes);
  lt.metrics->evictions->Increment();
  lt.metrics->used_bytes->Set(static_cast<double>(lt.tier->used_bytes()));
  return true;
}

bool TieredStore::ReserveOnLower(LowerTier& lt, uint64_t bytes) {
  StorageTier& tier = *lt.tier;
  const double capacity = static_cast<double>(tier.capacity_bytes());
  const auto high = static_cast<uint64_t>(options_.high_watermark * capacity);
  const auto low = static_cast<uint64_t>(options_.low_watermark * capacity);
  // Crossing the high watermark evicts objects (by the tier's policy) down to the low one; the
  // hard limit is the capacity itself.
  bool reserved = tier.TryReserve(bytes, high);
  while (!reserved) {
    reserved = tier.TryReserve(bytes, low);
    if (reserved || !EvictOneLower(lt)) break;
  }
  if (!reserved) reserved = tier.TryReserve(bytes, tier.capacity_bytes());
  return reserved;
}

void TieredStore::MoveDown(LowerTier& from, LowerTier& to, const std::shared_ptr<ObjectRec>& rec,
                           const LowerCopy& src) {
  Shard& shard = ShardFor(rec->name.storage_key);
  const Hash128& key = rec->name.storage_key;
  TierRecord record;
  {
    MutexLock lock(&shard.mu);
    record = RecordOf(*rec, from.index);
  }
  // The stored bytes move as they are (an encoded copy stays encoded, with its infos).
  record.info = src.info;
  record.served = src.served;
  record.encoded = src.encoded;
  const uint64_t payload_bytes = src.info.payload_bytes;
  PageBuffer buffer = NewPageBuffer(payload_bytes);
  Status status = buffer != nullptr
                      ? from.tier->Read(key, src.seq, src.info, buffer.get())
                      : absl::ResourceExhaustedError("no memory for a tier-to-tier move buffer");
  if (status.ok()) from.metrics->bytes_read->Increment(payload_bytes);
  bool written = false;
  bool indexed = false;
  if (status.ok()) {
    const uint64_t stored_bytes = to.tier->StoredBytes(payload_bytes);
    if (!ReserveOnLower(to, stored_bytes)) {
      status = absl::ResourceExhaustedError(absl::StrCat(
          std::string(TierName(to.tier->tier())), " tier ", to.index,
          " full: ", to.tier->used_bytes(), " of ", to.tier->capacity_bytes(), " bytes used"));
    } else {
      status = to.tier->Write(&record, buffer.get());
      written = status.ok();
    }
  }
  if (written) {
    // Synced: the copy below must be recoverable before the one above is removed.
    status = to.tier->PutRecord(record, /*sync=*/true);
    indexed = status.ok();
  }
  if (!status.ok() && !absl::IsNotFound(status)) {
    spdlog::warn("kvstash storage: moving {} from {} tier {} to {} tier {} failed (dropped): {}",
                 key.ToHex(), TierName(from.tier->tier()), from.index, TierName(to.tier->tier()),
                 to.index, status.ToString());
  }
  bool remove_new = written && !indexed;
  bool remove_old = false;
  {
    MutexLock lock(&shard.mu);
    LowerCopy& old_copy = rec->lower[from.index];
    LowerCopy& new_copy = rec->lower[to.index];
    old_copy.moving = false;
    if (indexed && rec->visible) {
      new_copy.state = CopyState::kStored;
      new_copy.seq = record.seq;
      new_copy.info = record.info;
      new_copy.served = record.served;
      new_copy.encoded = record.encoded;
      AddLowerUsage(*rec, to, true);
    } else {
      // Deleted or replaced meanwhile (HideLocked removed the old copy), or the move failed.
      remove_new = remove_new || indexed;
      new_copy.state = CopyState::kNone;
      if (!status.ok()) new_copy.failed = true;
    }
    // The copy leaves `from` either way: it was picked for eviction.
    if (old_copy.state == CopyState::kStored) {
      old_copy.state = CopyState::kNone;
      AddLowerUsage(*rec, from, false);
      remove_old = true;
    }
    if (rec->visible && !rec->in_cpu) {
      const int stored = FirstStoredLocked(*rec, lower_.size());
      if (stored < 0) {
        auto it = shard.objects.find(key);
        if (it != shard.objects.end() && it->second == rec) shard.objects.erase(it);
        rec->visible = false;
      } else {
        rec->info.payload_crc32c = rec->lower[stored].served.payload_crc32c;
        rec->info.lossy = rec->lower[stored].served.lossy;
      }
    }
    UpdatePoliciesLocked(shard, *rec);
  }
  if (remove_new) to.tier->Remove(key, record.seq, payload_bytes);
  if (remove_old) from.tier->Remove(key, src.seq, payload_bytes);
  if (indexed && !remove_new) to.metrics->bytes_written->Increment(payload_bytes);
  from.metrics->used_bytes->Set(static_cast<double>(from.tier->used_bytes()));
  to.metrics->used_bytes->Set(static_cast<double>(to.tier->used_bytes()));
}

void TieredStore::WriterLoop() {
  for (;;) {
    WriteJob job;
    {
      MutexLock lock(&write_mu_);
      while (!writers_stop_ && write_queue_.empty()) write_cv_.Wait(&write_mu_);
      if (write_queue_.empty()) return;  // stopping, and every queued write is done
      job = std::move(write_queue_.front());
      write_queue_.pop_front();
    }
    Status status = WriteDown(job.rec, job.done != nullptr);
    if (job.done) job.done->set_value(status);
    job.rec.reset();
    {
      MutexLock lock(&write_mu_);
      if (--pending_writes_ == 0) idle_cv_.SignalAll();
    }
    SignalArena();  // the object just written may now be evictable
  }
}

Status TieredStore::WriteDown(const std::shared_ptr<ObjectRec>& rec, bool durable) {
  LowerTier& lt = *lower_.front();  // writers exist only when there is a lower tier
  StorageTier& tier = *lt.tier;
  LowerCopy& copy = rec->lower[lt.index];
  uint64_t start = SteadyNs();
  Shard& shard = ShardFor(rec->name.storage_key);
  const Hash128& key = rec->name.storage_key;
  TierRecord record;
  bool visible;
  {
    MutexLock lock(&shard.mu);
    visible = rec->visible;
    if (visible) {
      record = RecordOf(*rec, lt.index);
      // A fresh copy of what the arena holds (the rec's LowerCopy describes an older one).
      record.info = rec->info;
      record.info.lossy = false;
      record.served = rec->info;
      record.encoded = false;
    }
  }
  // Never write bytes that fail their crc32c (a shared-memory commit not yet checked is checked
  // now); such a rec is hidden below instead.
  Status check = visible ? CheckArenaBytes(*rec) : OkStatus();
  if (!check.ok()) visible = false;
  // The arena bytes cannot move or be freed while io_refs > 0.
  const uint8_t* payload = arena_->base() + rec->arena_offset;
  PageBuffer encoded_payload;
  if (visible && options_.ssd_codec != nullptr) {
    // Encoding runs here, in the writer pool, never on the caller's path.
    uint64_t encode_start = SteadyNs();
    Result<std::optional<TierCodec::Encoded>> encoded = options_.ssd_codec->EncodeForTier(
        record.served, std::span<const uint8_t>(payload, record.served.payload_bytes));
    if (!encoded.ok()) {
      metrics_.ssd_encode_refused->Increment();
      spdlog::warn("kvstash storage: {} could not encode {}; stored as is: {}",
                   options_.ssd_codec->name(), key.ToHex(), encoded.status().ToString());
    } else if (!encoded->has_value()) {
      metrics_.ssd_encode_refused->Increment();
    } else {
      TierCodec::Encoded& e = **encoded;
      encoded_payload = NewPageBuffer(e.bytes.size());
      if (encoded_payload != nullptr && e.stored_info.payload_bytes == e.bytes.size() &&
          e.decoded_info.payload_bytes == record.served.payload_bytes) {
        std::memcpy(encoded_payload.get(), e.bytes.data(), e.bytes.size());
        payload = encoded_payload.get();
        record.info = e.stored_info;
        record.info.lossy = false;
        record.served = e.decoded_info;
        record.encoded = true;
        metrics_.ssd_encode_seconds->Observe((SteadyNs() - encode_start) * 1e-9);
      } else {
        encoded_payload.reset();
        metrics_.ssd_encode_refused->Increment();
        spdlog::error("kvstash storage: {} returned an inconsistent encoding of {}; stored as is",
                      options_.ssd_codec->name(), key.ToHex());
      }
    }
  }
  const uint64_t payload_bytes = record.info.payload_bytes;  // of the file
  Status status = OkStatus();
  bool written = false;  // the file exists (and its bytes are accounted)
  bool indexed = false;  // the index record was put
  if (visible) {
    const uint64_t file_bytes = tier.StoredBytes(payload_bytes);
    if (!ReserveOnLower(lt, file_bytes)) {
      metrics_.ssd_write_errors_capacity->Increment();
      status = absl::ResourceExhaustedError(absl::StrCat(
          std::string(TierName(tier.tier())), " tier full: ", tier.used_bytes(), " of ",
          tier.capacity_bytes(), " bytes used and nothing evictable for an object of ", file_bytes,
          " bytes"));
    } else {
      status = tier.Write(&record, payload);
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
        MutexLock lock(&shard.mu);
        visible = rec->visible;
        copy.seq = record.seq;
        copy.info = record.info;
        copy.served = record.served;
        copy.encoded = record.encoded;
        record.pins = rec->pins;
        record.hits = rec->hits;
      }
      if (visible) {
        // A durable commit waits for a synced WAL; write-through records are synced in groups
        // (at most 50 ms later, or by Flush): either way the file was synced first.
        status = tier.PutRecord(record, /*sync=*/durable);
        indexed = status.ok();
        if (!indexed) metrics_.ssd_write_errors_io->Increment();
      }
    }
    if (!status.ok()) {
      spdlog::warn("kvstash storage: {} write of {} failed: {}", TierName(tier.tier()), key.ToHex(),
                   status.ToString());
    }
  }
  if (!check.ok()) status = check;
  bool remove = written && !indexed;
  Deferred later;
  {
    MutexLock lock(&shard.mu);
    --rec->io_refs;
    if (!check.ok() && rec->visible) HideLocked(shard, rec, later);
    if (indexed && rec->visible) {
      copy.state = CopyState::kStored;
      AddLowerUsage(*rec, lt, true);
      if (rec->pins != record.pins || rec->hits != record.hits) PersistPinsLocked(shard, *rec);
    } else {
      // Deleted or replaced while being written, or the write failed.
      remove = remove || indexed;
      copy.state = CopyState::kNone;
      if (!status.ok()) copy.failed = true;
    }
    UpdatePoliciesLocked(shard, *rec);
    MaybeFreeArenaLocked(shard, *rec);
  }
  RunDeferred(later);
  if (remove) tier.Remove(key, record.seq, payload_bytes);
  if (indexed && !remove) {
    lt.metrics->bytes_written->Increment(payload_bytes);
    metrics_.ssd_write_seconds->Observe((SteadyNs() - start) * 1e-9);
    if (record.encoded) metrics_.AddSsdEncoded(record.served.payload_bytes, payload_bytes);
  }
  lt.metrics->used_bytes->Set(static_cast<double>(tier.used_bytes()));
  return status;
}

Result<Lease> TieredStore::Promote(const std::shared_ptr<ObjectRec>& rec, uint32_t lease_ms,
                                   bool* retry) {
  *retry = false;
  Shard& shard = ShardFor(rec->name.storage_key);
  const Hash128& key = rec->name.storage_key;
  LowerCopy copy;
  LowerTier* lt = nullptr;
  {
    MutexLock lock(&shard.mu);
    // Acquire promotes only recs that are not in the arena, and those keep a stored copy.
    const int stored = FirstStoredLocked(*rec, lower_.size());
    if (stored >= 0) {
      lt = lower_[stored].get();
      copy = rec->lower[stored];
    }
  }
  const uint64_t seq = copy.seq;
  const ObjectInfo& stored = copy.info;
  const ObjectInfo& served_info = copy.served;
  Result<PageAllocator::Extent> extent =
      lt != nullptr ? AllocateArena(served_info.payload_bytes, ZoneFor(rec->name.name_space))
                    : Result<PageAllocator::Extent>(absl::NotFoundError(
                          absl::StrCat("object ", key.ToHex(), " has no copy left to promote")));
  Status status = extent.status();
  if (extent.ok()) status = ReadLowerCopy(*lt, key, copy, arena_->base() + extent->offset);
  bool unreadable = absl::IsDataLoss(status) || absl::IsNotFound(status);
  Deferred later;
  bool served = false;
  {
    MutexLock lock(&shard.mu);
    std::shared_ptr<Promotion> promotion = std::move(rec->promotion);
    rec->promotion = nullptr;
    // The copy it read moved down a tier (MoveDown removed it) while it was being read: not
    // damage; the caller tries again with the copy's new place.
    if (unreadable && lt != nullptr && rec->visible &&
        (rec->lower[lt->index].state != CopyState::kStored || rec->lower[lt->index].seq != seq) &&
        FirstStoredLocked(*rec, lower_.size()) >= 0) {
      *retry = true;
      unreadable = false;
    } else if (absl::IsDataLoss(status)) {
      metrics_.checksum_failures->Increment();
      spdlog::error("kvstash storage: dropping {} object {} (version {}): {}",
                    TierName(lt->tier->tier()), key.ToHex(), seq, status.ToString());
    }
    if (status.ok() && rec->visible) {
      rec->in_cpu = true;
      AddCpuUsage(*rec, true);
      rec->arena_offset = extent->offset;
      rec->info.payload_crc32c = served_info.payload_crc32c;  // already so unless never in CPU
      rec->info.lossy = served_info.lossy;
      ++rec->leases;
      ++rec->hits;
      rec->last_access_ns = WallNs();
      served = true;
      UpdatePoliciesLocked(shard, *rec);
    } else {
      if (extent.ok()) FreeExtent(extent->offset);
      if (unreadable && rec->visible) {
        HideLocked(shard, rec, later);
      } else {
        UpdatePoliciesLocked(shard, *rec);
      }
    }
    {
      MutexLock plock(&promotion->mu);
      promotion->done = true;
    }
    promotion->cv.SignalAll();
  }
  RunDeferred(later);
  if (*retry) return status;
  if (!served) {
    if (lt != nullptr) lt->metrics->misses->Increment();
    if (status.ok() || unreadable) {
      return absl::NotFoundError(
          absl::StrCat("object ", key.ToHex(), status.ok() ? " was deleted" : " is unreadable"));
    }
    return status;
  }
  lt->metrics->hits->Increment();
  lt->metrics->bytes_read->Increment(stored.payload_bytes);
  metrics_.cpu.bytes_written->Increment(rec->info.payload_bytes);
  return RegisterLease(rec, lease_ms, lt->tier->tier());
}

Status TieredStore::ReadLowerCopy(LowerTier& lt, const Hash128& key, const LowerCopy& copy,
                                  uint8_t* dst) {
  const uint64_t seq = copy.seq;
  const ObjectInfo& stored = copy.info;
  const ObjectInfo& served = copy.served;
  uint64_t start = SteadyNs();
  if (!copy.encoded) {
    Status status = lt.tier->Read(key, seq, stored, dst);
    metrics_.ssd_read_seconds->Observe((SteadyNs() - start) * 1e-9);
    return status;
  }
  if (options_.ssd_codec == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("object ", key.ToHex(), " is encoded on SSD and the store has no ssd_codec"));
  }
  PageBuffer buffer = NewPageBuffer(stored.payload_bytes);
  if (buffer == nullptr) return absl::ResourceExhaustedError("no memory for an SSD read buffer");
  // The tier verifies the stored bytes (header, name, crc32c of the encoding) ...
  KVSTASH_RETURN_IF_ERROR(lt.tier->Read(key, seq, stored, buffer.get()));
  uint64_t decode_start = SteadyNs();
  metrics_.ssd_read_seconds->Observe((decode_start - start) * 1e-9);
  Status status = options_.ssd_codec->Decode(
      stored, std::span<const uint8_t>(buffer.get(), stored.payload_bytes),
      std::span<uint8_t>(dst, served.payload_bytes));
  if (!status.ok()) {
    return absl::DataLossError(absl::StrCat("decoding the SSD copy failed: ", status.message()));
  }
  // ... and what decoding made must be exactly what the index promised readers.
  if (Crc32c(dst, served.payload_bytes) != served.payload_crc32c) {
    return absl::DataLossError("decoded SSD copy does not match its recorded crc32c");
  }
  metrics_.ssd_decode_seconds->Observe((SteadyNs() - decode_start) * 1e-9);
  return OkStatus();
}

}  // namespace kvstash::storage
