// Deterministic keys, layouts and payloads for service tests.
#ifndef KVSTASH_TESTS_CACHESVC_TEST_OBJECTS_H_
#define KVSTASH_TESTS_CACHESVC_TEST_OBJECTS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kvstash/common/crc32c.h"
#include "kvstash/common/key.h"
#include "kvstash/common/layout.h"
#include "kvstash/common/object_name.h"

namespace kvstash::testing {

// A raw f16 object of `tokens` x 1 head x dim 64 x `layers` layers: 256 bytes per token-layer.
inline ObjectInfo TestInfo(uint32_t tokens, uint32_t layers = 1) {
  ObjectInfo info;
  info.layout.num_layers = layers;
  info.layout.total_kv_heads = 1;
  info.layout.head_begin = 0;
  info.layout.head_end = 1;
  info.layout.head_dim = 64;
  info.layout.dtype = DType::kF16;
  info.layout.num_tokens = tokens;
  info.encoding = Encoding::kRaw;
  info.payload_bytes = info.layout.RawBytes();
  return info;
}

// SmolLM2-135M-sized chunk: 256 tokens x 30 layers x 3 KV heads x 64 dims, f16 (5.9 MB).
inline ObjectInfo SmolChunkInfo() {
  ObjectInfo info;
  info.layout.num_layers = 30;
  info.layout.total_kv_heads = 3;
  info.layout.head_begin = 0;
  info.layout.head_end = 3;
  info.layout.head_dim = 64;
  info.layout.dtype = DType::kF16;
  info.layout.num_tokens = 256;
  info.layout.rope = RopeConvention::kNeox;
  info.layout.rope_theta = 100000.0f;
  info.encoding = Encoding::kRaw;
  info.payload_bytes = info.layout.RawBytes();
  return info;
}

// Bytes that differ for every (seed, offset), so any misplaced or stale byte shows.
inline std::vector<uint8_t> TestPayload(uint64_t seed, size_t n) {
  std::vector<uint8_t> out(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  for (size_t i = 0; i < n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    for (size_t j = 0; j < 8 && i + j < n; ++j) out[i + j] = static_cast<uint8_t>(x >> (8 * j));
  }
  return out;
}

inline ObjectName TestName(uint64_t i, const std::string& name_space = "test") {
  ModelSpec spec;
  spec.model_id = "kvstash-tests";
  std::vector<uint32_t> tokens = {static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32), 7};
  return MakeObjectName(name_space, ModelFingerprint(spec), IndependentTokenHash(tokens));
}

inline ObjectInfo WithCrc(ObjectInfo info, const std::vector<uint8_t>& payload) {
  info.payload_crc32c = Crc32c(payload.data(), payload.size());
  return info;
}

}  // namespace kvstash::testing

#endif  // KVSTASH_TESTS_CACHESVC_TEST_OBJECTS_H_
