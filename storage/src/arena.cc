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
                                             bool prefault, uint64_t spare_bytes) {
  if (segment_bytes.empty()) return absl::InvalidArgumentError("an arena needs a segment");
  std::unique_ptr<Arena> arena(new Arena());
  arena->capacity_ = segment_bytes.size() + kMaxAddedSegments;
  arena->segments_ = std::make_unique<Segment[]>(arena->capacity_);
  uint64_t total = 0;
  for (size_t i = 0; i < segment_bytes.size(); ++i) {
    const uint64_t bytes = segment_bytes[i] - segment_bytes[i] % 4096;
    if (bytes == 0) {
      return absl::InvalidArgumentError(i == 0 ? "cpu_capacity_bytes must be at least 4096"
                                               : "a tenant arena must be at least 4096 bytes");
    }
    arena->segments_[i].offset = total;
    arena->segments_[i].bytes = bytes;
    total += bytes;
  }
  // The destructor closes the fds of every counted segment (-1 until made).
  arena->count_.store(segment_bytes.size(), std::memory_order_release);
  spare_bytes -= spare_bytes % 4096;
  arena->reserved_bytes_ = total + spare_bytes;
  // One reservation of address space, then each memfd mapped over its part of it. PROT_READ,
  // private and MAP_NORESERVE: the spare part costs no memory and no commit charge, and reads of
  // it (none are expected) see the zero page instead of faulting.
  void* reserved = mmap(nullptr, arena->reserved_bytes_, PROT_READ,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (reserved == MAP_FAILED) return ErrnoStatus("reserve arena address space", errno);
  arena->base_ = static_cast<uint8_t*>(reserved);
  // MAP_POPULATE allocates every page now, rather than faulting them in one by one under the
  // first writer of each object.
  const int flags = MAP_SHARED | MAP_FIXED | (prefault ? MAP_POPULATE : 0);
  for (size_t i = 0; i < segment_bytes.size(); ++i) {
    Segment& seg = arena->segments_[i];
    KVSTASH_RETURN_IF_ERROR(MakeSegmentFds(&seg));
    void* at = mmap(arena->base_ + seg.offset, seg.bytes, PROT_READ | PROT_WRITE, flags, seg.fd, 0);
    if (at == MAP_FAILED) return ErrnoStatus("mmap arena", errno);
  }
  arena->bytes_.store(total, std::memory_order_release);
  arena->generation_ = RandomGeneration();
  return arena;
}

Result<Arena::Segment> Arena::AddSegment(uint64_t bytes, bool prefault) {
  bytes -= bytes % 4096;
  if (bytes == 0) return absl::InvalidArgumentError("a tenant arena must be at least 4096 bytes");
  MutexLock lock(&add_mu_);
  const size_t count = count_.load(std::memory_order_relaxed);
  const uint64_t used = bytes_.load(std::memory_order_relaxed);
  if (count >= capacity_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the arena already has ", count, " segments, the most it takes"));
  }
  if (bytes > reserved_bytes_ - used) {
    return absl::ResourceExhaustedError(absl::StrCat("the arena's spare address space has ",
                                                     reserved_bytes_ - used, " bytes left, ", bytes,
                                                     " needed (storage.tenant_arena_reserve)"));
  }
  Segment seg;
  seg.offset = used;
  seg.bytes = bytes;
  auto close_fds = [&seg] {
    if (seg.fd >= 0) close(seg.fd);
    if (seg.read_only_fd >= 0) close(seg.read_only_fd);
  };
  if (Status s = MakeSegmentFds(&seg); !s.ok()) {
    close_fds();
    return s;
  }
  const int flags = MAP_SHARED | MAP_FIXED | (prefault ? MAP_POPULATE : 0);
  void* at = mmap(base_ + seg.offset, seg.bytes, PROT_READ | PROT_WRITE, flags, seg.fd, 0);
  if (at == MAP_FAILED) {
    const int err = errno;
    // Put the spare back as it was (a failed MAP_FIXED may have unmapped the range).
    (void)mmap(base_ + seg.offset, seg.bytes, PROT_READ,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    close_fds();
    return ErrnoStatus("mmap added arena segment", err);
  }
  // Made and mapped before it is counted: a reader that sees the count sees the segment.
  segments_[count] = seg;
  bytes_.store(used + bytes, std::memory_order_release);
  count_.store(count + 1, std::memory_order_release);
  return seg;
}

Arena::~Arena() {
  if (base_ != nullptr) munmap(base_, reserved_bytes_);
  const size_t count = count_.load(std::memory_order_acquire);
  for (size_t i = 0; i < count; ++i) {
    const Segment& seg = segments_[i];
    if (seg.fd >= 0) close(seg.fd);
    if (seg.read_only_fd >= 0) close(seg.read_only_fd);
  }
}

}  // namespace kvstash::storage
