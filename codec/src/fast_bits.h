// CPU bit output for the CacheGen encoder: the same bytes as the portable BitWriter of
// kernels/cachegen_core.h, without data-dependent branches in the common case. (The CPU decoder's
// reader is in decode_simd.cc.)
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

  // Bits written so far but not yet in whole 32-bit words, and the byte position of the next word.
  struct State {
    uint64_t pos = 0;
    uint64_t acc = 0;
    int nbits = 0;
  };

  FastWriter(uint8_t* out, uint64_t capacity) : out_(out), cap_(capacity) {}
  FastWriter(uint8_t* out, uint64_t capacity, const State& s)
      : out_(out), cap_(capacity), pos_(s.pos), acc_(s.acc), nbits_(s.nbits) {}
  State state() const { return State{pos_, acc_, nbits_}; }

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

}  // namespace kvstash::codec::internal

#endif  // KVSTASH_CODEC_SRC_FAST_BITS_H_
