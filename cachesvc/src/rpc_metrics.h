// Per-RPC Prometheus metrics: requests by method and status code, latency histograms, in-flight
// gauge, and the serialized bytes of every request and response message. The message byte counters
// are what proves that the shared-memory path moves no payload over gRPC.
#ifndef KVSTASH_CACHESVC_RPC_METRICS_H_
#define KVSTASH_CACHESVC_RPC_METRICS_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>

#include "kvstash/common/metrics.h"
#include "kvstash/common/status.h"

namespace kvstash::cachesvc {

enum class Method : int {
  kLookup,
  kReserve,
  kCommit,
  kAbort,
  kPut,
  kAcquire,
  kRelease,
  kGet,
  kDelete,
  kPin,
  kUnpin,
  kList,
  kStats,
  kArenaInfo,
  kReserveMany,
  kCommitMany,
  kOffer,
  kFetchHandoff,
  kHeartbeatHandoff,
  kReleaseHandoff,
  kCount
};
const char* MethodName(Method method);

class RpcMetrics {
 public:
  explicit RpcMetrics(MetricsRegistry* registry);

  void Started(Method m) { in_flight_->Add(1); }
  void Finished(Method m, absl::StatusCode code, double seconds);
  void AddReceived(Method m, uint64_t bytes) { received_[Index(m)]->Increment(bytes); }
  void AddSent(Method m, uint64_t bytes) { sent_[Index(m)]->Increment(bytes); }

 private:
  static constexpr int kMethods = static_cast<int>(Method::kCount);
  static constexpr int kCodes = 17;
  static int Index(Method m) { return static_cast<int>(m); }

  MetricsRegistry* registry_;
  Gauge* in_flight_;
  std::array<Histogram*, kMethods> latency_{};
  std::array<Counter*, kMethods> received_{};
  std::array<Counter*, kMethods> sent_{};
  // Created on first use so the exposition lists only codes that happened.
  std::array<std::array<std::atomic<Counter*>, kCodes>, kMethods> requests_{};
};

// Times one RPC and records its outcome when Finish() is called (or, as kInternal, if the scope
// ends without it, which would be a bug).
class RpcScope {
 public:
  RpcScope(RpcMetrics* metrics, Method method, uint64_t request_bytes);
  ~RpcScope();
  RpcScope(const RpcScope&) = delete;
  RpcScope& operator=(const RpcScope&) = delete;

  Method method() const { return method_; }
  void AddReceived(uint64_t bytes) { metrics_->AddReceived(method_, bytes); }
  void AddSent(uint64_t bytes) { metrics_->AddSent(method_, bytes); }
  // Records the outcome, logs failures, returns `status` for the handler to map.
  const Status& Finish(const Status& status);

 private:
  RpcMetrics* metrics_;
  Method method_;
  std::chrono::steady_clock::time_point start_;
  bool finished_ = false;
};

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_RPC_METRICS_H_
