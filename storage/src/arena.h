// Arena: the CPU tier's shared memory. One or more segments, each its own memfd, mapped
// MAP_SHARED next to each other into one contiguous range of this process, so the store addresses
// every byte as base() + offset and registers the whole range once (UCX). Segment 0 is the shared
// arena; further segments are tenants' arenas (StoreOptions::tenant_arenas). Clients map one
// segment's fd (passed over a unix socket), so bytes written by either side are seen by both
// without a copy; a client that holds one segment's fds cannot reach another segment's memory.
//
// Each memfd is sealed against resizing (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL): no client
// can ftruncate it and fault the service with SIGBUS. Each segment also has a read-only
// descriptor (the memfd reopened O_RDONLY through /proc/self/fd): a MAP_SHARED mapping of it with
// PROT_WRITE fails (EACCES) and mprotect cannot add write access later. After that reopen the
// memfd's mode is set to 0400, so a process holding only the read-only fd cannot reopen it
// read-write through /proc either (unless it has CAP_DAC_OVERRIDE).
//
// The fds and the mapping live as long as the Arena. Thread-safe (immutable after Create).
#ifndef KVSTASH_STORAGE_ARENA_H_
#define KVSTASH_STORAGE_ARENA_H_

#include <cstdint>
#include <memory>
#include <vector>

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

  // One segment per entry of `segment_bytes`, each rounded down to whole 4 KiB pages;
  // InvalidArgument if that leaves a segment empty (or there is none), ResourceExhausted/Internal
  // if memfd_create, ftruncate, sealing, the reopen or mmap fail. `prefault` allocates every page
  // now.
  static Result<std::unique_ptr<Arena>> Create(const std::vector<uint64_t>& segment_bytes,
                                               bool prefault);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  int fd() const { return segments_[0].fd; }  // segment 0's
  uint8_t* base() const { return base_; }
  uint64_t bytes() const { return bytes_; }  // all segments together
  size_t segment_count() const { return segments_.size(); }
  const Segment& segment(size_t i) const { return segments_[i]; }
  // Random per arena, never 0: clients compare it to notice a new arena after a restart.
  uint64_t generation() const { return generation_; }

 private:
  Arena() = default;

  std::vector<Segment> segments_;
  uint8_t* base_ = nullptr;
  uint64_t bytes_ = 0;
  uint64_t generation_ = 0;
};

}  // namespace kvstash::storage

#endif  // KVSTASH_STORAGE_ARENA_H_
