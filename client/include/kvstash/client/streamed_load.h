// StreamedLoad: a multi-chunk load over streamed Gets that fits a time budget (SLO) at the best
// quality that fits (docs/codec.md §6). Before each chunk the streaming controller
// (codec/candidate_controller.h) picks raw, a CacheGen level or a KVQ level among the measured
// candidates (codec/codec_choice.h CalibrateCodecs) from the bandwidth the previous chunks
// achieved; the chunk is then fetched with GetOptions::codec at that codec and level, decoded,
// and its measured throughput fed back.
//
// The bandwidth estimate is wire bytes / transfer time, where the transfer time is the Get's
// time to its last byte less the service's encode time as the service reports it
// (GetChunk.encode_micros, GetIntoReply::encode_s): a slow encode is then not read as a slow link.
// The reported encode times also correct the controller's encode term (ReportEncode: an EWMA of
// measured / calibrated). From a service that reports none, the encode the calibration predicts
// for the chosen candidate is taken out instead, but at most half of the time (so a calibration
// that overstates the encode does not read a slow link as an infinitely fast one). LinkSeconds
// below is that arithmetic.
//
// Threading: uses the client from the calling thread only; KvClient is thread-safe.
#ifndef KVSTASH_CLIENT_STREAMED_LOAD_H_
#define KVSTASH_CLIENT_STREAMED_LOAD_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvstash/client/kv_client.h"
#include "kvstash/codec/candidate_controller.h"
#include "kvstash/codec/codec_choice.h"
#include "kvstash/common/object_name.h"
#include "kvstash/common/status.h"

namespace kvstash::client {

struct StreamedLoadOptions {
  double budget_s = 0.5;  // the SLO of the whole load
  // The candidates (raw is always one), as CalibrateCodecs measured them on this host.
  std::vector<codec::CodecRates> candidates;
  // kTransfer: the service encodes every Get (a streamed Get does; docs/api.md).
  codec::CostModel cost_model = codec::CostModel::kTransfer;
  codec::Fallback fallback = codec::Fallback::kFastest;
  // The engine's measured prefill rate: with it a chunk nothing fits for may be left to
  // recompute (StreamedChunk::recompute). 0: every chunk is fetched.
  double prefill_tokens_per_s = 0;
  // Bytes/s assumed before the first measurement. 0: unknown; chunks then go raw until one has
  // measured the link.
  double initial_bandwidth_bps = 0;
  // > 0: the link's rate is known, or simulated: every decision assumes it, and each chunk is
  // charged its wire bytes / this rate on top of its measured time. Tests and benchmarks on a
  // fast link use it to stand for a slow one without sleeping.
  double link_bytes_per_s = 0;
};

struct StreamedChunk {
  Status status;             // the Get's (NotFound for a key Lookup did not find)
  bool recompute = false;    // left to the engine's prefill; no bytes fetched
  std::string chosen;        // the candidate asked for: "raw", "cachegen-l2", "kvq-l3"
  std::string received;      // what came (TransferCodecName): raw when the service would not encode
  double bandwidth_bps = 0;  // the bandwidth the decision assumed
  double predicted_s = 0;    // the controller's prediction for the chunk
  double seconds = 0;        // charged to the budget: measured (plus the simulated link's share)
  uint64_t wire_bytes = 0;
  double encode_s = 0;  // the service's encode, as it reported it (0: raw, or not reported)
  double decode_s = 0;  // this client's decode of the container
  ObjectInfo info;      // as for Get: lossy after a codec
  std::vector<uint8_t> payload;  // decoded, crc32c verified
};

struct StreamedLoadReply {
  std::vector<StreamedChunk> chunks;  // one per name, in order
  double total_s = 0;                 // sum of the chunks' seconds
  bool within_budget = false;
};

// Loads `names` in order. InvalidArgument for a candidate whose codec or level no service takes
// (CacheGen 1..3, KVQ 1..4) or a budget that is not positive; Lookup's error if that call fails.
// A failed Get is that chunk's status; the load goes on with the next.
Result<StreamedLoadReply> StreamedLoad(KvClient& client, std::span<const ObjectName> names,
                                       const StreamedLoadOptions& options);

// Seconds the bytes of one streamed Get were in transit, the link sample StreamedLoad divides the
// wire bytes by: got.stream_s less got.encode_s when the service reported its encode (and that
// leaves a positive time); for an encoded transfer from a service that reports none under
// kTransfer, less the encode `asked`'s calibrated rate predicts for the object, but at least half
// of stream_s; otherwise stream_s.
double LinkSeconds(const GetIntoReply& got, const codec::CodecRates& asked,
                   codec::CostModel cost_model);

}  // namespace kvstash::client

#endif  // KVSTASH_CLIENT_STREAMED_LOAD_H_
