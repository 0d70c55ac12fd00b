// SsdTier: durable object files plus their RocksDB index, under StoreOptions::data_dir/ssd.
//
//   ssd/index/          RocksDB: one record per object version, key 'o' || storage key (16 bytes,
//                       Hash128::Bytes) || seq (u64 big-endian); value = a TierRecord (ssd_tier.cc)
//   ssd/objects/<seq>.kvo   one file per object version:
//        [0, 64)      the object header of common/object_header.h (payload length, crc32c, ...)
//        [64, 4096)   name block: "KVSN", storage key, namespace, fingerprint, token hash, crc32c
//        [4096, ...)  the payload, so it sits on a block boundary and moves between file and
//                     arena with O_DIRECT, no bounce copy, in both directions
//
// Files are created empty ahead of time by a background thread, in batches sealed by one fsync
// of the directory, so a write's critical path has no directory operation at all: it fills a
// ready file (fallocate, one vectored write, fdatasync) and only then puts the index record.
// After a crash every index record names a whole, synced file; a file without a record (a ready
// file, or a write that never got its record) is an orphan that Recover() deletes, as it deletes
// any *.tmp left by older versions.
//
// The StorageTier of kvstash/storage/storage_tier.h (its contract holds); placement, eviction
// and admission decisions live in the store.
// Threading: all methods are thread-safe; Write and Read run in parallel.
#ifndef KVSTASH_STORAGE_SSD_TIER_H_
#define KVSTASH_STORAGE_SSD_TIER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kvstash/common/mutex.h"
#include "kvstash/common/status.h"
#include "kvstash/storage/object_store.h"
#include "kvstash/storage/storage_tier.h"
#include "store_metrics.h"

namespace rocksdb {
class DB;
}

namespace kvstash::storage {

class UringReaderPool;

class SsdTier final : public StorageTier {
 public:
  struct Options {
    std::string dir;  // data_dir/ssd
    uint64_t capacity_bytes = 0;
    int io_threads = 4;
  };

  static Result<std::unique_ptr<SsdTier>> Open(const Options& options, StoreMetrics* metrics);
  ~SsdTier() override;

  Tier tier() const override { return Tier::kSsd; }

  // Reads the index, drops every record that is not the newest version of its key or whose file
  // is missing or has the wrong length, deletes orphan and temp files, and returns the survivors.
  // Accounts their bytes as used. Call once, before anything else.
  Result<std::vector<TierRecord>> Recover() override;

  // Disk bytes an object's file takes (header block + payload rounded up to blocks).
  static uint64_t FileBytes(uint64_t payload_bytes);
  uint64_t StoredBytes(uint64_t payload_bytes) const override { return FileBytes(payload_bytes); }

  // Space accounting against capacity_bytes: TryReserve succeeds when used + reserved + bytes
  // stays within `limit_bytes`. A successful Write turns its reservation into used bytes.
  bool TryReserve(uint64_t bytes, uint64_t limit_bytes) override;
  void Unreserve(uint64_t bytes) override;
  uint64_t used_bytes() const override { return used_.load(); }
  uint64_t capacity_bytes() const override { return options_.capacity_bytes; }
  bool direct_io() const { return direct_io_; }

  // Writes one object version into a fresh file, sets record->seq to the file's number, and
  // syncs it (the file's directory entry is already durable). `payload` holds
  // record->info.payload_bytes bytes and is readable up to the next 4 KiB boundary. On failure
  // nothing is left behind; ResourceExhausted for ENOSPC/EDQUOT, Internal for other I/O errors.
  // Consumes a reservation of FileBytes() made with TryReserve either way.
  Status Write(TierRecord* record, const uint8_t* payload) override;

  // The index record. `sync` waits for the WAL to reach the disk (and so makes every earlier
  // record durable too); otherwise the record is synced by the next synced write, Sync(), or
  // a WAL sync this call starts when the last one is older than 50 ms.
  Status PutRecord(const TierRecord& record, bool sync) override;
  // Syncs the index WAL: every record put so far survives a crash.
  Status Sync() override;
  // Deletes the index record and the file of one version and releases its bytes.
  void Remove(const Hash128& storage_key, uint64_t seq, uint64_t payload_bytes) override;

  // Reads and verifies one version into `dst` (room for the payload rounded up to 4 KiB):
  // header bytes must equal the encoding of `info` (whose lossy flag is ignored), the name block
  // must name `storage_key`, the payload crc32c must match. DataLoss on any mismatch or short file,
  // NotFound if the file is gone, Internal for I/O errors. Never leaves partially verified bytes
  // reported as good.
  Status Read(const Hash128& storage_key, uint64_t seq, const ObjectInfo& info,
              uint8_t* dst) override;

  // Writes the given records without syncing each, then syncs the WAL once (used at Close to
  // persist hit counts and pins).
  Status PutRecords(const std::vector<TierRecord>& records) override;

 private:
  SsdTier(Options options, StoreMetrics* metrics);
  std::string FilePath(uint64_t seq, bool temp) const;
  // Makes every directory change made so far durable (call after the change).
  Status SyncObjectsDir();
  // An empty file whose directory entry is durable; from the pool, or made here if it is empty.
  Result<uint64_t> TakeReadyFile();
  Status CreateEmptyFile(uint64_t seq);
  void PoolLoop();

  Options options_;
  StoreMetrics* metrics_;
  std::string objects_dir_;
  int objects_dir_fd_ = -1;
  bool direct_io_ = false;
  std::unique_ptr<rocksdb::DB> db_;
  std::unique_ptr<UringReaderPool> readers_;
  std::atomic<uint64_t> next_seq_{1};
  std::atomic<uint64_t> used_{0};
  std::atomic<uint64_t> dir_changes_{0};
  Mutex dir_sync_mu_;
  uint64_t dir_synced_upto_ ABSL_GUARDED_BY(dir_sync_mu_) = 0;
  Mutex wal_sync_mu_;                      // one WAL sync at a time
  std::atomic<int64_t> last_wal_sync_{0};  // steady_clock ticks
  Mutex pool_mu_;
  CondVar pool_cv_;
  std::deque<uint64_t> ready_files_ ABSL_GUARDED_BY(pool_mu_);  // oldest first
  bool pool_stop_ ABSL_GUARDED_BY(pool_mu_) = false;
  std::thread pool_thread_;
  Mutex space_mu_;
  uint64_t reserved_ ABSL_GUARDED_BY(space_mu_) = 0;
};

}  // namespace kvstash::storage

#endif  // KVSTASH_STORAGE_SSD_TIER_H_
