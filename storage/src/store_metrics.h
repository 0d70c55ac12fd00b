// The store's Prometheus metrics (all named kvstash_storage_*). Built once at Open against the
// caller's registry, or a private one when StoreOptions::metrics is null, so the code that
// updates them never branches on "metrics enabled". Pointers are owned by the registry.
#ifndef KVSTASH_STORAGE_STORE_METRICS_H_
#define KVSTASH_STORAGE_STORE_METRICS_H_

#include <memory>
#include <string>

#include "kvstash/common/metrics.h"

namespace kvstash::storage {

struct TierMetrics {
  Counter* hits;
  Counter* misses;
  Counter* evictions;
  Counter* bytes_read;
  Counter* bytes_written;
  Gauge* used_bytes;
  Gauge* capacity_bytes;
};

struct StoreMetrics {
  explicit StoreMetrics(MetricsRegistry* registry);

  std::unique_ptr<MetricsRegistry> owned;  // set when the caller passed none
  TierMetrics cpu;
  TierMetrics ssd;
  Counter* checksum_failures;
  Counter* reservations_expired;
  Counter* leases_expired;
  Counter* ssd_write_errors_capacity;  // no room under ssd_capacity_bytes
  Counter* ssd_write_errors_enospc;    // the filesystem said ENOSPC / EDQUOT
  Counter* ssd_write_errors_io;        // any other write failure
  Counter* ssd_recovery_dropped;       // index entries dropped at Open (file missing or short)
  Counter* ssd_admission_dropped;      // CPU evictions of objects not admitted to SSD
  Histogram* reserve_seconds;
  Histogram* commit_seconds;
  Histogram* acquire_seconds;
  Histogram* ssd_write_seconds;
  Histogram* ssd_read_seconds;
  // Per-tier encoding (StoreOptions::ssd_codec).
  Counter* ssd_encode_refused;        // objects the codec left as they are
  Counter* ssd_encoded_bytes_before;  // raw bytes of the objects written encoded
  Counter* ssd_encoded_bytes_after;   // their encoded bytes
  Gauge* ssd_encoding_ratio;          // before / after, over the life of the process
  Histogram* ssd_encode_seconds;
  Histogram* ssd_decode_seconds;

  void AddSsdEncoded(uint64_t raw_bytes, uint64_t encoded_bytes);
  // The kvstash_storage_* tier metrics with label tier=`label` (a lower tier after the SSD one).
  TierMetrics ForTier(const std::string& label);

  MetricsRegistry* metrics_registry;  // the caller's or `owned`
};

}  // namespace kvstash::storage

#endif  // KVSTASH_STORAGE_STORE_METRICS_H_
