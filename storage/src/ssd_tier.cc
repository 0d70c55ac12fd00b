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
#include "uring_reader.h"

namespace kvstash::storage {
namespace {

constexpr uint64_t kBlock = 4096;        // payload offset in a file; O_DIRECT alignment
constexpr uint8_t kRecordVersionV1 = 1;  // read only
constexpr uint8_t kRecordVersion = 2;    // adds the served-object fields
constexpr uint8_t kRecordEncoded = 1;    // flag bits of a v2 record
constexpr uint8_t kRecordLossy = 2;
constexpr char kRecordPrefix = 'o';
constexpr char kNameMagic[4] = {'K', 'V', 'S', 'N'};
constexpr uint32_t kNameVersion = 1;
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

// --- byte strings (kvstash/common/coding.h) ---------------------------------------------------
void PutHash(std::string& out, const Hash128& h) {
  auto b = h.Bytes();
  out.append(reinterpret_cast<const char*>(b.data()), b.size());
}

// A bounds-checked cursor: each read consumes its field or fails and leaves the input alone.
class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in), size_(in.size()) {}
  bool U8(uint8_t& v) { return GetFixed8(&in_, &v); }
  bool U32(uint32_t& v) { return GetFixed32(&in_, &v); }
  bool U64(uint64_t& v) { return GetFixed64(&in_, &v); }
  bool Hash(Hash128& h) {
    std::string_view bytes;
    if (!GetBytes(&in_, 16, &bytes)) return false;
    h = Hash128{DecodeFixed64(bytes.data()), DecodeFixed64(bytes.data() + 8)};
    return true;
  }
  bool Str(std::string& s, size_t n) {
    std::string_view bytes;
    if (!GetBytes(&in_, n, &bytes)) return false;
    s.assign(bytes);
    return true;
  }
  bool Raw(void* dst, size_t n) {
    std::string_view bytes;
    if (!GetBytes(&in_, n, &bytes)) return false;
    std::memcpy(dst, bytes.data(), n);
    return true;
  }
  size_t pos() const { return size_ - in_.size(); }

 private:
  std::string_view in_;
  size_t size_;
};

std::string RecordKey(const Hash128& storage_key, uint64_t seq) {
  std::string key(1, kRecordPrefix);
  PutHash(key, storage_key);
  PutBigEndian64(&key, seq);  // big-endian: a storage key's records sort by sequence
  return key;
}

bool ParseRecordKey(std::string_view key, Hash128& storage_key, uint64_t& seq) {
  if (key.size() != 25 || key[0] != kRecordPrefix) return false;
  auto h = Hash128::FromBytes(key.substr(1, 16));
  if (!h.ok()) return false;
  storage_key = *h;
  seq = DecodeBigEndian64(reinterpret_cast<const uint8_t*>(key.data()) + 17);
  return true;
}

// value: version u8 | object header (64) | [v2: flags u8 | served crc32c u32] | hits u64 |
//        last_access u64 | pins u32 | fingerprint 16 | token hash 16 | ns_len u32 | ns |
//        crc32c u32 of everything before
// flags: kRecordEncoded (the file is a TierCodec encoding; the served object is the raw layout
// with the served crc32c), kRecordLossy (the served object is lossy). v1 records serve the file.
Result<std::string> EncodeRecord(const TierRecord& r) {
  KVSTASH_ASSIGN_OR_RETURN(auto header, EncodeObjectHeader(r.info));
  std::string out;
  out.push_back(static_cast<char>(kRecordVersion));
  out.append(reinterpret_cast<const char*>(header.data()), header.size());
  out.push_back(
      static_cast<char>((r.encoded ? kRecordEncoded : 0) | (r.served.lossy ? kRecordLossy : 0)));
  PutFixed32(&out, r.encoded ? r.served.payload_crc32c : r.info.payload_crc32c);
  PutFixed64(&out, r.hits);
  PutFixed64(&out, r.last_access_ns);
  PutFixed32(&out, r.pins);
  PutHash(out, r.name.model_fingerprint);
  PutHash(out, r.name.token_hash);
  PutFixed32(&out, static_cast<uint32_t>(r.name.name_space.size()));
  out += r.name.name_space;
  PutFixed32(&out, Crc32c(out.data(), out.size()));
  return out;
}

Status DecodeRecord(std::string_view value, TierRecord& r) {
  if (value.size() < 4) return absl::DataLossError("short index record");
  Reader crc_reader(value.substr(value.size() - 4));
  uint32_t crc;
  crc_reader.U32(crc);
  if (crc != Crc32c(value.data(), value.size() - 4)) {
    return absl::DataLossError("index record checksum mismatch");
  }
  Reader in(value.substr(0, value.size() - 4));
  uint8_t version;
  uint8_t header[kObjectHeaderBytes];
  uint32_t ns_len;
  if (!in.U8(version) || (version != kRecordVersion && version != kRecordVersionV1)) {
    return absl::DataLossError("unknown index record version");
  }
  if (!in.Raw(header, sizeof(header))) return absl::DataLossError("short index record");
  KVSTASH_ASSIGN_OR_RETURN(r.info, DecodeObjectHeader(std::span<const uint8_t>(header)));
  uint8_t flags = 0;
  uint32_t served_crc = r.info.payload_crc32c;
  if (version == kRecordVersion && (!in.U8(flags) || !in.U32(served_crc))) {
    return absl::DataLossError("short index record");
  }
  r.encoded = (flags & kRecordEncoded) != 0;
  r.served = r.info;
  if (r.encoded) {
    r.served.encoding = Encoding::kRaw;
    r.served.encoding_level = 0;
    r.served.payload_bytes = r.info.layout.RawBytes();
    r.served.payload_crc32c = served_crc;
  }
  r.served.lossy = (flags & kRecordLossy) != 0;
  if (!in.U64(r.hits) || !in.U64(r.last_access_ns) || !in.U32(r.pins) ||
      !in.Hash(r.name.model_fingerprint) || !in.Hash(r.name.token_hash) || !in.U32(ns_len) ||
      !in.Str(r.name.name_space, ns_len)) {
    return absl::DataLossError("short index record");
  }
  return OkStatus();
}

// Bytes [64, 4096) of a file: the object's name, so a read can prove it got the right file.
std::string EncodeNameBlock(const StoredName& name) {
  std::string out(kNameMagic, 4);
  PutFixed32(&out, kNameVersion);
  PutHash(out, name.storage_key);
  PutHash(out, name.model_fingerprint);
  PutHash(out, name.token_hash);
  PutFixed32(&out, static_cast<uint32_t>(name.name_space.size()));
  out += name.name_space;
  PutFixed32(&out, Crc32c(out.data(), out.size()));
  return out;
}

Status CheckNameBlock(const uint8_t* block, const Hash128& storage_key) {
  std::string_view in(reinterpret_cast<const char*>(block), kBlock - kObjectHeaderBytes);
  if (std::memcmp(in.data(), kNameMagic, 4) != 0) return absl::DataLossError("bad name block");
  Reader r(in.substr(4));
  uint32_t version, ns_len;
  Hash128 key, fingerprint, token;
  if (!r.U32(version) || version != kNameVersion || !r.Hash(key) || !r.Hash(fingerprint) ||
      !r.Hash(token) || !r.U32(ns_len) || ns_len > in.size() - 4 - r.pos() - 4) {
    return absl::DataLossError("bad name block");
  }
  size_t body = 4 + r.pos() + ns_len;
  Reader crc_reader(in.substr(body));
  uint32_t crc;
  crc_reader.U32(crc);
  if (crc != Crc32c(in.data(), body)) return absl::DataLossError("name block checksum mismatch");
  if (key != storage_key) return absl::DataLossError("file holds another object");
  return OkStatus();
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
    std::lock_guard<std::mutex> lock(pool_mu_);
    pool_stop_ = true;
  }
  pool_cv_.notify_all();
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
  std::lock_guard<std::mutex> lock(dir_sync_mu_);
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
  std::unique_lock<std::mutex> lock(pool_mu_);
  while (!pool_stop_) {
    // Refill in batches once half the pool is used, so one directory sync covers many files.
    if (ready_files_.size() > target / 2) {
      pool_cv_.wait(lock);
      continue;
    }
    size_t missing = target - ready_files_.size();
    lock.unlock();
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
    lock.lock();
    if (synced) {
      ready_files_.insert(ready_files_.end(), made.begin(), made.end());
    } else {
      // Could not create files (e.g. out of inodes); writers create their own meanwhile.
      pool_cv_.wait_for(lock, std::chrono::milliseconds(100));
    }
  }
}

Result<uint64_t> SsdTier::TakeReadyFile() {
  {
    std::lock_guard<std::mutex> lock(pool_mu_);
    if (!ready_files_.empty()) {
      uint64_t seq = ready_files_.front();
      ready_files_.pop_front();
      pool_cv_.notify_one();
      return seq;
    }
  }
  pool_cv_.notify_one();
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
  std::lock_guard<std::mutex> lock(space_mu_);
  if (used_.load() + reserved_ + bytes > limit_bytes) return false;
  reserved_ += bytes;
  return true;
}

void SsdTier::Unreserve(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(space_mu_);
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
  std::lock_guard<std::mutex> lock(space_mu_);
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
      std::unique_lock<std::mutex> lock(wal_sync_mu_, std::try_to_lock);
      if (lock.owns_lock() && now - last_wal_sync_.load() >= kWalSyncInterval.count()) {
        last_wal_sync_.store(now);
        s = db_->SyncWAL();
        if (!s.ok()) return absl::InternalError(absl::StrCat("SSD index sync: ", s.ToString()));
      }
    }
  }
  return OkStatus();
}

Status SsdTier::Sync() {
  std::lock_guard<std::mutex> lock(wal_sync_mu_);
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
