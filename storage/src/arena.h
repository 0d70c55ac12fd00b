// Arena: the CPU tier's shared-memory region, a memfd mapped MAP_SHARED into this process.
// Clients map the same fd (passed over a unix socket), so bytes written by either side are seen
// by both without a copy. The fd and mapping live as long as the Arena.
#ifndef KVSTASH_STORAGE_ARENA_H_
#define KVSTASH_STORAGE_ARENA_H_

#include <cstdint>
#include <memory>

#include "kvstash/common/status.h"

namespace kvstash::storage {

class Arena {
 public:
  // `bytes` is rounded down to whole 4 KiB pages; InvalidArgument if that leaves nothing,
  // ResourceExhausted/Internal if memfd_create, ftruncate or mmap fail.
  static Result<std::unique_ptr<Arena>> Create(uint64_t bytes);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  int fd() const { return fd_; }
  uint8_t* base() const { return base_; }
  uint64_t bytes() const { return bytes_; }
  // Random per arena, never 0: clients compare it to notice a new arena after a restart.
  uint64_t generation() const { return generation_; }

 private:
  Arena(int fd, uint8_t* base, uint64_t bytes, uint64_t generation)
      : fd_(fd), base_(base), bytes_(bytes), generation_(generation) {}

  int fd_;
  uint8_t* base_;
  uint64_t bytes_;
  uint64_t generation_;
};

}  // namespace kvstash::storage

#endif  // KVSTASH_STORAGE_ARENA_H_
