// Choosing an encoding by measurement (docs/codec.md "Choosing an encoding"): which of raw,
// CacheGen and KVQ moves an object fastest over a link (or out of a tier) of a given rate.
//
// CalibrateCodecs is the short start-up calibration: on a 1 MiB synthetic KV sample
// (synthetic_kv.h) it measures, per codec and level, the size ratio, the encode and decode
// throughput (best of a few runs: the codec's speed, not the neighbours' noise) and the relative
// squared error of the reconstruction. The quality floor is CacheGen at the configured level:
// KVQ levels qualify only if their error on the sample is at most CacheGen's there. Nothing is
// tabulated; every figure comes from this host and this build.
//
// ChooseEncoding is the policy: seconds per raw byte of each candidate under a cost model (below),
// the cheapest wins; raw when the rate is unknown (<= 0).
//
// Thread-safety: CalibrateCodecs uses the calling thread (and a private pool for decode_threads
// > 1); everything else is a pure function.
#ifndef KVSTASH_CODEC_CODEC_CHOICE_H_
#define KVSTASH_CODEC_CODEC_CHOICE_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvstash/common/status.h"

namespace kvstash::codec {

enum class CodecKind : uint8_t { kRaw = 0, kCacheGen = 1, kKvq = 2 };

// The one name of a codec at a level, as logs, metrics, the controllers, the client and the SSD
// tier give it: "raw" for kRaw (whatever `level`), "cachegen-lN" / "kvq-lN" for a level N >= 1,
// and "cachegen" / "kvq" for level 0 (no level chosen: the other side's). It names and does not
// validate: a level outside the codec's range is named as given; an unknown kind is "invalid".
std::string CodecName(CodecKind kind, int level);

// What one codec at one level does to KV on this host.
struct CodecRates {
  CodecKind kind = CodecKind::kRaw;
  int level = 0;                  // CacheGen 1..3, KVQ 1..4; 0 for raw
  double ratio = 1;               // raw bytes / encoded bytes
  double encode_bytes_per_s = 0;  // raw bytes per second, one encoding thread
  double decode_bytes_per_s = 0;  // raw bytes per second, decode_threads threads
  double rel_error = 0;           // sum (x - x^)^2 / sum x^2 over the sample
};

// CodecName(rates.kind, rates.level): "raw", "cachegen-l2", "kvq-l3".
std::string CodecRatesName(const CodecRates& rates);

struct CalibrationOptions {
  int cachegen_level = 2;     // the quality floor (1..3)
  bool kvq = true;            // also measure KVQ levels 1..4
  int reps = 3;               // runs per codec; the fastest counts
  size_t decode_threads = 1;  // as the decoder that will run (a tier codec's pool)
};

// The candidates: CacheGen at the floor level first, then the KVQ levels (ascending) whose error
// is at most the floor's. InvalidArgument for a level or reps out of range; a codec failure on
// the sample is returned as is (Internal).
Result<std::vector<CodecRates>> CalibrateCodecs(const CalibrationOptions& options);

// The same measurements for exactly the codecs and levels `which` names (kind and level of each;
// raw entries are skipped), in that order, with no quality floor: for a caller that chose its
// candidates itself (`kvstash get --slo-ms --codecs`). cachegen_level and kvq of `options` are not
// looked at, reps and decode_threads are. InvalidArgument for a level outside CacheGen 1..3 or
// KVQ 1..4, or reps out of range.
Result<std::vector<CodecRates>> CalibrateCodecsAt(std::span<const CodecRates> which,
                                                  const CalibrationOptions& options);

// How an object moves, in seconds per raw byte at link rate L (bytes/s), no overlap assumed:
//   raw                                 1 / L
//   kTransfer (encoded per request)     1 / (r L) + 1 / E + 1 / D
//   kStored   (already held encoded)    1 / (r L) + 1 / D
enum class CostModel : uint8_t { kTransfer = 0, kStored = 1 };
double SecondsPerRawByte(const CodecRates& rates, double link_bytes_per_s, CostModel model);

// The cheapest of raw and `candidates` at `link_bytes_per_s`; raw (kind kRaw, ratio 1) when the
// rate is <= 0 (unknown) or no candidate is cheaper. Ties go to raw, then to the earlier
// candidate.
CodecRates ChooseEncoding(std::span<const CodecRates> candidates, double link_bytes_per_s,
                          CostModel model);

// The rate below which `rates` beats raw under `model` (bytes/s); 0 if it never does.
double BreakEvenBytesPerS(const CodecRates& rates, CostModel model);

}  // namespace kvstash::codec

#endif  // KVSTASH_CODEC_CODEC_CHOICE_H_
