#include "page_allocator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::storage {
namespace {

constexpr uint64_t kPage = PageAllocator::kPageBytes;

TEST(PageAllocatorTest, RoundsToPagesAndAligns) {
  PageAllocator a(100 * kPage + 123);  // the partial page is not managed
  EXPECT_EQ(a.capacity_bytes(), 100 * kPage);
  auto e1 = a.Allocate(1);
  auto e2 = a.Allocate(kPage + 1);
  auto e3 = a.Allocate(0);
  ASSERT_TRUE(e1 && e2 && e3);
  EXPECT_EQ(e1->bytes, kPage);
  EXPECT_EQ(e2->bytes, 2 * kPage);
  EXPECT_EQ(e3->bytes, kPage);
  for (auto e : {*e1, *e2, *e3}) EXPECT_EQ(e.offset % kPage, 0u);
  EXPECT_EQ(a.used_bytes(), 4 * kPage);
  EXPECT_OK(a.CheckInvariants());
}

TEST(PageAllocatorTest, CapacityLimit) {
  PageAllocator a(10 * kPage);
  EXPECT_FALSE(a.Allocate(11 * kPage));
  auto all = a.Allocate(10 * kPage);
  ASSERT_TRUE(all);
  EXPECT_FALSE(a.Allocate(1));
  EXPECT_EQ(a.free_bytes(), 0u);
  ASSERT_OK(a.Free(all->offset));
  EXPECT_EQ(a.free_bytes(), 10 * kPage);
}

TEST(PageAllocatorTest, RejectsDoubleAndBogusFree) {
  PageAllocator a(10 * kPage);
  auto e = a.Allocate(kPage);
  ASSERT_TRUE(e);
  EXPECT_OK(a.Free(e->offset));
  EXPECT_THAT(a.Free(e->offset), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(a.Free(3 * kPage), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(a.Free(5), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_OK(a.CheckInvariants());
}

TEST(PageAllocatorTest, CoalescesBothNeighbours) {
  PageAllocator a(3 * kPage);
  auto x = a.Allocate(kPage), y = a.Allocate(kPage), z = a.Allocate(kPage);
  ASSERT_TRUE(x && y && z);
  ASSERT_OK(a.Free(x->offset));
  ASSERT_OK(a.Free(z->offset));
  EXPECT_EQ(a.free_extents(), 2u);
  ASSERT_OK(a.Free(y->offset));  // bridges both free neighbours
  EXPECT_EQ(a.free_extents(), 1u);
  EXPECT_EQ(a.largest_free_bytes(), 3 * kPage);
  EXPECT_OK(a.CheckInvariants());
}

TEST(PageAllocatorTest, BestFitPrefersTheSmallestHole) {
  PageAllocator a(20 * kPage);
  auto a1 = a.Allocate(4 * kPage), s1 = a.Allocate(kPage), a2 = a.Allocate(2 * kPage),
       s2 = a.Allocate(kPage);
  ASSERT_TRUE(a1 && s1 && a2 && s2);
  ASSERT_OK(a.Free(a1->offset));  // 4-page hole at 0
  ASSERT_OK(a.Free(a2->offset));  // 2-page hole at 5
  auto got = a.Allocate(2 * kPage);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->offset, a2->offset);  // the exact-size hole, not the first one
}

// Random alloc/free of mixed sizes at high occupancy; invariants hold throughout and everything
// coalesces back into a single extent at the end.
TEST(PageAllocatorTest, MixedChurnKeepsInvariants) {
  const uint64_t pages = 4096;
  PageAllocator a(pages * kPage);
  std::mt19937_64 rng(42);
  std::vector<PageAllocator::Extent> live;
  for (int step = 0; step < 40000; ++step) {
    double fill = static_cast<double>(a.used_bytes()) / a.capacity_bytes();
    bool alloc = live.empty() || (fill < 0.92 && rng() % 100 < 55);
    if (alloc) {
      uint64_t bytes = (1 + rng() % 64) * kPage - rng() % kPage;
      auto e = a.Allocate(bytes);
      if (e) {
        EXPECT_GE(e->bytes, bytes);
        live.push_back(*e);
      }
    } else {
      size_t i = rng() % live.size();
      ASSERT_OK(a.Free(live[i].offset));
      live[i] = live.back();
      live.pop_back();
    }
    if (step % 997 == 0) {
      ASSERT_OK(a.CheckInvariants());
      // No overlap among live extents, checked independently of the allocator's bookkeeping.
      auto sorted = live;
      std::sort(sorted.begin(), sorted.end(), [](auto& x, auto& y) { return x.offset < y.offset; });
      for (size_t i = 1; i < sorted.size(); ++i) {
        ASSERT_LE(sorted[i - 1].offset + sorted[i - 1].bytes, sorted[i].offset);
      }
    }
  }
  for (auto& e : live) ASSERT_OK(a.Free(e.offset));
  ASSERT_OK(a.CheckInvariants());
  EXPECT_EQ(a.free_extents(), 1u);
  EXPECT_EQ(a.largest_free_bytes(), pages * kPage);
  EXPECT_EQ(a.used_bytes(), 0u);
}

// Churn of one object size (the common case: every chunk of a model has the same size). Whenever
// the free space could hold another object of that size, an allocation of that size succeeds:
// churn never fragments free space below the object size.
TEST(PageAllocatorTest, SameSizeChurnNeverFragments) {
  for (uint64_t object_pages : {1u, 3u, 16u, 37u}) {
    const uint64_t objects = 200;
    PageAllocator a(objects * object_pages * kPage);
    const uint64_t size = object_pages * kPage - 100;  // not page-aligned on purpose
    std::mt19937_64 rng(object_pages);
    std::vector<uint64_t> live;
    for (int step = 0; step < 20000; ++step) {
      bool alloc = live.empty() || rng() % 100 < 50;
      if (alloc) {
        bool fits = a.free_bytes() >= object_pages * kPage;
        auto e = a.Allocate(size);
        ASSERT_EQ(e.has_value(), fits) << "step " << step << " free " << a.free_bytes()
                                       << " largest " << a.largest_free_bytes();
        if (e) live.push_back(e->offset);
      } else {
        size_t i = rng() % live.size();
        ASSERT_OK(a.Free(live[i]));
        live[i] = live.back();
        live.pop_back();
      }
    }
    // Fill completely: exactly `objects` objects fit.
    while (auto e = a.Allocate(size)) live.push_back(e->offset);
    EXPECT_EQ(live.size(), objects);
    for (uint64_t off : live) ASSERT_OK(a.Free(off));
    EXPECT_EQ(a.free_extents(), 1u);
    ASSERT_OK(a.CheckInvariants());
  }
}

}  // namespace
}  // namespace kvstash::storage
