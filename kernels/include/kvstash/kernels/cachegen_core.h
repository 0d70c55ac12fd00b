// The arithmetic of CacheGen (docs/codec.md, spec: algorithms.md §1.2), written once as inline
// host/device functions. The CPU codec (codec/) and the CUDA kernels (cachegen_cuda.cu) both call
// exactly these functions, so their bitstreams are identical by construction.
//
// Everything here is bit-exact with the reference semantics:
//   quantise     sym = round_half_even(fl(fl(x * fl(Cq / m)) + Cq)), Cq = bins/2 - 1, all f32
//   dequantise   x^ = fl(fl((sym - Cq) / Cq) * m)
//   CDF          cdf[i] = floor((65535 - Mb) * cum[i] / N) + i, i = 0..Mb
//   range coder  32-bit low/high, 16-bit probabilities, E1/E2/E3 renormalisation, MSB-first bits.
// The renormalisation loop of the reference is executed in bulk (count leading equal bits, then
// the E3 run) which is equivalent shift by shift; tests compare it with a literal loop.
//
// No function allocates, throws or reads/writes outside the buffers it is given. Pure functions;
// a BitWriter/BitReader/state object belongs to one thread.
#ifndef KVSTASH_KERNELS_CACHEGEN_CORE_H_
#define KVSTASH_KERNELS_CACHEGEN_CORE_H_

#include <cstdint>

#if defined(__CUDACC__)
#define KVSTASH_HD __host__ __device__ __forceinline__
#else
#define KVSTASH_HD inline
#endif

namespace kvstash::kernels::cachegen {

// Bins per row are even and in [kMinBins, kMaxBins]; a CDF has Lp = max bins + 1 entries.
inline constexpr int kMinBins = 4;
inline constexpr int kMaxBins = 64;
inline constexpr int kMaxLp = kMaxBins + 1;
// Coder tables have this many entries: t[s] = cdf[s] for s <= Lp-2, kProbOne above.
inline constexpr int kTableSize = 65;
inline constexpr uint32_t kProbBits = 16;
inline constexpr uint32_t kProbOne = 1u << kProbBits;
// Vectors whose max |x| is below this (zero included) quantise to Cq with scale 0: the reference
// divides by zero there, and Cq/m would overflow f32 for tiny m.
inline constexpr float kMinScale = 7.888609052210118e-31f;  // 2^-100
// Bits of one stream of n symbols are at most 18n + 2 (a symbol's interval is >= 2^14 wide after
// an update, so at most 18 shifts restore a span above 2^31; the finish adds 2 bits).
KVSTASH_HD uint64_t MaxStreamBytes(uint64_t num_symbols) { return (18 * num_symbols + 2 + 7) / 8; }

KVSTASH_HD int QuantCq(int bins) { return bins / 2 - 1; }

// f32 operations with IEEE round-to-nearest and no contraction into FMA, on host and device.
KVSTASH_HD float MulRn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
KVSTASH_HD float AddRn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
KVSTASH_HD float SubRn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
KVSTASH_HD float DivRn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
KVSTASH_HD float RoundHalfEven(float y) {
#if defined(__CUDA_ARCH__)
  return rintf(y);
#else
  return __builtin_rintf(y);  // default rounding mode: nearest, ties to even
#endif
}

KVSTASH_HD int Clz32(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return __clz(static_cast<int>(x));
#else
  return x == 0 ? 32 : __builtin_clz(x);
#endif
}

KVSTASH_HD uint32_t LowMask(int k) { return k >= 32 ? 0xFFFFFFFFu : ((1u << k) - 1u); }

// Multiplier for one (row, token) vector with max |x| = m (m >= 0, finite).
KVSTASH_HD float QuantFactor(float m, int cq) {
  return m >= kMinScale ? DivRn(static_cast<float>(cq), m) : 0.0f;
}
// The scale stored for that vector: m, or 0 when it is below kMinScale.
KVSTASH_HD float StoredScale(float m) { return m >= kMinScale ? m : 0.0f; }

// Symbol of one finite x with |x| <= m; always in [0, 2*Cq] (the clamp never fires for such x).
KVSTASH_HD int QuantizeValue(float x, float factor, int cq) {
  float y = AddRn(MulRn(x, factor), static_cast<float>(cq));
  int s = static_cast<int>(RoundHalfEven(y));
  s = s < 0 ? 0 : s;
  return s > 2 * cq ? 2 * cq : s;
}

KVSTASH_HD float DequantizeValue(int sym, int cq, float scale) {
  return MulRn(DivRn(static_cast<float>(sym - cq), static_cast<float>(cq)), scale);
}

// CDF entry i (0..mb) from cum = number of symbols < i and total = number of symbols.
// An empty histogram gives cdf[i] = i (cdf[mb] = 65535): every symbol at the 1/65536 floor.
KVSTASH_HD uint16_t CdfValue(uint64_t cum, uint64_t total, int mb, int i) {
  if (total == 0) return static_cast<uint16_t>(i == mb ? 65535 : i);
  return static_cast<uint16_t>((static_cast<uint64_t>(65535 - mb) * cum) / total +
                               static_cast<uint64_t>(i));
}

// ---- bit I/O: MSB-first within bytes, bytes in stream order ------------------------------------
//
// The coder is generic over its bit sink and source:
//   Writer: void Settle(uint32_t low, int k, uint64_t* pending)  -- if k > 0: emit the top k bits
//             of `low` with *pending copies of the complement of the first bit inserted after it,
//             then zero *pending (the E1/E2 output rule); k in [0, 31]
//           void Flush()                                         -- pad the last byte with zeros
//   Reader: uint32_t Read(int k)                                 -- next k bits, k in [0, 32]
// BitWriter/BitReader below are the portable versions (used on the device and by the single-
// stream API); the CPU codec has faster ones with the same output (codec/src/fast_bits.h).

class BitWriter {
 public:
  KVSTASH_HD BitWriter(uint8_t* out, uint64_t capacity) : out_(out), cap_(capacity) {}

  // Appends the low n bits of `bits`, n in [0, 32].
  KVSTASH_HD void Put(uint32_t bits, int n) {
    if (n <= 0) return;
    acc_ = (acc_ << n) | (bits & LowMask(n));
    nbits_ += n;
    while (nbits_ >= 8) {
      nbits_ -= 8;
      Emit(static_cast<uint8_t>(acc_ >> nbits_));
    }
  }
  // Appends `count` copies of `bit`.
  KVSTASH_HD void PutRun(uint32_t bit, uint64_t count) {
    while (count > 0) {
      int k = count > 32 ? 32 : static_cast<int>(count);
      Put(bit ? 0xFFFFFFFFu : 0u, k);
      count -= static_cast<uint64_t>(k);
    }
  }
  KVSTASH_HD void Settle(uint32_t low, int k, uint64_t* pending) {
    if (k <= 0) return;
    const uint32_t first = low >> 31;
    Put(first, 1);
    PutRun(first ^ 1u, *pending);
    *pending = 0;
    Put(low >> (32 - k), k - 1);
  }
  // Pads the last byte with zeros.
  KVSTASH_HD void Flush() {
    if (nbits_ > 0) Emit(static_cast<uint8_t>(acc_ << (8 - nbits_)));
    nbits_ = 0;
  }
  // Bytes produced so far (including bytes that did not fit).
  KVSTASH_HD uint64_t size() const { return pos_; }
  KVSTASH_HD bool overflowed() const { return pos_ > cap_; }

 private:
  KVSTASH_HD void Emit(uint8_t byte) {
    if (pos_ < cap_) out_[pos_] = byte;
    ++pos_;
  }
  uint8_t* out_;
  uint64_t cap_;
  uint64_t pos_ = 0;
  uint64_t acc_ = 0;
  int nbits_ = 0;
};

// Reads bits MSB-first from data[0, len); bits past the end read as 0.
class BitReader {
 public:
  KVSTASH_HD BitReader(const uint8_t* data, uint64_t len) : data_(data), len_(len) {}

  // Returns the next k bits, k in [0, 32].
  KVSTASH_HD uint32_t Read(int k) {
    if (k <= 0) return 0;
    if (k > 32) k = 32;  // unreachable for a coder in a valid state (k <= 18)
    if (nbits_ < k) Refill();
    uint32_t r = static_cast<uint32_t>(acc_ >> (64 - k));
    acc_ <<= k;
    nbits_ -= k;
    return r;
  }

 private:
  // Leaves at least 33 valid bits in acc_ (left-aligned).
  KVSTASH_HD void Refill() {
    if (pos_ + 4 <= len_) {
      uint32_t w = (static_cast<uint32_t>(data_[pos_]) << 24) |
                   (static_cast<uint32_t>(data_[pos_ + 1]) << 16) |
                   (static_cast<uint32_t>(data_[pos_ + 2]) << 8) |
                   static_cast<uint32_t>(data_[pos_ + 3]);
      acc_ |= static_cast<uint64_t>(w) << (32 - nbits_);
      pos_ += 4;
      nbits_ += 32;
      return;
    }
    while (nbits_ <= 56) {
      uint64_t byte = 0;
      if (pos_ < len_) byte = data_[pos_++];
      acc_ |= byte << (56 - nbits_);
      nbits_ += 8;
    }
  }
  const uint8_t* data_;
  uint64_t len_;
  uint64_t pos_ = 0;
  uint64_t acc_ = 0;
  int nbits_ = 0;
};

// ---- coder tables ------------------------------------------------------------------------------

// Small accessors for the templates below (device-safe, unlike host lambdas).
struct TableRef {  // writable table
  uint32_t* p;
  KVSTASH_HD uint32_t& operator()(int i) const { return p[i]; }
};
struct TableView {  // read-only table
  const uint32_t* p;
  KVSTASH_HD uint32_t operator()(int i) const { return p[i]; }
};
struct CdfView {  // one (row, channel) CDF of lp uint16 entries
  const uint16_t* p;
  KVSTASH_HD uint32_t operator()(int i) const { return p[i]; }
};

// t[0..64]: t[s] = cdf[s] for s <= lp-2, kProbOne otherwise. `cdf` must be validated (cdf[0] = 0,
// strictly increasing, lp in [3, kMaxLp]); the top symbol lp-2 then spans [cdf[lp-2], 65536).
template <typename CdfAt, typename TableAt>
KVSTASH_HD void BuildTable(CdfAt cdf, int lp, TableAt table) {
  for (int i = 0; i < kTableSize; ++i) {
    table(i) = i <= lp - 2 ? static_cast<uint32_t>(cdf(i)) : kProbOne;
  }
}

// ---- encoder -----------------------------------------------------------------------------------
//
// Renormalisation in bulk, shift for shift equal to the reference loop:
//   E1/E2 (high < 2^31, or low >= 2^31) repeat while low and high share their top bit: that is the
//   k = clz(low ^ high) leading bits, emitted as settled bits (the first one followed by the
//   pending bits). Afterwards low = 0..., high = 1..., and E1/E2 can no longer apply.
//   E3 (low >= 2^30 and high < 3*2^30, i.e. low = 01..., high = 10...) repeats over the run of
//   positions from bit 30 down where low has a 1 and high a 0; each step drops bit 30 and shifts.
// A symbol's interval is at least 2^14 wide, so k + e3 <= 18.

struct EncoderState {
  uint32_t low = 0;
  uint32_t high = 0xFFFFFFFFu;
  uint64_t pending = 0;
};

// Number of E3 steps for low = 0..., high = 1...
KVSTASH_HD int E3Steps(uint32_t low, uint32_t high) { return Clz32(~((low & ~high) << 1)); }

// Narrows [low, high] to the symbol's interval [c_lo, c_hi) / 65536 and renormalises.
template <typename Writer>
KVSTASH_HD void EncodeInterval(EncoderState& st, uint32_t c_lo, uint32_t c_hi, Writer& w) {
  const uint64_t span = static_cast<uint64_t>(st.high) - st.low + 1;
  uint32_t high = (st.low - 1u) + static_cast<uint32_t>((span * c_hi) >> kProbBits);
  uint32_t low = st.low + static_cast<uint32_t>((span * c_lo) >> kProbBits);
  const int k = Clz32((low ^ high) | 1u);  // low != high for a valid CDF; |1 keeps k <= 31
  w.Settle(low, k, &st.pending);
  low <<= k;
  high = (high << k) | LowMask(k);
  const int e3 = E3Steps(low, high);
  st.pending += static_cast<uint64_t>(e3);
  st.low = (low << e3) & 0x7FFFFFFFu;
  st.high = (high << e3) | 0x80000000u | LowMask(e3);
}

template <typename TableAt, typename Writer>
KVSTASH_HD void EncodeSymbol(EncoderState& st, const TableAt& table, int sym, Writer& w) {
  EncodeInterval(st, table(sym), table(sym + 1), w);
}

// Emits (low < 2^30 ? 0 : 1) and pending + 1 complements, then pads to a byte.
template <typename Writer>
KVSTASH_HD void FinishEncode(EncoderState& st, Writer& w) {
  st.pending += 1;
  const uint32_t bit = st.low < 0x40000000u ? 0u : 1u;
  w.Settle(bit << 31, 1, &st.pending);
  w.Flush();
}

// ---- decoder -----------------------------------------------------------------------------------

struct DecoderState {
  uint32_t low = 0;
  uint32_t high = 0xFFFFFFFFu;
  uint32_t value = 0;
};

template <typename Reader>
KVSTASH_HD void StartDecode(DecoderState& st, Reader& r) {
  st = DecoderState{};
  st.value = r.Read(32);
}

// Decodes one symbol; the result is always in [0, lp-2] whatever the input bytes are (low <=
// value <= high is an invariant of the coder, and `count` is clamped besides).
template <typename TableAt, typename Reader>
KVSTASH_HD int DecodeSymbol(DecoderState& st, const TableAt& table, Reader& r) {
  const uint64_t span = static_cast<uint64_t>(st.high) - st.low + 1;
  const uint64_t scaled = ((static_cast<uint64_t>(st.value) - st.low + 1) << kProbBits) - 1;
  const uint64_t count64 = scaled / span;
  const uint32_t count = count64 > 0xFFFFu ? 0xFFFFu : static_cast<uint32_t>(count64);
  // Largest s with t[s] <= count; t is padded with kProbOne (> count) above lp-2.
  int s = 0;
  s += table(s + 32) <= count ? 32 : 0;
  s += table(s + 16) <= count ? 16 : 0;
  s += table(s + 8) <= count ? 8 : 0;
  s += table(s + 4) <= count ? 4 : 0;
  s += table(s + 2) <= count ? 2 : 0;
  s += table(s + 1) <= count ? 1 : 0;
  const uint32_t c_lo = table(s);
  const uint32_t c_hi = table(s + 1);
  uint32_t high = (st.low - 1u) + static_cast<uint32_t>((span * c_hi) >> kProbBits);
  uint32_t low = st.low + static_cast<uint32_t>((span * c_lo) >> kProbBits);
  const int k = Clz32((low ^ high) | 1u);
  low <<= k;
  high = (high << k) | LowMask(k);
  const int e3 = E3Steps(low, high);
  const uint32_t bits = r.Read(k + e3);
  // E1/E2 shift value like low and high; each E3 step is value = (value - 2^30) << 1 | bit, which
  // for value in [2^30, 3*2^30) is: toggle bit 30, then shift.
  const uint32_t v = (st.value << k) | (bits >> e3);
  // e3 <= 31: E3Steps counts the leading zeros of a word whose bit 0 is set (the analyzer does
  // not model Clz32).
  // NOLINTNEXTLINE(clang-analyzer-core.UndefinedBinaryOperatorResult)
  st.value = ((v ^ (LowMask(e3) << (31 - e3))) << e3) | (bits & LowMask(e3));
  st.low = (low << e3) & 0x7FFFFFFFu;
  st.high = (high << e3) | 0x80000000u | LowMask(e3);
  return s;
}

}  // namespace kvstash::kernels::cachegen

#endif  // KVSTASH_KERNELS_CACHEGEN_CORE_H_
