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

void BuildDecTable(const uint16_t* freqs, int n, DecTable* table) {
  uint32_t slot = 0;
  for (int s = 0; s < n; ++s) {
    const uint32_t head = static_cast<uint32_t>(s) << 24 | uint32_t{freqs[s]} << 12;
    for (uint32_t i = 0; i < freqs[s]; ++i) table->lut[slot + i] = head | i;
    slot += freqs[s];
  }
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

// Scalar decode of symbols [k, n) continuing from states x and word pointer p.
bool DecodeTail(size_t k, size_t n, uint32_t pos, const uint8_t* ctx, uint32_t period,
                const DecTable* tables, uint32_t* x, const uint8_t*& p, const uint8_t* end,
                uint8_t* syms) {
  for (; k < n; ++k) {
    uint32_t& s = x[k % kLanes];
    const uint32_t e = tables[ctx[pos]].lut[s & (kProbScale - 1)];
    syms[k] = static_cast<uint8_t>(e >> 24);
    s = ((e >> 12) & (kProbScale - 1)) * (s >> kProbBits) + (e & (kProbScale - 1));
    if (s < kLow) {
      if (end - p < 2) return false;
      s = s << 16 | uint32_t{p[0]} | uint32_t{p[1]} << 8;
      p += 2;
    }
    if (++pos == period) pos = 0;
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

KVSTASH_AVX512 bool DecodeAvx512(size_t n, const uint8_t* ctx, uint32_t period,
                                 const DecTable* tables, uint32_t* x, const uint8_t*& p,
                                 const uint8_t* end, uint8_t* syms) {
  // Table offsets per position (period is a multiple of 16).
  std::vector<uint32_t> off(period);
  for (uint32_t i = 0; i < period; ++i) off[i] = uint32_t{ctx[i]} * kProbScale;
  const uint32_t* lut = tables[0].lut;
  __m512i a = _mm512_loadu_si512(x);
  __m512i b = _mm512_loadu_si512(x + 16);
  size_t k = 0;
  uint32_t pos = 0;
  // A block of 32 symbols reads at most 32 words; each half loads 16 words.
  while (k + kLanes <= n && end - p >= 4 * kLanes) {
    a = Step16(a, _mm512_loadu_si512(off.data() + pos), lut, p, syms + k);
    pos += 16;
    if (pos == period) pos = 0;
    b = Step16(b, _mm512_loadu_si512(off.data() + pos), lut, p, syms + k + 16);
    pos += 16;
    if (pos == period) pos = 0;
    k += kLanes;
  }
  _mm512_storeu_si512(x, a);
  _mm512_storeu_si512(x + 16, b);
  return DecodeTail(k, n, pos, ctx, period, tables, x, p, end, syms);
}
#endif

}  // namespace

bool SimdDecodeAvailable() { return CpuHasAvx512(); }

bool DecodeStream(const uint8_t* stream, size_t len, size_t n, const uint8_t* ctx, uint32_t period,
                  const DecTable* tables, uint8_t* syms, bool allow_simd) {
  if (len < kStateBytes) return false;
  uint32_t x[kLanes];
  for (int i = 0; i < kLanes; ++i) {
    uint32_t v = 0;
    for (int b = 0; b < 4; ++b) v |= uint32_t{stream[4 * i + b]} << (8 * b);
    if (v < kLow) return false;
    x[i] = v;
  }
  const uint8_t* p = stream + kStateBytes;
  const uint8_t* const end = stream + len;
  bool ok;
#if defined(__x86_64__)
  if (allow_simd && period % 16 == 0 && CpuHasAvx512()) {
    ok = DecodeAvx512(n, ctx, period, tables, x, p, end, syms);
  } else {
    ok = DecodeTail(0, n, 0, ctx, period, tables, x, p, end, syms);
  }
#else
  (void)allow_simd;
  ok = DecodeTail(0, n, 0, ctx, period, tables, x, p, end, syms);
#endif
  if (!ok || p != end) return false;
  for (int i = 0; i < kLanes; ++i) {
    if (x[i] != kLow) return false;
  }
  return true;
}

}  // namespace kvstash::codec::internal::rans
