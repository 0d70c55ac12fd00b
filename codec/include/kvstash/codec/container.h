// The CacheGen container: versioned, little-endian, self-describing. docs/codec.md §3 has the
// byte-by-byte description; summary:
//
//   fixed header (72 bytes)
//    off size field                         off size field
//     0   4  magic "KVCG"                    16   4  num_layers L (rows = 2L)
//     4   2  format version (1)              20   4  num_heads H
//     6   2  header bytes (72)               24   4  head_dim D (channels C = H*D)
//     8   1  mode (0 reference, 1 delta)     28   4  num_tokens T
//     9   1  level (1..3; 0 explicit bins)   32   4  subchunk_tokens S
//    10   1  dtype (DType of the KV)         36   4  delta group G (0 in reference mode)
//    11   1  scale dtype                     40  16  profile id (zero when the CDF is inline)
//    12   1  CDF source (0 inline, 1 prof.)  56   8  payload bytes
//    13   1  length width (2 or 4 bytes)     64   4  crc32c of every byte after the header
//    14   1  lp (CDF entries = max bins + 1) 68   4  crc32c of header bytes [0, 68)
//    15   1  reserved (0)
//   sections, byte-packed, in this order:
//     bins     2L x u8                     bins of each row
//     cdf      2L x C x lp x u16           inline CDFs only
//     scales   2L x T x scale dtype        max |x| per (row, token)
//     anchors  2L x ceil(T/G) x C x u8     delta mode only: 8-bit anchor symbols
//     lengths  ceil(T/S) x 2L x C x width  bytes of each stream, (sub-chunk, row, channel) order
//     payload  payload bytes               the streams, concatenated in the same order
//
// ParseContainer treats its input as untrusted: it never reads outside `bytes`, and it rejects
// (InvalidArgument; DataLoss for a checksum mismatch) any size that does not add up exactly, any
// field out of range, invalid CDFs, non-finite or negative scales, anchor symbols above 254, and
// stream lengths outside [1, MaxStreamBytes(symbols)].
#ifndef KVSTASH_CODEC_CONTAINER_H_
#define KVSTASH_CODEC_CONTAINER_H_

#include <cstdint>
#include <span>
#include <string>

#include "kvstash/common/key.h"
#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"

namespace kvstash::codec {

enum class CacheGenMode : uint8_t { kReference = 0, kDelta = 1 };
enum class CdfSource : uint8_t { kInline = 0, kProfile = 1 };

inline constexpr uint16_t kContainerVersion = 1;
inline constexpr size_t kContainerHeaderBytes = 72;
inline constexpr int kAnchorBins = 256;  // delta mode anchors: Cq = 127, symbols 0..254

// Sizes of the parts of a container, in bytes; they add up to total().
struct SizeBreakdown {
  uint64_t header = 0;
  uint64_t bins = 0;
  uint64_t cdf = 0;
  uint64_t scales = 0;
  uint64_t anchors = 0;
  uint64_t lengths = 0;
  uint64_t payload = 0;
  uint64_t total() const { return header + bins + cdf + scales + anchors + lengths + payload; }
};

struct ContainerInfo {
  CacheGenMode mode = CacheGenMode::kReference;
  uint8_t level = 0;
  DType dtype = DType::kF16;
  DType scale_dtype = DType::kF16;
  CdfSource cdf_source = CdfSource::kInline;
  uint8_t length_width = 4;
  uint8_t lp = 0;
  uint32_t num_layers = 0;
  uint32_t num_heads = 0;
  uint32_t head_dim = 0;
  uint32_t num_tokens = 0;
  uint32_t subchunk_tokens = 0;
  uint32_t delta_group_tokens = 0;
  Hash128 profile_id;
  SizeBreakdown sizes;

  uint32_t rows() const { return 2 * num_layers; }
  uint32_t channels() const { return num_heads * head_dim; }
  uint32_t subchunks() const { return (num_tokens + subchunk_tokens - 1) / subchunk_tokens; }
  uint32_t anchors_per_row() const {
    return mode == CacheGenMode::kDelta ? (num_tokens + delta_group_tokens - 1) / delta_group_tokens
                                        : 0;
  }
  uint64_t RawBytes() const {
    return uint64_t{rows()} * num_tokens * channels() * DTypeSize(dtype);
  }
  // Symbols coded in the streams of sub-chunk `sub` (anchors are not coded in delta mode).
  uint32_t StreamSymbols(uint32_t sub) const;
};

// Validated views into a container's sections (they point into the parsed bytes).
struct ContainerView {
  ContainerInfo info;
  std::span<const uint8_t> bins;
  std::span<const uint8_t> cdf;  // raw little-endian u16, empty for profile containers
  std::span<const uint8_t> scales;
  std::span<const uint8_t> anchors;
  std::span<const uint8_t> lengths;
  std::span<const uint8_t> payload;

  uint32_t StreamLength(uint64_t stream) const;  // index in (sub-chunk, row, channel) order
  float Scale(uint64_t row_token) const;         // index row * T + token
  uint16_t Cdf(uint64_t entry) const;            // index (row * C + c) * lp + i
};

Result<ContainerView> ParseContainer(std::span<const uint8_t> bytes);

// Recomputes both checksums of a container in place (for tools, tests and fuzzers that edit
// containers); does nothing to inputs shorter than the header.
void RefreshContainerChecksums(std::span<uint8_t> bytes);

std::string CacheGenModeName(CacheGenMode mode);

}  // namespace kvstash::codec

#endif  // KVSTASH_CODEC_CONTAINER_H_
