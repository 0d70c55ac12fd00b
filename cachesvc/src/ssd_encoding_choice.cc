#include "ssd_encoding_choice.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cachegen_tier_codec.h"

namespace kvstash::cachesvc {
namespace {

constexpr size_t kProbeBlock = 1 << 20;  // a multiple of every O_DIRECT alignment
// Enough to read past the device's first latency and its read-ahead, short enough for start-up.
constexpr uint64_t kProbeBytes = 32ull << 20;

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

Status Errno(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

// Closes the descriptor and removes the probe file, whatever happens between.
class ProbeFile {
 public:
  explicit ProbeFile(std::string path) : path_(std::move(path)) {}
  ~ProbeFile() {
    if (fd_ >= 0) close(fd_);
    unlink(path_.c_str());
  }
  ProbeFile(const ProbeFile&) = delete;
  ProbeFile& operator=(const ProbeFile&) = delete;
  void Reset(int fd) {
    if (fd_ >= 0) close(fd_);
    fd_ = fd;
  }
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace

Result<double> MeasureSsdReadRate(const std::string& dir, uint64_t bytes, std::string* method) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  const uint64_t blocks = std::max<uint64_t>(1, (bytes + kProbeBlock - 1) / kProbeBlock);
  std::unique_ptr<uint8_t, FreeDeleter> buffer(
      static_cast<uint8_t*>(std::aligned_alloc(4096, kProbeBlock)));
  if (buffer == nullptr) return absl::ResourceExhaustedError("no memory for the SSD read probe");
  // Not zeros: a file system that compresses or deduplicates would read those from nothing.
  for (size_t i = 0; i < kProbeBlock; ++i)
    buffer.get()[i] = static_cast<uint8_t>(i * 2654435761u >> 24);

  ProbeFile file(dir + "/.read_rate_probe");
  file.Reset(open(file.path().c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600));
  if (file.fd() < 0) return Errno("cannot create", file.path());
  for (uint64_t b = 0; b < blocks; ++b) {
    if (pwrite(file.fd(), buffer.get(), kProbeBlock, static_cast<off_t>(b * kProbeBlock)) !=
        static_cast<ssize_t>(kProbeBlock)) {
      return Errno("cannot write", file.path());
    }
  }
  if (fsync(file.fd()) != 0) return Errno("cannot sync", file.path());
  // Written and synced: the pages are clean, so DONTNEED drops them and a buffered read goes to
  // the device (where there is one).
  (void)posix_fadvise(file.fd(), 0, 0, POSIX_FADV_DONTNEED);

  bool direct = true;
  int fd = open(file.path().c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
  if (fd < 0) {  // EINVAL on file systems without O_DIRECT (tmpfs)
    direct = false;
    fd = open(file.path().c_str(), O_RDONLY | O_CLOEXEC);
  }
  file.Reset(fd);
  if (file.fd() < 0) return Errno("cannot open", file.path());
  const auto start = std::chrono::steady_clock::now();
  for (uint64_t b = 0; b < blocks; ++b) {
    if (pread(file.fd(), buffer.get(), kProbeBlock, static_cast<off_t>(b * kProbeBlock)) !=
        static_cast<ssize_t>(kProbeBlock)) {
      return Errno("cannot read", file.path());
    }
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (method != nullptr) *method = direct ? "direct" : "buffered";
  // A read too quick for the clock is at least as fast as this bound; raw wins there anyway.
  return static_cast<double>(blocks * kProbeBlock) / std::max(s, 1e-9);
}

Result<SsdEncodingChoice> ChooseSsdEncoding(const ServiceConfig& config, size_t decode_threads) {
  if (!config.ssd_encoding.choose) {
    return absl::InvalidArgumentError("tiers.ssd.encoding is not auto");
  }
  SsdEncodingChoice out;
  if (config.ssd_read_mbps != 0) {
    out.read_bytes_per_s = static_cast<double>(config.ssd_read_mbps) * 1e6 / 8;
    out.read_method = "configured";
  } else {
    KVSTASH_ASSIGN_OR_RETURN(
        out.read_bytes_per_s,
        MeasureSsdReadRate(config.store.data_dir + "/ssd", kProbeBytes, &out.read_method));
    out.measured = true;
  }
  codec::CalibrationOptions o;
  o.cachegen_level = config.ssd_encoding.level;
  o.decode_threads = std::max<size_t>(decode_threads, 1);
  KVSTASH_ASSIGN_OR_RETURN(out.candidates, codec::CalibrateCodecs(o));
  // A tier copy records its codec level in ObjectInfo::encoding_level, which takes 1..3 (the
  // levels --ssd-encoding kvq accepts); KVQ level 4 is a transfer level only.
  std::erase_if(out.candidates, [](const codec::CodecRates& c) { return c.level > 3; });
  out.chosen =
      codec::ChooseEncoding(out.candidates, out.read_bytes_per_s, codec::CostModel::kStored);
  out.encoding.choose = false;
  switch (out.chosen.kind) {
    case codec::CodecKind::kRaw:
      out.encoding.encoding = Encoding::kRaw;
      out.encoding.level = config.ssd_encoding.level;
      break;
    case codec::CodecKind::kCacheGen:
      out.encoding.encoding = Encoding::kCacheGen;
      out.encoding.level = out.chosen.level;
      break;
    case codec::CodecKind::kKvq:
      out.encoding.encoding = Encoding::kCacheGen;  // "a codec container"; the magic says KVQ
      out.encoding.kvq = true;
      out.encoding.level = out.chosen.level;
      break;
  }
  return out;
}

Result<TierEncoding> ResolveSsdEncoding(const ServiceConfig& config, size_t decode_threads,
                                        MetricsRegistry* metrics) {
  TierEncoding encoding = config.ssd_encoding;
  if (config.ssd_encoding.choose) {
    KVSTASH_ASSIGN_OR_RETURN(SsdEncodingChoice choice, ChooseSsdEncoding(config, decode_threads));
    encoding = choice.encoding;
    spdlog::info(
        "event=ssd_encoding policy=auto read_mbps={} read_method={} decode_threads={} choice={} "
        "candidates={}",
        static_cast<int64_t>(choice.read_bytes_per_s * 8 / 1e6), choice.read_method, decode_threads,
        TierEncodingName(encoding),
        DescribeCodecCandidates(choice.candidates, codec::CostModel::kStored));
    if (metrics != nullptr) {
      metrics
          ->GetGauge("kvstash_cachesvc_ssd_read_bytes_per_second",
                     "SSD read rate --ssd-encoding auto chose by (configured or measured)")
          ->Set(choice.read_bytes_per_s);
    }
  }
  if (metrics != nullptr) {
    metrics
        ->GetGauge("kvstash_cachesvc_ssd_encoding",
                   "1 for the encoding the SSD tier writes (policy auto: chosen at start-up)",
                   {{"policy", config.ssd_encoding.choose ? "auto" : "configured"},
                    {"encoding", TierEncodingName(encoding)}})
        ->Set(1);
  }
  return encoding;
}

std::string DescribeCodecCandidates(const std::vector<codec::CodecRates>& candidates,
                                    codec::CostModel model) {
  std::string out;
  for (const codec::CodecRates& c : candidates) {
    absl::StrAppend(
        &out, out.empty() ? "" : ",", codec::CodecRatesName(c), ":ratio=", absl::SixDigits(c.ratio),
        ":encode_mbps=", static_cast<int64_t>(c.encode_bytes_per_s * 8 / 1e6),
        ":decode_mbps=", static_cast<int64_t>(c.decode_bytes_per_s * 8 / 1e6),
        ":break_even_mbps=", static_cast<int64_t>(codec::BreakEvenBytesPerS(c, model) * 8 / 1e6),
        ":rel_error=", absl::SixDigits(c.rel_error));
  }
  return out;
}

}  // namespace kvstash::cachesvc
