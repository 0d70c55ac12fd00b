#include "arena.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"

namespace kvstash::storage {
namespace {

Status ErrnoStatus(const char* what, int err) {
  std::string msg = absl::StrCat(what, ": ", std::strerror(err));
  if (err == ENOMEM || err == ENOSPC || err == EFBIG) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

uint64_t RandomGeneration() {
  std::random_device rd;
  uint64_t g = 0;
  while (g == 0) g = (uint64_t{rd()} << 32) ^ rd();
  return g;
}

// Creates segment `seg`'s memfd (sized and sealed) and its read-only twin.
Status MakeSegmentFds(Arena::Segment* seg) {
  seg->fd = memfd_create("kvstash-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (seg->fd < 0) return ErrnoStatus("memfd_create", errno);
  if (ftruncate(seg->fd, static_cast<off_t>(seg->bytes)) != 0) {
    return ErrnoStatus("ftruncate arena", errno);
  }
  if (fcntl(seg->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return ErrnoStatus("seal arena", errno);
  }
  std::string self = absl::StrCat("/proc/self/fd/", seg->fd);
  seg->read_only_fd = open(self.c_str(), O_RDONLY | O_CLOEXEC);
  if (seg->read_only_fd < 0) return ErrnoStatus("reopen arena read-only", errno);
  if (fchmod(seg->fd, S_IRUSR) != 0) return ErrnoStatus("chmod arena", errno);
  return OkStatus();
}

}  // namespace

Result<std::unique_ptr<Arena>> Arena::Create(const std::vector<uint64_t>& segment_bytes,
                                             bool prefault) {
  if (segment_bytes.empty()) return absl::InvalidArgumentError("an arena needs a segment");
  std::unique_ptr<Arena> arena(new Arena());
  for (uint64_t bytes : segment_bytes) {
    bytes -= bytes % 4096;
    if (bytes == 0) {
      return absl::InvalidArgumentError(arena->segments_.empty()
                                            ? "cpu_capacity_bytes must be at least 4096"
                                            : "a tenant arena must be at least 4096 bytes");
    }
    Segment seg;
    seg.offset = arena->bytes_;
    seg.bytes = bytes;
    arena->segments_.push_back(seg);
    arena->bytes_ += bytes;
  }
  // One reservation of address space, then each memfd mapped over its part of it.
  void* reserved =
      mmap(nullptr, arena->bytes_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (reserved == MAP_FAILED) return ErrnoStatus("reserve arena address space", errno);
  arena->base_ = static_cast<uint8_t*>(reserved);
  // MAP_POPULATE allocates every page now, rather than faulting them in one by one under the
  // first writer of each object.
  const int flags = MAP_SHARED | MAP_FIXED | (prefault ? MAP_POPULATE : 0);
  for (Segment& seg : arena->segments_) {
    KVSTASH_RETURN_IF_ERROR(MakeSegmentFds(&seg));
    void* at = mmap(arena->base_ + seg.offset, seg.bytes, PROT_READ | PROT_WRITE, flags, seg.fd, 0);
    if (at == MAP_FAILED) return ErrnoStatus("mmap arena", errno);
  }
  arena->generation_ = RandomGeneration();
  return arena;
}

Arena::~Arena() {
  if (base_ != nullptr) munmap(base_, bytes_);
  for (const Segment& seg : segments_) {
    if (seg.fd >= 0) close(seg.fd);
    if (seg.read_only_fd >= 0) close(seg.read_only_fd);
  }
}

}  // namespace kvstash::storage
