// --ssd-encoding auto (docs/storage.md "Per-tier encoding"): which encoding the SSD tier writes,
// chosen once at start-up by measurement.
//
// The SSD tier holds objects encoded, so loading one costs reading r-times fewer bytes plus a
// decode on the tier codec's pool: codec_choice's kStored model, 1/(r R) + 1/D per raw byte
// against 1/R raw at read rate R. The candidates are CalibrateCodecs' (CacheGen at the configured
// level, the quality floor, and the KVQ levels 1..3 at least as exact on the calibration sample:
// level 4 is not a level a tier copy can record), with
// their ratio and decode rate measured on this host at the tier codec's decode thread count. R is
// tiers.ssd.read_mbps when given, else measured by MeasureSsdReadRate.
//
// Thread-safety: free functions, called once on the start-up thread.
#ifndef KVSTASH_CACHESVC_SSD_ENCODING_CHOICE_H_
#define KVSTASH_CACHESVC_SSD_ENCODING_CHOICE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kvstash/cachesvc/config.h"
#include "kvstash/codec/codec_choice.h"
#include "kvstash/common/metrics.h"
#include "kvstash/common/status.h"

namespace kvstash::cachesvc {

struct SsdEncodingChoice {
  TierEncoding encoding;                      // what the tier codec writes (choose = false)
  codec::CodecRates chosen;                   // the winner's measured figures (kind kRaw for raw)
  std::vector<codec::CodecRates> candidates;  // everything measured, in CalibrateCodecs' order
  double read_bytes_per_s = 0;                // R
  bool measured = false;                      // R came from MeasureSsdReadRate
  std::string read_method;                    // "configured", "direct" or "buffered"
};

// Reads `bytes` (rounded up to whole 1 MiB blocks) of a probe file written into `dir` (created if
// missing; the file is removed after) and returns bytes/s. O_DIRECT where the file system takes it,
// as the SSD tier reads (storage/src/ssd_tier.cc); else buffered after posix_fadvise(DONTNEED),
// which on a file system without a backing device (tmpfs) still reads from memory: such a tier
// is as fast as memory. `method` gets "direct" or "buffered". Internal on an I/O error.
Result<double> MeasureSsdReadRate(const std::string& dir, uint64_t bytes, std::string* method);

// The choice for `config` (config.ssd_encoding.choose must be set): calibrates the codecs with
// `decode_threads` decoding threads (the tier codec's pool) and applies ChooseEncoding(kStored).
// The measurement, when config.ssd_read_mbps is 0, reads in config.store.data_dir + "/ssd".
Result<SsdEncodingChoice> ChooseSsdEncoding(const ServiceConfig& config, size_t decode_threads);

// What the SSD tier writes under `config`: config.ssd_encoding as configured, or for auto the
// ChooseSsdEncoding result, logged (event=ssd_encoding policy=auto read_mbps=... choice=...
// candidates=...). Either way `metrics` gets kvstash_cachesvc_ssd_encoding{policy, encoding} = 1,
// and for auto kvstash_cachesvc_ssd_read_bytes_per_second = R. Errors of the measurement or the
// calibration stop start-up.
Result<TierEncoding> ResolveSsdEncoding(const ServiceConfig& config, size_t decode_threads,
                                        MetricsRegistry* metrics);

// "cachegen-l2:ratio=3.8:decode_mbps=...:break_even_mbps=...:rel_error=...,kvq-l2:..." for the
// start-up log lines of the SSD tier's and the peers' `auto`; break-even rates under `model`.
std::string DescribeCodecCandidates(const std::vector<codec::CodecRates>& candidates,
                                    codec::CostModel model);

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_SSD_ENCODING_CHOICE_H_
