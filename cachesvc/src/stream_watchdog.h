// Cancels server calls that outlive their deadline.
//
// gRPC gives a server no deadline of its own: a Write to a client that stopped reading stays
// pending until the client goes away (or its own deadline, if it set one, passes). A streaming Get
// sends slices that point into the arena and keeps the object leased until gRPC lets go of them,
// so such a call must end on the service's terms; the watchdog cancels it
// (ServerContext::TryCancel), which fails the pending Write and makes gRPC drop the queued
// slices.
//
// Thread-safe. Every Registration must be destroyed before the watchdog.
#ifndef KVSTASH_CACHESVC_STREAM_WATCHDOG_H_
#define KVSTASH_CACHESVC_STREAM_WATCHDOG_H_

#include <grpcpp/server_context.h>

#include <chrono>
#include <map>
#include <memory>
#include <thread>

#include "kvstash/common/mutex.h"

namespace kvstash::cachesvc {

class StreamWatchdog {
 public:
  using Clock = std::chrono::steady_clock;

  StreamWatchdog();
  ~StreamWatchdog();  // stops and joins its thread
  StreamWatchdog(const StreamWatchdog&) = delete;
  StreamWatchdog& operator=(const StreamWatchdog&) = delete;

  // Keeps `ctx` watched while alive; its destructor waits for a cancellation in progress, so
  // the context is never touched after that.
  class Registration {
   public:
    Registration(StreamWatchdog* owner,
                 std::multimap<Clock::time_point, grpc::ServerContext*>::iterator it)
        : owner_(owner), it_(it) {}
    ~Registration();
    Registration(const Registration&) = delete;
    Registration& operator=(const Registration&) = delete;

   private:
    StreamWatchdog* owner_;
    std::multimap<Clock::time_point, grpc::ServerContext*>::iterator it_;
  };

  // Cancels `ctx` once `deadline` passes, unless the Registration is gone by then.
  [[nodiscard]] std::unique_ptr<Registration> Watch(grpc::ServerContext* ctx,
                                                    Clock::time_point deadline);

 private:
  void Run();

  Mutex mu_;
  CondVar wake_;
  // Entries stay until their Registration ends; a cancelled one has a null context.
  std::multimap<Clock::time_point, grpc::ServerContext*> calls_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_STREAM_WATCHDOG_H_
