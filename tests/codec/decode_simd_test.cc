// The AVX-512 stream decoder and the portable one give identical results, for valid containers
// and for containers whose streams are random bytes.
#include "decode_simd.h"

#include <gtest/gtest.h>

#include <random>

#include "chunk.h"
#include "encode_simd.h"
#include "kvstash/codec/cachegen.h"
#include "kvstash/codec/coder.h"
#include "kvstash/codec/synthetic_kv.h"
#include "test_util.h"
#include "testing/status_matchers.h"

namespace kvstash::codec {
namespace {

struct PortableGuard {
  explicit PortableGuard(bool on) { internal::ItemDecoder::ForcePortable(on); }
  ~PortableGuard() { internal::ItemDecoder::ForcePortable(false); }
};

Result<std::vector<uint8_t>> Decode(const std::vector<uint8_t>& c, bool portable) {
  PortableGuard g(portable);
  return DecodeCacheGen(c);
}

TEST(DecodeSimdTest, SimdMatchesPortable) {
  if (!internal::ItemDecoder::UsingSimd()) GTEST_SKIP() << "no AVX-512 on this CPU";
  std::mt19937 rng(3);
  for (uint32_t heads : {1u, 3u}) {
    for (uint32_t head_dim : {5u, 16u, 17u, 48u}) {
      for (int level = 1; level <= 3; ++level) {
        KvLayout layout = testing::MakeLayout(2, heads, head_dim, 300);
        SyntheticKvOptions so;
        so.seed = heads * 100 + head_dim + level;
        EncodeOptions o;
        o.level = level;
        o.mode = level == 2 ? CacheGenMode::kDelta : CacheGenMode::kReference;
        if (level == 3) o.row_bins = {64, 4, 12, 40};
        auto c = EncodeCacheGen(layout, SyntheticKv(layout, so), o);
        ASSERT_OK(c);
        auto a = Decode(*c, true);
        auto b = Decode(*c, false);
        ASSERT_OK(a);
        ASSERT_OK(b);
        EXPECT_EQ(*a, *b);
        // Same container with random stream bytes: same symbols (or the same rejection).
        auto view = ParseContainer(*c);
        ASSERT_OK(view);
        auto junk = *c;
        for (size_t i = junk.size() - view->payload.size(); i < junk.size(); ++i) {
          junk[i] = static_cast<uint8_t>(rng());
        }
        RefreshContainerChecksums(junk);
        auto ja = Decode(junk, true);
        auto jb = Decode(junk, false);
        ASSERT_EQ(ja.status().code(), jb.status().code());
        if (ja.ok()) {
          EXPECT_EQ(*ja, *jb);
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvstash::codec

namespace kvstash::codec {
namespace {

// The AVX-512 encoder writes the same bytes as the portable one, including lanes with long runs
// of pending bits (handed to the scalar writer), here provoked by a foreign, skewed CDF.
TEST(EncodeSimdTest, SimdMatchesPortableWithLongPendingRuns) {
  if (!internal::ItemEncoder::UsingSimd()) GTEST_SKIP() << "no AVX-512 on this CPU";
  constexpr int kLp = 33;
  constexpr size_t kChannels = 37;  // two vector blocks and a scalar tail
  constexpr uint32_t kTokens = 3000;
  std::vector<uint8_t> training;
  for (int i = 0; i < 4000; ++i) training.push_back(static_cast<uint8_t>(i % (kLp - 1)));
  std::vector<uint16_t> one = BuildCdf(training, kLp - 1);
  std::vector<uint16_t> cdf;
  for (size_t c = 0; c < kChannels; ++c) cdf.insert(cdf.end(), one.begin(), one.end());
  // Symbols: stretches chosen so that every new interval contains 2^31 (all shifts are E3 steps,
  // so pending bits pile up), alternating with random ones.
  namespace cg = kernels::cachegen;
  struct NullWriter {
    void Settle(uint32_t, int k, uint64_t* pending) {
      if (k > 0) *pending = 0;
    }
    void Flush() {}
  };
  uint32_t table[cg::kTableSize];
  cg::BuildTable(cg::CdfView{one.data()}, kLp, cg::TableRef{table});
  std::vector<cg::EncoderState> sim(kChannels);
  NullWriter null;
  std::mt19937 rng(9);
  std::vector<uint8_t> sym(size_t{kTokens} * kChannels);
  for (uint32_t t = 0; t < kTokens; ++t) {
    for (size_t c = 0; c < kChannels; ++c) {
      cg::EncoderState& st = sim[c];
      int s;
      if ((t / 40 + c) % 2 == 0) {
        const uint64_t span = uint64_t{st.high} - st.low + 1;
        const uint64_t target = ((uint64_t{0x80000000u} - st.low) << 16) / span;
        s = 0;
        while (s < kLp - 2 && table[s + 1] <= target) ++s;
      } else {
        s = static_cast<int>(rng() % (kLp - 1));
      }
      sym[size_t{t} * kChannels + c] = static_cast<uint8_t>(s);
      cg::EncodeSymbol(st, cg::TableView{table}, s, null);
    }
  }
  const uint64_t cap = MaxStreamBytes(kTokens);
  const uint64_t slot = cap + internal::FastWriter::kSlack;
  auto encode = [&](bool portable, std::vector<uint32_t>* lengths) {
    internal::ItemEncoder::ForcePortable(portable);
    std::vector<uint8_t> slots(kChannels * slot, 0);
    internal::ItemEncoder enc;
    enc.Reset(cdf, kLp, kChannels, slots.data(), slot, cap);
    for (uint32_t t = 0; t < kTokens; ++t) enc.Step(sym.data() + size_t{t} * kChannels);
    lengths->resize(kChannels);
    EXPECT_TRUE(enc.Finish(lengths->data()));
    internal::ItemEncoder::ForcePortable(false);
    std::vector<uint8_t> packed;
    for (size_t c = 0; c < kChannels; ++c) {
      packed.insert(packed.end(), slots.begin() + c * slot,
                    slots.begin() + c * slot + (*lengths)[c]);
    }
    return packed;
  };
  const uint64_t slow_before = internal::ItemEncoder::SlowLanes();
  std::vector<uint32_t> la, lb;
  auto a = encode(true, &la);
  auto b = encode(false, &lb);
  EXPECT_EQ(la, lb);
  EXPECT_EQ(a, b);
  EXPECT_GT(internal::ItemEncoder::SlowLanes(), slow_before) << "the scalar hand-off never ran";
  // And the streams decode back.
  size_t off = 0;
  for (size_t c = 0; c < kChannels; ++c) {
    std::vector<uint8_t> back(kTokens);
    ASSERT_OK(DecodeStream(std::span<const uint8_t>(a).subspan(off, la[c]), one, back));
    for (uint32_t t = 0; t < kTokens; ++t) ASSERT_EQ(back[t], sym[size_t{t} * kChannels + c]);
    off += la[c];
  }
}

TEST(EncodeSimdTest, ContainersIdenticalWithAndWithoutSimd) {
  if (!internal::ItemEncoder::UsingSimd()) GTEST_SKIP() << "no AVX-512 on this CPU";
  for (uint32_t head_dim : {8u, 16u, 40u}) {
    KvLayout layout = testing::MakeLayout(3, 2, head_dim, 333);
    for (CacheGenMode mode : {CacheGenMode::kReference, CacheGenMode::kDelta}) {
      EncodeOptions o;
      o.mode = mode;
      internal::ItemEncoder::ForcePortable(true);
      auto a = EncodeCacheGen(layout, SyntheticKv(layout), o);
      internal::ItemEncoder::ForcePortable(false);
      auto b = EncodeCacheGen(layout, SyntheticKv(layout), o);
      ASSERT_OK(a);
      ASSERT_OK(b);
      EXPECT_EQ(*a, *b);
    }
  }
}

}  // namespace
}  // namespace kvstash::codec

namespace kvstash::codec {
namespace {

// The chunk quantiser (vectorised where the CPU allows) gives the symbols and scales of the
// scalar single-vector quantiser, including exact .5 ties, for channel counts around 16.
TEST(QuantizeSimdTest, ChunkQuantiserMatchesScalar) {
  for (uint32_t head_dim : {7u, 16u, 20u, 48u}) {
    KvLayout layout = testing::MakeLayout(2, 1, head_dim, 50);
    auto kv = SyntheticKv(layout);
    // Token 3 of K layer 0: max 15 (bins 32 -> factor exactly 1) and values on .5 ties.
    for (uint32_t c = 0; c < head_dim; ++c) {
      const float v = c == 0 ? 15.0f : static_cast<float>(c % 15) - 6.5f;
      testing::SetValue(kv, DType::kF16, size_t{3} * head_dim + c, v);
    }
    internal::ChunkShape shape = internal::ChunkShape::Of(layout);
    internal::ChunkParams p;
    p.row_bins = {32, 16, 32, 12};
    p.lp = 33;
    internal::QuantizedChunk q;
    ASSERT_OK(internal::QuantizeChunk(shape, kv, p, nullptr, &q));
    for (uint32_t row = 0; row < 4; ++row) {
      for (uint32_t t = 0; t < 50; ++t) {
        std::vector<float> x(head_dim);
        const size_t base = shape.RowOffset(row) + size_t{t} * head_dim;
        for (uint32_t c = 0; c < head_dim; ++c) x[c] = testing::ValueAt(kv, DType::kF16, base + c);
        std::vector<uint8_t> sym(head_dim);
        auto scale = QuantizeVector(x, p.row_bins[row], sym);
        ASSERT_OK(scale);
        EXPECT_EQ(q.scales[size_t{row} * 50 + t], *scale);
        const uint8_t* got = q.sym.data() + (size_t{row} * 50 + t) * head_dim;
        ASSERT_EQ(std::vector<uint8_t>(got, got + head_dim), sym) << "row " << row << " t " << t;
      }
    }
  }
}

}  // namespace
}  // namespace kvstash::codec
