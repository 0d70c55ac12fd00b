// Arena: the CPU tier's shared memory. One or more segments, each its own memfd, mapped
// MAP_SHARED next to each other into one contiguous range of this process, so the store addresses
// every byte as base() + offset and registers the whole range once (UCX). Segment 0 is the shared
// arena; further segments are tenants' arenas (StoreOptions::tenant_arenas, and AddSegment for
// tenants added while the store runs). Clients map one segment's fd (passed over a unix socket),
// so bytes written by either side are seen by both without a copy; a client that holds one
// segment's fds cannot reach another segment's memory.
//
// The address range is reserved once, at Create: the segments of Create plus `spare_bytes` after
// them, which AddSegment maps later (MAP_FIXED over its next free part). So base() never moves,
// offsets stay global, and one registration of [base(), base() + reserved_bytes()) covers every
// segment ever added. The spare part is mapped PROT_READ, private and anonymous (no memory, no
// commit charge; a stray read sees zeros rather than faulting).
//
// Each memfd is sealed against resizing (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL): no client
// can ftruncate it and fault the service with SIGBUS. Each segment also has a read-only
// descriptor (the memfd reopened O_RDONLY through /proc/self/fd): a MAP_SHARED mapping of it with
// PROT_WRITE fails (EACCES) and mprotect cannot add write access later. After that reopen the
// memfd's mode is set to 0400, so a process holding only the read-only fd cannot reopen it
// read-write through /proc either (unless it has CAP_DAC_OVERRIDE).
//
// The fds and the mapping live as long as the Arena. Thread-safe: segments are only ever added,
// and a segment is fully made (fds, mapping) before segment_count() and bytes() show it, so
// readers need no lock (segment(i) for i < segment_count() never changes).
#ifndef KVSTASH_STORAGE_ARENA_H_
#define KVSTASH_STORAGE_ARENA_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "kvstash/common/mutex.h"
#include "kvstash/common/status.h"

namespace kvstash::storage {

class Arena {
 public:
  struct Segment {
    int fd = -1;            // read-write memfd
    int read_only_fd = -1;  // the same memory, opened O_RDONLY
    uint64_t offset = 0;    // start within [base(), base() + bytes())
    uint64_t bytes = 0;
  };

  // Segments added by AddSegment over the arena's life, at most.
  static constexpr size_t kMaxAddedSegments = 1024;

  // One segment per entry of `segment_bytes`, each rounded down to whole 4 KiB pages;
  // InvalidArgument if that leaves a segment empty (or there is none), ResourceExhausted/Internal
  // if memfd_create, ftruncate, sealing, the reopen or mmap fail. `prefault` allocates every page
  // now. `spare_bytes` (rounded down to pages) of address space are reserved after them for
  // AddSegment.
  static Result<std::unique_ptr<Arena>> Create(const std::vector<uint64_t>& segment_bytes,
                                               bool prefault, uint64_t spare_bytes = 0);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // Maps a new segment of `bytes` (rounded down to pages) right after the last one, inside the
  // spare reservation, made like those of Create (sealed memfd, read-only twin, mode 0400).
  // InvalidArgument for less than a page; ResourceExhausted when the spare reservation has less
  // than `bytes` left or kMaxAddedSegments were added; Internal (or ResourceExhausted for
  // ENOMEM) when memfd_create, sealing or mmap fail (the spare stays as it was). Serialised
  // internally; readers of other segments go on meanwhile.
  Result<Segment> AddSegment(uint64_t bytes, bool prefault);

  int fd() const { return segments_[0].fd; }  // segment 0's
  uint8_t* base() const { return base_; }
  // Mapped bytes: all segments together (grows with AddSegment).
  uint64_t bytes() const { return bytes_.load(std::memory_order_acquire); }
  // The whole reservation: bytes() plus the spare left. Fixed at Create.
  uint64_t reserved_bytes() const { return reserved_bytes_; }
  size_t segment_count() const { return count_.load(std::memory_order_acquire); }
  const Segment& segment(size_t i) const { return segments_[i]; }
  // Random per arena, never 0: clients compare it to notice a new arena after a restart.
  uint64_t generation() const { return generation_; }

 private:
  Arena() = default;

  // Fixed capacity, so a reader's reference to segment i stays valid while segments are added.
  std::unique_ptr<Segment[]> segments_;
  size_t capacity_ = 0;
  std::atomic<size_t> count_{0};
  uint8_t* base_ = nullptr;
  std::atomic<uint64_t> bytes_{0};
  uint64_t reserved_bytes_ = 0;
  uint64_t generation_ = 0;
  Mutex add_mu_;  // one AddSegment at a time
};

}  // namespace kvstash::storage

#endif  // KVSTASH_STORAGE_ARENA_H_
