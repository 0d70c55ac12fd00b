// Stream decoding for one work item (the C streams of one row in one sub-chunk), token by token.
// A portable path runs kernels/cachegen_core.h per channel; on CPUs with AVX-512 (F, CD, BW) the
// same arithmetic runs 16 channels per instruction. Both give identical symbols for any input.
#ifndef KVSTASH_CODEC_SRC_DECODE_SIMD_H_
#define KVSTASH_CODEC_SRC_DECODE_SIMD_H_

#include <cstdint>
#include <span>
#include <vector>

namespace kvstash::codec::internal {

// Decoder state of the C streams of one work item. Streams sit in zero-padded slots of
// `slot_bytes` (MaxStreamBytes(symbols) + 16) so reads never need bounds checks.
class ItemDecoder {
 public:
  // `cdf` holds the item's row: C x lp uint16 entries. `slots` holds C slots.
  void Reset(std::span<const uint16_t> cdf, int lp, size_t channels, const uint8_t* slots,
             uint64_t slot_bytes);

  // Decodes the next symbol of every stream and writes x[c] = (s - cq) / cq * scale; sets *bad if
  // a symbol exceeds 2 * cq (it is then decoded as cq).
  void Step(int cq, float scale, float* x, bool* bad);

  // Test hook: force the portable path even when AVX-512 is present.
  static void ForcePortable(bool on);
  static bool UsingSimd();

 private:
  void StepPortable(size_t begin, int cq, float scale, float* x, bool* bad);

  size_t channels_ = 0;
  size_t simd_channels_ = 0;  // leading channels decoded with AVX-512 (a multiple of 16)
  int lp_ = 0;
  const uint8_t* slots_ = nullptr;
  uint64_t slot_bytes_ = 0;
  // Portable state (all channels unless SIMD is used, then the tail).
  std::vector<uint32_t> tables_;                    // [C][65] coder tables
  std::vector<uint32_t> low_, high_, value_, pos_;  // per channel, SoA
  // SIMD: transposed tables [m][simd_channels_], m in [0, lp-1].
  std::vector<uint32_t> ttables_;
};

}  // namespace kvstash::codec::internal

#endif  // KVSTASH_CODEC_SRC_DECODE_SIMD_H_
