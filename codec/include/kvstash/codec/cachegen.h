// CacheGen encoder and decoder for one KV chunk (docs/codec.md).
//
// Input/output is an object payload: layer-major [layer][K|V][token][head][head_dim] in f16, bf16
// or f32 (common/layout.h). Rows r in [0, 2L): r < L is K of layer r, r >= L is V of layer r - L;
// channel c = head * head_dim + d. Each (row, token) vector is scaled by its max |x| and
// quantised with the row's bins; every (sub-chunk, row, channel) is an independent range-coded
// stream, so decoding parallelises over streams.
//
// Modes:
//   reference  the reference algorithm bit for bit, CDF per (row, channel) shipped in the
//              container (default).
//   profile    same symbols, CDFs taken from a model-level CdfProfile referenced by id, so the
//              container carries no CDF.
//   delta      delta-to-anchor (paper §5.2): groups of G tokens; the first token of a group (the
//              anchor) is stored with 8-bit quantisation, the others as deltas to the decoded
//              anchor, quantised and coded like reference mode. Scales are f32 in this mode.
//
// Threading: functions are thread-safe; with a ThreadPool they fan out over it (and the calling
// thread), otherwise they run on the calling thread. Results do not depend on the pool.
#ifndef KVSTASH_CODEC_CACHEGEN_H_
#define KVSTASH_CODEC_CACHEGEN_H_

#include <cstdint>
#include <span>
#include <vector>

#include "kvstash/codec/container.h"
#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"
#include "kvstash/common/thread_pool.h"

namespace kvstash::codec {

class CdfProfile;
class ProfileResolver;

struct EncodeOptions {
  int level = 2;  // 1..3: bins from RowBinsForLevel (levels.h)
  // Non-empty: explicit bins per row (2L entries, even, 4..64); the container records level 0.
  std::vector<uint8_t> row_bins;
  // Layers of the whole model, for the layer groups; 0 means layout.layer_begin + num_layers.
  uint32_t model_layers = 0;
  CacheGenMode mode = CacheGenMode::kReference;
  uint32_t subchunk_tokens = 256;    // tokens per stream, 1..65535 (256 as in the reference)
  uint32_t delta_group_tokens = 10;  // delta mode: anchor every G tokens, 2..65535
  // Non-null: code with this profile's CDFs (it must have a table for this mode and these bins
  // and match the layout); the container references the profile by id. Not owned.
  const CdfProfile* profile = nullptr;
  ThreadPool* pool = nullptr;  // not owned; null = calling thread only
  // Non-empty (exactly layout.RawBytes() bytes, not overlapping the input): receives the KV the
  // container will decode to, bit for bit, computed from the encoder's own symbols without
  // decoding streams (so a caller can checksum or compare the lossy result for the cost of one
  // dequantisation pass). Not owned.
  std::span<uint8_t> reconstruction;
};

// Resolves a row_bins vector from options and layout (explicit bins or the level rule).
Result<std::vector<uint8_t>> ResolveRowBins(const KvLayout& layout, const EncodeOptions& options);

// Encodes a chunk. InvalidArgument for a bad layout, a size mismatch, NaN/Inf values, bad options
// or a profile that does not fit.
Result<std::vector<uint8_t>> EncodeCacheGen(const KvLayout& layout, std::span<const uint8_t> kv,
                                            const EncodeOptions& options);

struct DecodeOptions {
  const ProfileResolver* profiles = nullptr;  // needed for containers that reference a profile
  ThreadPool* pool = nullptr;
};

// Decodes `container` into `out`, which must be exactly info.RawBytes() long. The container is
// untrusted: every malformation is InvalidArgument, a checksum mismatch DataLoss, an unknown
// profile NotFound; nothing outside `container` and `out` is read or written.
Status DecodeCacheGen(std::span<const uint8_t> container, std::span<uint8_t> out,
                      const DecodeOptions& options = {});

// Convenience: decodes into a new buffer (size from the container header).
Result<std::vector<uint8_t>> DecodeCacheGen(std::span<const uint8_t> container,
                                            const DecodeOptions& options = {});

}  // namespace kvstash::codec

#endif  // KVSTASH_CODEC_CACHEGEN_H_
