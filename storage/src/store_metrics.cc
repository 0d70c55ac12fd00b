#include "store_metrics.h"

#include <string>

namespace kvstash::storage {
namespace {

TierMetrics MakeTier(MetricsRegistry* r, const std::string& tier) {
  MetricLabels l = {{"tier", tier}};
  return TierMetrics{
      r->GetCounter("kvstash_storage_hits_total", "Reads served by a tier", l),
      r->GetCounter("kvstash_storage_misses_total", "Reads a tier could not serve", l),
      r->GetCounter("kvstash_storage_evictions_total", "Objects evicted from a tier", l),
      r->GetCounter("kvstash_storage_read_bytes_total", "Payload bytes read from a tier", l),
      r->GetCounter("kvstash_storage_written_bytes_total", "Payload bytes written to a tier", l),
      r->GetGauge("kvstash_storage_used_bytes", "Bytes in use in a tier", l),
      r->GetGauge("kvstash_storage_capacity_bytes", "Capacity of a tier", l),
  };
}

Histogram* Latency(MetricsRegistry* r, const std::string& op) {
  return r->GetHistogram("kvstash_storage_latency_seconds", "Latency of storage operations",
                         {{"op", op}});
}

MetricsRegistry* Pick(MetricsRegistry* given, std::unique_ptr<MetricsRegistry>& owned) {
  if (given != nullptr) return given;
  owned = std::make_unique<MetricsRegistry>();
  return owned.get();
}

}  // namespace

StoreMetrics::StoreMetrics(MetricsRegistry* registry) {
  MetricsRegistry* r = Pick(registry, owned);
  metrics_registry = r;
  cpu = MakeTier(r, "cpu");
  ssd = MakeTier(r, "ssd");
  checksum_failures =
      r->GetCounter("kvstash_storage_checksum_failures_total",
                    "Objects removed because their bytes failed crc32c verification (after a "
                    "shared-memory put, or on an SSD read)");
  reservations_expired = r->GetCounter("kvstash_storage_reservations_expired_total",
                                       "Reservations reclaimed because they were not committed");
  leases_expired =
      r->GetCounter("kvstash_storage_leases_expired_total", "Leases ended by expiry, not Release");
  const std::string errors = "kvstash_storage_ssd_write_errors_total";
  const std::string errors_help = "SSD writes that did not persist an object";
  ssd_write_errors_capacity = r->GetCounter(errors, errors_help, {{"reason", "capacity"}});
  ssd_write_errors_enospc = r->GetCounter(errors, errors_help, {{"reason", "enospc"}});
  ssd_write_errors_io = r->GetCounter(errors, errors_help, {{"reason", "io"}});
  ssd_recovery_dropped = r->GetCounter("kvstash_storage_ssd_recovery_dropped_total",
                                       "SSD index entries dropped at open (file missing or short)");
  ssd_admission_dropped =
      r->GetCounter("kvstash_storage_ssd_admission_dropped_total",
                    "CPU evictions that dropped an object not yet admitted to SSD");
  reserve_seconds = Latency(r, "reserve");
  commit_seconds = Latency(r, "commit");
  acquire_seconds = Latency(r, "acquire");
  ssd_write_seconds = Latency(r, "ssd_write");
  ssd_read_seconds = Latency(r, "ssd_read");
  ssd_encode_refused =
      r->GetCounter("kvstash_storage_ssd_encode_skipped_total",
                    "Objects written to SSD as they are because the tier codec does not take them");
  const std::string encoded = "kvstash_storage_ssd_encoded_bytes_total";
  const std::string encoded_help = "Bytes of objects written encoded to SSD, before and after";
  ssd_encoded_bytes_before = r->GetCounter(encoded, encoded_help, {{"stage", "before"}});
  ssd_encoded_bytes_after = r->GetCounter(encoded, encoded_help, {{"stage", "after"}});
  ssd_encoding_ratio =
      r->GetGauge("kvstash_storage_ssd_encoding_ratio",
                  "Raw / encoded bytes of the objects this process wrote encoded to SSD");
  ssd_encode_seconds = Latency(r, "ssd_encode");
  ssd_decode_seconds = Latency(r, "ssd_decode");
}

void StoreMetrics::AddSsdEncoded(uint64_t raw_bytes, uint64_t encoded_bytes) {
  ssd_encoded_bytes_before->Increment(raw_bytes);
  ssd_encoded_bytes_after->Increment(encoded_bytes);
  double after = static_cast<double>(ssd_encoded_bytes_after->Value());
  if (after > 0) {
    ssd_encoding_ratio->Set(static_cast<double>(ssd_encoded_bytes_before->Value()) / after);
  }
}

TierMetrics StoreMetrics::ForTier(const std::string& label) {
  return MakeTier(metrics_registry, label);
}

}  // namespace kvstash::storage
