// Stream encoding for one work item (the C streams of one row in one sub-chunk), token by token.
// A portable path runs kernels/cachegen_core.h per channel; on CPUs with AVX-512 (F, CD, BW) the
// same arithmetic runs 16 channels per instruction. Both write identical bytes.
#ifndef KVSTASH_CODEC_SRC_ENCODE_SIMD_H_
#define KVSTASH_CODEC_SRC_ENCODE_SIMD_H_

#include <cstdint>
#include <span>
#include <vector>

#include "fast_bits.h"
#include "kvstash/kernels/cachegen_core.h"

namespace kvstash::codec::internal {

class ItemEncoder {
 public:
  // `cdf`: the row's C x lp entries. Stream c is written to slots + c * slot_bytes, at most `cap`
  // bytes (slot_bytes >= cap + FastWriter::kSlack).
  void Reset(std::span<const uint16_t> cdf, int lp, size_t channels, uint8_t* slots,
             uint64_t slot_bytes, uint64_t cap);
  // Encodes sym[c] into stream c, for every channel.
  void Step(const uint8_t* sym);
  // Finishes every stream and stores its length; false if a stream exceeded `cap`.
  bool Finish(uint32_t* lengths);

  // Test hook: force the portable path even when AVX-512 is present.
  static void ForcePortable(bool on);
  static bool UsingSimd();
  // Test hook: how many times the vector path handed a lane to the scalar writer.
  static uint64_t SlowLanes();

 private:
  FastWriter Writer(size_t c) const;
  void Store(size_t c, const FastWriter& w);

  size_t channels_ = 0;
  size_t simd_channels_ = 0;
  int lp_ = 0;
  uint8_t* slots_ = nullptr;
  uint64_t slot_bytes_ = 0;
  uint64_t cap_ = 0;
  std::vector<uint32_t> tables_;   // portable tail: [C - simd][65]
  std::vector<uint32_t> ttables_;  // SIMD: [m][simd_channels_], m in [0, lp-1]
  // Per-channel state (SoA): coder interval, pending bits, writer accumulator and position.
  std::vector<uint32_t> low_, high_, pending_, nbits_, pos_;
  std::vector<uint64_t> acc_;
  // Lanes the vector step left to the scalar writer (long E3 runs): masks per 16 channels.
  std::vector<uint32_t> slow_k_, slow_e3_, slow_low_, slow_mask_;
};

}  // namespace kvstash::codec::internal

#endif  // KVSTASH_CODEC_SRC_ENCODE_SIMD_H_
