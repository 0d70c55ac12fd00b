// CPU bit I/O for the CacheGen coder with the same output as the portable BitWriter/BitReader of
// kernels/cachegen_core.h, but without data-dependent branches in the common case.
#ifndef KVSTASH_CODEC_SRC_FAST_BITS_H_
#define KVSTASH_CODEC_SRC_FAST_BITS_H_

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace kvstash::codec::internal {

inline uint64_t LowMask64(int k) { return k >= 64 ? ~uint64_t{0} : (uint64_t{1} << k) - 1; }

inline void StoreBe32(uint8_t* p, uint32_t v) {
  v = __builtin_bswap32(v);
  std::memcpy(p, &v, 4);
}

// Writes into out[0, capacity); the caller provides kSlack more writable bytes after that.
class FastWriter {
 public:
  static constexpr uint64_t kSlack = 8;

  FastWriter(uint8_t* out, uint64_t capacity) : out_(out), cap_(capacity) {}

  void Settle(uint32_t low, int k, uint64_t* pending) {
    const uint64_t p = *pending;
    if (p + static_cast<uint64_t>(k) > 32) {  // rare long E3 runs: keep emissions <= 32 bits
      SlowSettle(low, k, pending);
      return;
    }
    const uint64_t has = k > 0 ? 1 : 0;
    const uint64_t first = low >> 31;
    const int rest = k - static_cast<int>(has);  // settled bits after the first one
    const int n = (k + static_cast<int>(p)) & -static_cast<int>(has);
    uint64_t v = (first << n) >> 1;
    v |= ((first ^ 1) * LowMask64(static_cast<int>(p))) << rest;
    v |= (uint64_t{low} >> (32 - k)) & LowMask64(rest);
    Put(v & (0 - has), n);
    *pending = p & (has - 1);
  }

  void Flush() {
    const int bytes = (nbits_ + 7) / 8;
    StoreBe32(out_ + pos_, static_cast<uint32_t>(acc_ << (32 - nbits_)));
    pos_ = std::min(pos_ + bytes, cap_ + 1);
    nbits_ = 0;
  }

  uint64_t size() const { return pos_; }
  bool overflowed() const { return pos_ > cap_; }

 private:
  // Appends the low n bits of v, n in [0, 32].
  void Put(uint64_t v, int n) {
    acc_ = (acc_ << n) | v;
    nbits_ += n;
    const int full = nbits_ >= 32 ? 1 : 0;
    nbits_ -= 32 * full;
    StoreBe32(out_ + pos_, static_cast<uint32_t>(acc_ >> nbits_));
    pos_ = std::min(pos_ + 4 * full, cap_ + 1);  // never past the slack, even if the bound broke
  }

  void SlowSettle(uint32_t low, int k, uint64_t* pending) {
    if (k <= 0) return;
    const uint64_t first = low >> 31;
    Put(first, 1);
    for (uint64_t left = *pending; left > 0;) {
      const int m = static_cast<int>(std::min<uint64_t>(left, 32));
      Put((first ^ 1) * LowMask64(m), m);
      left -= m;
    }
    *pending = 0;
    Put((uint64_t{low} >> (32 - k)) & LowMask64(k - 1), k - 1);
  }

  uint8_t* out_;
  uint64_t cap_;
  uint64_t pos_ = 0;
  uint64_t acc_ = 0;
  int nbits_ = 0;
};

// Reads a stream copied into a zero-filled slot of `slot_bytes` (>= the stream + 16): bits past
// the stream read as 0, and a decoder (at most 32 + 18n bits for n symbols, with slots of
// MaxStreamBytes(n) + 16 bytes) never reaches the slot's end.
class SlotReader {
 public:
  SlotReader(const uint8_t* slot, uint64_t slot_bytes)
      : base_(slot), max_pos_((slot_bytes - 8) * 8) {}

  uint32_t Read(int k) {  // k in [0, 32]
    uint64_t w;
    std::memcpy(&w, base_ + (pos_ >> 3), 8);
    w = __builtin_bswap64(w) << (pos_ & 7);
    pos_ = std::min<uint64_t>(pos_ + k, max_pos_);
    return static_cast<uint32_t>((w >> 1) >> (63 - k));
  }

 private:
  const uint8_t* base_;
  uint64_t max_pos_;
  uint64_t pos_ = 0;
};

}  // namespace kvstash::codec::internal

#endif  // KVSTASH_CODEC_SRC_FAST_BITS_H_
