// Synthetic KV caches with the statistics CacheGen exploits, for tests and benchmarks until real
// model KV is fed in (bench/codec/codec_eval takes KV dump files for that).
//
// Per (layer, K/V, channel): a log-normal scale; K channels also get an offset, and a few K
// channels are outliers with 8x the scale (as in real keys). Along tokens each channel is an AR(1)
// process with Laplace innovations (token-wise locality), scaled up with depth. Deterministic for
// a given seed on every platform that has IEEE f32/f64 (values go through f64 log/exp, so a
// different libm can change the last bit; golden tests do not depend on this generator).
#ifndef KVSTASH_CODEC_SYNTHETIC_KV_H_
#define KVSTASH_CODEC_SYNTHETIC_KV_H_

#include <cstdint>
#include <vector>

#include "kvstash/common/layout.h"

namespace kvstash::codec {

struct SyntheticKvOptions {
  uint64_t seed = 1;
  double token_correlation = 0.8;  // AR(1) coefficient along tokens, in [0, 1)
  double outlier_fraction = 0.03;  // share of K channels with 8x scale
  // Seed for the per-channel statistics; chunks of one "model" share it and differ in `seed`.
  uint64_t model_seed = 7;
};

// Layer-major payload for `layout` (RawBytes() bytes, in layout.dtype).
std::vector<uint8_t> SyntheticKv(const KvLayout& layout, const SyntheticKvOptions& options = {});

}  // namespace kvstash::codec

#endif  // KVSTASH_CODEC_SYNTHETIC_KV_H_
