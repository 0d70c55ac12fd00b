// Interleaved rANS (rans.h): tables, encoder, portable and AVX-512 decoders.
#include "rans.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own temporaries (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include "cpu_features.h"

namespace kvstash::codec::internal::rans {

void NormalizeFreqs(const uint64_t* counts, int n, uint16_t* freqs) {
  unsigned __int128 total = 0;
  for (int s = 0; s < n; ++s) total += counts[s];
  const uint32_t spare = kProbScale - static_cast<uint32_t>(n);
  uint32_t sum = 0;
  int top = 0;
  for (int s = 0; s < n; ++s) {
    uint32_t f = 1;
    if (total > 0)
      f += static_cast<uint32_t>(counts[s] * static_cast<unsigned __int128>(spare) / total);
    freqs[s] = static_cast<uint16_t>(f);
    sum += f;
    if (counts[s] > counts[top]) top = s;
  }
  if (total == 0) {
    // Uniform: spread the spare slots round robin.
    for (uint32_t i = 0; sum < kProbScale; ++i, ++sum) ++freqs[i % n];
    return;
  }
  // Rounding leftovers go to the most frequent symbol, where they cost the least.
  freqs[top] = static_cast<uint16_t>(freqs[top] + (kProbScale - sum));
}

bool ValidFreqs(const uint16_t* freqs, int n) {
  uint32_t sum = 0;
  for (int s = 0; s < n; ++s) {
    if (freqs[s] == 0 || freqs[s] >= kProbScale) return false;
    sum += freqs[s];
  }
  return sum == kProbScale;
}

void BuildEncTable(const uint16_t* freqs, int n, EncTable* table) {
  uint32_t cum = 0;
  for (int s = 0; s < n; ++s) {
    EncSymbol& e = table->sym[s];
    e.freq = freqs[s];
    e.cum = cum;
    e.x_max = ((kLow >> kProbBits) << 16) * e.freq;
    e.rcp = ((uint64_t{1} << 44) + e.freq - 1) / e.freq;
    cum += freqs[s];
  }
}

namespace {

void BuildDecTablePortable(const uint16_t* freqs, int n, DecTable* table) {
  uint32_t slot = 0;
  for (int s = 0; s < n; ++s) {
    const uint32_t head = static_cast<uint32_t>(s) << 24 | uint32_t{freqs[s]} << 12;
    for (uint32_t i = 0; i < freqs[s]; ++i) table->lut[slot + i] = head | i;
    slot += freqs[s];
  }
}

#if defined(__x86_64__)
// The same entries, 16 per store (the last store of a symbol masked).
KVSTASH_AVX512 void BuildDecTableAvx512(const uint16_t* freqs, int n, DecTable* table) {
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  uint32_t slot = 0;
  for (int s = 0; s < n; ++s) {
    const uint32_t f = freqs[s];
    __m512i v = _mm512_or_si512(
        _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(s) << 24 | f << 12)), iota);
    const __m512i sixteen = _mm512_set1_epi32(16);
    uint32_t i = 0;
    for (; i + 16 <= f; i += 16) {
      _mm512_storeu_si512(table->lut + slot + i, v);
      v = _mm512_add_epi32(v, sixteen);
    }
    if (i < f) {
      _mm512_mask_storeu_epi32(table->lut + slot + i, static_cast<__mmask16>((1u << (f - i)) - 1),
                               v);
    }
    slot += f;
  }
}
#endif

}  // namespace

void BuildDecTable(const uint16_t* freqs, int n, DecTable* table) {
#if defined(__x86_64__)
  if (CpuHasAvx512()) {
    BuildDecTableAvx512(freqs, n, table);
    return;
  }
#endif
  BuildDecTablePortable(freqs, n, table);
}

size_t EncodeStream(const uint8_t* syms, size_t n, const uint8_t* ctx, uint32_t period,
                    const EncTable* tables, uint8_t* out) {
  uint32_t x[kLanes];
  std::fill(x, x + kLanes, kLow);
  uint8_t* const end = out + MaxStreamBytes(n);
  uint8_t* p = end;
  // Symbols are coded last to first so the decoder reads them first to last.
  uint32_t pos = n == 0 ? 0 : static_cast<uint32_t>((n - 1) % period);
  for (size_t k = n; k-- > 0;) {
    const EncSymbol& e = tables[ctx[pos]].sym[syms[k]];
    uint32_t& s = x[k % kLanes];
    if (s >= e.x_max) {
      p -= 2;
      p[0] = static_cast<uint8_t>(s);
      p[1] = static_cast<uint8_t>(s >> 8);
      s >>= 16;
    }
    const uint32_t q = static_cast<uint32_t>((static_cast<unsigned __int128>(s) * e.rcp) >> 44);
    s = (q << kProbBits) + (s - q * e.freq) + e.cum;
    pos = pos == 0 ? period - 1 : pos - 1;
  }
  p -= kStateBytes;
  for (int i = 0; i < kLanes; ++i) {
    for (int b = 0; b < 4; ++b) p[4 * i + b] = static_cast<uint8_t>(x[i] >> (8 * b));
  }
  const size_t len = static_cast<size_t>(end - p);
  std::memmove(out, p, len);
  return len;
}

namespace {

// Where one stream's decoding stands: states, next word, next symbol and its context position.
struct Cursor {
  uint32_t x[kLanes];
  const uint8_t* p = nullptr;
  const uint8_t* end = nullptr;
  size_t k = 0;
  uint32_t pos = 0;
};

// Reads the stored states; false if the stream is too short or a state is below kLow.
bool Start(const StreamJob& j, Cursor* c) {
  if (j.len < kStateBytes) return false;
  for (int i = 0; i < kLanes; ++i) {
    uint32_t v = 0;
    for (int b = 0; b < 4; ++b) v |= uint32_t{j.stream[4 * i + b]} << (8 * b);
    if (v < kLow) return false;
    c->x[i] = v;
  }
  c->p = j.stream + kStateBytes;
  c->end = j.stream + j.len;
  return true;
}

// Every word consumed and every state back at the encoder's start.
bool Finished(const Cursor& c) {
  if (c.p != c.end) return false;
  for (int i = 0; i < kLanes; ++i) {
    if (c.x[i] != kLow) return false;
  }
  return true;
}

// Scalar decode of the symbols from c.k to j.n.
bool DecodeTail(const StreamJob& j, Cursor& c) {
  for (; c.k < j.n; ++c.k) {
    uint32_t& s = c.x[c.k % kLanes];
    const uint32_t e = j.tables[j.ctx[c.pos]].lut[s & (kProbScale - 1)];
    j.syms[c.k] = static_cast<uint8_t>(e >> 24);
    s = ((e >> 12) & (kProbScale - 1)) * (s >> kProbBits) + (e & (kProbScale - 1));
    if (s < kLow) {
      if (c.end - c.p < 2) return false;
      s = s << 16 | uint32_t{c.p[0]} | uint32_t{c.p[1]} << 8;
      c.p += 2;
    }
    if (++c.pos == j.period) c.pos = 0;
  }
  return true;
}

#if defined(__x86_64__)
// 16 lanes of one decode step; `off` holds ctx * kProbScale of the 16 positions.
KVSTASH_AVX512 inline __m512i Step16(__m512i x, __m512i off, const uint32_t* lut, const uint8_t*& p,
                                     uint8_t* sym_out) {
  const __m512i mask12 = _mm512_set1_epi32(kProbScale - 1);
  const __m512i idx = _mm512_add_epi32(off, _mm512_and_si512(x, mask12));
  const __m512i e = _mm512_i32gather_epi32(idx, lut, 4);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(sym_out),
                   _mm512_cvtepi32_epi8(_mm512_srli_epi32(e, 24)));
  const __m512i freq = _mm512_and_si512(_mm512_srli_epi32(e, 12), mask12);
  x = _mm512_add_epi32(_mm512_mullo_epi32(freq, _mm512_srli_epi32(x, kProbBits)),
                       _mm512_and_si512(e, mask12));
  const __mmask16 need = _mm512_cmplt_epu32_mask(x, _mm512_set1_epi32(kLow));
  const __m512i words =
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  x = _mm512_mask_or_epi32(x, need, _mm512_slli_epi32(x, 16),
                           _mm512_maskz_expand_epi32(need, words));
  p += 2 * __builtin_popcount(need);
  return x;
}

// Table offsets per context position (period is a multiple of 8 or 16).
std::vector<uint32_t> Offsets(const StreamJob& j) {
  std::vector<uint32_t> off(j.period);
  for (uint32_t i = 0; i < j.period; ++i) off[i] = uint32_t{j.ctx[i]} * kProbScale;
  return off;
}

// A block of 32 symbols reads at most 32 words; each half loads 16 words.
inline bool BlockFits(const StreamJob& j, const Cursor& c) {
  return c.k + kLanes <= j.n && c.end - c.p >= 4 * kLanes;
}

// Whole 32-symbol blocks of one stream (c.k and c.pos stay block aligned: both start at 0).
KVSTASH_AVX512 void VectorBlocks(const StreamJob& j, const uint32_t* off, Cursor& c) {
  const uint32_t* lut = j.tables[0].lut;
  __m512i a = _mm512_loadu_si512(c.x);
  __m512i b = _mm512_loadu_si512(c.x + 16);
  while (BlockFits(j, c)) {
    a = Step16(a, _mm512_loadu_si512(off + c.pos), lut, c.p, j.syms + c.k);
    if ((c.pos += 16) == j.period) c.pos = 0;
    b = Step16(b, _mm512_loadu_si512(off + c.pos), lut, c.p, j.syms + c.k + 16);
    if ((c.pos += 16) == j.period) c.pos = 0;
    c.k += kLanes;
  }
  _mm512_storeu_si512(c.x, a);
  _mm512_storeu_si512(c.x + 16, b);
}

// Two streams' blocks interleaved: four independent dependency chains instead of two (a
// stream's two halves are chained through its word pointer).
KVSTASH_AVX512 void VectorBlocksPair(const StreamJob& j0, const uint32_t* off0, Cursor& c0,
                                     const StreamJob& j1, const uint32_t* off1, Cursor& c1) {
  const uint32_t* lut0 = j0.tables[0].lut;
  const uint32_t* lut1 = j1.tables[0].lut;
  __m512i a0 = _mm512_loadu_si512(c0.x), b0 = _mm512_loadu_si512(c0.x + 16);
  __m512i a1 = _mm512_loadu_si512(c1.x), b1 = _mm512_loadu_si512(c1.x + 16);
  while (BlockFits(j0, c0) && BlockFits(j1, c1)) {
    a0 = Step16(a0, _mm512_loadu_si512(off0 + c0.pos), lut0, c0.p, j0.syms + c0.k);
    a1 = Step16(a1, _mm512_loadu_si512(off1 + c1.pos), lut1, c1.p, j1.syms + c1.k);
    if ((c0.pos += 16) == j0.period) c0.pos = 0;
    if ((c1.pos += 16) == j1.period) c1.pos = 0;
    b0 = Step16(b0, _mm512_loadu_si512(off0 + c0.pos), lut0, c0.p, j0.syms + c0.k + 16);
    b1 = Step16(b1, _mm512_loadu_si512(off1 + c1.pos), lut1, c1.p, j1.syms + c1.k + 16);
    if ((c0.pos += 16) == j0.period) c0.pos = 0;
    if ((c1.pos += 16) == j1.period) c1.pos = 0;
    c0.k += kLanes;
    c1.k += kLanes;
  }
  _mm512_storeu_si512(c0.x, a0);
  _mm512_storeu_si512(c0.x + 16, b0);
  _mm512_storeu_si512(c1.x, a1);
  _mm512_storeu_si512(c1.x + 16, b1);
}
#endif

#if defined(__x86_64__)
// AVX2: 8 lanes per step. Lanes that fell below kLow take the next words in lane order, placed
// by a permutation from a table indexed by the 8-bit refill mask.
struct Avx2Refill {
  alignas(32) uint32_t idx[256][8];
  Avx2Refill() {
    for (int m = 0; m < 256; ++m) {
      int next = 0;
      for (int i = 0; i < 8; ++i) idx[m][i] = (m >> i & 1) ? next++ : 0;
    }
  }
};
const Avx2Refill& Refill() {
  static const Avx2Refill table;
  return table;
}

KVSTASH_AVX2 inline __m256i Step8(__m256i x, __m256i off, const uint32_t* lut, const uint8_t*& p,
                                  uint8_t* sym_out, const Avx2Refill& refill) {
  const __m256i mask12 = _mm256_set1_epi32(kProbScale - 1);
  const __m256i idx = _mm256_add_epi32(off, _mm256_and_si256(x, mask12));
  const __m256i e = _mm256_i32gather_epi32(reinterpret_cast<const int*>(lut), idx, 4);
  // Byte 3 of every entry: 4 symbols per 128-bit half.
  const __m256i top = _mm256_shuffle_epi8(
      e, _mm256_setr_epi8(3, 7, 11, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 3, 7, 11,
                          15, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1));
  const uint32_t lo = static_cast<uint32_t>(_mm256_cvtsi256_si32(top));
  const uint32_t hi = static_cast<uint32_t>(_mm256_extract_epi32(top, 4));
  std::memcpy(sym_out, &lo, 4);
  std::memcpy(sym_out + 4, &hi, 4);
  const __m256i freq = _mm256_and_si256(_mm256_srli_epi32(e, 12), mask12);
  x = _mm256_add_epi32(_mm256_mullo_epi32(freq, _mm256_srli_epi32(x, kProbBits)),
                       _mm256_and_si256(e, mask12));
  const __m256i need = _mm256_cmpeq_epi32(_mm256_srli_epi32(x, 16), _mm256_setzero_si256());
  const int m = _mm256_movemask_ps(_mm256_castsi256_ps(need));
  const __m256i words = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i placed = _mm256_permutevar8x32_epi32(
      words, _mm256_load_si256(reinterpret_cast<const __m256i*>(refill.idx[m])));
  x = _mm256_blendv_epi8(x, _mm256_or_si256(_mm256_slli_epi32(x, 16), placed), need);
  p += 2 * __builtin_popcount(m);
  return x;
}

// Whole 32-symbol blocks of one stream, 8 lanes at a time (period % 8 == 0).
KVSTASH_AVX2 void VectorBlocksAvx2(const StreamJob& j, const uint32_t* off, Cursor& c) {
  const uint32_t* lut = j.tables[0].lut;
  const Avx2Refill& refill = Refill();
  __m256i v[4];
  for (int q = 0; q < 4; ++q)
    v[q] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c.x + 8 * q));
  while (BlockFits(j, c)) {
    for (int q = 0; q < 4; ++q) {
      v[q] = Step8(v[q], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(off + c.pos)), lut,
                   c.p, j.syms + c.k + 8 * q, refill);
      if ((c.pos += 8) == j.period) c.pos = 0;
    }
    c.k += kLanes;
  }
  for (int q = 0; q < 4; ++q) _mm256_storeu_si256(reinterpret_cast<__m256i*>(c.x + 8 * q), v[q]);
}
#endif

bool UseVector(const StreamJob& j, bool allow_simd) {
#if defined(__x86_64__)
  return allow_simd && j.period % 16 == 0 && CpuHasAvx512();
#else
  (void)j;
  (void)allow_simd;
  return false;
#endif
}

}  // namespace

bool SimdDecodeAvailable() { return CpuHasAvx512(); }

bool Avx2DecodeAvailable() { return CpuHasAvx2(); }

bool DecodeStream(const StreamJob& j, DecodePath path) {
  Cursor c;
  if (!Start(j, &c)) return false;
#if defined(__x86_64__)
  const bool best = path == DecodePath::kBest;
  if ((best || path == DecodePath::kAvx512) && UseVector(j, true)) {
    const std::vector<uint32_t> off = Offsets(j);
    VectorBlocks(j, off.data(), c);
  } else if ((best || path == DecodePath::kAvx2) && j.period % 8 == 0 && CpuHasAvx2()) {
    const std::vector<uint32_t> off = Offsets(j);
    VectorBlocksAvx2(j, off.data(), c);
  }
#else
  (void)path;
#endif
  return DecodeTail(j, c) && Finished(c);
}

void DecodeStreamPair(const StreamJob& j0, const StreamJob& j1, bool ok[2], bool allow_simd) {
  Cursor c0, c1;
  const bool s0 = Start(j0, &c0), s1 = Start(j1, &c1);
#if defined(__x86_64__)
  if (s0 && s1 && UseVector(j0, allow_simd) && UseVector(j1, allow_simd)) {
    const std::vector<uint32_t> off0 = Offsets(j0), off1 = Offsets(j1);
    VectorBlocksPair(j0, off0.data(), c0, j1, off1.data(), c1);
    VectorBlocks(j0, off0.data(), c0);
    VectorBlocks(j1, off1.data(), c1);
    ok[0] = DecodeTail(j0, c0) && Finished(c0);
    ok[1] = DecodeTail(j1, c1) && Finished(c1);
    return;
  }
#endif
  ok[0] = s0 && DecodeStream(j0, allow_simd);
  ok[1] = s1 && DecodeStream(j1, allow_simd);
}

bool DecodeStream(const uint8_t* stream, size_t len, size_t n, const uint8_t* ctx, uint32_t period,
                  const DecTable* tables, uint8_t* syms, bool allow_simd) {
  return DecodeStream(StreamJob{stream, len, n, ctx, period, tables, syms}, allow_simd);
}

}  // namespace kvstash::codec::internal::rans
