// TieredStore: the SSD side (write-through and demotion, promotion, SSD eviction, recovery).
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

TierRecord TieredStore::RecordOf(const ObjectRec& rec) const {
  TierRecord r;
  r.name = rec.name;
  r.info = rec.ssd.info;
  r.served = rec.ssd.served;
  r.encoded = rec.ssd.encoded;
  r.seq = rec.ssd.seq;
  r.hits = rec.hits;
  r.last_access_ns = rec.last_access_ns;
  r.pins = rec.pins;
  return r;
}

void TieredStore::RecoverSsd(std::vector<TierRecord> records) {
  // Oldest first, so the SSD policy sees the recorded recency.
  std::sort(records.begin(), records.end(), [](const TierRecord& a, const TierRecord& b) {
    return a.last_access_ns < b.last_access_ns;
  });
  for (TierRecord& r : records) {
    auto rec = std::make_shared<ObjectRec>(r.name, r.served);
    rec->ssd.info = r.info;
    rec->ssd.served = r.served;
    rec->ssd.encoded = r.encoded;
    rec->ssd.state = CopyState::kStored;
    AddSsdUsage(*rec, true);
    rec->ssd.seq = r.seq;
    rec->hits = r.hits;
    rec->pins = r.pins;
    rec->last_access_ns = r.last_access_ns;
    Shard& shard = ShardFor(r.name.storage_key);
    MutexLock lock(&shard.mu);
    shard.objects[r.name.storage_key] = rec;
    UpdatePoliciesLocked(shard, *rec);
  }
  metrics_.ssd.used_bytes->Set(static_cast<double>(ssd_->used_bytes()));
}

bool TieredStore::EvictOneSsd() {
  std::optional<Hash128> victim;
  {
    MutexLock lock(&ssd_policy_mu_);
    victim = ssd_policy_->Victim();
  }
  if (!victim) return false;
  std::shared_ptr<ObjectRec> rec;
  uint64_t seq = 0;
  uint64_t stored_bytes = 0;
  {
    Shard& shard = ShardFor(*victim);
    MutexLock lock(&shard.mu);
    auto it = shard.objects.find(*victim);
    if (it == shard.objects.end() || !it->second->ssd.in_policy) return true;  // changed; retry
    rec = it->second;
    seq = rec->ssd.seq;
    stored_bytes = rec->ssd.info.payload_bytes;
    rec->ssd.state = CopyState::kNone;
    AddSsdUsage(*rec, false);
    if (!rec->in_cpu) {
      shard.objects.erase(it);
      rec->visible = false;
    }
    UpdatePoliciesLocked(shard, *rec);
  }
  ssd_->Remove(rec->name.storage_key, seq, stored_bytes);
  metrics_.ssd.evictions->Increment();
  metrics_.ssd.used_bytes->Set(static_cast<double>(ssd_->used_bytes()));
  return true;
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
    Status status = WriteToSsd(job.rec, job.done != nullptr);
    if (job.done) job.done->set_value(status);
    job.rec.reset();
    {
      MutexLock lock(&write_mu_);
      if (--pending_writes_ == 0) idle_cv_.SignalAll();
    }
    SignalArena();  // the object just written may now be evictable
  }
}

Status TieredStore::WriteToSsd(const std::shared_ptr<ObjectRec>& rec, bool durable) {
  uint64_t start = SteadyNs();
  Shard& shard = ShardFor(rec->name.storage_key);
  const Hash128& key = rec->name.storage_key;
  TierRecord record;
  bool visible;
  {
    MutexLock lock(&shard.mu);
    visible = rec->visible;
    if (visible) {
      record = RecordOf(*rec);
      // A fresh copy of what the arena holds (the rec's ssd_* fields describe an older one).
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
    const uint64_t file_bytes = ssd_->StoredBytes(payload_bytes);
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
      status = ssd_->Write(&record, payload);
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
        rec->ssd.seq = record.seq;
        rec->ssd.info = record.info;
        rec->ssd.served = record.served;
        rec->ssd.encoded = record.encoded;
        record.pins = rec->pins;
        record.hits = rec->hits;
      }
      if (visible) {
        // A durable commit waits for a synced WAL; write-through records are synced in groups
        // (at most 50 ms later, or by Flush): either way the file was synced first.
        status = ssd_->PutRecord(record, /*sync=*/durable);
        indexed = status.ok();
        if (!indexed) metrics_.ssd_write_errors_io->Increment();
      }
    }
    if (!status.ok()) {
      spdlog::warn("kvstash storage: SSD write of {} failed: {}", key.ToHex(), status.ToString());
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
      rec->ssd.state = CopyState::kStored;
      AddSsdUsage(*rec, true);
      if (rec->pins != record.pins || rec->hits != record.hits) PersistPinsLocked(shard, *rec);
    } else {
      // Deleted or replaced while being written, or the write failed.
      remove = remove || indexed;
      rec->ssd.state = CopyState::kNone;
      if (!status.ok()) rec->ssd.failed = true;
    }
    UpdatePoliciesLocked(shard, *rec);
    MaybeFreeArenaLocked(shard, *rec);
  }
  RunDeferred(later);
  if (remove) ssd_->Remove(key, record.seq, payload_bytes);
  if (indexed && !remove) {
    metrics_.ssd.bytes_written->Increment(payload_bytes);
    metrics_.ssd_write_seconds->Observe((SteadyNs() - start) * 1e-9);
    if (record.encoded) metrics_.AddSsdEncoded(record.served.payload_bytes, payload_bytes);
  }
  metrics_.ssd.used_bytes->Set(static_cast<double>(ssd_->used_bytes()));
  return status;
}

Result<Lease> TieredStore::Promote(const std::shared_ptr<ObjectRec>& rec, uint32_t lease_ms) {
  Shard& shard = ShardFor(rec->name.storage_key);
  const Hash128& key = rec->name.storage_key;
  uint64_t seq;
  ObjectInfo stored, served_info;
  bool encoded;
  {
    MutexLock lock(&shard.mu);
    seq = rec->ssd.seq;
    stored = rec->ssd.info;
    served_info = rec->ssd.served;
    encoded = rec->ssd.encoded;
  }
  Result<PageAllocator::Extent> extent = AllocateArena(served_info.payload_bytes);
  Status status = extent.status();
  if (extent.ok()) {
    status = ReadSsdCopy(key, seq, stored, served_info, encoded, arena_->base() + extent->offset);
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
    MutexLock lock(&shard.mu);
    std::shared_ptr<Promotion> promotion = std::move(rec->promotion);
    rec->promotion = nullptr;
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
  if (!served) {
    metrics_.ssd.misses->Increment();
    if (status.ok() || unreadable) {
      return absl::NotFoundError(
          absl::StrCat("object ", key.ToHex(), status.ok() ? " was deleted" : " is unreadable"));
    }
    return status;
  }
  metrics_.ssd.hits->Increment();
  metrics_.ssd.bytes_read->Increment(stored.payload_bytes);
  metrics_.cpu.bytes_written->Increment(rec->info.payload_bytes);
  return RegisterLease(rec, lease_ms, ssd_->tier());
}

Status TieredStore::ReadSsdCopy(const Hash128& key, uint64_t seq, const ObjectInfo& stored,
                                const ObjectInfo& served, bool encoded, uint8_t* dst) {
  uint64_t start = SteadyNs();
  if (!encoded) {
    Status status = ssd_->Read(key, seq, stored, dst);
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
  KVSTASH_RETURN_IF_ERROR(ssd_->Read(key, seq, stored, buffer.get()));
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
