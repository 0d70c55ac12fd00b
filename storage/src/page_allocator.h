// PageAllocator: extents of 4 KiB pages inside one contiguous region (the CPU arena).
//
// Best fit, lowest address on ties, with immediate coalescing of free neighbours. Free extents are
// indexed twice: by offset (to find the neighbours of a freed extent in O(log n)) and by
// (length, offset) (so the best fit is one lower_bound, O(log n)). Best-fit address-ordered keeps
// fragmentation near zero on real allocation traces (Johnstone & Wilson, "The memory
// fragmentation problem: solved?", ISMM'98); see docs/storage.md for why not a buddy allocator.
//
// Offsets and sizes are in bytes, always multiples of kPageBytes. Not thread-safe: the store
// serialises calls under its arena mutex.
#ifndef KVSTASH_STORAGE_PAGE_ALLOCATOR_H_
#define KVSTASH_STORAGE_PAGE_ALLOCATOR_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>
#include <utility>

#include "kvstash/common/status.h"

namespace kvstash::storage {

class PageAllocator {
 public:
  static constexpr uint64_t kPageBytes = 4096;

  struct Extent {
    uint64_t offset = 0;
    uint64_t bytes = 0;
  };

  // Manages [0, capacity_bytes rounded down to a page).
  explicit PageAllocator(uint64_t capacity_bytes);

  // Rounds `bytes` up to whole pages (0 counts as one page). nullopt when no free extent is large
  // enough; the allocator is unchanged then.
  std::optional<Extent> Allocate(uint64_t bytes);

  // Frees the live allocation that starts at `offset`. InvalidArgument (and no change) when no
  // allocation starts there, which catches double frees.
  Status Free(uint64_t offset);

  static uint64_t RoundUp(uint64_t bytes) {
    uint64_t pages = bytes == 0 ? 1 : (bytes + kPageBytes - 1) / kPageBytes;
    return pages * kPageBytes;
  }

  uint64_t capacity_bytes() const { return total_pages_ * kPageBytes; }
  uint64_t used_bytes() const { return used_pages_ * kPageBytes; }
  uint64_t free_bytes() const { return (total_pages_ - used_pages_) * kPageBytes; }
  uint64_t largest_free_bytes() const;
  size_t free_extents() const { return free_by_offset_.size(); }
  size_t allocations() const { return allocated_.size(); }

  // Internal if the bookkeeping is inconsistent: the two free indexes disagree, two free extents
  // touch (missed coalescing), extents overlap or leave the region, or the page counts don't add
  // up. O(n log n); for tests.
  Status CheckInvariants() const;

 private:
  void InsertFree(uint64_t start, uint64_t pages);
  void EraseFree(uint64_t start, uint64_t pages);

  uint64_t total_pages_;
  uint64_t used_pages_ = 0;
  std::map<uint64_t, uint64_t> free_by_offset_;           // start page -> pages
  std::set<std::pair<uint64_t, uint64_t>> free_by_size_;  // (pages, start page)
  std::unordered_map<uint64_t, uint64_t> allocated_;      // start page -> pages
};

}  // namespace kvstash::storage

#endif  // KVSTASH_STORAGE_PAGE_ALLOCATOR_H_
