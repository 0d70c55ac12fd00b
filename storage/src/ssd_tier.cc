#include "ssd_tier.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "kvstash/common/coding.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/common/object_header.h"
#include "rocksdb/db.h"
#include "rocksdb/write_batch.h"
#include "spdlog/spdlog.h"
#include "ssd_record.h"
#include "uring_reader.h"

namespace kvstash::storage {
namespace {

constexpr uint64_t kBlock = kSsdBlockBytes;
constexpr uint64_t kReadChunk = 1 << 20;  // io_uring request size for payload reads
constexpr unsigned kRingDepth = 64;
constexpr int kMaxReadRings = 64;            // concurrent promotions, each with its own ring
constexpr size_t kReadyFilesPerWriter = 16;  // files created ahead per writer thread
// Longest an unsynced (write-through) index record waits for a WAL sync.
constexpr std::chrono::steady_clock::duration kWalSyncInterval = std::chrono::milliseconds(50);
constexpr uint64_t kMaxWriteChunk = uint64_t{64} << 20;

uint64_t RoundUpBlock(uint64_t n) { return (n + kBlock - 1) / kBlock * kBlock; }

Status ErrnoStatus(const std::string& what, int err) {
  std::string msg = absl::StrCat(what, ": ", std::strerror(err));
  if (err == ENOSPC || err == EDQUOT) return absl::ResourceExhaustedError(msg);
  if (err == ENOENT) return absl::NotFoundError(msg);
  return absl::InternalError(msg);
}

struct AlignedFree {
  void operator()(uint8_t* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<uint8_t, AlignedFree>;
AlignedBuffer NewBlock() {
  return AlignedBuffer(static_cast<uint8_t*>(std::aligned_alloc(kBlock, kBlock)));
}

Status PwriteAll(int fd, const uint8_t* data, uint64_t n, uint64_t offset) {
  uint64_t done = 0;
  while (done < n) {
    uint64_t chunk = std::min(n - done, kMaxWriteChunk);
    ssize_t w = pwrite(fd, data + done, chunk, static_cast<off_t>(offset + done));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return ErrnoStatus("pwrite", errno);
    if (w == 0) return absl::InternalError("pwrite wrote nothing");
    done += static_cast<uint64_t>(w);
  }
  return OkStatus();
}

// Writes `head` (one block) then `body`, as one vectored write while it fits in a chunk, so the
// header does not cost an extra I/O.
Status WriteHeadAndBody(int fd, const uint8_t* head, const uint8_t* body, uint64_t body_bytes) {
  uint64_t first = std::min(body_bytes, kMaxWriteChunk);
  iovec iov[2] = {{const_cast<uint8_t*>(head), kBlock}, {const_cast<uint8_t*>(body), first}};
  ssize_t w;
  do {
    w = pwritev(fd, iov, 2, 0);
  } while (w < 0 && errno == EINTR);
  if (w < 0) return ErrnoStatus("pwritev", errno);
  uint64_t done = static_cast<uint64_t>(w);
  if (done < kBlock) {
    KVSTASH_RETURN_IF_ERROR(PwriteAll(fd, head + done, kBlock - done, done));
    done = kBlock;
  }
  uint64_t body_done = done - kBlock;
  return PwriteAll(fd, body + body_done, body_bytes - body_done, kBlock + body_done);
}

// O_DIRECT is refused by some filesystems (tmpfs: EINVAL at open); probe once per directory.
bool ProbeDirectIo(const std::string& dir) {
  std::string path = dir + "/.direct_probe";
  int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC | O_DIRECT, 0644);
  if (fd < 0) {
    unlink(path.c_str());
    return false;
  }
  AlignedBuffer block = NewBlock();
  std::memset(block.get(), 0, kBlock);
  bool ok = pwrite(fd, block.get(), kBlock, 0) == static_cast<ssize_t>(kBlock);
  close(fd);
  unlink(path.c_str());
  return ok;
}

}  // namespace

uint64_t SsdTier::FileBytes(uint64_t payload_bytes) { return kBlock + RoundUpBlock(payload_bytes); }

SsdTier::SsdTier(Options options, StoreMetrics* metrics)
    : options_(std::move(options)), metrics_(metrics) {}

SsdTier::~SsdTier() {
  {
    MutexLock lock(&pool_mu_);
    pool_stop_ = true;
  }
  pool_cv_.SignalAll();
  if (pool_thread_.joinable()) pool_thread_.join();
  for (uint64_t seq : ready_files_) unlink(FilePath(seq, false).c_str());
  if (db_) {
    rocksdb::Status s = db_->Close();
    if (!s.ok()) spdlog::warn("kvstash storage: closing the SSD index: {}", s.ToString());
    db_.reset();
  }
  if (objects_dir_fd_ >= 0) close(objects_dir_fd_);
}

Result<std::unique_ptr<SsdTier>> SsdTier::Open(const Options& options, StoreMetrics* metrics) {
  std::unique_ptr<SsdTier> tier(new SsdTier(options, metrics));
  tier->objects_dir_ = options.dir + "/objects";
  std::error_code ec;
  std::filesystem::create_directories(tier->objects_dir_, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("creating ", tier->objects_dir_, ": ", ec.message()));
  }
  tier->objects_dir_fd_ = open(tier->objects_dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (tier->objects_dir_fd_ < 0) return ErrnoStatus("open " + tier->objects_dir_, errno);
  tier->direct_io_ = ProbeDirectIo(tier->objects_dir_);
  if (!tier->direct_io_) {
    spdlog::info("kvstash storage: {} does not support O_DIRECT; using buffered I/O",
                 tier->objects_dir_);
  }

  rocksdb::Options db_options;
  db_options.create_if_missing = true;
  db_options.max_background_jobs = 2;
  db_options.write_buffer_size = 8 << 20;
  db_options.keep_log_file_num = 2;
  db_options.max_manifest_file_size = 16 << 20;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, options.dir + "/index", &db);
  if (!s.ok()) {
    return absl::UnavailableError(absl::StrCat("opening the SSD index: ", s.ToString()));
  }
  tier->db_.reset(db);
  tier->readers_ =
      std::make_unique<UringReaderPool>(std::max(1, options.io_threads), kMaxReadRings, kRingDepth);
  return tier;
}

std::string SsdTier::FilePath(uint64_t seq, bool temp) const {
  char name[32];
  std::snprintf(name, sizeof(name), "%016llx.%s", static_cast<unsigned long long>(seq),
                temp ? "tmp" : "kvo");
  return objects_dir_ + "/" + name;
}

Status SsdTier::SyncObjectsDir() {
  // Group commit: one fsync covers every directory change made before it started, so a writer
  // whose rename happened before a sync that started later just waits for that sync.
  uint64_t my_change = dir_changes_.fetch_add(1) + 1;
  MutexLock lock(&dir_sync_mu_);
  if (dir_synced_upto_ >= my_change) return OkStatus();
  uint64_t covered = dir_changes_.load();
  if (fsync(objects_dir_fd_) != 0) return ErrnoStatus("fsync " + objects_dir_, errno);
  dir_synced_upto_ = covered;
  return OkStatus();
}

Result<std::vector<TierRecord>> SsdTier::Recover() {
  std::map<Hash128, TierRecord> newest;
  rocksdb::WriteBatch drop;
  uint64_t max_seq = 0;
  uint64_t dropped = 0;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(std::string(1, kRecordPrefix)); it->Valid(); it->Next()) {
    std::string_view key(it->key().data(), it->key().size());
    if (key.empty() || key[0] != kRecordPrefix) break;
    Hash128 storage_key;
    uint64_t seq;
    TierRecord r;
    if (!ParseRecordKey(key, storage_key, seq) ||
        !DecodeRecord(std::string_view(it->value().data(), it->value().size()), r).ok()) {
      spdlog::warn("kvstash storage: dropping an undecodable SSD index record");
      drop.Delete(it->key());
      ++dropped;
      continue;
    }
    r.name.storage_key = storage_key;
    r.seq = seq;
    max_seq = std::max(max_seq, seq);
    // Keys sort by (storage key, seq): a later record of the same key is a newer version.
    auto [pos, inserted] = newest.try_emplace(storage_key, r);
    if (!inserted) {
      drop.Delete(RecordKey(storage_key, pos->second.seq));
      pos->second = r;
    }
  }
  if (!it->status().ok()) {
    return absl::InternalError(absl::StrCat("reading the SSD index: ", it->status().ToString()));
  }
  it.reset();

  std::vector<TierRecord> survivors;
  std::set<uint64_t> live_seqs;
  uint64_t used = 0;
  for (auto& [key, r] : newest) {
    struct stat st;
    std::string path = FilePath(r.seq, false);
    if (stat(path.c_str(), &st) != 0 ||
        static_cast<uint64_t>(st.st_size) != kBlock + r.info.payload_bytes) {
      spdlog::warn("kvstash storage: dropping SSD object {}: file {} missing or short", key.ToHex(),
                   path);
      drop.Delete(RecordKey(key, r.seq));
      ++dropped;
      continue;
    }
    live_seqs.insert(r.seq);
    used += FileBytes(r.info.payload_bytes);
    survivors.push_back(std::move(r));
  }

  // Temp files are interrupted writes; .kvo files without a record were written but never
  // indexed (or their record was dropped above). Both go.
  DIR* dir = opendir(objects_dir_.c_str());
  if (dir == nullptr) return ErrnoStatus("opendir " + objects_dir_, errno);
  while (dirent* e = readdir(dir)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    bool temp = name.size() == 20 && name.ends_with(".tmp");
    bool object = name.size() == 20 && name.ends_with(".kvo");
    if (!temp && !object) continue;
    char* end = nullptr;
    uint64_t seq = std::strtoull(name.substr(0, 16).c_str(), &end, 16);
    max_seq = std::max(max_seq, seq);
    if (temp || live_seqs.count(seq) == 0) {
      unlinkat(objects_dir_fd_, name.c_str(), 0);
    }
  }
  closedir(dir);

  if (drop.Count() > 0) {
    rocksdb::WriteOptions wo;
    wo.sync = true;
    rocksdb::Status s = db_->Write(wo, &drop);
    if (!s.ok()) {
      return absl::InternalError(absl::StrCat("cleaning the SSD index: ", s.ToString()));
    }
  }
  KVSTASH_RETURN_IF_ERROR(SyncObjectsDir());
  metrics_->ssd_recovery_dropped->Increment(dropped);
  used_.store(used);
  next_seq_.store(max_seq + 1);
  pool_thread_ = std::thread([this] { PoolLoop(); });
  return survivors;
}

Status SsdTier::CreateEmptyFile(uint64_t seq) {
  std::string path = FilePath(seq, false);
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("create " + path, errno);
  close(fd);
  return OkStatus();
}

void SsdTier::PoolLoop() {
  const size_t target =
      kReadyFilesPerWriter * static_cast<size_t>(std::max(1, options_.io_threads));
  pool_mu_.Lock();
  while (!pool_stop_) {
    // Refill in batches once half the pool is used, so one directory sync covers many files.
    if (ready_files_.size() > target / 2) {
      pool_cv_.Wait(&pool_mu_);
      continue;
    }
    size_t missing = target - ready_files_.size();
    pool_mu_.Unlock();
    std::vector<uint64_t> made;
    for (size_t i = 0; i < missing; ++i) {
      uint64_t seq = next_seq_.fetch_add(1);
      if (!CreateEmptyFile(seq).ok()) break;
      made.push_back(seq);
    }
    // One directory sync makes the whole batch durable.
    bool synced = !made.empty() && SyncObjectsDir().ok();
    if (!synced) {
      for (uint64_t seq : made) unlink(FilePath(seq, false).c_str());
    }
    pool_mu_.Lock();
    if (synced) {
      ready_files_.insert(ready_files_.end(), made.begin(), made.end());
    } else {
      // Could not create files (e.g. out of inodes); writers create their own meanwhile.
      pool_cv_.WaitFor(&pool_mu_, std::chrono::milliseconds(100));
    }
  }
  pool_mu_.Unlock();
}

Result<uint64_t> SsdTier::TakeReadyFile() {
  {
    MutexLock lock(&pool_mu_);
    if (!ready_files_.empty()) {
      uint64_t seq = ready_files_.front();
      ready_files_.pop_front();
      pool_cv_.Signal();
      return seq;
    }
  }
  pool_cv_.Signal();
  uint64_t seq = next_seq_.fetch_add(1);
  KVSTASH_RETURN_IF_ERROR(CreateEmptyFile(seq));
  Status synced = SyncObjectsDir();
  if (!synced.ok()) {
    unlink(FilePath(seq, false).c_str());
    return synced;
  }
  return seq;
}

bool SsdTier::TryReserve(uint64_t bytes, uint64_t limit_bytes) {
  MutexLock lock(&space_mu_);
  if (used_.load() + reserved_ + bytes > limit_bytes) return false;
  reserved_ += bytes;
  return true;
}

void SsdTier::Unreserve(uint64_t bytes) {
  MutexLock lock(&space_mu_);
  reserved_ -= bytes;
}

Status SsdTier::Write(TierRecord* record, const uint8_t* payload) {
  const uint64_t payload_bytes = record->info.payload_bytes;
  const uint64_t file_bytes = FileBytes(payload_bytes);
  // With O_DIRECT the length must be whole blocks: write the payload's last block in full (the
  // arena extent is page-rounded, so those bytes are readable) and cut the file back after.
  const uint64_t body = direct_io_ ? RoundUpBlock(payload_bytes) : payload_bytes;
  Result<uint64_t> seq = TakeReadyFile();
  if (!seq.ok()) {
    Unreserve(file_bytes);
    return seq.status();
  }
  record->seq = *seq;
  const std::string path = FilePath(*seq, false);
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC | (direct_io_ ? O_DIRECT : 0));
  Status status = fd >= 0 ? OkStatus() : ErrnoStatus("open " + path, errno);
  // Allocating up front turns a full disk into one clean ENOSPC before any byte is written.
  if (status.ok() && fallocate(fd, 0, 0, static_cast<off_t>(file_bytes)) != 0 &&
      errno != EOPNOTSUPP) {
    status = ErrnoStatus("fallocate " + path, errno);
  }
  if (status.ok()) {
    AlignedBuffer block = NewBlock();
    std::memset(block.get(), 0, kBlock);
    Result<std::array<uint8_t, kObjectHeaderBytes>> header = EncodeObjectHeader(record->info);
    status = header.status();
    if (status.ok()) {
      std::memcpy(block.get(), header->data(), kObjectHeaderBytes);
      std::string name = EncodeNameBlock(record->name);
      std::memcpy(block.get() + kObjectHeaderBytes, name.data(), name.size());
      status = WriteHeadAndBody(fd, block.get(), payload, body);
    }
  }
  if (status.ok() && body != payload_bytes &&
      ftruncate(fd, static_cast<off_t>(kBlock + payload_bytes)) != 0) {
    status = ErrnoStatus("ftruncate " + path, errno);
  }
  // fdatasync also persists the new length; the directory entry was made durable with the file.
  if (status.ok() && fdatasync(fd) != 0) status = ErrnoStatus("fdatasync " + path, errno);
  if (fd >= 0) close(fd);
  MutexLock lock(&space_mu_);
  reserved_ -= file_bytes;
  if (status.ok()) {
    used_.fetch_add(file_bytes);
  } else {
    unlink(path.c_str());
  }
  return status;
}

Status SsdTier::PutRecord(const TierRecord& record, bool sync) {
  KVSTASH_ASSIGN_OR_RETURN(std::string value, EncodeRecord(record));
  rocksdb::WriteOptions wo;
  wo.sync = sync;
  rocksdb::Status s = db_->Put(wo, RecordKey(record.name.storage_key, record.seq), value);
  if (!s.ok()) return absl::InternalError(absl::StrCat("SSD index put: ", s.ToString()));
  if (!sync) {
    // Unsynced records reach the disk with the next synced write (a durable commit), Flush(),
    // or here, at most kWalSyncInterval after they were put.
    auto now = std::chrono::steady_clock::now().time_since_epoch().count();
    if (now - last_wal_sync_.load() >= kWalSyncInterval.count()) {
      if (wal_sync_mu_.TryLock()) {
        if (now - last_wal_sync_.load() >= kWalSyncInterval.count()) {
          last_wal_sync_.store(now);
          s = db_->SyncWAL();
        }
        wal_sync_mu_.Unlock();
        if (!s.ok()) return absl::InternalError(absl::StrCat("SSD index sync: ", s.ToString()));
      }
    }
  }
  return OkStatus();
}

Status SsdTier::Sync() {
  MutexLock lock(&wal_sync_mu_);
  last_wal_sync_.store(std::chrono::steady_clock::now().time_since_epoch().count());
  rocksdb::Status s = db_->SyncWAL();
  if (!s.ok()) return absl::InternalError(absl::StrCat("SSD index sync: ", s.ToString()));
  return OkStatus();
}

Status SsdTier::PutRecords(const std::vector<TierRecord>& records) {
  rocksdb::WriteBatch batch;
  for (const TierRecord& r : records) {
    KVSTASH_ASSIGN_OR_RETURN(std::string value, EncodeRecord(r));
    batch.Put(RecordKey(r.name.storage_key, r.seq), value);
  }
  rocksdb::WriteOptions wo;
  wo.sync = true;
  rocksdb::Status s = db_->Write(wo, &batch);
  if (!s.ok()) return absl::InternalError(absl::StrCat("SSD index write: ", s.ToString()));
  return OkStatus();
}

void SsdTier::Remove(const Hash128& storage_key, uint64_t seq, uint64_t payload_bytes) {
  // Record first: a crash between the two leaves an orphan file, which recovery deletes.
  rocksdb::Status s = db_->Delete(rocksdb::WriteOptions(), RecordKey(storage_key, seq));
  if (!s.ok()) spdlog::warn("kvstash storage: SSD index delete: {}", s.ToString());
  if (unlink(FilePath(seq, false).c_str()) == 0) used_.fetch_sub(FileBytes(payload_bytes));
}

Status SsdTier::Read(const Hash128& storage_key, uint64_t seq, const ObjectInfo& info,
                     uint8_t* dst) {
  const std::string path = FilePath(seq, false);
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | (direct_io_ ? O_DIRECT : 0));
  if (fd < 0) return ErrnoStatus("open " + path, errno);
  struct stat st;
  if (fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) != kBlock + info.payload_bytes) {
    close(fd);
    return absl::DataLossError(absl::StrCat(path, " has the wrong length"));
  }
  AlignedBuffer block = NewBlock();
  std::vector<ReadRange> ranges;
  ranges.push_back(ReadRange{block.get(), kBlock, 0, 0});
  uint64_t payload_span = RoundUpBlock(info.payload_bytes);
  for (uint64_t off = 0; off < payload_span; off += kReadChunk) {
    ranges.push_back(
        ReadRange{dst + off, std::min(kReadChunk, payload_span - off), kBlock + off, 0});
  }
  Status status = readers_->ReadRanges(fd, ranges);
  close(fd);
  KVSTASH_RETURN_IF_ERROR(status);
  uint64_t payload_read = 0;
  for (size_t i = 1; i < ranges.size(); ++i) payload_read += ranges[i].done;
  if (ranges[0].done != kBlock || payload_read < info.payload_bytes) {
    return absl::DataLossError(absl::StrCat(path, " is short"));
  }
  // The header must decode (its own crc32c) and say exactly what the index says.
  Result<ObjectInfo> decoded =
      DecodeObjectHeader(std::span<const uint8_t>(block.get(), kObjectHeaderBytes));
  if (!decoded.ok()) {
    return absl::DataLossError(absl::StrCat(path, ": ", decoded.status().message()));
  }
  ObjectInfo want = info;
  want.lossy = false;
  if (!(*decoded == want)) {
    return absl::DataLossError(absl::StrCat(path, ": header disagrees with the index"));
  }
  KVSTASH_RETURN_IF_ERROR(CheckNameBlock(block.get() + kObjectHeaderBytes, storage_key));
  uint32_t crc = Crc32c(dst, info.payload_bytes);
  if (crc != info.payload_crc32c) {
    return absl::DataLossError(absl::StrCat(path, ": payload crc32c mismatch"));
  }
  return OkStatus();
}

}  // namespace kvstash::storage
