#include "rpc_metrics.h"

#include <spdlog/spdlog.h>

#include <mutex>
#include <string>

#include "absl/status/status.h"

namespace kvstash::cachesvc {
namespace {

std::mutex& CreateMutex() {
  static std::mutex mu;
  return mu;
}

}  // namespace

const char* MethodName(Method method) {
  static const char* kNames[] = {"Lookup",
                                 "Reserve",
                                 "Commit",
                                 "Abort",
                                 "Put",
                                 "Acquire",
                                 "Release",
                                 "Get",
                                 "Delete",
                                 "Pin",
                                 "Unpin",
                                 "List",
                                 "Stats",
                                 "ArenaInfo",
                                 "ReserveMany",
                                 "CommitMany",
                                 "Offer",
                                 "FetchHandoff",
                                 "HeartbeatHandoff",
                                 "ReleaseHandoff"};
  int i = static_cast<int>(method);
  return (i >= 0 && i < static_cast<int>(Method::kCount)) ? kNames[i] : "unknown";
}

RpcMetrics::RpcMetrics(MetricsRegistry* registry) : registry_(registry) {
  in_flight_ = registry->GetGauge("kvstash_rpc_in_flight", "RPCs being served right now");
  for (int i = 0; i < kMethods; ++i) {
    MetricLabels labels = {{"method", MethodName(static_cast<Method>(i))}};
    latency_[i] = registry->GetHistogram("kvstash_rpc_duration_seconds",
                                         "Server-side RPC latency by method", labels);
    received_[i] = registry->GetCounter(
        "kvstash_grpc_received_bytes_total",
        "Serialized bytes of request messages received over gRPC, by method", labels);
    sent_[i] = registry->GetCounter("kvstash_grpc_sent_bytes_total",
                                    "Serialized bytes of response messages sent over gRPC, by "
                                    "method",
                                    labels);
  }
}

void RpcMetrics::Finished(Method m, absl::StatusCode code, double seconds) {
  in_flight_->Add(-1);
  int mi = Index(m);
  latency_[mi]->Observe(seconds);
  int ci = static_cast<int>(code);
  if (ci < 0 || ci >= kCodes) ci = static_cast<int>(absl::StatusCode::kUnknown);
  Counter* counter = requests_[mi][ci].load(std::memory_order_acquire);
  if (counter == nullptr) {
    std::lock_guard<std::mutex> lock(CreateMutex());
    counter = requests_[mi][ci].load(std::memory_order_relaxed);
    if (counter == nullptr) {
      counter = registry_->GetCounter(
          "kvstash_rpc_requests_total", "RPCs served, by method and gRPC status code",
          {{"method", MethodName(m)}, {"code", absl::StatusCodeToString(code)}});
      requests_[mi][ci].store(counter, std::memory_order_release);
    }
  }
  counter->Increment();
}

RpcScope::RpcScope(RpcMetrics* metrics, Method method, uint64_t request_bytes)
    : metrics_(metrics), method_(method), start_(std::chrono::steady_clock::now()) {
  metrics_->Started(method);
  if (request_bytes > 0) metrics_->AddReceived(method, request_bytes);
}

RpcScope::~RpcScope() {
  if (!finished_) Finish(absl::InternalError("RPC handler ended without a status"));
}

const Status& RpcScope::Finish(const Status& status) {
  finished_ = true;
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  metrics_->Finished(method_, status.code(), seconds);
  switch (status.code()) {
    case absl::StatusCode::kOk:
      spdlog::trace("event=rpc method={} code=OK ms={:.3f}", MethodName(method_), seconds * 1e3);
      break;
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kUnknown:
      spdlog::warn("event=rpc method={} code={} ms={:.3f} error=\"{}\"", MethodName(method_),
                   absl::StatusCodeToString(status.code()), seconds * 1e3,
                   std::string(status.message()));
      break;
    default:
      spdlog::debug("event=rpc method={} code={} ms={:.3f} error=\"{}\"", MethodName(method_),
                    absl::StatusCodeToString(status.code()), seconds * 1e3,
                    std::string(status.message()));
  }
  return status;
}

}  // namespace kvstash::cachesvc
