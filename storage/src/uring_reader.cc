#include "uring_reader.h"

#include <liburing.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace kvstash::storage {

struct UringReaderPool::Ring {
  io_uring ring;
};

UringReaderPool::UringReaderPool(int rings, int max_rings, unsigned depth)
    : depth_(depth), max_rings_(static_cast<size_t>(std::max(rings, max_rings))) {
  for (int i = 0; i < rings; ++i) {
    auto r = std::make_unique<Ring>();
    int err = io_uring_queue_init(depth, &r->ring, 0);
    if (err < 0) {
      spdlog::warn("kvstash storage: io_uring unavailable ({}); SSD reads use pread",
                   std::strerror(-err));
      for (auto& made : rings_) io_uring_queue_exit(&made->ring);
      rings_.clear();
      idle_.clear();
      available_ = false;
      return;
    }
    idle_.push_back(r.get());
    rings_.push_back(std::move(r));
  }
}

UringReaderPool::~UringReaderPool() {
  for (auto& r : rings_) io_uring_queue_exit(&r->ring);
}

Status UringReaderPool::ReadRanges(int fd, std::span<ReadRange> ranges) {
  for (ReadRange& r : ranges) r.done = 0;
  if (!available_) return ReadWithPread(fd, ranges);
  Ring* ring;
  {
    MutexLock lock(&mu_);
    if (idle_.empty() && rings_.size() < max_rings_) {
      // Another concurrent reader: give it its own ring rather than queueing behind the others.
      auto r = std::make_unique<Ring>();
      if (io_uring_queue_init(depth_, &r->ring, 0) == 0) {
        idle_.push_back(r.get());
        rings_.push_back(std::move(r));
      }
    }
    while (idle_.empty()) cv_.Wait(&mu_);
    ring = idle_.back();
    idle_.pop_back();
  }
  Status status = ReadWithRing(*ring, fd, ranges);
  {
    MutexLock lock(&mu_);
    idle_.push_back(ring);
  }
  cv_.Signal();
  return status;
}

Status UringReaderPool::ReadWithRing(Ring& ring, int fd, std::span<ReadRange> ranges) {
  std::deque<size_t> todo;
  for (size_t i = 0; i < ranges.size(); ++i) {
    if (ranges[i].length > 0) todo.push_back(i);
  }
  unsigned prepared = 0;   // in the submission queue, not yet submitted
  unsigned in_flight = 0;  // submitted, completion not yet seen
  Status status = OkStatus();
  bool ring_broken = false;
  for (;;) {
    while (status.ok() && !todo.empty() && prepared + in_flight < depth_) {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring.ring);
      if (sqe == nullptr) break;
      size_t i = todo.front();
      todo.pop_front();
      ReadRange& r = ranges[i];
      uint64_t left = r.length - r.done;
      unsigned chunk = static_cast<unsigned>(std::min<uint64_t>(left, 1u << 30));
      io_uring_prep_read(sqe, fd, r.dst + r.done, chunk, r.file_offset + r.done);
      io_uring_sqe_set_data64(sqe, i);
      ++prepared;
    }
    if (prepared > 0) {
      int n = io_uring_submit(&ring.ring);
      if (n >= 0) {
        prepared -= static_cast<unsigned>(n);
        in_flight += static_cast<unsigned>(n);
      } else if (n != -EINTR && n != -EAGAIN && n != -EBUSY) {
        status = absl::InternalError(absl::StrCat("io_uring_submit: ", std::strerror(-n)));
        ring_broken = true;
      }
    }
    if (in_flight == 0) {
      if (!status.ok() || (todo.empty() && prepared == 0)) break;
      continue;
    }
    io_uring_cqe* cqe = nullptr;
    int err = io_uring_wait_cqe(&ring.ring, &cqe);
    if (err == -EINTR || err == -EAGAIN) continue;
    if (err < 0) {
      status = absl::InternalError(absl::StrCat("io_uring_wait_cqe: ", std::strerror(-err)));
      ring_broken = true;
      break;
    }
    size_t i = io_uring_cqe_get_data64(cqe);
    int res = cqe->res;
    io_uring_cqe_seen(&ring.ring, cqe);
    --in_flight;
    ReadRange& r = ranges[i];
    if (res == -EAGAIN || res == -EINTR) {
      todo.push_back(i);
    } else if (res < 0) {
      if (status.ok()) status = absl::InternalError(absl::StrCat("read: ", std::strerror(-res)));
    } else if (res > 0) {
      r.done += static_cast<uint64_t>(res);
      if (r.done < r.length) todo.push_back(i);  // short read: go on until EOF says 0
    }
    // res == 0: end of file; r.done stays short.
  }
  if (ring_broken) {
    // Tearing the ring down cancels and waits for anything the kernel still holds, so no read
    // lands in a buffer the caller reuses; then start a fresh ring.
    io_uring_queue_exit(&ring.ring);
    int err = io_uring_queue_init(depth_, &ring.ring, 0);
    if (err < 0) spdlog::error("kvstash storage: io_uring re-init failed: {}", std::strerror(-err));
  }
  return status;
}

Status UringReaderPool::ReadWithPread(int fd, std::span<ReadRange> ranges) {
  for (ReadRange& r : ranges) {
    while (r.done < r.length) {
      ssize_t n =
          pread(fd, r.dst + r.done, r.length - r.done, static_cast<off_t>(r.file_offset + r.done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return absl::InternalError(absl::StrCat("pread: ", std::strerror(errno)));
      if (n == 0) break;
      r.done += static_cast<uint64_t>(n);
    }
  }
  return OkStatus();
}

}  // namespace kvstash::storage
