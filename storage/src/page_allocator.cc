#include "page_allocator.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"

namespace kvstash::storage {

PageAllocator::PageAllocator(uint64_t capacity_bytes) : total_pages_(capacity_bytes / kPageBytes) {
  if (total_pages_ > 0) InsertFree(0, total_pages_);
}

void PageAllocator::InsertFree(uint64_t start, uint64_t pages) {
  free_by_offset_.emplace(start, pages);
  free_by_size_.emplace(pages, start);
}

void PageAllocator::EraseFree(uint64_t start, uint64_t pages) {
  free_by_offset_.erase(start);
  free_by_size_.erase({pages, start});
}

std::optional<PageAllocator::Extent> PageAllocator::Allocate(uint64_t bytes) {
  uint64_t pages = RoundUp(bytes) / kPageBytes;
  auto it = free_by_size_.lower_bound({pages, 0});
  if (it == free_by_size_.end()) return std::nullopt;
  auto [free_pages, start] = *it;
  EraseFree(start, free_pages);
  if (free_pages > pages) InsertFree(start + pages, free_pages - pages);
  allocated_.emplace(start, pages);
  used_pages_ += pages;
  return Extent{start * kPageBytes, pages * kPageBytes};
}

Status PageAllocator::Free(uint64_t offset) {
  if (offset % kPageBytes != 0) {
    return absl::InvalidArgumentError(absl::StrCat("free of unaligned offset ", offset));
  }
  uint64_t start = offset / kPageBytes;
  auto alloc = allocated_.find(start);
  if (alloc == allocated_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("no allocation starts at offset ", offset));
  }
  uint64_t pages = alloc->second;
  allocated_.erase(alloc);
  used_pages_ -= pages;

  // Coalesce with the free extent that ends where this one starts and the one that starts where
  // it ends, so free space is always maximal runs.
  auto next = free_by_offset_.lower_bound(start);
  if (next != free_by_offset_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      uint64_t prev_start = prev->first;
      uint64_t prev_pages = prev->second;
      EraseFree(prev_start, prev_pages);
      start = prev_start;
      pages += prev_pages;
    }
  }
  next = free_by_offset_.lower_bound(start);
  if (next != free_by_offset_.end() && start + pages == next->first) {
    uint64_t next_start = next->first;
    uint64_t next_pages = next->second;
    EraseFree(next_start, next_pages);
    pages += next_pages;
  }
  InsertFree(start, pages);
  return OkStatus();
}

uint64_t PageAllocator::largest_free_bytes() const {
  if (free_by_size_.empty()) return 0;
  return free_by_size_.rbegin()->first * kPageBytes;
}

Status PageAllocator::CheckInvariants() const {
  if (free_by_offset_.size() != free_by_size_.size()) {
    return absl::InternalError("free indexes differ in size");
  }
  for (const auto& [pages, start] : free_by_size_) {
    auto it = free_by_offset_.find(start);
    if (it == free_by_offset_.end() || it->second != pages) {
      return absl::InternalError(
          absl::StrCat("free extent at page ", start, " indexed by size only"));
    }
  }
  // Merge every extent, free and allocated, into one sorted list and walk it.
  struct Span {
    uint64_t start, pages;
    bool free;
  };
  std::vector<Span> spans;
  spans.reserve(free_by_offset_.size() + allocated_.size());
  uint64_t free_pages = 0, alloc_pages = 0;
  for (const auto& [start, pages] : free_by_offset_) {
    spans.push_back({start, pages, true});
    free_pages += pages;
  }
  for (const auto& [start, pages] : allocated_) {
    spans.push_back({start, pages, false});
    alloc_pages += pages;
  }
  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return a.start < b.start; });
  uint64_t cursor = 0;
  bool prev_free = false;
  for (const Span& s : spans) {
    if (s.pages == 0) return absl::InternalError("empty extent");
    if (s.start < cursor) {
      return absl::InternalError(absl::StrCat("extents overlap at page ", s.start));
    }
    if (s.start > cursor) {
      return absl::InternalError(absl::StrCat("pages [", cursor, ", ", s.start, ") are lost"));
    }
    if (s.free && prev_free) {
      return absl::InternalError(absl::StrCat("free extents touch at page ", s.start));
    }
    prev_free = s.free;
    cursor = s.start + s.pages;
  }
  if (cursor != total_pages_) {
    return absl::InternalError(absl::StrCat("extents end at page ", cursor, " of ", total_pages_));
  }
  if (alloc_pages != used_pages_ || free_pages + alloc_pages != total_pages_) {
    return absl::InternalError("page counts do not add up");
  }
  return OkStatus();
}

}  // namespace kvstash::storage
