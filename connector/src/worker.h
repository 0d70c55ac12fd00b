// A single background thread running posted tasks in order (private to the connector).
#ifndef KVSTASH_CONNECTOR_WORKER_H_
#define KVSTASH_CONNECTOR_WORKER_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace kvstash::connector::internal {

class Worker {
 public:
  // A task runs with cancelled == false, or with true when the worker is destroyed before it
  // started (it must then only clean up).
  using Task = std::function<void(bool cancelled)>;

  Worker() : thread_([this] { Loop(); }) {}
  // Runs every queued task with cancelled == true after the running one returns, then joins.
  ~Worker() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  void Post(Task task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(task));
    }
    cv_.notify_all();
  }

  // Waits until every task posted before the call has run.
  void Flush() {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t target = posted_total();
    idle_cv_.wait(lock, [&] { return finished_ >= target; });
  }

 private:
  uint64_t posted_total() const { return finished_ + queue_.size() + (running_ ? 1 : 0); }

  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping with nothing left
      Task task = std::move(queue_.front());
      queue_.pop_front();
      const bool cancelled = stopping_;
      running_ = true;
      lock.unlock();
      task(cancelled);
      task = nullptr;  // release captures outside the lock
      lock.lock();
      running_ = false;
      ++finished_;
      idle_cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<Task> queue_;
  bool stopping_ = false;
  bool running_ = false;
  uint64_t finished_ = 0;
  std::thread thread_;  // last: starts after the other members exist
};

}  // namespace kvstash::connector::internal

#endif  // KVSTASH_CONNECTOR_WORKER_H_
