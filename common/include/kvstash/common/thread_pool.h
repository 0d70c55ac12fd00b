// A fixed-size pool of worker threads.
//
// Submit() queues a task; ParallelFor() splits an index range over the workers and the calling
// thread and returns when every index ran. Both are thread-safe. Tasks must not throw. The
// destructor finishes queued tasks, then joins. Calling ParallelFor from inside a pool task runs
// the loop on the calling thread alone (no deadlock, no nested fan-out).
#ifndef KVSTASH_COMMON_THREAD_POOL_H_
#define KVSTASH_COMMON_THREAD_POOL_H_

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kvstash {

class ThreadPool {
 public:
  // num_threads == 0 picks std::thread::hardware_concurrency().
  explicit ThreadPool(size_t num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  size_t size() const { return workers_.size(); }

  void Submit(std::function<void()> task);

  // Runs fn(begin, end) over [0, n) cut into contiguous blocks of at least `min_block` indices.
  // The blocks are a deterministic function of (n, size(), min_block).
  void ParallelFor(size_t n, size_t min_block, const std::function<void(size_t, size_t)>& fn);

 private:
  void WorkerLoop();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
};

}  // namespace kvstash

#endif  // KVSTASH_COMMON_THREAD_POOL_H_
