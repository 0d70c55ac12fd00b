// KV inputs for the codec benchmarks: contexts from KV dump files (object files written by the
// engine or `kvstash` tools) or synthetic ones, converted to f16 and cut into chunks.
#ifndef KVSTASH_BENCH_CODEC_KV_CORPUS_H_
#define KVSTASH_BENCH_CODEC_KV_CORPUS_H_

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kvstash/codec/object_file.h"
#include "kvstash/codec/synthetic_kv.h"
#include "kvstash/common/half.h"
#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"

namespace kvstash::bench {

struct KvChunk {
  KvLayout layout;
  std::vector<uint8_t> kv;  // f16, layer-major
};

// A synthetic "model" shaped like SmolLM2-135M (30 layers, 3 KV heads of 64) by default.
inline KvLayout ContextLayout(uint32_t layers, uint32_t heads, uint32_t head_dim, uint32_t tokens) {
  KvLayout l;
  l.num_layers = layers;
  l.total_kv_heads = heads;
  l.head_begin = 0;
  l.head_end = heads;
  l.head_dim = head_dim;
  l.num_tokens = tokens;
  l.dtype = DType::kF16;
  return l;
}

inline KvChunk SyntheticContext(const KvLayout& layout, uint64_t seed) {
  codec::SyntheticKvOptions o;
  o.seed = seed;
  return KvChunk{layout, codec::SyntheticKv(layout, o)};
}

// Reads a raw KV dump and converts it to f16.
inline Result<KvChunk> LoadDump(const std::string& path) {
  KVSTASH_ASSIGN_OR_RETURN(codec::ObjectFile f, codec::ReadObjectFile(path));
  if (f.info.encoding != Encoding::kRaw) {
    return absl::InvalidArgumentError(path + " is not a raw KV dump");
  }
  KvChunk c;
  c.layout = f.info.layout;
  if (c.layout.dtype == DType::kF16) {
    c.kv = std::move(f.payload);
    return c;
  }
  const size_t n = f.payload.size() / DTypeSize(c.layout.dtype);
  std::vector<float> x(n);
  if (c.layout.dtype == DType::kF32) {
    std::memcpy(x.data(), f.payload.data(), n * 4);
  } else {
    std::vector<uint16_t> h(n);
    std::memcpy(h.data(), f.payload.data(), n * 2);
    BF16ToF32(h.data(), x.data(), n);
  }
  std::vector<uint16_t> h(n);
  F32ToF16(x.data(), h.data(), n);
  c.kv.resize(n * 2);
  std::memcpy(c.kv.data(), h.data(), n * 2);
  c.layout.dtype = DType::kF16;
  return c;
}

// Tokens [begin, begin + count) of a context, as a chunk of its own.
inline KvChunk Slice(const KvChunk& ctx, uint32_t begin, uint32_t count) {
  KvChunk c;
  c.layout = ctx.layout;
  c.layout.num_tokens = count;
  c.layout.position_start = ctx.layout.position_start + begin;
  const size_t row = size_t{ctx.layout.heads()} * ctx.layout.head_dim * 2;  // bytes per token
  c.kv.resize(c.layout.RawBytes());
  for (uint32_t lh = 0; lh < ctx.layout.num_layers * 2; ++lh) {
    const uint8_t* src = ctx.kv.data() + (size_t{lh} * ctx.layout.num_tokens + begin) * row;
    std::memcpy(c.kv.data() + size_t{lh} * count * row, src, size_t{count} * row);
  }
  return c;
}

// Full chunks of `chunk_tokens` (a trailing partial chunk is dropped, as in the reference).
inline std::vector<KvChunk> Chunks(const KvChunk& ctx, uint32_t chunk_tokens) {
  std::vector<KvChunk> out;
  for (uint32_t t = 0; t + chunk_tokens <= ctx.layout.num_tokens; t += chunk_tokens) {
    out.push_back(Slice(ctx, t, chunk_tokens));
  }
  return out;
}

}  // namespace kvstash::bench

#endif  // KVSTASH_BENCH_CODEC_KV_CORPUS_H_
