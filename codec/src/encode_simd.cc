#include "encode_simd.h"

#include <algorithm>
#include <atomic>

#include "range_simd.h"

namespace kvstash::codec::internal {
namespace cg = kernels::cachegen;

namespace {

std::atomic<bool> force_portable{false};
std::atomic<uint64_t> slow_lanes{0};

#if defined(__x86_64__)

using simd::Join;
using simd::Widen;

struct LaneState {
  uint32_t* low;
  uint32_t* high;
  uint32_t* pending;
  uint32_t* nbits;
  uint32_t* pos;
  uint64_t* acc;
};

// 16 channels per iteration: cg::EncodeInterval and FastWriter::Settle in vector form. Lanes
// whose settled bits plus pending bits exceed 32 (long E3 runs, rare) are left untouched by the
// vector emission and returned in *slow for the scalar writer, together with their new interval
// (already stored) and k / e3 / low-before-shift in the out arrays.
KVSTASH_AVX512 void StepAvx512(size_t n, const uint32_t* ttab, const uint8_t* sym, uint8_t* slots,
                               uint32_t slot_bytes, uint32_t cap, const LaneState& st,
                               uint32_t* slow_k, uint32_t* slow_e3, uint32_t* slow_low,
                               uint32_t* slow_mask_out) {
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i c32 = _mm512_set1_epi32(32);
  const __m512i bswap =
      _mm512_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9,
                      10, 11, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0,
                      1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3);
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i lane_offset = _mm512_mullo_epi32(iota, _mm512_set1_epi32(slot_bytes));
  const __m512i vn = _mm512_set1_epi32(static_cast<int>(n));
  const __m512i cap1 = _mm512_set1_epi32(static_cast<int>(cap + 1));
  for (size_t c = 0; c < n; c += 16) {
    const __m512i s =
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sym + c)));
    const __m512i idx = _mm512_add_epi32(
        _mm512_mullo_epi32(s, vn), _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int>(c))));
    const __m512i c_lo = _mm512_i32gather_epi32(idx, ttab, 4);
    const __m512i c_hi = _mm512_i32gather_epi32(_mm512_add_epi32(idx, vn), ttab, 4);
    const __m512i lo = _mm512_loadu_si512(st.low + c);
    const __m512i hi = _mm512_loadu_si512(st.high + c);
    const __m512i span_m1 = _mm512_sub_epi32(hi, lo);
    const simd::IntervalStep iv = simd::UpdateInterval(lo, span_m1, c_lo, c_hi);
    const __m512i nlo = iv.nlo, k = iv.k, lo1 = iv.lo1, hi1 = iv.hi1, e3 = iv.e3;
    const __m512i m3 = _mm512_sub_epi32(_mm512_sllv_epi32(one, e3), one);
    _mm512_storeu_si512(
        st.low + c, _mm512_and_si512(_mm512_sllv_epi32(lo1, e3), _mm512_set1_epi32(0x7FFFFFFF)));
    _mm512_storeu_si512(
        st.high + c,
        _mm512_or_si512(_mm512_or_si512(_mm512_sllv_epi32(hi1, e3),
                                        _mm512_set1_epi32(static_cast<int>(0x80000000u))),
                        m3));
    // Settled bits: the first bit of low, `pending` complements, the next k - 1 bits.
    const __m512i p = _mm512_loadu_si512(st.pending + c);
    const __mmask16 slow = _mm512_cmpgt_epu32_mask(_mm512_add_epi32(p, k), c32);
    const __mmask16 has = _mm512_cmpneq_epi32_mask(k, _mm512_setzero_si512());
    const __mmask16 emit = has & static_cast<__mmask16>(~slow);
    const __m512i first = _mm512_srli_epi32(nlo, 31);
    const __m512i rest = _mm512_mask_sub_epi32(k, has, k, one);
    const __m512i nb = _mm512_maskz_add_epi32(emit, k, p);
    __m512i v = _mm512_sllv_epi32(first, _mm512_sub_epi32(nb, one));  // count -1 -> 0 when nb = 0
    const __m512i pend_ones =
        _mm512_maskz_mov_epi32(_mm512_cmpeq_epi32_mask(first, _mm512_setzero_si512()),
                               _mm512_sub_epi32(_mm512_sllv_epi32(one, p), one));
    v = _mm512_or_si512(v, _mm512_sllv_epi32(pend_ones, rest));
    v = _mm512_or_si512(v, _mm512_and_si512(_mm512_srlv_epi32(nlo, _mm512_sub_epi32(c32, k)),
                                            _mm512_sub_epi32(_mm512_sllv_epi32(one, rest), one)));
    v = _mm512_maskz_mov_epi32(emit, v);
    // Put(v, nb): acc = acc << nb | v (64-bit), a full 32-bit word goes to the slot at pos.
    __m512i bits = _mm512_add_epi32(_mm512_loadu_si512(st.nbits + c), nb);
    const __mmask16 full = _mm512_cmpge_epu32_mask(bits, c32);
    bits = _mm512_mask_sub_epi32(bits, full, bits, c32);
    __m256i word[2];
    for (int h = 0; h < 2; ++h) {
      __m512i acc = _mm512_loadu_si512(st.acc + c + 8 * h);
      acc = _mm512_or_si512(_mm512_sllv_epi64(acc, Widen(nb, h)), Widen(v, h));
      _mm512_storeu_si512(st.acc + c + 8 * h, acc);
      word[h] = _mm512_cvtepi64_epi32(_mm512_srlv_epi64(acc, Widen(bits, h)));
    }
    const __m512i pos = _mm512_loadu_si512(st.pos + c);
    const __m512i offs = _mm512_add_epi32(
        _mm512_add_epi32(lane_offset, _mm512_set1_epi32(static_cast<int>(c * slot_bytes))), pos);
    _mm512_i32scatter_epi32(slots, offs, _mm512_shuffle_epi8(Join(word[0], word[1]), bswap), 1);
    _mm512_storeu_si512(
        st.pos + c,
        _mm512_min_epu32(_mm512_mask_add_epi32(pos, full, pos, _mm512_set1_epi32(4)), cap1));
    _mm512_storeu_si512(st.nbits + c, bits);
    // pending: reset where bits were settled, then add the E3 steps; slow lanes keep theirs.
    _mm512_storeu_si512(
        st.pending + c,
        _mm512_mask_mov_epi32(
            _mm512_add_epi32(_mm512_maskz_mov_epi32(static_cast<__mmask16>(~has), p), e3), slow,
            p));
    if (slow != 0) {
      _mm512_storeu_si512(slow_k + c, k);
      _mm512_storeu_si512(slow_e3 + c, e3);
      _mm512_storeu_si512(slow_low + c, nlo);
      slow_mask_out[c / 16] = slow;
    }
  }
}
#endif

}  // namespace

void ItemEncoder::ForcePortable(bool on) { force_portable.store(on); }

bool ItemEncoder::UsingSimd() { return CpuHasAvx512() && !force_portable.load(); }

uint64_t ItemEncoder::SlowLanes() { return slow_lanes.load(); }

void ItemEncoder::Reset(std::span<const uint16_t> cdf, int lp, size_t channels, uint8_t* slots,
                        uint64_t slot_bytes, uint64_t cap) {
  channels_ = channels;
  lp_ = lp;
  slots_ = slots;
  slot_bytes_ = slot_bytes;
  cap_ = cap;
  // The vector path addresses slots with 32-bit byte offsets.
  simd_channels_ =
      UsingSimd() && channels * slot_bytes < (uint64_t{1} << 31) ? channels / 16 * 16 : 0;
  slow_k_.resize(simd_channels_);
  slow_e3_.resize(simd_channels_);
  slow_low_.resize(simd_channels_);
  slow_mask_.resize(simd_channels_ / 16);
  if (simd_channels_ > 0) {
    const size_t n = simd_channels_;
    ttables_.resize(static_cast<size_t>(lp) * n);
    for (size_t c = 0; c < n; ++c) {
      for (int m = 0; m < lp; ++m) {
        ttables_[static_cast<size_t>(m) * n + c] = m <= lp - 2 ? cdf[c * lp + m] : cg::kProbOne;
      }
    }
  }
  tables_.resize((channels - simd_channels_) * cg::kTableSize);
  for (size_t c = simd_channels_; c < channels; ++c) {
    cg::BuildTable(cg::CdfView{cdf.data() + c * lp}, lp,
                   cg::TableRef{tables_.data() + (c - simd_channels_) * cg::kTableSize});
  }
  low_.assign(channels, 0);
  high_.assign(channels, 0xFFFFFFFFu);
  pending_.assign(channels, 0);
  nbits_.assign(channels, 0);
  pos_.assign(channels, 0);
  acc_.assign(channels, 0);
}

FastWriter ItemEncoder::Writer(size_t c) const {
  return FastWriter(slots_ + c * slot_bytes_, cap_,
                    FastWriter::State{pos_[c], acc_[c], static_cast<int>(nbits_[c])});
}

void ItemEncoder::Store(size_t c, const FastWriter& w) {
  const FastWriter::State s = w.state();
  pos_[c] = static_cast<uint32_t>(s.pos);
  acc_[c] = s.acc;
  nbits_[c] = static_cast<uint32_t>(s.nbits);
}

void ItemEncoder::Step(const uint8_t* sym) {
#if defined(__x86_64__)
  if (simd_channels_ > 0) {
    const LaneState st{low_.data(),   high_.data(), pending_.data(),
                       nbits_.data(), pos_.data(),  acc_.data()};
    std::fill(slow_mask_.begin(), slow_mask_.end(), 0u);
    StepAvx512(simd_channels_, ttables_.data(), sym, slots_, static_cast<uint32_t>(slot_bytes_),
               static_cast<uint32_t>(cap_), st, slow_k_.data(), slow_e3_.data(), slow_low_.data(),
               slow_mask_.data());
    for (size_t b = 0; b < slow_mask_.size(); ++b) {
      for (uint32_t m = slow_mask_[b]; m != 0; m &= m - 1) {
        const size_t c = b * 16 + static_cast<size_t>(__builtin_ctz(m));
        slow_lanes.fetch_add(1, std::memory_order_relaxed);
        FastWriter w = Writer(c);
        uint64_t pending = pending_[c];
        w.Settle(slow_low_[c], static_cast<int>(slow_k_[c]), &pending);
        pending_[c] = static_cast<uint32_t>(pending + slow_e3_[c]);
        Store(c, w);
      }
    }
  }
#endif
  for (size_t c = simd_channels_; c < channels_; ++c) {
    cg::EncoderState st;
    st.low = low_[c];
    st.high = high_[c];
    st.pending = pending_[c];
    FastWriter w = Writer(c);
    cg::EncodeSymbol(st, cg::TableView{tables_.data() + (c - simd_channels_) * cg::kTableSize},
                     sym[c], w);
    low_[c] = st.low;
    high_[c] = st.high;
    pending_[c] = static_cast<uint32_t>(st.pending);
    Store(c, w);
  }
}

bool ItemEncoder::Finish(uint32_t* lengths) {
  bool ok = true;
  for (size_t c = 0; c < channels_; ++c) {
    cg::EncoderState st;
    st.low = low_[c];
    st.high = high_[c];
    st.pending = pending_[c];
    FastWriter w = Writer(c);
    cg::FinishEncode(st, w);
    ok &= !w.overflowed();
    lengths[c] = static_cast<uint32_t>(std::min<uint64_t>(w.size(), cap_));
  }
  return ok;
}

}  // namespace kvstash::codec::internal
