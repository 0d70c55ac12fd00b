#include "decode_simd.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "kvstash/kernels/cachegen_core.h"
#include "range_simd.h"

namespace kvstash::codec::internal {
namespace cg = kernels::cachegen;

namespace {

std::atomic<bool> force_portable{false};

uint32_t LoadBe32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return __builtin_bswap32(v);
}

// Reads from a zero-padded slot at an external bit position (the portable path's reader).
struct PosReader {
  const uint8_t* base;
  uint32_t* pos;
  uint32_t max_pos;
  uint32_t Read(int k) {
    uint64_t w;
    std::memcpy(&w, base + (*pos >> 3), 8);
    w = __builtin_bswap64(w) << (*pos & 7);
    *pos = std::min<uint32_t>(*pos + k, max_pos);
    return static_cast<uint32_t>((w >> 1) >> (63 - k));
  }
};

#if defined(__x86_64__)

using simd::Join;

// 16 streams per iteration; the same arithmetic as cg::DecodeSymbol (see cachegen_core.h):
// count by f64 division (exact: the dividend is < 2^49 and the divisor <= 2^32, so the rounded
// quotient cannot cross an integer), symbol search as a compare over the table rows, products in
// 64-bit lanes, renormalisation with lzcnt, and each lane's next bits by a 32-bit gather (a
// symbol consumes at most 18 bits, plus up to 7 of bit offset).
KVSTASH_AVX512 void StepAvx512(size_t n, const uint32_t* ttab, int lp, const uint8_t* slots,
                               uint32_t slot_bytes, uint32_t* low_p, uint32_t* high_p,
                               uint32_t* value_p, uint32_t* pos_p, int cq, float scale, float* x,
                               bool* bad) {
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i bswap =
      _mm512_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9,
                      10, 11, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0,
                      1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3);
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i lane_offset = _mm512_mullo_epi32(iota, _mm512_set1_epi32(slot_bytes));
  const __m512i top_cq = _mm512_set1_epi32(2 * cq);
  const __m512i vcq = _mm512_set1_epi32(cq);
  const __m512 fcq = _mm512_set1_ps(static_cast<float>(cq));
  const __m512 fscale = _mm512_set1_ps(scale);
  const __m512d d_one = _mm512_set1_pd(1.0);
  const __m512d d_65536 = _mm512_set1_pd(65536.0);
  const int scan = std::min(lp - 2, 2 * cq + 1);
  __mmask16 any_bad = 0;
  for (size_t c = 0; c < n; c += 16) {
    const __m512i lo = _mm512_loadu_si512(low_p + c);
    const __m512i hi = _mm512_loadu_si512(high_p + c);
    const __m512i val = _mm512_loadu_si512(value_p + c);
    const __m512i span_m1 = _mm512_sub_epi32(hi, lo);
    const __m512i vl = _mm512_sub_epi32(val, lo);
    // count = floor(((value - low + 1) * 65536 - 1) / span), clamped to 65535.
    __m256i q[2];
    for (int h = 0; h < 2; ++h) {
      const __m256i sp =
          h == 0 ? _mm512_castsi512_si256(span_m1) : _mm512_extracti64x4_epi64(span_m1, 1);
      const __m256i nv = h == 0 ? _mm512_castsi512_si256(vl) : _mm512_extracti64x4_epi64(vl, 1);
      const __m512d den = _mm512_add_pd(_mm512_cvtepu32_pd(sp), d_one);
      const __m512d num = _mm512_sub_pd(
          _mm512_mul_pd(_mm512_add_pd(_mm512_cvtepu32_pd(nv), d_one), d_65536), d_one);
      const __m512d quot =
          _mm512_roundscale_pd(_mm512_div_pd(num, den), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
      q[h] = _mm512_cvttpd_epu32(quot);
    }
    __m512i count = Join(q[0], q[1]);
    count = _mm512_min_epu32(count, _mm512_set1_epi32(0xFFFF));
    // Symbol = number of table entries t[1..lp-2] <= count; c_lo/c_hi = the entries around it.
    __m512i sym = _mm512_setzero_si512();
    __m512i c_lo = _mm512_setzero_si512();
    __m512i c_hi = _mm512_set1_epi32(static_cast<int>(cg::kProbOne));
    // Only t[1..2Cq+1] can matter: a valid stream never decodes a symbol above 2Cq, and an
    // invalid one still yields a symbol above 2Cq here (flagged below) as in the full search.
    for (int m = 0; m < scan; ++m) {
      const __m512i t = _mm512_loadu_si512(ttab + static_cast<size_t>(m) * n + c);
      const __mmask16 le = _mm512_cmple_epu32_mask(t, count);
      sym = _mm512_mask_add_epi32(sym, le, sym, one);
      c_lo = _mm512_mask_mov_epi32(c_lo, le, t);
      c_hi = _mm512_mask_min_epu32(c_hi, static_cast<__mmask16>(~le), c_hi, t);
    }
    // high = low - 1 + (span * c_hi >> 16); low = low + (span * c_lo >> 16), span * c in 64 bits
    // as (span - 1) * c + c.
    // Renormalise: k settled bits, then e3 E3 steps; read k + e3 bits.
    const simd::IntervalStep iv = simd::UpdateInterval(lo, span_m1, c_lo, c_hi);
    const __m512i k = iv.k, lo1 = iv.lo1, hi1 = iv.hi1, e3 = iv.e3;
    const __m512i kk = _mm512_add_epi32(k, e3);
    const __m512i pos = _mm512_loadu_si512(pos_p + c);
    const __m512i offs = _mm512_add_epi32(
        _mm512_add_epi32(lane_offset, _mm512_set1_epi32(static_cast<int>(c * slot_bytes))),
        _mm512_srli_epi32(pos, 3));
    __m512i w = _mm512_i32gather_epi32(offs, slots, 1);
    w = _mm512_shuffle_epi8(w, bswap);
    w = _mm512_sllv_epi32(w, _mm512_and_si512(pos, _mm512_set1_epi32(7)));
    const __m512i bits = _mm512_srlv_epi32(w, _mm512_sub_epi32(_mm512_set1_epi32(32), kk));
    _mm512_storeu_si512(pos_p + c, _mm512_add_epi32(pos, kk));
    const __m512i m3 = _mm512_sub_epi32(_mm512_sllv_epi32(one, e3), one);
    const __m512i v1 = _mm512_or_si512(_mm512_sllv_epi32(val, k), _mm512_srlv_epi32(bits, e3));
    const __m512i toggled =
        _mm512_xor_si512(v1, _mm512_sllv_epi32(m3, _mm512_sub_epi32(_mm512_set1_epi32(31), e3)));
    _mm512_storeu_si512(
        value_p + c, _mm512_or_si512(_mm512_sllv_epi32(toggled, e3), _mm512_and_si512(bits, m3)));
    _mm512_storeu_si512(
        low_p + c, _mm512_and_si512(_mm512_sllv_epi32(lo1, e3), _mm512_set1_epi32(0x7FFFFFFF)));
    _mm512_storeu_si512(
        high_p + c,
        _mm512_or_si512(_mm512_or_si512(_mm512_sllv_epi32(hi1, e3),
                                        _mm512_set1_epi32(static_cast<int>(0x80000000u))),
                        m3));
    // Dequantise exactly as cg::DequantizeValue: (s - Cq) / Cq * scale in f32.
    const __mmask16 over = _mm512_cmpgt_epu32_mask(sym, top_cq);
    any_bad |= over;
    sym = _mm512_mask_mov_epi32(sym, over, vcq);
    const __m512 centred = _mm512_cvtepi32_ps(_mm512_sub_epi32(sym, vcq));
    _mm512_storeu_ps(x + c, _mm512_mul_ps(_mm512_div_ps(centred, fcq), fscale));
  }
  if (any_bad) *bad = true;
}
#endif

}  // namespace

void ItemDecoder::ForcePortable(bool on) { force_portable.store(on); }

bool ItemDecoder::UsingSimd() { return CpuHasAvx512() && !force_portable.load(); }

void ItemDecoder::Reset(std::span<const uint16_t> cdf, int lp, size_t channels,
                        const uint8_t* slots, uint64_t slot_bytes) {
  channels_ = channels;
  lp_ = lp;
  slots_ = slots;
  slot_bytes_ = slot_bytes;
  // The vector path addresses slots with 32-bit byte offsets.
  simd_channels_ =
      UsingSimd() && channels * slot_bytes < (uint64_t{1} << 31) ? channels / 16 * 16 : 0;
  if (simd_channels_ > 0) {
    // Rows m = 1..lp-2 of the tables, transposed: ttables_[(m - 1) * n + c].
    const size_t n = simd_channels_;
    ttables_.resize(static_cast<size_t>(lp) * n);
    for (size_t c = 0; c < n; ++c) {
      const uint16_t* row = cdf.data() + c * lp;
      for (int m = 1; m <= lp - 2; ++m) ttables_[static_cast<size_t>(m - 1) * n + c] = row[m];
    }
  }
  tables_.resize((channels - simd_channels_) * cg::kTableSize);
  for (size_t c = simd_channels_; c < channels; ++c) {
    cg::BuildTable(cg::CdfView{cdf.data() + c * lp}, lp,
                   cg::TableRef{tables_.data() + (c - simd_channels_) * cg::kTableSize});
  }
  low_.assign(channels, 0);
  high_.assign(channels, 0xFFFFFFFFu);
  value_.resize(channels);
  pos_.assign(channels, 32);
  for (size_t c = 0; c < channels; ++c) value_[c] = LoadBe32(slots + c * slot_bytes);
}

void ItemDecoder::StepPortable(size_t begin, int cq, float scale, float* x, bool* bad) {
  const uint32_t max_pos = static_cast<uint32_t>((slot_bytes_ - 8) * 8);
  for (size_t c = begin; c < channels_; ++c) {
    cg::DecoderState st;
    st.low = low_[c];
    st.high = high_[c];
    st.value = value_[c];
    PosReader r{slots_ + c * slot_bytes_, &pos_[c], max_pos};
    int s = cg::DecodeSymbol(
        st, cg::TableView{tables_.data() + (c - simd_channels_) * cg::kTableSize}, r);
    if (s > 2 * cq) {
      *bad = true;
      s = cq;
    }
    low_[c] = st.low;
    high_[c] = st.high;
    value_[c] = st.value;
    x[c] = cg::DequantizeValue(s, cq, scale);
  }
}

void ItemDecoder::Step(int cq, float scale, float* x, bool* bad) {
#if defined(__x86_64__)
  if (simd_channels_ > 0) {
    StepAvx512(simd_channels_, ttables_.data(), lp_, slots_, static_cast<uint32_t>(slot_bytes_),
               low_.data(), high_.data(), value_.data(), pos_.data(), cq, scale, x, bad);
  }
#endif
  StepPortable(simd_channels_, cq, scale, x, bad);
}

}  // namespace kvstash::codec::internal
