#include "ssd_load.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <memory>
#include <thread>

#include "eval_common.h"
#include "kvstash/codec/cachegen.h"
#include "kvstash/codec/kvq.h"
#include "kvstash/common/thread_pool.h"

namespace kvstash::bench {
namespace {

constexpr size_t kAlign = 4096;

size_t RoundUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<uint8_t[], FreeDeleter>;

AlignedBuffer Allocate(size_t n) {
  return AlignedBuffer(static_cast<uint8_t*>(std::aligned_alloc(kAlign, RoundUp(n))));
}

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

Status Errno(const std::string& what) {
  return absl::InternalError(what + ": " + std::strerror(errno));
}

Status WriteFile(const std::string& path, std::span<const uint8_t> bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return Errno("open " + path);
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) {
      ::close(fd);
      return Errno("write " + path);
    }
    done += static_cast<size_t>(n);
  }
  // Durable and clean, so that DONTNEED can drop the pages in the fallback mode.
  if (::fdatasync(fd) != 0) {
    ::close(fd);
    return Errno("fdatasync " + path);
  }
  ::close(fd);
  return absl::OkStatus();
}

class DiskReader {
 public:
  // Probes whether O_DIRECT works in `dir` (ext4, xfs: yes; tmpfs, some overlays: no).
  explicit DiskReader(const std::string& probe_file) {
    const int fd = ::open(probe_file.c_str(), O_RDONLY | O_DIRECT);
    if (fd >= 0) {
      AlignedBuffer b = Allocate(kAlign);
      direct_ = ::pread(fd, b.get(), kAlign, 0) >= 0;
      ::close(fd);
    }
  }
  bool direct() const { return direct_; }

  // Reads `size` bytes of `path` into `buf` (RoundUp(size) bytes, 4 KiB aligned); returns the
  // seconds from open to close. The page cache is bypassed or emptied first.
  Result<double> Read(const std::string& path, size_t size, uint8_t* buf) const {
    if (!direct_) {
      const int fd = ::open(path.c_str(), O_RDONLY);
      if (fd < 0) return Errno("open " + path);
      ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
      ::close(fd);
    }
    const auto t0 = std::chrono::steady_clock::now();
    const int fd = ::open(path.c_str(), O_RDONLY | (direct_ ? O_DIRECT : 0));
    if (fd < 0) return Errno("open " + path);
    size_t done = 0;
    const size_t want = direct_ ? RoundUp(size) : size;
    while (done < size) {
      const size_t n = std::min<size_t>(want - done, size_t{16} << 20);
      const ssize_t got = ::pread(fd, buf + done, n, static_cast<off_t>(done));
      if (got <= 0) {
        ::close(fd);
        return Errno("read " + path);
      }
      done += static_cast<size_t>(got);
    }
    ::close(fd);
    return Since(t0);
  }

 private:
  bool direct_ = false;
};

std::string FilePath(const std::string& dir, const std::string& name, size_t i) {
  return dir + "/" + name + "_" + std::to_string(i) + ".bin";
}

}  // namespace

Result<nlohmann::json> MeasureSsdLoad(const std::vector<KvChunk>& chunks,
                                      const std::vector<EncodedSet>& sets,
                                      const SsdLoadOptions& options) {
  if (chunks.empty()) return absl::InvalidArgumentError("no chunks");
  std::error_code ec;
  std::filesystem::create_directories(options.dir, ec);
  if (ec) return absl::InternalError("cannot create " + options.dir + ": " + ec.message());
  const size_t n = chunks.size();
  size_t max_bytes = 0;
  for (size_t i = 0; i < n; ++i) {
    KVSTASH_RETURN_IF_ERROR(WriteFile(FilePath(options.dir, "raw", i), chunks[i].kv));
    max_bytes = std::max(max_bytes, chunks[i].kv.size());
  }
  for (const EncodedSet& set : sets) {
    if (set.containers.size() != n) return absl::InvalidArgumentError("set size mismatch");
    for (size_t i = 0; i < n; ++i) {
      KVSTASH_RETURN_IF_ERROR(WriteFile(FilePath(options.dir, set.name, i), set.containers[i]));
    }
  }
  const DiskReader reader(FilePath(options.dir, "raw", 0));
  std::unique_ptr<ThreadPool> pool =
      options.threads > 1 ? std::make_unique<ThreadPool>(options.threads - 1) : nullptr;
  AlignedBuffer out = Allocate(max_bytes);
  std::array<AlignedBuffer, 2> cbuf = {Allocate(max_bytes), Allocate(max_bytes)};

  auto decode = [&](const std::vector<uint8_t>& c, const uint8_t* bytes, size_t raw_size,
                    ThreadPool* p) -> Result<double> {
    codec::DecodeOptions d;
    d.profiles = options.profiles;
    d.pool = p;
    const auto t0 = std::chrono::steady_clock::now();
    if (codec::IsKvqContainer({bytes, c.size()})) {
      KVSTASH_RETURN_IF_ERROR(codec::DecodeKvq({bytes, c.size()}, {out.get(), raw_size}, p));
    } else {
      KVSTASH_RETURN_IF_ERROR(codec::DecodeCacheGen({bytes, c.size()}, {out.get(), raw_size}, d));
    }
    return Since(t0);
  };

  nlohmann::json result;
  result["read_method"] = reader.direct() ? "O_DIRECT" : "posix_fadvise(DONTNEED) then read";
  result["chunks"] = n;
  result["chunk_tokens"] = chunks[0].layout.num_tokens;
  result["raw_bytes_per_chunk"] = chunks[0].kv.size();
  result["reps"] = options.reps;
  result["decode_threads_all"] = options.threads;

  std::vector<double> raw_read;
  for (int rep = 0; rep < options.reps; ++rep) {
    for (size_t i = 0; i < n; ++i) {
      KVSTASH_ASSIGN_OR_RETURN(
          double s, reader.Read(FilePath(options.dir, "raw", i), chunks[i].kv.size(), out.get()));
      raw_read.push_back(s);
    }
  }
  const double raw_median = Median(raw_read);
  result["raw"] = {{"read_s_median", raw_median},
                   {"read_GBps", chunks[0].kv.size() / raw_median / 1e9}};

  for (const EncodedSet& set : sets) {
    std::vector<double> read_s, dec1, decn, load1, loadn;
    double bytes = 0;
    for (const auto& c : set.containers) bytes += c.size();
    for (int rep = 0; rep < options.reps; ++rep) {
      for (size_t i = 0; i < n; ++i) {
        const std::vector<uint8_t>& c = set.containers[i];
        KVSTASH_ASSIGN_OR_RETURN(
            double r, reader.Read(FilePath(options.dir, set.name, i), c.size(), cbuf[0].get()));
        if (std::memcmp(cbuf[0].get(), c.data(), c.size()) != 0) {
          return absl::DataLossError("read back different bytes from " + set.name);
        }
        KVSTASH_ASSIGN_OR_RETURN(double d1, decode(c, cbuf[0].get(), chunks[i].kv.size(), nullptr));
        KVSTASH_ASSIGN_OR_RETURN(double dn,
                                 decode(c, cbuf[0].get(), chunks[i].kv.size(), pool.get()));
        read_s.push_back(r);
        dec1.push_back(d1);
        decn.push_back(dn);
        load1.push_back(r + d1);
        loadn.push_back(r + dn);
      }
    }
    nlohmann::json& j = result["sets"][set.name];
    j["bytes_per_chunk_mean"] = bytes / n;
    j["read_s_median"] = Median(read_s);
    j["decode_s_median_1_thread"] = Median(dec1);
    j["decode_s_median_all_threads"] = Median(decn);
    j["load_s_median_1_thread"] = Median(load1);
    j["load_s_median_all_threads"] = Median(loadn);
    j["speedup_vs_raw_1_thread"] = raw_median / Median(load1);
    j["speedup_vs_raw_all_threads"] = raw_median / Median(loadn);

    // Whole set, reading chunk i + 1 while chunk i decodes, against reading every raw chunk.
    for (const bool all : {false, true}) {
      std::vector<double> raw_total, comp_total;
      for (int rep = 0; rep < options.reps; ++rep) {
        auto t0 = std::chrono::steady_clock::now();
        for (size_t i = 0; i < n; ++i) {
          KVSTASH_RETURN_IF_ERROR(
              reader.Read(FilePath(options.dir, "raw", i), chunks[i].kv.size(), out.get())
                  .status());
        }
        raw_total.push_back(Since(t0));
        t0 = std::chrono::steady_clock::now();
        auto read = [&](size_t i) {
          return reader.Read(FilePath(options.dir, set.name, i), set.containers[i].size(),
                             cbuf[i % 2].get());
        };
        std::future<Result<double>> next = std::async(std::launch::async, read, 0);
        for (size_t i = 0; i < n; ++i) {
          KVSTASH_RETURN_IF_ERROR(next.get().status());
          if (i + 1 < n) next = std::async(std::launch::async, read, i + 1);
          KVSTASH_RETURN_IF_ERROR(decode(set.containers[i], cbuf[i % 2].get(), chunks[i].kv.size(),
                                         all ? pool.get() : nullptr)
                                      .status());
        }
        comp_total.push_back(Since(t0));
      }
      nlohmann::json& p = j["overlapped"][all ? "all_threads" : "1_thread"];
      p["raw_total_s_median"] = Median(raw_total);
      p["total_s_median"] = Median(comp_total);
      p["speedup_vs_raw"] = Median(raw_total) / Median(comp_total);
    }
  }
  for (size_t i = 0; i < n; ++i) {
    std::filesystem::remove(FilePath(options.dir, "raw", i), ec);
    for (const EncodedSet& set : sets) {
      std::filesystem::remove(FilePath(options.dir, set.name, i), ec);
    }
  }
  return result;
}

}  // namespace kvstash::bench
