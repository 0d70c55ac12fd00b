// KVQ codec (codec/kvq.h) and its interleaved rANS coder (codec/src/rans.h).
#include "kvstash/codec/kvq.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <memory>
#include <random>

#include "kvstash/codec/cachegen.h"
#include "kvstash/codec/synthetic_kv.h"
#include "kvstash/common/thread_pool.h"
#include "rans.h"
#include "test_util.h"
#include "testing/status_matchers.h"

namespace kvstash::codec {
namespace {

namespace rans = internal::rans;
using ::kvstash::testing::IsOk;
using ::kvstash::testing::IsOkAndHolds;
using ::kvstash::testing::StatusIs;
using testing::MakeLayout;
using testing::ValueAt;

// Symbols with a skewed (geometric-like) distribution per context.
std::vector<uint8_t> SkewedSymbols(size_t n, int alphabet, uint32_t seed) {
  std::mt19937 rng(seed);
  std::geometric_distribution<int> geo(0.35);
  std::vector<uint8_t> s(n);
  for (auto& v : s) v = static_cast<uint8_t>(std::min(geo(rng), alphabet - 1));
  return s;
}

struct Coded {
  std::vector<rans::EncTable> enc;
  std::vector<rans::DecTable> dec;
  std::vector<uint8_t> stream;
};

Coded Encode(const std::vector<uint8_t>& syms, const std::vector<uint8_t>& ctx, int contexts,
             int alphabet) {
  Coded c;
  std::vector<uint64_t> counts(size_t(contexts) * alphabet, 0);
  for (size_t k = 0; k < syms.size(); ++k) ++counts[ctx[k % ctx.size()] * alphabet + syms[k]];
  c.enc.resize(contexts);
  c.dec.resize(contexts);
  for (int i = 0; i < contexts; ++i) {
    std::vector<uint16_t> f(alphabet);
    rans::NormalizeFreqs(counts.data() + size_t(i) * alphabet, alphabet, f.data());
    rans::BuildEncTable(f.data(), alphabet, &c.enc[i]);
    rans::BuildDecTable(f.data(), alphabet, &c.dec[i]);
  }
  c.stream.resize(rans::MaxStreamBytes(syms.size()));
  c.stream.resize(rans::EncodeStream(syms.data(), syms.size(), ctx.data(),
                                     static_cast<uint32_t>(ctx.size()), c.enc.data(),
                                     c.stream.data()));
  return c;
}

TEST(RansTest, NormalizedFrequenciesSumToScaleAndAreAllPositive) {
  const std::vector<uint64_t> counts = {0, 1000000, 3, 0, 7, 0, 0, 1};
  std::vector<uint16_t> f(counts.size());
  rans::NormalizeFreqs(counts.data(), 8, f.data());
  EXPECT_TRUE(rans::ValidFreqs(f.data(), 8));
  const std::vector<uint64_t> zeros(256, 0);
  std::vector<uint16_t> u(256);
  rans::NormalizeFreqs(zeros.data(), 256, u.data());
  EXPECT_TRUE(rans::ValidFreqs(u.data(), 256));
  EXPECT_EQ(u[0], 16);
  EXPECT_EQ(u[255], 16);
}

TEST(RansTest, StreamsDecodeToTheirSymbolsOnBothDecoders) {
  for (const uint32_t period : {192u, 24u, 7u, 16u, 8u}) {
    for (const size_t n : {size_t{0}, size_t{1}, size_t{31}, size_t{32}, size_t{33}, size_t{1000},
                           size_t{256} * 192}) {
      for (const int alphabet : {2, 16, 256}) {
        std::vector<uint8_t> ctx(period);
        for (uint32_t c = 0; c < period; ++c) ctx[c] = static_cast<uint8_t>(c * 3 / period);
        const std::vector<uint8_t> syms = SkewedSymbols(n, alphabet, period + n);
        const Coded c = Encode(syms, ctx, 3, alphabet);
        EXPECT_LE(c.stream.size(), rans::MaxStreamBytes(n));
        // Every path (one the CPU lacks runs the portable code).
        for (const rans::DecodePath path : {rans::DecodePath::kPortable, rans::DecodePath::kAvx2,
                                            rans::DecodePath::kAvx512, rans::DecodePath::kBest}) {
          std::vector<uint8_t> out(n, 0xEE);
          const rans::StreamJob job{c.stream.data(), c.stream.size(), n,         ctx.data(),
                                    period,          c.dec.data(),    out.data()};
          ASSERT_TRUE(rans::DecodeStream(job, path))
              << "period " << period << " n " << n << " alphabet " << alphabet << " path "
              << static_cast<int>(path);
          EXPECT_EQ(out, syms);
        }
      }
    }
  }
}

// Pairs of streams of different lengths, periods and alphabets, one of them possibly damaged:
// the interleaved pair decoder gives each exactly what the single decoder gives.
TEST(RansTest, PairDecodingEqualsSingleStreamDecoding) {
  struct Spec {
    uint32_t period;
    size_t n;
    int alphabet;
  };
  const std::vector<Spec> specs = {{192, 256 * 192, 16}, {192, 100 * 192 + 5, 8}, {16, 33, 2},
                                   {64, 4096, 256},      {7, 1000, 16},           {192, 0, 4}};
  for (size_t i = 0; i < specs.size(); ++i) {
    for (size_t j = 0; j < specs.size(); ++j) {
      for (const int damage : {-1, 0, 1}) {  // none, first stream, second stream
        std::vector<Coded> coded;
        std::vector<std::vector<uint8_t>> ctxs, syms;
        for (const Spec& sp : {specs[i], specs[j]}) {
          std::vector<uint8_t> ctx(sp.period);
          for (uint32_t c = 0; c < sp.period; ++c) ctx[c] = static_cast<uint8_t>(c * 3 / sp.period);
          syms.push_back(SkewedSymbols(sp.n, sp.alphabet, static_cast<uint32_t>(sp.n + i + j)));
          coded.push_back(Encode(syms.back(), ctx, 3, sp.alphabet));
          ctxs.push_back(std::move(ctx));
        }
        if (damage >= 0 && coded[damage].stream.size() > rans::kStateBytes + 2) {
          coded[damage].stream[rans::kStateBytes + 1] ^= 0x5A;
        }
        const Spec sp[2] = {specs[i], specs[j]};
        for (const bool simd : {false, true}) {
          std::vector<uint8_t> pair_out[2], single_out[2];
          rans::StreamJob jobs[2], single[2];
          bool single_ok[2];
          for (int k = 0; k < 2; ++k) {
            pair_out[k].assign(sp[k].n, 0xEE);
            single_out[k].assign(sp[k].n, 0xEE);
            jobs[k] = {coded[k].stream.data(), coded[k].stream.size(), sp[k].n,
                       ctxs[k].data(),         sp[k].period,           coded[k].dec.data(),
                       pair_out[k].data()};
            single[k] = jobs[k];
            single[k].syms = single_out[k].data();
            single_ok[k] = rans::DecodeStream(single[k], simd);
          }
          bool ok[2];
          rans::DecodeStreamPair(jobs[0], jobs[1], ok, simd);
          for (int k = 0; k < 2; ++k) {
            EXPECT_EQ(ok[k], single_ok[k]) << i << " " << j << " " << damage << " " << k;
            if (damage != k) {
              EXPECT_TRUE(ok[k]);
              EXPECT_EQ(pair_out[k], syms[k]);
            }
            if (ok[k]) {
              EXPECT_EQ(pair_out[k], single_out[k]);
            }
          }
        }
      }
    }
  }
}

TEST(RansTest, DecodeTableEntriesFollowTheirDefinition) {
  for (const int alphabet : {2, 16, 32, 256}) {
    std::vector<uint64_t> counts(alphabet);
    for (int s = 0; s < alphabet; ++s) counts[s] = (s * 7919u) % 1000u;  // some zero
    std::vector<uint16_t> f(alphabet);
    rans::NormalizeFreqs(counts.data(), alphabet, f.data());
    auto table = std::make_unique<rans::DecTable>();
    rans::BuildDecTable(f.data(), alphabet, table.get());
    uint32_t slot = 0;
    for (int s = 0; s < alphabet; ++s) {
      for (uint32_t i = 0; i < f[s]; ++i, ++slot) {
        ASSERT_EQ(table->lut[slot], uint32_t(s) << 24 | uint32_t{f[s]} << 12 | i)
            << "alphabet " << alphabet << " slot " << slot;
      }
    }
    EXPECT_EQ(slot, rans::kProbScale);
  }
}

TEST(RansTest, SkewedSymbolsCodeBelowTheirFixedWidth) {
  const std::vector<uint8_t> ctx(64, 0);
  const std::vector<uint8_t> syms = SkewedSymbols(64 * 1024, 16, 3);
  const Coded c = Encode(syms, ctx, 1, 16);
  // Geometric(0.35) has about 2.7 bits of entropy; 4 bits is the fixed width.
  EXPECT_LT(c.stream.size() * 8, syms.size() * 3);
}

TEST(RansTest, TruncatedOrExtendedStreamsAreRejected) {
  const std::vector<uint8_t> ctx(32, 0);
  const std::vector<uint8_t> syms = SkewedSymbols(5000, 16, 9);
  Coded c = Encode(syms, ctx, 1, 16);
  std::vector<uint8_t> out(syms.size());
  for (const bool simd : {false, true}) {
    EXPECT_FALSE(rans::DecodeStream(c.stream.data(), c.stream.size() - 2, syms.size(), ctx.data(),
                                    32, c.dec.data(), out.data(), simd));
    std::vector<uint8_t> longer = c.stream;
    longer.push_back(0);
    longer.push_back(0);
    EXPECT_FALSE(rans::DecodeStream(longer.data(), longer.size(), syms.size(), ctx.data(), 32,
                                    c.dec.data(), out.data(), simd));
    EXPECT_FALSE(rans::DecodeStream(c.stream.data(), 100, syms.size(), ctx.data(), 32, c.dec.data(),
                                    out.data(), simd));
  }
}

std::vector<uint8_t> Synthetic(const KvLayout& l, uint64_t seed = 1) {
  SyntheticKvOptions o;
  o.seed = seed;
  return SyntheticKv(l, o);
}

// Max |x - x^| over the row's elements in per-token rows must stay within half a step of the
// token's range (plus f32 rounding); checked with f32 KV, whose parameters are f32.
TEST(KvqTest, PerTokenRowsStayWithinHalfAStep) {
  const KvLayout l = MakeLayout(2, 2, 16, 40, DType::kF32);
  const std::vector<uint8_t> kv = Synthetic(l);
  KvqOptions o;
  o.row_bits = {3, 4, 5, 2};
  o.key_scale = KvqScale::kPerToken;
  o.value_scale = KvqScale::kPerToken;
  o.subchunk_tokens = 16;
  ASSERT_OK_AND_ASSIGN(auto container, EncodeKvq(l, kv, o));
  ASSERT_OK_AND_ASSIGN(auto out, DecodeKvq(container));
  const uint32_t C = 32, T = 40;
  for (uint32_t row = 0; row < 4; ++row) {
    const uint32_t layer = row % 2, half = row / 2;
    const float top = static_cast<float>((1 << o.row_bits[row]) - 1);
    for (uint32_t t = 0; t < T; ++t) {
      const size_t base = ((size_t{layer} * 2 + half) * T + t) * C;
      float mn = INFINITY, mx = -INFINITY;
      for (uint32_t c = 0; c < C; ++c) {
        mn = std::min(mn, ValueAt(kv, l.dtype, base + c));
        mx = std::max(mx, ValueAt(kv, l.dtype, base + c));
      }
      const float bound = 0.5f * (mx - mn) / top * 1.0001f + 1e-6f * (std::fabs(mn) + mx - mn);
      for (uint32_t c = 0; c < C; ++c) {
        ASSERT_LE(std::fabs(ValueAt(kv, l.dtype, base + c) - ValueAt(out, l.dtype, base + c)),
                  bound)
            << "row " << row << " token " << t << " channel " << c;
      }
    }
  }
}

TEST(KvqTest, PerChannelKeysStayWithinHalfAStepOfTheirGroup) {
  const KvLayout l = MakeLayout(1, 3, 8, 50, DType::kF32);
  const std::vector<uint8_t> kv = Synthetic(l, 5);
  KvqOptions o;
  o.row_bits = {3, 3};
  o.group_tokens = 16;
  ASSERT_OK_AND_ASSIGN(auto container, EncodeKvq(l, kv, o));
  ASSERT_OK_AND_ASSIGN(auto out, DecodeKvq(container));
  const uint32_t C = 24, T = 50;
  for (uint32_t c = 0; c < C; ++c) {
    for (uint32_t t0 = 0; t0 < T; t0 += 16) {
      float mn = INFINITY, mx = -INFINITY;
      for (uint32_t t = t0; t < std::min(T, t0 + 16); ++t) {
        mn = std::min(mn, ValueAt(kv, l.dtype, t * C + c));
        mx = std::max(mx, ValueAt(kv, l.dtype, t * C + c));
      }
      const float bound = 0.5f * (mx - mn) / 7 * 1.0001f + 1e-6f * (std::fabs(mn) + mx - mn);
      for (uint32_t t = t0; t < std::min(T, t0 + 16); ++t) {
        ASSERT_LE(std::fabs(ValueAt(kv, l.dtype, t * C + c) - ValueAt(out, l.dtype, t * C + c)),
                  bound);
      }
    }
  }
}

TEST(KvqTest, OutlierChannelsAreExactAndAreTheLargestKeyChannels) {
  const KvLayout l = MakeLayout(2, 2, 16, 33, DType::kF16);
  std::vector<uint8_t> kv = Synthetic(l, 2);
  // Channel 5 of layer 0's K and channel 30 of layer 1's K get huge values.
  for (uint32_t t = 0; t < 33; ++t) {
    testing::SetValue(kv, l.dtype, (size_t{0} * 33 + t) * 32 + 5, 900.f + t);
    testing::SetValue(kv, l.dtype, (size_t{2} * 33 + t) * 32 + 30, -800.f - t);
  }
  KvqOptions o;
  o.level = 2;
  o.key_scale = KvqScale::kPerToken;
  o.key_outliers = 1;
  std::vector<uint8_t> recon(kv.size());
  o.reconstruction = recon;
  ASSERT_OK_AND_ASSIGN(auto container, EncodeKvq(l, kv, o));
  ASSERT_OK_AND_ASSIGN(auto out, DecodeKvq(container));
  EXPECT_EQ(out, recon);
  for (uint32_t t = 0; t < 33; ++t) {
    EXPECT_EQ(ValueAt(out, l.dtype, t * 32 + 5), ValueAt(kv, l.dtype, t * 32 + 5));
    EXPECT_EQ(ValueAt(out, l.dtype, (2 * 33 + t) * 32 + 30),
              ValueAt(kv, l.dtype, (2 * 33 + t) * 32 + 30));
  }
}

TEST(KvqTest, ReconstructionPoolAndVectorDecoderGiveIdenticalBytes) {
  const KvLayout l = MakeLayout(4, 3, 64, 300, DType::kF16);
  const std::vector<uint8_t> kv = Synthetic(l, 3);
  ThreadPool pool(2);
  for (const KvqScale key : {KvqScale::kPerToken, KvqScale::kPerChannel}) {
    KvqOptions o;
    o.level = 3;
    o.key_scale = key;
    o.key_outliers = 2;
    std::vector<uint8_t> recon(kv.size());
    o.reconstruction = recon;
    ASSERT_OK_AND_ASSIGN(auto a, EncodeKvq(l, kv, o));
    o.pool = &pool;
    o.reconstruction = {};
    ASSERT_OK_AND_ASSIGN(auto b, EncodeKvq(l, kv, o));
    EXPECT_EQ(a, b);
    SetKvqSimdForTesting(false);
    ASSERT_OK_AND_ASSIGN(auto scalar, DecodeKvq(a));
    SetKvqSimdForTesting(true);
    ASSERT_OK_AND_ASSIGN(auto vec, DecodeKvq(a, &pool));
    EXPECT_EQ(scalar, recon);
    EXPECT_EQ(vec, recon);
  }
}

TEST(KvqTest, SectionsAddUpToTheContainerSize) {
  const KvLayout l = MakeLayout(3, 2, 32, 257, DType::kBF16);
  const std::vector<uint8_t> kv = Synthetic(l);
  KvqOptions o;
  o.level = 1;
  o.key_outliers = 3;
  o.context_channels = 16;
  ASSERT_OK_AND_ASSIGN(auto container, EncodeKvq(l, kv, o));
  ASSERT_OK_AND_ASSIGN(KvqInfo info, ParseKvq(container));
  EXPECT_EQ(info.total(), container.size());
  EXPECT_EQ(info.RawBytes(), kv.size());
  EXPECT_EQ(info.param_dtype, DType::kF32);  // bf16 KV: f32 parameters
  EXPECT_EQ(info.lengths, 2u * 6 * 4);       // 2 sub-chunks x 6 rows
  EXPECT_EQ(info.outliers, 3u * 3 * (2 + 257 * 2));
  EXPECT_EQ(info.level, 1);
}

TEST(KvqTest, Level2ContainerIsSmallerThanEightBitQuantisation) {
  const KvLayout l = MakeLayout(30, 3, 64, 256, DType::kF16);
  const std::vector<uint8_t> kv = Synthetic(l);
  KvqOptions o;
  o.level = 2;
  ASSERT_OK_AND_ASSIGN(auto container, EncodeKvq(l, kv, o));
  EXPECT_LT(container.size(), kv.size() / 2 / 2);  // under half of 8-bit
}

TEST(KvqTest, ContainersAreToldApartByMagic) {
  const KvLayout l = MakeLayout(1, 1, 16, 8, DType::kF16);
  const std::vector<uint8_t> kv = Synthetic(l);
  ASSERT_OK_AND_ASSIGN(auto kvq, EncodeKvq(l, kv, KvqOptions{}));
  ASSERT_OK_AND_ASSIGN(auto cg, EncodeCacheGen(l, kv, EncodeOptions{}));
  EXPECT_TRUE(IsKvqContainer(kvq));
  EXPECT_FALSE(IsKvqContainer(cg));
  EXPECT_THAT(ParseKvq(cg), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(KvqTest, DamagedContainersAreRejected) {
  const KvLayout l = MakeLayout(2, 2, 16, 64, DType::kF16);
  const std::vector<uint8_t> kv = Synthetic(l);
  ASSERT_OK_AND_ASSIGN(auto good, EncodeKvq(l, kv, KvqOptions{}));
  ASSERT_THAT(ParseKvq(good), IsOk());
  std::vector<uint8_t> out(kv.size());
  // Truncated.
  EXPECT_THAT(ParseKvq(std::span(good).first(good.size() - 1)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseKvq(std::span(good).first(10)), StatusIs(absl::StatusCode::kInvalidArgument));
  // Header and body bits flipped: checksums.
  auto bad = good;
  bad[20] ^= 1;
  EXPECT_THAT(ParseKvq(bad), StatusIs(absl::StatusCode::kDataLoss));
  bad = good;
  bad.back() ^= 1;
  EXPECT_THAT(ParseKvq(bad), StatusIs(absl::StatusCode::kDataLoss));
  // The same damage with fresh checksums: payload damage fails the stream check, a zero
  // frequency fails validation.
  RefreshKvqChecksums(bad);
  EXPECT_THAT(DecodeKvq(bad, out), StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_OK_AND_ASSIGN(KvqInfo info, ParseKvq(good));
  bad = good;
  const size_t freqs = info.header + info.bits + info.outliers + info.params;
  bad[freqs] = 0;
  bad[freqs + 1] = 0;
  RefreshKvqChecksums(bad);
  EXPECT_THAT(ParseKvq(bad), StatusIs(absl::StatusCode::kInvalidArgument));
  // Output buffer of the wrong size.
  std::vector<uint8_t> small(kv.size() - 2);
  EXPECT_THAT(DecodeKvq(good, small), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(KvqTest, NonFiniteValuesAndBadOptionsAreRejected) {
  const KvLayout l = MakeLayout(1, 2, 8, 4, DType::kF32);
  std::vector<uint8_t> kv = Synthetic(l);
  KvqOptions o;
  o.key_outliers = 16;  // == channels
  EXPECT_THAT(EncodeKvq(l, kv, o), StatusIs(absl::StatusCode::kInvalidArgument));
  o = {};
  o.context_channels = 5;  // does not divide 16
  EXPECT_THAT(EncodeKvq(l, kv, o), StatusIs(absl::StatusCode::kInvalidArgument));
  o = {};
  o.row_bits = {9, 2};
  EXPECT_THAT(EncodeKvq(l, kv, o), StatusIs(absl::StatusCode::kInvalidArgument));
  testing::SetValue(kv, l.dtype, 3, NAN);
  EXPECT_THAT(EncodeKvq(l, kv, KvqOptions{}), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(KvqTest, LevelBitsFollowTheModelsLayerGroups) {
  // SmolLM2-135M: 30 layers, K groups [0,10) [10,19) [19,30), V groups [0,2) [2,30).
  ASSERT_OK_AND_ASSIGN(auto bits, KvqRowBitsForLevel(2, 30, 0, 30));
  EXPECT_EQ(bits[0], 4);
  EXPECT_EQ(bits[10], 3);
  EXPECT_EQ(bits[29], 3);
  EXPECT_EQ(bits[30], 3);
  EXPECT_EQ(bits[59], 3);
  ASSERT_OK_AND_ASSIGN(auto l4, KvqRowBitsForLevel(4, 30, 28, 2));
  EXPECT_EQ(l4, (std::vector<uint8_t>{5, 5, 5, 5}));
  EXPECT_THAT(KvqRowBitsForLevel(5, 30, 0, 30), StatusIs(absl::StatusCode::kInvalidArgument));
}

// Four rows of identical f32 data, row 1 scaled by 4 (exact), all per token.
std::vector<uint8_t> ScaledRows(const KvLayout& l) {
  std::vector<uint8_t> kv = Synthetic(l, 9);
  const size_t row = size_t{l.num_tokens} * l.heads() * l.head_dim;
  for (size_t part = 1; part < 4; ++part) {
    for (size_t k = 0; k < row; ++k) {
      const float v = ValueAt(kv, l.dtype, k);
      // Object order [layer][K|V]: part 1 = V of layer 0 (row 2), part 2 = K of layer 1 (row 1).
      testing::SetValue(kv, l.dtype, part * row + k, part == 2 ? 4.f * v : v);
    }
  }
  return kv;
}

TEST(KvqTest, AllocationGivesBitsWhereTheWeightedErrorIsLargest) {
  const KvLayout l = MakeLayout(2, 2, 16, 64, DType::kF32);
  const std::vector<uint8_t> kv = ScaledRows(l);
  KvqOptions o;
  o.key_scale = o.value_scale = KvqScale::kPerToken;
  o.avg_bits = 4.5f;  // 18 bits over 4 rows
  // Equal weights: row 1's error is 16x at equal bits, so it gets 2 more (6 vs 4 each).
  o.row_weights = {1, 1, 1, 1};
  EXPECT_THAT(KvqAllocateBits(l, kv, o), IsOkAndHolds(std::vector<uint8_t>{4, 6, 4, 4}));
  // Relative error (no weights): the scale cancels; ties go to the lower row.
  o.row_weights.clear();
  EXPECT_THAT(KvqAllocateBits(l, kv, o), IsOkAndHolds(std::vector<uint8_t>{5, 5, 4, 4}));
  // A zero weight leaves a row at min_bits; the bound max_bits holds.
  o.row_weights = {0, 1, 1, 1};
  o.max_bits = 5;
  EXPECT_THAT(KvqAllocateBits(l, kv, o), IsOkAndHolds(std::vector<uint8_t>{3, 5, 5, 5}));
}

TEST(KvqTest, AllocatedContainersDecodeWithinHalfAStepAndRecordLevelZero) {
  const KvLayout l = MakeLayout(2, 2, 16, 64, DType::kF32);
  const std::vector<uint8_t> kv = ScaledRows(l);
  KvqOptions o;
  o.avg_bits = 3.25f;
  ASSERT_OK_AND_ASSIGN(auto container, EncodeKvq(l, kv, o));
  ASSERT_OK_AND_ASSIGN(KvqInfo info, ParseKvq(container));
  EXPECT_EQ(info.level, 0);
  // Same bits as the explicit allocation: byte-identical containers.
  ASSERT_OK_AND_ASSIGN(auto bits, KvqAllocateBits(l, kv, o));
  KvqOptions explicit_bits;
  explicit_bits.row_bits = bits;
  EXPECT_THAT(EncodeKvq(l, kv, explicit_bits), IsOkAndHolds(container));
  ASSERT_OK_AND_ASSIGN(auto out, DecodeKvq(container));
  EXPECT_EQ(out.size(), kv.size());
}

TEST(KvqTest, BadAllocationOptionsAreRejected) {
  const KvLayout l = MakeLayout(2, 2, 16, 8, DType::kF32);
  std::vector<uint8_t> kv = Synthetic(l);
  KvqOptions o;
  o.avg_bits = 9;
  EXPECT_THAT(KvqAllocateBits(l, kv, o), StatusIs(absl::StatusCode::kInvalidArgument));
  o.avg_bits = 1.5f;  // below min_bits (2)
  EXPECT_THAT(EncodeKvq(l, kv, o), StatusIs(absl::StatusCode::kInvalidArgument));
  o.avg_bits = 4;
  o.row_weights = {1, 1, 1};  // 4 rows
  EXPECT_THAT(KvqAllocateBits(l, kv, o), StatusIs(absl::StatusCode::kInvalidArgument));
  o.row_weights = {1, -1, 1, 1};
  EXPECT_THAT(KvqAllocateBits(l, kv, o), StatusIs(absl::StatusCode::kInvalidArgument));
  o.row_weights.clear();
  testing::SetValue(kv, l.dtype, 5, INFINITY);
  EXPECT_THAT(KvqAllocateBits(l, kv, o), StatusIs(absl::StatusCode::kInvalidArgument));
}

// Independent restatement of the rotation (kvq.h): y = H x * 2^-ceil(m/2) per (token, head),
// H[i][j] = (-1)^popcount(i & j), d = 2^m.
std::vector<float> RotateReference(const std::vector<float>& x, uint32_t d) {
  int m = 0;
  while ((1u << m) < d) ++m;
  const double scale = std::ldexp(1.0, -(m + 1) / 2);
  std::vector<float> y(x.size());
  for (size_t v = 0; v < x.size() / d; ++v) {
    for (uint32_t i = 0; i < d; ++i) {
      double sum = 0;
      for (uint32_t j = 0; j < d; ++j) {
        sum += (std::popcount(i & j) % 2 ? -1.0 : 1.0) * x[v * d + j];
      }
      y[v * d + i] = static_cast<float>(sum * scale);
    }
  }
  return y;
}

// Per-token rows quantised in the rotated basis: the rotated error is at most half a step per
// element, so the error of each (token, head) vector has an L2 norm of at most
// 2^-floor(m/2) * sqrt(d) * sqrt(d) * step / 2 (f32 KV, f32 parameters). head_dim 8: m odd, so
// the two scalings differ.
TEST(KvqTest, RotatedRowsStayWithinHalfARotatedStep) {
  const uint32_t L = 2, H = 2, D = 8, T = 20, C = H * D;
  const KvLayout l = MakeLayout(L, H, D, T, DType::kF32);
  const std::vector<uint8_t> kv = Synthetic(l, 21);
  KvqOptions o;
  o.row_bits = {4, 3, 4, 5};
  o.key_scale = o.value_scale = KvqScale::kPerToken;
  o.rotate_keys = o.rotate_values = true;
  ASSERT_OK_AND_ASSIGN(auto container, EncodeKvq(l, kv, o));
  ASSERT_OK_AND_ASSIGN(KvqInfo info, ParseKvq(container));
  EXPECT_TRUE(info.rotate_keys);
  EXPECT_TRUE(info.rotate_values);
  ASSERT_OK_AND_ASSIGN(auto out, DecodeKvq(container));
  for (uint32_t row = 0; row < 2 * L; ++row) {
    const uint32_t layer = row % L, half = row / L;
    const float top = static_cast<float>((1 << o.row_bits[row]) - 1);
    for (uint32_t t = 0; t < T; ++t) {
      const size_t base = ((size_t{layer} * 2 + half) * T + t) * C;
      std::vector<float> x(C);
      for (uint32_t c = 0; c < C; ++c) x[c] = ValueAt(kv, l.dtype, base + c);
      const std::vector<float> y = RotateReference(x, D);
      const auto [mn, mx] = std::minmax_element(y.begin(), y.end());
      const double step = (double{*mx} - *mn) / top;
      for (uint32_t h = 0; h < H; ++h) {
        double err = 0, norm = 0;
        for (uint32_t c = h * D; c < (h + 1) * D; ++c) {
          const double e = double{ValueAt(kv, l.dtype, base + c)} - ValueAt(out, l.dtype, base + c);
          err += e * e;
          norm += double{x[c]} * x[c];
        }
        const double bound = 0.5 * std::sqrt(double{D}) * std::sqrt(double{D}) * step / 2;
        EXPECT_LE(std::sqrt(err), bound * 1.001 + 1e-5 * std::sqrt(norm))
            << "row " << row << " token " << t << " head " << h;
      }
    }
  }
}

// V rows whose heads have one large dimension: per-token ranges are set by it, which the
// rotation spreads over the head. The rotated values must come out with far less error.
TEST(KvqTest, RotationShrinksValueErrorWhenAHeadHasAnOutlierDimension) {
  const uint32_t L = 4, H = 3, D = 64, T = 128, C = H * D;
  const KvLayout l = MakeLayout(L, H, D, T, DType::kF16);
  std::vector<uint8_t> kv = Synthetic(l, 22);
  std::mt19937 rng(7);
  std::normal_distribution<float> noise(0.f, 1.f);
  for (uint32_t layer = 0; layer < L; ++layer) {
    for (uint32_t t = 0; t < T; ++t) {
      const size_t base = ((size_t{layer} * 2 + 1) * T + t) * C;
      for (uint32_t c = 0; c < C; ++c) {
        testing::SetValue(kv, l.dtype, base + c, c % D == 7 ? 40.f + noise(rng) : noise(rng));
      }
    }
  }
  auto value_sq_error = [&](bool rotate) -> double {
    KvqOptions o;
    o.level = 3;
    o.rotate_values = rotate;
    std::vector<uint8_t> recon(kv.size());
    o.reconstruction = recon;
    auto container = EncodeKvq(l, kv, o);
    EXPECT_THAT(container, IsOk());
    if (!container.ok()) return -1;
    auto out = DecodeKvq(*container);
    EXPECT_THAT(out, IsOkAndHolds(recon));
    double sum = 0;
    for (uint32_t layer = 0; layer < L; ++layer) {
      const size_t base = (size_t{layer} * 2 + 1) * T * C;
      for (size_t k = base; k < base + size_t{T} * C; ++k) {
        const double e = double{ValueAt(kv, l.dtype, k)} - ValueAt(recon, l.dtype, k);
        sum += e * e;
      }
    }
    return sum;
  };
  const double plain = value_sq_error(false), rotated = value_sq_error(true);
  EXPECT_GT(plain, 0);
  EXPECT_LT(rotated, plain / 4) << "plain " << plain << " rotated " << rotated;
}

// The rotated-row vector decoder (AVX2, head_dim 8..256) against the portable one and the
// encoder's reconstruction: every head_dim it takes (and 512, which it leaves to the portable
// path), per-token and per-channel rows, and sink tokens.
TEST(KvqTest, RotatedContainersDecodeIdenticallyOnEveryHeadDim) {
  ThreadPool pool(2);
  for (const uint32_t d : {8u, 16u, 32u, 128u, 256u, 512u}) {
    const KvLayout l = MakeLayout(2, 2, d, 70, DType::kF16);
    const std::vector<uint8_t> kv = Synthetic(l, 29 + d);
    for (const KvqScale value : {KvqScale::kPerToken, KvqScale::kPerChannel}) {
      KvqOptions o;
      o.level = 2;
      o.key_scale = KvqScale::kPerChannel;
      o.value_scale = value;
      o.group_tokens = 16;
      o.rotate_keys = o.rotate_values = true;
      o.sink_tokens = 1;
      std::vector<uint8_t> recon(kv.size());
      o.reconstruction = recon;
      ASSERT_OK_AND_ASSIGN(auto c, EncodeKvq(l, kv, o));
      SetKvqSimdForTesting(false);
      ASSERT_OK_AND_ASSIGN(auto scalar, DecodeKvq(c));
      SetKvqSimdForTesting(true);
      ASSERT_OK_AND_ASSIGN(auto vec, DecodeKvq(c, &pool));
      EXPECT_EQ(scalar, recon) << "head_dim " << d;
      EXPECT_EQ(vec, recon) << "head_dim " << d;
    }
  }
}

TEST(KvqTest, RotatedContainersDecodeIdenticallyOnEveryPath) {
  const KvLayout l = MakeLayout(4, 3, 64, 300, DType::kF16);
  const std::vector<uint8_t> kv = Synthetic(l, 23);
  ThreadPool pool(2);
  for (const KvqScale key : {KvqScale::kPerToken, KvqScale::kPerChannel}) {
    KvqOptions o;
    o.level = 3;
    o.key_scale = key;
    o.rotate_keys = key == KvqScale::kPerToken;
    o.rotate_values = true;
    std::vector<uint8_t> recon(kv.size());
    o.reconstruction = recon;
    ASSERT_OK_AND_ASSIGN(auto a, EncodeKvq(l, kv, o));
    o.pool = &pool;
    o.reconstruction = {};
    ASSERT_OK_AND_ASSIGN(auto b, EncodeKvq(l, kv, o));
    EXPECT_EQ(a, b);
    SetKvqSimdForTesting(false);
    ASSERT_OK_AND_ASSIGN(auto scalar, DecodeKvq(a));
    SetKvqSimdForTesting(true);
    ASSERT_OK_AND_ASSIGN(auto vec, DecodeKvq(a, &pool));
    EXPECT_EQ(scalar, recon);
    EXPECT_EQ(vec, recon);
    // An allocation over rotated rows decodes too (level 0, flags kept).
    o.avg_bits = 3.5f;
    ASSERT_OK_AND_ASSIGN(auto alloc, EncodeKvq(l, kv, o));
    ASSERT_OK_AND_ASSIGN(KvqInfo info, ParseKvq(alloc));
    EXPECT_EQ(info.level, 0);
    EXPECT_EQ(info.rotate_keys, o.rotate_keys);
    EXPECT_TRUE(info.rotate_values);
    EXPECT_THAT(DecodeKvq(alloc, &pool), IsOk());
  }
}

TEST(KvqTest, BadRotationsAreRejected) {
  const KvLayout odd = MakeLayout(1, 2, 12, 8, DType::kF16);  // head_dim not a power of two
  const std::vector<uint8_t> kv = Synthetic(odd);
  KvqOptions o;
  o.rotate_values = true;
  EXPECT_THAT(EncodeKvq(odd, kv, o), StatusIs(absl::StatusCode::kInvalidArgument));
  o.avg_bits = 4;
  EXPECT_THAT(KvqAllocateBits(odd, kv, o), StatusIs(absl::StatusCode::kInvalidArgument));
  const KvLayout l = MakeLayout(1, 2, 16, 8, DType::kF16);
  const std::vector<uint8_t> kv16 = Synthetic(l);
  o = {};
  o.rotate_keys = true;
  o.key_outliers = 1;
  EXPECT_THAT(EncodeKvq(l, kv16, o), StatusIs(absl::StatusCode::kInvalidArgument));
  // The parser: rotation flags on a head_dim of 12, or with key outliers.
  ASSERT_OK_AND_ASSIGN(auto plain12, EncodeKvq(odd, kv, KvqOptions{}));
  plain12[15] = 2;
  RefreshKvqChecksums(plain12);
  EXPECT_THAT(ParseKvq(plain12), StatusIs(absl::StatusCode::kInvalidArgument));
  // Rotated keys with outlier channels.
  KvqOptions with_outliers;
  with_outliers.key_outliers = 1;
  ASSERT_OK_AND_ASSIGN(auto outl, EncodeKvq(l, kv16, with_outliers));
  outl[15] = 1;
  RefreshKvqChecksums(outl);
  EXPECT_THAT(ParseKvq(outl), StatusIs(absl::StatusCode::kInvalidArgument));
}

// Attention sinks: the chunk's tokens at positions below sink_tokens are exact, the rest are
// quantised in groups that start after them (so a sink's extreme values widen no range).
TEST(KvqTest, SinkTokensAreExactAndLeftOutOfTheRanges) {
  const uint32_t T = 50, C = 24, G = 16, E = 3;
  KvLayout l = MakeLayout(1, 3, 8, T, DType::kF32);
  std::vector<uint8_t> kv = Synthetic(l, 31);
  for (uint32_t c = 0; c < C; ++c) testing::SetValue(kv, l.dtype, c, 5000.f + c);  // K, token 0
  KvqOptions o;
  o.row_bits = {3, 3};
  o.group_tokens = G;
  o.sink_tokens = E;
  std::vector<uint8_t> recon(kv.size());
  o.reconstruction = recon;
  ASSERT_OK_AND_ASSIGN(auto container, EncodeKvq(l, kv, o));
  ASSERT_OK_AND_ASSIGN(KvqInfo info, ParseKvq(container));
  EXPECT_EQ(info.exact_tokens, E);
  EXPECT_EQ(info.num_tokens, T);
  EXPECT_EQ(info.exact, 2u * E * C * 4);
  EXPECT_EQ(info.total(), container.size());
  SetKvqSimdForTesting(false);
  ASSERT_OK_AND_ASSIGN(auto scalar, DecodeKvq(container));
  SetKvqSimdForTesting(true);
  ASSERT_OK_AND_ASSIGN(auto out, DecodeKvq(container));
  EXPECT_EQ(out, recon);
  EXPECT_EQ(scalar, recon);
  for (uint32_t half = 0; half < 2; ++half) {
    const size_t row = size_t{half} * T * C;
    for (uint32_t k = 0; k < E * C; ++k) {
      EXPECT_EQ(ValueAt(out, l.dtype, row + k), ValueAt(kv, l.dtype, row + k));
    }
  }
  // K is per channel: groups of G quantised tokens, i.e. tokens [E + jG, E + (j+1)G).
  for (uint32_t c = 0; c < C; ++c) {
    for (uint32_t t0 = E; t0 < T; t0 += G) {
      const uint32_t t1 = std::min(T, t0 + G);
      float mn = INFINITY, mx = -INFINITY;
      for (uint32_t t = t0; t < t1; ++t) {
        mn = std::min(mn, ValueAt(kv, l.dtype, t * C + c));
        mx = std::max(mx, ValueAt(kv, l.dtype, t * C + c));
      }
      const float bound = 0.5f * (mx - mn) / 7 * 1.0001f + 1e-6f * (std::fabs(mn) + mx - mn);
      for (uint32_t t = t0; t < t1; ++t) {
        ASSERT_LE(std::fabs(ValueAt(kv, l.dtype, t * C + c) - ValueAt(out, l.dtype, t * C + c)),
                  bound)
            << "channel " << c << " token " << t;
      }
    }
  }
}

TEST(KvqTest, SinkTokensApplyOnlyToTheFirstPositionsOfASequence) {
  auto exact = [](int64_t position_start, uint32_t tokens, uint32_t sinks) -> Result<uint32_t> {
    KvLayout l = MakeLayout(1, 2, 16, tokens, DType::kF16);
    l.position_start = position_start;
    KvqOptions o;
    o.sink_tokens = sinks;
    KVSTASH_ASSIGN_OR_RETURN(auto container, EncodeKvq(l, Synthetic(l, 32), o));
    KVSTASH_ASSIGN_OR_RETURN(KvqInfo info, ParseKvq(container));
    KVSTASH_ASSIGN_OR_RETURN(auto out, DecodeKvq(container));
    if (out.size() != l.RawBytes()) return absl::InternalError("decoded size");
    return info.exact_tokens;
  };
  EXPECT_THAT(exact(0, 40, 4), IsOkAndHolds(4u));
  EXPECT_THAT(exact(2, 40, 4), IsOkAndHolds(2u));  // positions 2 and 3
  EXPECT_THAT(exact(4, 40, 4), IsOkAndHolds(0u));  // a later chunk holds no sink
  EXPECT_THAT(exact(0, 3, 8), IsOkAndHolds(2u));   // one token is always quantised
  EXPECT_THAT(exact(0, 1, 8), IsOkAndHolds(0u));
  EXPECT_THAT(exact(0, 40, 0), IsOkAndHolds(0u));
  EXPECT_THAT(exact(0, 40, 64), StatusIs(absl::StatusCode::kInvalidArgument));
  // A container claiming as many exact tokens as it has tokens is malformed.
  KvLayout l = MakeLayout(1, 2, 16, 8, DType::kF16);
  ASSERT_OK_AND_ASSIGN(auto container, EncodeKvq(l, Synthetic(l, 33), KvqOptions{}));
  container[15] = 8 << 2;
  RefreshKvqChecksums(container);
  EXPECT_THAT(ParseKvq(container), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvstash::codec
