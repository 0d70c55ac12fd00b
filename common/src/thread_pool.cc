#include "kvstash/common/thread_pool.h"

#include <algorithm>

namespace kvstash {
namespace {
thread_local bool tls_in_pool_worker = false;
}  // namespace

ThreadPool::ThreadPool(size_t num_threads) {
  if (num_threads == 0) num_threads = std::max(1u, std::thread::hardware_concurrency());
  workers_.reserve(num_threads);
  for (size_t i = 0; i < num_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::Submit(std::function<void()> task) {
  {
    std::lock_guard lock(mu_);
    queue_.push_back(std::move(task));
  }
  cv_.notify_one();
}

void ThreadPool::WorkerLoop() {
  tls_in_pool_worker = true;
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping and drained
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

void ThreadPool::ParallelFor(size_t n, size_t min_block,
                             const std::function<void(size_t, size_t)>& fn) {
  if (n == 0) return;
  min_block = std::max<size_t>(1, min_block);
  size_t max_parts = workers_.size() + 1;
  size_t parts = std::min(max_parts, (n + min_block - 1) / min_block);
  if (parts <= 1 || tls_in_pool_worker) {
    fn(0, n);
    return;
  }
  size_t base = n / parts;
  size_t extra = n % parts;
  // Decremented under done_mu: a worker that decremented without the lock could still be about
  // to lock done_mu after the caller saw zero and returned (destroying done_mu).
  size_t remaining = parts - 1;
  std::mutex done_mu;
  std::condition_variable done_cv;
  size_t begin = 0;
  size_t first_end = 0;
  for (size_t p = 0; p < parts; ++p) {
    size_t end = begin + base + (p < extra ? 1 : 0);
    if (p == 0) {
      first_end = end;
    } else {
      Submit([&, begin, end] {
        fn(begin, end);
        std::lock_guard lock(done_mu);
        if (--remaining == 0) done_cv.notify_one();
      });
    }
    begin = end;
  }
  fn(0, first_end);
  std::unique_lock lock(done_mu);
  done_cv.wait(lock, [&] { return remaining == 0; });
}

}  // namespace kvstash
