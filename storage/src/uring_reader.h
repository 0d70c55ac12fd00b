// UringReaderPool: bulk file reads through io_uring (liburing), with a pread fallback.
//
// A pool of rings, each used by one reader at a time, so parallel promotions do not share a
// submission queue; the pool grows on demand up to `max_rings` concurrent readers. One ReadRanges
// call submits every range (up to the ring depth in flight) and waits for all of them; a short read
// before end of file is resubmitted for the remainder. When io_uring cannot be set up (old kernel,
// seccomp) the pool reads with pread instead.
#ifndef KVSTASH_STORAGE_URING_READER_H_
#define KVSTASH_STORAGE_URING_READER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kvstash/common/mutex.h"
#include "kvstash/common/status.h"

namespace kvstash::storage {

struct ReadRange {
  uint8_t* dst = nullptr;
  uint64_t length = 0;
  uint64_t file_offset = 0;
  uint64_t done = 0;  // out: bytes read (less than length only at end of file)
};

class UringReaderPool {
 public:
  // Starts with `rings` rings of `depth` entries each; never fails (falls back to pread).
  UringReaderPool(int rings, int max_rings, unsigned depth);
  ~UringReaderPool();
  UringReaderPool(const UringReaderPool&) = delete;
  UringReaderPool& operator=(const UringReaderPool&) = delete;

  bool uses_io_uring() const { return available_; }

  // Reads every range of `fd`. Internal on an I/O error.
  Status ReadRanges(int fd, std::span<ReadRange> ranges);

 private:
  struct Ring;
  Status ReadWithRing(Ring& ring, int fd, std::span<ReadRange> ranges);
  static Status ReadWithPread(int fd, std::span<ReadRange> ranges);

  unsigned depth_;
  size_t max_rings_;
  bool available_ = true;
  Mutex mu_;
  CondVar cv_;
  std::vector<std::unique_ptr<Ring>> rings_ ABSL_GUARDED_BY(mu_);
  std::vector<Ring*> idle_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvstash::storage

#endif  // KVSTASH_STORAGE_URING_READER_H_
