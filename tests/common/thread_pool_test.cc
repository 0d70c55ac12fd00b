#include "kvstash/common/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <vector>

namespace kvstash {
namespace {

TEST(ThreadPoolTest, ParallelForCoversEveryIndexOnce) {
  ThreadPool pool(3);
  for (size_t n : {size_t{1}, size_t{7}, size_t{1000}, size_t{12345}}) {
    std::vector<std::atomic<int>> hits(n);
    pool.ParallelFor(n, 16, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) hits[i].fetch_add(1);
    });
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " i=" << i;
  }
}

// Many short back-to-back loops: the caller returns (and its completion state goes away) while
// workers are still finishing their hand-back; this once crashed on a destroyed mutex.
TEST(ThreadPoolTest, ManyShortLoopsBackToBack) {
  ThreadPool pool(3);
  std::atomic<size_t> total{0};
  for (int round = 0; round < 20000; ++round) {
    pool.ParallelFor(4, 1, [&](size_t b, size_t e) { total.fetch_add(e - b); });
  }
  EXPECT_EQ(total.load(), 80000u);
}

TEST(ThreadPoolTest, SubmittedTasksRunBeforeDestruction) {
  std::atomic<int> count{0};
  {
    ThreadPool pool(2);
    for (int i = 0; i < 100; ++i) pool.Submit([&] { count.fetch_add(1); });
  }
  EXPECT_EQ(count.load(), 100);
}

TEST(ThreadPoolTest, NestedParallelForRunsInline) {
  ThreadPool pool(2);
  std::atomic<int> total{0};
  pool.ParallelFor(4, 1, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      pool.ParallelFor(10, 1,
                       [&](size_t b2, size_t e2) { total.fetch_add(static_cast<int>(e2 - b2)); });
    }
  });
  EXPECT_EQ(total.load(), 40);
}

}  // namespace
}  // namespace kvstash
