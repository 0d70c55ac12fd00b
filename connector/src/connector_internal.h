// Shared state of loads and stores (private to the connector).
#ifndef KVSTASH_CONNECTOR_CONNECTOR_INTERNAL_H_
#define KVSTASH_CONNECTOR_CONNECTOR_INTERNAL_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <vector>

#include "kvstash/client/kv_client.h"
#include "kvstash/common/metrics.h"
#include "kvstash/connector/connector.h"
#include "kvstash/kernels/paged_kv.h"

namespace kvstash::connector {

namespace internal {

// kvstash_connector_* metrics; the pointers belong to a MetricsRegistry.
struct Metrics {
  explicit Metrics(MetricsRegistry& r);
  Counter *lookups, *lookup_failures, *prompt_tokens;
  Counter *hit_cpu, *hit_ssd, *hit_other;
  Counter *missing, *corrupt, *mismatched, *acquire_failed;
  Counter *load_timeouts, *leases_lost, *loads_failed;
  Counter *stored, *present, *store_failed, *store_dropped;
  Histogram *lookup_s, *transfer_s, *verify_s, *scatter_s, *wait_s, *gather_s;
};

using Clock = std::chrono::steady_clock;

inline double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// One hit chunk's bytes: a lease in the shared arena, or a staging copy from a Get stream.
struct ChunkSource {
  KvLayout layout;
  std::optional<client::ReadLease> lease;
  std::vector<uint8_t> staging;
  const uint8_t* bytes = nullptr;
  Clock::time_point expires = Clock::time_point::max();
};

struct LoadState {
  // Fixed before the loader starts.
  kernels::PagedKvView paged;
  std::vector<int32_t> block_table;
  std::vector<ChunkSource> chunks;  // the hit
  uint32_t layer_begin = 0, layer_end = 0, chunk_tokens = 0;
  std::chrono::milliseconds layer_timeout{0}, lease_margin{0};
  std::function<void(uint32_t)> before_scatter_layer;
  Metrics* metrics = nullptr;  // the connector outlives its loads

  // Held by the loader around each copy into paged memory and by Cancel(): once Cancel()
  // returns, no copy is running and none starts.
  std::mutex scatter_mu;
  std::atomic<bool> cancelled{false};

  mutable std::mutex mu;
  std::condition_variable cv;
  uint32_t layers_done = 0;  // layers [layer_begin, layer_begin + layers_done) are loaded
  bool loader_exited = false;
  Status failure;     // loader failure (lease lost, copy error)
  LoadReport report;  // guarded by mu
};

struct StoreState {
  // Inputs, fixed when queued.
  std::vector<uint32_t> chunk_indices;
  std::vector<ObjectName> names;
  kernels::PagedKvView paged;
  std::vector<int32_t> block_table;

  mutable std::mutex mu;
  mutable std::condition_variable cv;
  bool done = false;
  uint32_t requested = 0, stored = 0, present = 0, failed = 0;
  Status status;

  void Finish() {
    {
      std::lock_guard<std::mutex> lock(mu);
      done = true;
    }
    cv.notify_all();
  }
};

}  // namespace internal
}  // namespace kvstash::connector

#endif  // KVSTASH_CONNECTOR_CONNECTOR_INTERNAL_H_
