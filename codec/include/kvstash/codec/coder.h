// CacheGen building blocks on single vectors and single streams, bit-exact with the reference
// semantics (docs/codec.md §2; the arithmetic itself is kernels/cachegen_core.h, shared with the
// CUDA kernels). Chunk-level encoding is in cachegen.h; these are for tests, tools and the
// Python cross-checks. All functions are pure and thread-safe.
#ifndef KVSTASH_CODEC_CODER_H_
#define KVSTASH_CODEC_CODER_H_

#include <cstdint>
#include <span>
#include <vector>

#include "kvstash/common/status.h"

namespace kvstash::codec {

// Quantises one (layer, token) vector with `bins` (even; 4..64 for coded rows, 256 for delta
// anchors; anything in [4, 256] is accepted): m = max |x|, sym[i] in
// [0, bins-2]. Returns the stored scale (m, or 0 when m < 2^-100). InvalidArgument for NaN/Inf.
Result<float> QuantizeVector(std::span<const float> x, int bins, std::span<uint8_t> sym);

// x^ = (sym - Cq) / Cq * scale in f32.
void DequantizeVector(std::span<const uint8_t> sym, int bins, float scale, std::span<float> out);

// CDF over `symbols` with max bins `mb` (lp = mb + 1 entries): cdf[i] = floor((65535 - mb) *
// cum[i] / n) + i, where cum[i] counts symbols < i. Symbols >= mb are not counted (the quantiser
// never produces them). mb in [2, 64].
std::vector<uint16_t> BuildCdf(std::span<const uint8_t> symbols, int mb);

// OK iff 3 <= cdf.size() <= 65, cdf[0] == 0, strictly increasing, cdf.back() == 65535.
Status ValidateCdf(std::span<const uint16_t> cdf);

// Range-codes `symbols` (each <= cdf.size() - 2) under a validated CDF and appends the stream to
// `out`. InvalidArgument for a bad CDF or an out-of-range symbol.
Status EncodeStream(std::span<const uint8_t> symbols, std::span<const uint16_t> cdf,
                    std::vector<uint8_t>* out);

// Decodes out.size() symbols from `stream` (bits past its end read as 0). Any bytes decode to
// some symbols in [0, cdf.size() - 2]; InvalidArgument only for a bad CDF.
Status DecodeStream(std::span<const uint8_t> stream, std::span<const uint16_t> cdf,
                    std::span<uint8_t> out);

// Upper bound on the bytes of a stream of n symbols under any valid CDF: ceil((18n + 2) / 8).
uint64_t MaxStreamBytes(uint64_t num_symbols);

// Empirical cost in bits of `symbols` under `cdf`: sum of -log2(p(s)), with the coder's
// probabilities (the top symbol runs to 65536).
double CrossEntropyBits(std::span<const uint8_t> symbols, std::span<const uint16_t> cdf);

}  // namespace kvstash::codec

#endif  // KVSTASH_CODEC_CODER_H_
