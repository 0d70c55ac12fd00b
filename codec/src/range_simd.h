// Private to codec/: AVX-512 helpers shared by the CacheGen range coder's vector encoder
// (encode_simd.cc) and decoder (decode_simd.cc): 64-bit widening of 32-bit lanes and the
// interval product span * c >> 16 that both sides of the coder compute identically.
//
// Including this file also silences GCC 12's -Wmaybe-uninitialized / -Wuninitialized for the
// rest of the including file: its AVX-512 headers trip them on their own temporaries (GCC bug
// 105593).
#ifndef KVSTASH_CODEC_SRC_RANGE_SIMD_H_
#define KVSTASH_CODEC_SRC_RANGE_SIMD_H_

#include "cpu_features.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace kvstash::codec::internal::simd {

#if defined(__x86_64__)

// Lanes [8h, 8h + 8) of v, zero-extended to 64 bits.
KVSTASH_AVX512 inline __m512i Widen(__m512i v, int h) {
  return _mm512_cvtepu32_epi64(h == 0 ? _mm512_castsi512_si256(v)
                                      : _mm512_extracti64x4_epi64(v, 1));
}

KVSTASH_AVX512 inline __m512i Join(__m256i a, __m256i b) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
}

// span * c >> 16 (truncated to 32 bits), span * c computed as (span - 1) * c + c in 64 bits.
KVSTASH_AVX512 inline __m512i ScaledProduct(__m512i span_m1, __m512i c) {
  __m256i r[2];
  for (int h = 0; h < 2; ++h) {
    const __m512i s64 = Widen(span_m1, h);
    const __m512i c64 = Widen(c, h);
    r[h] = _mm512_cvtepi64_epi32(
        _mm512_srli_epi64(_mm512_add_epi64(_mm512_mul_epu32(s64, c64), c64), 16));
  }
  return Join(r[0], r[1]);
}

// One symbol's interval update and the renormalisation shift counts, 16 lanes (the vector form
// of cachegen_core.h's update; encoder and decoder compute it identically):
//   high = low - 1 + (span * c_hi >> 16), low = low + (span * c_lo >> 16);
//   k settled (E1/E2) bits = leading bits where low and high agree; after shifting them out,
//   e3 E3 steps = the run of positions from bit 30 down where low has a 1 and high a 0.
struct IntervalStep {
  __m512i nlo, nhi;  // the updated interval
  __m512i k;         // settled bits
  __m512i lo1, hi1;  // the interval after the k settled bits are shifted out
  __m512i e3;        // E3 steps that follow
};
KVSTASH_AVX512 inline IntervalStep UpdateInterval(__m512i lo, __m512i span_m1, __m512i c_lo,
                                                  __m512i c_hi) {
  const __m512i one = _mm512_set1_epi32(1);
  IntervalStep s;
  s.nhi = _mm512_add_epi32(_mm512_sub_epi32(lo, one), ScaledProduct(span_m1, c_hi));
  s.nlo = _mm512_add_epi32(lo, ScaledProduct(span_m1, c_lo));
  s.k = _mm512_lzcnt_epi32(_mm512_or_si512(_mm512_xor_si512(s.nlo, s.nhi), one));
  s.lo1 = _mm512_sllv_epi32(s.nlo, s.k);
  s.hi1 = _mm512_or_si512(_mm512_sllv_epi32(s.nhi, s.k),
                          _mm512_sub_epi32(_mm512_sllv_epi32(one, s.k), one));
  s.e3 = _mm512_lzcnt_epi32(_mm512_xor_si512(
      _mm512_slli_epi32(_mm512_andnot_si512(s.hi1, s.lo1), 1), _mm512_set1_epi32(-1)));
  return s;
}

#endif

}  // namespace kvstash::codec::internal::simd

#endif  // KVSTASH_CODEC_SRC_RANGE_SIMD_H_
