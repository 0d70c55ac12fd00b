// Chunk-level tests: round trips, the quantisation bound, exact size accounting, the entropy
// bound on whole chunks, compression against 8-bit, determinism across thread counts, errors.
#include "kvstash/codec/cachegen.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kvstash/codec/coder.h"
#include "kvstash/codec/levels.h"
#include "kvstash/codec/synthetic_kv.h"
#include "test_util.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::codec {
namespace {

using testing::MakeLayout;
using testing::SetValue;
using testing::ValueAt;

double HalfUlp(DType dtype, float v) {
  const int mantissa = dtype == DType::kF16 ? 10 : (dtype == DType::kBF16 ? 7 : 23);
  return std::ldexp(std::fabs(v), -(mantissa + 1)) + 1e-30;
}

// Checks |x - x^| <= m / (2 Cq) per element (plus output rounding), reference mode.
void ExpectQuantBound(const KvLayout& layout, const std::vector<uint8_t>& kv,
                      const std::vector<uint8_t>& out, const std::vector<uint8_t>& bins) {
  const size_t C = size_t{layout.heads()} * layout.head_dim;
  const uint32_t L = layout.num_layers;
  for (uint32_t layer = 0; layer < L; ++layer) {
    for (uint32_t half = 0; half < 2; ++half) {
      const int cq = bins[half * L + layer] / 2 - 1;
      for (uint32_t t = 0; t < layout.num_tokens; ++t) {
        const size_t base = ((size_t{layer} * 2 + half) * layout.num_tokens + t) * C;
        float m = 0;
        for (size_t c = 0; c < C; ++c)
          m = std::max(m, std::fabs(ValueAt(kv, layout.dtype, base + c)));
        for (size_t c = 0; c < C; ++c) {
          const float x = ValueAt(kv, layout.dtype, base + c);
          const float y = ValueAt(out, layout.dtype, base + c);
          ASSERT_LE(std::fabs(x - y), m / (2.0 * cq) * (1 + 1e-6) + HalfUlp(layout.dtype, y))
              << "layer " << layer << " half " << half << " t " << t << " c " << c;
        }
      }
    }
  }
}

TEST(CacheGenTest, RoundTripWithinQuantisationBound) {
  for (DType dtype : {DType::kF16, DType::kBF16, DType::kF32}) {
    for (uint32_t tokens : {1u, 2u, 255u, 256u, 257u, 600u}) {
      for (int level = 1; level <= 3; ++level) {
        SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " T=" << tokens << " L" << level);
        KvLayout layout = MakeLayout(3, 2, 8, tokens, dtype);
        SyntheticKvOptions so;
        so.seed = tokens * 10 + level;
        auto kv = SyntheticKv(layout, so);
        EncodeOptions options;
        options.level = level;
        auto container = EncodeCacheGen(layout, kv, options);
        ASSERT_OK(container);
        auto out = DecodeCacheGen(*container);
        ASSERT_OK(out);
        ASSERT_EQ(out->size(), kv.size());
        auto bins = RowBinsForLevel(level, 3, 0, 3);
        ASSERT_OK(bins);
        ExpectQuantBound(layout, kv, *out, *bins);
      }
    }
  }
}

// The encoder's reconstruction is what the decoder produces, bit for bit, in every mode and dtype,
// including zero vectors and sub-chunk boundaries.
TEST(CacheGenTest, ReconstructionEqualsDecodedKv) {
  for (DType dtype : {DType::kF16, DType::kBF16, DType::kF32}) {
    for (CacheGenMode mode : {CacheGenMode::kReference, CacheGenMode::kDelta}) {
      for (uint32_t tokens : {1u, 37u, 300u}) {
        SCOPED_TRACE(::testing::Message()
                     << DTypeName(dtype) << " " << CacheGenModeName(mode) << " T=" << tokens);
        KvLayout layout = MakeLayout(4, 2, 8, tokens, dtype, /*layer_begin=*/2);
        SyntheticKvOptions so;
        so.seed = tokens;
        auto kv = SyntheticKv(layout, so);
        for (size_t i = 0; i < 16 && i < kv.size() / DTypeSize(dtype); ++i) {
          SetValue(kv, dtype, i, 0.0f);  // one all-zero vector
        }
        EncodeOptions options;
        options.mode = mode;
        options.level = 2;
        options.model_layers = 8;
        options.subchunk_tokens = 128;
        std::vector<uint8_t> predicted(kv.size(), 0xAB);
        options.reconstruction = predicted;
        auto container = EncodeCacheGen(layout, kv, options);
        ASSERT_OK(container);
        auto decoded = DecodeCacheGen(*container);
        ASSERT_OK(decoded);
        EXPECT_EQ(predicted, *decoded);
      }
    }
  }
  KvLayout layout = MakeLayout(2, 1, 8, 10);
  std::vector<uint8_t> kv = SyntheticKv(layout), wrong(3);
  EncodeOptions options;
  options.reconstruction = wrong;
  EXPECT_THAT(EncodeCacheGen(layout, kv, options).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(CacheGenTest, SymbolsStayInRange) {
  // All symbols in [0, bins - 2], including +-m and values whose scaled position is an exact tie.
  for (int bins : {4, 12, 16, 32, 64}) {
    std::vector<float> x = {1.0f, -1.0f, 0.5f, -0.25f, 0.0f, 0.999f, -0.999f, 1e-3f};
    std::vector<uint8_t> sym(x.size());
    auto scale = QuantizeVector(x, bins, sym);
    ASSERT_OK(scale);
    EXPECT_EQ(*scale, 1.0f);
    for (uint8_t s : sym) EXPECT_LE(s, bins - 2);
    EXPECT_EQ(sym[0], bins - 2);
    EXPECT_EQ(sym[1], 0);
    EXPECT_EQ(sym[4], bins / 2 - 1);
  }
}

TEST(CacheGenTest, ZeroAndTinyVectorsDecodeToZero) {
  KvLayout layout = MakeLayout(1, 1, 4, 3, DType::kF32);
  std::vector<uint8_t> kv(layout.RawBytes(), 0);
  SetValue(kv, DType::kF32, 4, 1e-35f);  // token 1 of K: below the 2^-100 scale floor
  SetValue(kv, DType::kF32, 8, 2.0f);
  auto container = EncodeCacheGen(layout, kv, EncodeOptions{});
  ASSERT_OK(container);
  auto out = DecodeCacheGen(*container);
  ASSERT_OK(out);
  for (size_t i = 0; i < 24; ++i) {
    const float expect = i == 8 ? 2.0f : 0.0f;
    EXPECT_EQ(ValueAt(*out, DType::kF32, i), expect) << i;
  }
}

TEST(CacheGenTest, ExactSizeAccounting) {
  for (uint32_t tokens : {100u, 256u, 1000u}) {
    KvLayout layout = MakeLayout(4, 2, 16, tokens);
    auto kv = SyntheticKv(layout);
    EncodeOptions options;
    options.level = 2;
    auto container = EncodeCacheGen(layout, kv, options);
    ASSERT_OK(container);
    auto view = ParseContainer(*container);
    ASSERT_OK(view);
    const uint64_t L = 4, C = 32, T = tokens, lp = 33;
    const uint64_t subchunks = (T + 255) / 256;
    const uint64_t width = view->info.length_width;
    const uint64_t expected = kContainerHeaderBytes + 2 * L    // header, bins
                              + 2 * lp * 2 * L * C             // CDF (u16)
                              + 2 * L * T * 2                  // scales (f16)
                              + subchunks * 2 * L * C * width  // lengths
                              + view->payload.size();
    EXPECT_EQ(container->size(), expected);
    EXPECT_EQ(view->info.sizes.total(), container->size());
    EXPECT_EQ(view->info.sizes.cdf, 2 * lp * 2 * L * C);
    EXPECT_EQ(view->info.sizes.lengths, subchunks * 2 * L * C * width);
  }
}

TEST(CacheGenTest, ChunkPayloadWithinEntropyBound) {
  KvLayout layout = MakeLayout(4, 2, 16, 1000);
  auto kv = SyntheticKv(layout);
  EncodeOptions options;
  options.level = 2;
  auto container = EncodeCacheGen(layout, kv, options);
  ASSERT_OK(container);
  auto view = ParseContainer(*container);
  ASSERT_OK(view);
  const ContainerInfo& info = view->info;
  const size_t C = info.channels();
  const uint32_t T = info.num_tokens;
  // Symbols per (row, channel), recomputed with the single-vector quantiser.
  std::vector<std::vector<uint8_t>> columns(size_t{info.rows()} * C);
  for (uint32_t row = 0; row < info.rows(); ++row) {
    const uint32_t layer = row % info.num_layers;
    const uint32_t half = row / info.num_layers;
    for (uint32_t t = 0; t < T; ++t) {
      std::vector<float> x(C);
      const size_t base = ((size_t{layer} * 2 + half) * T + t) * C;
      for (size_t c = 0; c < C; ++c) x[c] = ValueAt(kv, layout.dtype, base + c);
      std::vector<uint8_t> sym(C);
      ASSERT_OK(QuantizeVector(x, view->bins[row], sym));
      for (size_t c = 0; c < C; ++c) columns[size_t{row} * C + c].push_back(sym[c]);
    }
  }
  double entropy_bytes = 0;
  uint64_t streams = 0;
  for (uint32_t sub = 0; sub < info.subchunks(); ++sub) {
    for (size_t col = 0; col < columns.size(); ++col) {
      std::vector<uint16_t> cdf(info.lp);
      for (int i = 0; i < info.lp; ++i) cdf[i] = view->Cdf(col * info.lp + i);
      const size_t t0 = size_t{sub} * info.subchunk_tokens;
      const size_t t1 = std::min<size_t>(T, t0 + info.subchunk_tokens);
      std::vector<uint8_t> part(columns[col].begin() + t0, columns[col].begin() + t1);
      entropy_bytes += CrossEntropyBits(part, cdf) / 8.0;
      ++streams;
    }
  }
  EXPECT_LE(view->payload.size(), 1.01 * entropy_bytes + 2.0 * streams);
  EXPECT_GE(view->payload.size(), entropy_bytes);
}

TEST(CacheGenTest, SameBytesWithAndWithoutThreads) {
  ThreadPool pool(3);
  KvLayout layout = MakeLayout(5, 4, 8, 700);
  auto kv = SyntheticKv(layout);
  for (CacheGenMode mode : {CacheGenMode::kReference, CacheGenMode::kDelta}) {
    EncodeOptions options;
    options.mode = mode;
    auto single = EncodeCacheGen(layout, kv, options);
    options.pool = &pool;
    auto multi = EncodeCacheGen(layout, kv, options);
    ASSERT_OK(single);
    ASSERT_OK(multi);
    EXPECT_EQ(*single, *multi);
    DecodeOptions d;
    d.pool = &pool;
    auto a = DecodeCacheGen(*single);
    auto b = DecodeCacheGen(*single, d);
    ASSERT_OK(a);
    ASSERT_OK(b);
    EXPECT_EQ(*a, *b);
  }
}

TEST(CacheGenTest, SubchunkSizesAndExplicitBins) {
  KvLayout layout = MakeLayout(2, 1, 8, 300);
  auto kv = SyntheticKv(layout);
  for (uint32_t sub : {1u, 7u, 300u, 1024u}) {
    EncodeOptions options;
    options.subchunk_tokens = sub;
    options.row_bins = {12, 64, 16, 4};
    auto container = EncodeCacheGen(layout, kv, options);
    ASSERT_OK(container);
    auto view = ParseContainer(*container);
    ASSERT_OK(view);
    EXPECT_EQ(view->info.level, 0);
    EXPECT_EQ(view->info.lp, 65);
    auto out = DecodeCacheGen(*container);
    ASSERT_OK(out);
    ExpectQuantBound(layout, kv, *out, options.row_bins);
  }
}

TEST(CacheGenTest, DeltaModeRoundTripWithinDeltaBound) {
  for (uint32_t tokens : {1u, 9u, 10u, 11u, 256u, 301u}) {
    KvLayout layout = MakeLayout(2, 2, 8, tokens);
    auto kv = SyntheticKv(layout);
    EncodeOptions options;
    options.mode = CacheGenMode::kDelta;
    options.level = 2;
    auto container = EncodeCacheGen(layout, kv, options);
    ASSERT_OK(container);
    auto out = DecodeCacheGen(*container);
    ASSERT_OK(out);
    auto bins = RowBinsForLevel(2, 2, 0, 2);
    const size_t C = 16;
    for (uint32_t row = 0; row < 4; ++row) {
      const uint32_t layer = row % 2, half = row / 2;
      const int cq = (*bins)[row] / 2 - 1;
      std::vector<float> anchor_hat(C);
      for (uint32_t t = 0; t < tokens; ++t) {
        const size_t base = ((size_t{layer} * 2 + half) * tokens + t) * C;
        std::vector<float> x(C);
        for (size_t c = 0; c < C; ++c) x[c] = ValueAt(kv, DType::kF16, base + c);
        if (t % 10 == 0) {
          std::vector<uint8_t> sym(C);
          auto scale = QuantizeVector(x, 256, sym);
          ASSERT_OK(scale);
          DequantizeVector(sym, 256, *scale, anchor_hat);
        }
        float m = 0;
        for (size_t c = 0; c < C; ++c) m = std::max(m, std::fabs(x[c] - anchor_hat[c]));
        for (size_t c = 0; c < C; ++c) {
          const float y = ValueAt(*out, DType::kF16, base + c);
          if (t % 10 == 0) {  // anchors decode to the 8-bit reconstruction
            ASSERT_LE(std::fabs(y - anchor_hat[c]), HalfUlp(DType::kF16, y));
          } else {  // others are within the delta's quantisation bound
            ASSERT_LE(std::fabs(x[c] - y), m / (2.0 * cq) * (1 + 1e-6) + HalfUlp(DType::kF16, y))
                << "row " << row << " t " << t << " c " << c;
          }
        }
      }
    }
  }
}

// 8-bit baseline: one byte per element plus one f16 scale per (row, token).
uint64_t EightBitBytes(const KvLayout& layout) {
  return layout.RawBytes() / 2 + uint64_t{layout.num_layers} * 2 * layout.num_tokens * 2;
}

TEST(CacheGenTest, CompressionAgainstEightBitPerChunkSize) {
  // Side information (CDF 66 B + length per stream) dominates short chunks (§1.5 item 4).
  double ratio[2] = {0, 0};
  int i = 0;
  for (uint32_t tokens : {256u, 1024u}) {
    KvLayout layout = MakeLayout(4, 3, 64, tokens);
    auto kv = SyntheticKv(layout);
    EncodeOptions options;
    options.level = 2;
    auto container = EncodeCacheGen(layout, kv, options);
    ASSERT_OK(container);
    ratio[i++] = static_cast<double>(EightBitBytes(layout)) / container->size();
  }
  EXPECT_GT(ratio[0], 1.3) << "T=256";
  EXPECT_GT(ratio[1], 2.0) << "T=1024";
  EXPECT_GT(ratio[1], ratio[0]);
}

TEST(CacheGenTest, RejectsBadInput) {
  KvLayout layout = MakeLayout(1, 1, 4, 2, DType::kF16);
  std::vector<uint8_t> kv(layout.RawBytes(), 0);
  EXPECT_THAT(EncodeCacheGen(layout, std::span<const uint8_t>(kv).first(3), {}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  SetValue(kv, DType::kF16, 3, std::numeric_limits<float>::quiet_NaN());
  EXPECT_THAT(EncodeCacheGen(layout, kv, {}), StatusIs(absl::StatusCode::kInvalidArgument));
  SetValue(kv, DType::kF16, 3, std::numeric_limits<float>::infinity());
  EXPECT_THAT(EncodeCacheGen(layout, kv, {}), StatusIs(absl::StatusCode::kInvalidArgument));
  SetValue(kv, DType::kF16, 3, 1.0f);
  EncodeOptions bad;
  bad.level = 4;
  EXPECT_THAT(EncodeCacheGen(layout, kv, bad), StatusIs(absl::StatusCode::kInvalidArgument));
  bad = EncodeOptions{};
  bad.subchunk_tokens = 0;
  EXPECT_THAT(EncodeCacheGen(layout, kv, bad), StatusIs(absl::StatusCode::kInvalidArgument));
  bad = EncodeOptions{};
  bad.mode = CacheGenMode::kDelta;
  bad.delta_group_tokens = 1;
  EXPECT_THAT(EncodeCacheGen(layout, kv, bad), StatusIs(absl::StatusCode::kInvalidArgument));
  bad = EncodeOptions{};
  bad.row_bins = {16, 17};
  EXPECT_THAT(EncodeCacheGen(layout, kv, bad), StatusIs(absl::StatusCode::kInvalidArgument));
  KvLayout invalid = layout;
  invalid.head_dim = 0;
  EXPECT_THAT(EncodeCacheGen(invalid, kv, {}), StatusIs(absl::StatusCode::kInvalidArgument));

  auto container = EncodeCacheGen(layout, kv, {});
  ASSERT_OK(container);
  std::vector<uint8_t> small(layout.RawBytes() - 1);
  EXPECT_THAT(DecodeCacheGen(*container, small), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvstash::codec
