// StorageTier: a lower tier of the store, below the CPU arena (docs/storage.md "Lower tiers").
//
// The store (TieredStore) keeps the objects' state, the eviction policy of each tier and every
// placement decision; a StorageTier is mechanism only, as TierCodec (tier_codec.h) is for
// encoding: it writes one object version, reads it back into memory the store owns, removes it,
// recovers what it holds at start-up, and accounts its space. SsdTier (files + RocksDB index) is
// one implementation.
//
// Contract:
//   - An object version on a tier is named by (storage key, seq); Write assigns seq.
//   - Space: TryReserve(StoredBytes(payload), limit) before a Write; a successful Write turns the
//     reservation into used bytes, a failed one releases it. Remove releases them. The store
//     evicts (picks victims with its policy, then Remove) when TryReserve fails against its
//     watermark; the tier never evicts by itself.
//   - Durability: after Write returns OK the payload is durable, the record is not: PutRecord
//     makes the version recoverable (with `sync`, durably so; otherwise by the next Sync, synced
//     PutRecord or within the tier's group-sync interval). Recover returns exactly the versions
//     whose record was put and whose bytes are intact in size, the newest version per key.
//   - Read verifies what it returns (header, name, crc32c): DataLoss on any mismatch or short
//     object, NotFound if it is gone, Internal for I/O errors; never reports unverified bytes as
//     good. `dst` is page-aligned with room for the payload rounded up to 4 KiB (tiers may use
//     O_DIRECT).
//   - Errors: ResourceExhausted when the medium is full, Internal for other I/O failures.
//
// Threading: every method is thread-safe; Write, Read and Remove of different versions run in
// parallel. Recover is called once, before anything else.
#ifndef KVSTASH_STORAGE_STORAGE_TIER_H_
#define KVSTASH_STORAGE_STORAGE_TIER_H_

#include <cstdint>
#include <vector>

#include "kvstash/common/key.h"
#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"
#include "kvstash/common/tier.h"
#include "kvstash/storage/object_store.h"

namespace kvstash::storage {

// What a lower tier keeps about one object version (SsdTier persists it in its index).
struct TierRecord {
  StoredName name;
  ObjectInfo info;  // the stored payload, as its header says (lossy is not kept there: false)
  // What a reader of this copy gets: `info` itself (lossy aside) unless `encoded`, when the tier
  // holds a TierCodec encoding and `served` is what decoding it yields (raw, its crc32c).
  ObjectInfo served;
  bool encoded = false;
  uint64_t seq = 0;
  uint64_t hits = 0;
  uint64_t last_access_ns = 0;  // since the Unix epoch
  uint32_t pins = 0;
};

class StorageTier {
 public:
  virtual ~StorageTier() = default;

  // Which tier this is (Stats, lease sources, metrics labels).
  virtual Tier tier() const = 0;

  // The versions this tier holds from an earlier run (see the contract above); drops and
  // deletes everything else (older versions, orphans, damaged objects). Accounts the
  // survivors' bytes as used.
  virtual Result<std::vector<TierRecord>> Recover() = 0;

  // Bytes an object of `payload_bytes` takes on this tier (what TryReserve and used_bytes count).
  virtual uint64_t StoredBytes(uint64_t payload_bytes) const = 0;
  // True, and reserves `bytes`, when used + reserved + bytes <= limit_bytes.
  virtual bool TryReserve(uint64_t bytes, uint64_t limit_bytes) = 0;
  virtual void Unreserve(uint64_t bytes) = 0;
  virtual uint64_t used_bytes() const = 0;
  virtual uint64_t capacity_bytes() const = 0;

  // Writes record->info.payload_bytes bytes of `payload` (readable up to the next 4 KiB
  // boundary) as a new version and sets record->seq. Consumes a reservation of
  // StoredBytes(record->info.payload_bytes) either way; leaves nothing behind on failure.
  virtual Status Write(TierRecord* record, const uint8_t* payload) = 0;
  // Makes a written version recoverable, or updates its record (hits, pins).
  virtual Status PutRecord(const TierRecord& record, bool sync) = 0;
  // PutRecord for many, then one Sync.
  virtual Status PutRecords(const std::vector<TierRecord>& records) = 0;
  // Every record put so far survives a crash once this returns OK.
  virtual Status Sync() = 0;
  // Deletes one version (record and bytes) and releases its space. Best effort: failures are
  // logged, and Recover cleans up what is left.
  virtual void Remove(const Hash128& storage_key, uint64_t seq, uint64_t payload_bytes) = 0;

  // Reads and verifies one version, whose stored payload `info` describes, into `dst`.
  virtual Status Read(const Hash128& storage_key, uint64_t seq, const ObjectInfo& info,
                      uint8_t* dst) = 0;

  // --- Landing (optional): a tier whose memory a transport writes directly (the GPU pool) ---
  // A landing is room on the tier for one payload that something else fills (a UCX read from a
  // peer), then becomes a version (AdoptLanding) or is freed (FreeLanding). Tiers without memory
  // of their own (SSD) keep the defaults: Unimplemented.
  //
  // Consumes a TryReserve of StoredBytes(payload_bytes) either way and, on success, returns the
  // landing's offset in the tier's memory; its bytes count as used until freed or adopted.
  // ResourceExhausted when no extent is large enough.
  virtual Result<uint64_t> AllocateLanding(uint64_t payload_bytes) {
    (void)payload_bytes;
    return absl::UnimplementedError("this tier takes no landings");
  }
  // Copies `n` host bytes to byte `at` of the landing at `offset` (a transfer that arrives in
  // host memory). InvalidArgument past the landing's end.
  virtual Status WriteLanding(uint64_t offset, uint64_t at, const uint8_t* src, uint64_t n) {
    (void)offset, (void)at, (void)src, (void)n;
    return absl::UnimplementedError("this tier takes no landings");
  }
  // crc32c of the first `payload_bytes` bytes landed at `offset` (read back from the medium).
  virtual Result<uint32_t> LandedCrc32c(uint64_t offset, uint64_t payload_bytes) {
    (void)offset, (void)payload_bytes;
    return absl::UnimplementedError("this tier takes no landings");
  }
  // Turns the landing at `offset` into a version holding record->info (sets record->seq), as a
  // Write of the same bytes would; the landing is gone either way.
  virtual Status AdoptLanding(uint64_t offset, TierRecord* record) {
    (void)offset, (void)record;
    return absl::UnimplementedError("this tier takes no landings");
  }
  // Frees a landing that was not adopted and releases its space.
  virtual void FreeLanding(uint64_t offset) { (void)offset; }
};

}  // namespace kvstash::storage

#endif  // KVSTASH_STORAGE_STORAGE_TIER_H_
