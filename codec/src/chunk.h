// Chunk-level CacheGen internals shared by the encoder, decoder, profile builder and GPU path.
#ifndef KVSTASH_CODEC_SRC_CHUNK_H_
#define KVSTASH_CODEC_SRC_CHUNK_H_

#include <cstdint>
#include <span>
#include <vector>

#include "kvstash/codec/container.h"
#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"
#include "kvstash/common/thread_pool.h"

namespace kvstash::codec::internal {

struct ChunkShape {
  uint32_t layers = 0;
  uint32_t heads = 0;
  uint32_t head_dim = 0;
  uint32_t tokens = 0;
  DType dtype = DType::kF16;

  static ChunkShape Of(const KvLayout& layout);
  static ChunkShape Of(const ContainerInfo& info);
  uint32_t rows() const { return 2 * layers; }
  uint32_t channels() const { return heads * head_dim; }
  size_t elements() const { return size_t{rows()} * tokens * channels(); }
  size_t raw_bytes() const { return elements() * DTypeSize(dtype); }
  // First element of row r ([T][C]) in the layer-major payload.
  size_t RowOffset(uint32_t row) const {
    const uint32_t layer = row < layers ? row : row - layers;
    const uint32_t half = row < layers ? 0 : 1;
    return (size_t{layer} * 2 + half) * tokens * channels();
  }
};

struct ChunkParams {
  CacheGenMode mode = CacheGenMode::kReference;
  std::vector<uint8_t> row_bins;
  int lp = 0;
  uint32_t subchunk_tokens = 256;
  uint32_t group_tokens = 0;  // delta mode G

  bool IsAnchor(uint32_t t) const { return mode == CacheGenMode::kDelta && t % group_tokens == 0; }
  uint32_t Subchunks(uint32_t tokens) const {
    return (tokens + subchunk_tokens - 1) / subchunk_tokens;
  }
  uint32_t AnchorsPerRow(uint32_t tokens) const {
    return mode == CacheGenMode::kDelta ? (tokens + group_tokens - 1) / group_tokens : 0;
  }
};

// Symbols and scales of a chunk. In delta mode sym holds delta symbols at non-anchor tokens (Cq at
// anchors, never coded) and `anchors` the 8-bit anchor symbols.
struct QuantizedChunk {
  std::vector<uint8_t> sym;      // [rows][T][C]
  std::vector<float> scales;     // [rows][T]
  std::vector<uint8_t> anchors;  // [rows][A][C]
};

Status QuantizeChunk(const ChunkShape& shape, std::span<const uint8_t> kv, const ChunkParams& p,
                     ThreadPool* pool, QuantizedChunk* out);

// Adds the coded symbols of `row` to counts [C][kMaxLp].
void CountRowSymbols(const ChunkShape& shape, const ChunkParams& p, const QuantizedChunk& q,
                     uint32_t row, uint64_t* counts);

// Per-(row, channel) CDFs of the chunk itself: [rows][C][lp].
std::vector<uint16_t> BuildChunkCdfs(const ChunkShape& shape, const ChunkParams& p,
                                     const QuantizedChunk& q, ThreadPool* pool);

struct EncodedStreams {
  std::vector<uint32_t> lengths;  // [subchunks][rows][C]
  std::vector<uint8_t> payload;
};

// Range-codes all streams with `cdf` ([rows][C][lp], validated).
Status EncodeStreams(const ChunkShape& shape, const ChunkParams& p, const QuantizedChunk& q,
                     std::span<const uint16_t> cdf, ThreadPool* pool, EncodedStreams* out);

// Everything the decoder needs, already validated by the container parser.
struct DecodeInputs {
  std::span<const uint16_t> cdf;     // [rows][C][lp]
  std::span<const float> scales;     // [rows][T]
  std::span<const uint8_t> anchors;  // [rows][A][C] (delta)
  std::span<const uint32_t> lengths;
  std::span<const uint8_t> payload;
};

// Decodes and dequantises into `out` (shape.raw_bytes()). InvalidArgument if a stream decodes to
// a symbol its row cannot produce.
Status DecodeStreams(const ChunkShape& shape, const ChunkParams& p, const DecodeInputs& in,
                     ThreadPool* pool, std::span<uint8_t> out);

// What DecodeStreams will produce for `q`, computed from the symbols and scales directly (no
// stream decoding): the dequantised KV in shape.dtype, bit for bit.
Status Reconstruct(const ChunkShape& shape, const ChunkParams& p, const QuantizedChunk& q,
                   ThreadPool* pool, std::span<uint8_t> out);

// Container assembly (the inverse of ParseContainer).
struct ContainerParts {
  ContainerInfo info;  // sizes are filled in by BuildContainer
  std::span<const uint8_t> bins;
  std::span<const uint16_t> cdf;  // empty for profile containers
  std::span<const float> scales;  // written in info.scale_dtype
  std::span<const uint8_t> anchors;
  std::span<const uint32_t> lengths;
  std::span<const uint8_t> payload;
};
Result<std::vector<uint8_t>> BuildContainer(ContainerParts parts);

// Runs fn(begin, end) over [0, n) on the pool (or inline when pool is null).
void ParallelFor(ThreadPool* pool, size_t n, size_t min_block,
                 const std::function<void(size_t, size_t)>& fn);

}  // namespace kvstash::codec::internal

#endif  // KVSTASH_CODEC_SRC_CHUNK_H_
