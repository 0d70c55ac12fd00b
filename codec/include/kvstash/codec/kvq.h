// KVQ: quantised KV with an interleaved-rANS entropy coder (docs/codec.md §9). The second codec
// beside CacheGen (cachegen.h), which stays available bit for bit; a KVQ container starts with
// the magic "KVQR", a CacheGen one with "KVCG".
//
// Input/output is an object payload: layer-major [layer][K|V][token][head][head_dim] in f16, bf16
// or f32. Rows as in CacheGen: r < L is K of layer r, r >= L is V of layer r - L; channel
// c = head * head_dim + d. Each row is quantised to `bits` (1..8) per element with asymmetric
// min/step scaling, q = clamp(round((x - min) / step), 0, 2^bits - 1), x^ = min + q * step:
//   per token    one (min, step) per (row, token) over the row's channels;
//   per channel  one (min, step) per (row, channel, group of G tokens) (KIVI: key outliers sit
//                in fixed channels, so channel-wise ranges fit keys);
//   outliers     optionally, the n channels of each K row with the largest |x| in the chunk are
//                stored exactly (in the KV dtype) and left out of the ranges.
//   rotation     optionally, K and/or V rows are quantised in a rotated basis: every (token,
//                head) vector is multiplied by the Walsh-Hadamard matrix of order head_dim
//                (QuaRot's observation: a rotation spreads a head's outlier dimensions over all
//                of its dimensions, so ranges shrink); the decoder rotates back. Needs a
//                power-of-two head_dim; keys that rotate have no outlier channels.
//   sinks        optionally, the chunk's tokens at sequence positions below n (the attention
//                sinks: the first tokens of a sequence draw much of every later token's
//                attention) are stored exactly (in the KV dtype) and left out of quantisation.
// Symbols are coded per (sub-chunk, row) stream with rANS (32 interleaved states), one frequency
// table per (row, channel group) carried in the container.
//
// Threading: thread-safe; with a ThreadPool work fans out over (sub-chunk, row) items.
// Results do not depend on the pool or on the CPU's vector extensions.
#ifndef KVSTASH_CODEC_KVQ_H_
#define KVSTASH_CODEC_KVQ_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"
#include "kvstash/common/thread_pool.h"

namespace kvstash::codec {

enum class KvqScale : uint8_t { kPerToken = 0, kPerChannel = 1 };

inline constexpr uint16_t kKvqVersion = 1;
inline constexpr size_t kKvqHeaderBytes = 64;
inline constexpr int kKvqMinLevel = 1;
inline constexpr int kKvqMaxLevel = 4;

struct KvqOptions {
  // 1..4: bits per row from the model's layer groups (levels.h LayerGroupsFor):
  //   level | K groups 1/2/3 | V groups 1/2
  //     1   |   3 / 3 / 2    |   3 / 2
  //     2   |   4 / 3 / 3    |   3 / 3
  //     3   |   4 / 4 / 4    |   4 / 4
  //     4   |   6 / 5 / 5    |   5 / 5
  int level = 2;
  std::vector<uint8_t> row_bits;  // non-empty: explicit bits (1..8) per row; level 0 recorded
  // Per-chunk bit allocation (used when row_bits is empty and avg_bits > 0; level 0 recorded):
  // the rows share round(avg_bits * rows) bits per element, each row within [min_bits,
  // max_bits], given greedily to the row whose weighted predicted error drops most per bit
  // (KvqAllocateBits). The prediction is the chunk's own: a row's mean squared error is
  // sum(step^2 / 12) over its elements, step = range / (2^bits - 1) from the ranges this chunk's
  // scaling gives (before outlier removal). Weights: row_weights[r] (one per row of the object,
  // finite, >= 0; e.g. the output KL per unit of squared error measured in a calibration pass),
  // or, when empty, 1 / mean(x^2) of the row (relative error).
  float avg_bits = 0;
  uint8_t min_bits = 2, max_bits = 8;
  std::vector<float> row_weights;
  uint32_t model_layers = 0;  // 0 = layout.layer_begin + num_layers
  // Step-based quantisation (entropy-coded uniform quantisation), used when step_scale > 0: every
  // token or group of row r gets the same target step, step_scale / sqrt(row_weights[r]) with
  // weights (equal weighted error per row, the optimum for an entropy-coded uniform quantiser
  // at high rate), else step_scale * the row's standard deviation around each channel's mean; V
  // rows' target is then multiplied by value_step_ratio. A token or group whose range would need
  // more than 2^bits - 1 steps takes range / (2^bits - 1), as without this option, so nothing is
  // clamped and the error stays within step / 2. The bits (level, row_bits) are then the symbol
  // alphabet, not the resolution: where min/max scaling spreads every range over the whole
  // alphabet, fixed steps leave narrow channels and tokens few, frequent symbols that the rANS
  // coder codes in few bits. Only the encoder's choice of steps changes: the container is the same
  // version-1 format. InvalidArgument with avg_bits, a non-finite or negative scale or ratio, or
  // weights of the wrong count or with a zero or negative weight.
  float step_scale = 0;
  float value_step_ratio = 1;
  // With step_scale: the target follows each channel's standard deviation over the chunk
  // (per-channel rows) or each token's over its channels (per-token rows), times step_scale,
  // instead of the row's: the precision relative to each channel or token of min/max scaling,
  // with steps freed from each group's extremes. InvalidArgument with row_weights.
  bool step_per_unit = false;
  KvqScale key_scale = KvqScale::kPerChannel;
  KvqScale value_scale = KvqScale::kPerToken;
  uint32_t group_tokens = 64;  // per-channel scaling: tokens per (min, step) group, 1..65535
  uint32_t key_outliers = 0;   // K channels per row stored exactly, < channels
  // Rotation (see the top of this file): InvalidArgument if head_dim is not a power of two, or
  // if rotate_keys is combined with key_outliers.
  bool rotate_keys = false, rotate_values = false;
  // Attention sinks (see the top of this file): this chunk's tokens at positions
  // [layout.position_start, sink_tokens) are kept exact, at most num_tokens - 1 of them (a chunk
  // always quantises one token). 0..63, else InvalidArgument.
  uint32_t sink_tokens = 0;
  uint32_t context_channels = 0;   // channels per entropy context; 0 = head_dim. Divides C.
  uint32_t subchunk_tokens = 256;  // tokens per stream, 1..65535
  ThreadPool* pool = nullptr;      // not owned
  // Non-empty (exactly layout.RawBytes()): receives what the container decodes to, bit for bit.
  std::span<uint8_t> reconstruction;
};

// Bits of the 2n rows of an object holding layers [layer_begin, layer_begin + n) at `level`.
Result<std::vector<uint8_t>> KvqRowBitsForLevel(int level, uint32_t model_layers,
                                                uint32_t layer_begin, uint32_t num_layers);

// The allocation of KvqOptions::avg_bits for this chunk: bits per row (2n rows). InvalidArgument
// for a bad layout, size, budget (avg_bits outside [min_bits, max_bits], 1 <= min_bits <=
// max_bits <= 8), weights of the wrong count or negative/non-finite, or NaN/Inf in the KV.
Result<std::vector<uint8_t>> KvqAllocateBits(const KvLayout& layout, std::span<const uint8_t> kv,
                                             const KvqOptions& options);

struct KvqInfo {
  DType dtype = DType::kF16;
  DType param_dtype = DType::kF16;  // f16 when every min/step fits, else f32
  uint8_t level = 0;
  KvqScale key_scale = KvqScale::kPerChannel;
  KvqScale value_scale = KvqScale::kPerToken;
  bool rotate_keys = false, rotate_values = false;
  uint32_t num_layers = 0, num_heads = 0, head_dim = 0, num_tokens = 0;
  uint32_t exact_tokens = 0;  // leading tokens stored exactly (sinks); the rest are quantised
  uint32_t subchunk_tokens = 0, group_tokens = 0, key_outliers = 0, context_channels = 0;
  // Bytes per section; they add up to the container size.
  uint64_t header = 0, bits = 0, outliers = 0, exact = 0, params = 0, freqs = 0, lengths = 0,
           payload = 0;

  uint32_t rows() const { return 2 * num_layers; }
  uint32_t channels() const { return num_heads * head_dim; }
  uint64_t RawBytes() const {
    return uint64_t{rows()} * num_tokens * channels() * DTypeSize(dtype);
  }
  uint64_t total() const {
    return header + bits + outliers + exact + params + freqs + lengths + payload;
  }
};

// True if `bytes` starts with the KVQ magic (cheap dispatch between the two codecs).
bool IsKvqContainer(std::span<const uint8_t> bytes);

// Parses and validates the header and sections (untrusted input; never reads outside `bytes`):
// InvalidArgument for anything malformed, DataLoss for a checksum mismatch.
Result<KvqInfo> ParseKvq(std::span<const uint8_t> bytes);

// Encodes a chunk. InvalidArgument for a bad layout or options, a size mismatch or NaN/Inf.
Result<std::vector<uint8_t>> EncodeKvq(const KvLayout& layout, std::span<const uint8_t> kv,
                                       const KvqOptions& options);

// Decodes into `out` (exactly RawBytes()). Untrusted input: malformed streams are
// InvalidArgument, checksum mismatches DataLoss; only `container` and `out` are touched.
Status DecodeKvq(std::span<const uint8_t> container, std::span<uint8_t> out,
                 ThreadPool* pool = nullptr);
Result<std::vector<uint8_t>> DecodeKvq(std::span<const uint8_t> container,
                                       ThreadPool* pool = nullptr);

// Decodes on a CUDA device (kernels/kvq_cuda.h) into `out` (RawBytes(); a device pointer when
// out_on_device): the same bytes as DecodeKvq. The container is parsed and validated on the host.
// Unimplemented without a CUDA build or device, and for containers with rotated rows or exact
// (sink) tokens.
Status DecodeKvqGpu(std::span<const uint8_t> container, void* out, bool out_on_device);

// Forces the portable rANS decoder (tests compare it with the vector path); process-wide.
void SetKvqSimdForTesting(bool enabled);

// Recomputes both checksums in place (fuzzers and tests that edit containers).
void RefreshKvqChecksums(std::span<uint8_t> bytes);

std::string KvqScaleName(KvqScale scale);

}  // namespace kvstash::codec

#endif  // KVSTASH_CODEC_KVQ_H_
