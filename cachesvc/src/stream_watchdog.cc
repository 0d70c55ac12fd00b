#include "stream_watchdog.h"

namespace kvstash::cachesvc {

StreamWatchdog::StreamWatchdog() : thread_([this] { Run(); }) {}

StreamWatchdog::~StreamWatchdog() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
  }
  wake_.SignalAll();
  thread_.join();
}

std::unique_ptr<StreamWatchdog::Registration> StreamWatchdog::Watch(grpc::ServerContext* ctx,
                                                                    Clock::time_point deadline) {
  MutexLock lock(&mu_);
  const bool earliest = calls_.empty() || deadline < calls_.begin()->first;
  auto it = calls_.emplace(deadline, ctx);
  if (earliest) wake_.SignalAll();
  return std::make_unique<Registration>(this, it);
}

StreamWatchdog::Registration::~Registration() {
  MutexLock lock(&owner_->mu_);
  owner_->calls_.erase(it_);
}

void StreamWatchdog::Run() {
  MutexLock lock(&mu_);
  while (!stopping_) {
    // The earliest deadline still to enforce (cancelled entries wait for their handler to end).
    auto next = calls_.begin();
    while (next != calls_.end() && next->second == nullptr) ++next;
    if (next == calls_.end()) {
      wake_.Wait(&mu_);
      continue;
    }
    if (Clock::now() < next->first) {
      // A copy: wait_until keeps reading its argument, and the entry may go while we wait.
      const Clock::time_point when = next->first;
      wake_.WaitUntil(&mu_, when);
      continue;
    }
    // Under mu_: the handler cannot end and destroy the context meanwhile.
    next->second->TryCancel();
    next->second = nullptr;
  }
}

}  // namespace kvstash::cachesvc
