// Stream-level round trips (§1.5 item 1), the size bound (item 3), and equivalence of the bulk
// renormalisation in cachegen_core.h with the reference's shift-by-shift loop.
#include "kvstash/codec/coder.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kvstash/kernels/cachegen_core.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::codec {
namespace {

std::vector<uint8_t> LaplaceSymbols(std::mt19937_64& rng, size_t n, int bins, double scale) {
  std::exponential_distribution<double> expo(1.0 / scale);
  std::bernoulli_distribution sign(0.5);
  const int cq = bins / 2 - 1;
  std::vector<uint8_t> out(n);
  for (auto& s : out) {
    double v = expo(rng) * (sign(rng) ? 1 : -1);
    long q = std::lround(v) + cq;
    s = static_cast<uint8_t>(std::clamp<long>(q, 0, 2 * cq));
  }
  return out;
}

void ExpectRoundTrip(const std::vector<uint8_t>& symbols, const std::vector<uint16_t>& cdf) {
  std::vector<uint8_t> bytes;
  ASSERT_OK(EncodeStream(symbols, cdf, &bytes));
  EXPECT_LE(bytes.size(), MaxStreamBytes(symbols.size()));
  std::vector<uint8_t> back(symbols.size());
  ASSERT_OK(DecodeStream(bytes, cdf, back));
  EXPECT_EQ(back, symbols);
}

TEST(CoderTest, RoundTripTokenCounts) {
  std::mt19937_64 rng(1);
  for (size_t n : {1, 2, 255, 256}) {
    for (int lp : {17, 33}) {
      auto symbols = LaplaceSymbols(rng, n, lp - 1, 2.0);
      ExpectRoundTrip(symbols, BuildCdf(symbols, lp - 1));
    }
  }
}

TEST(CoderTest, AllEqualSymbolsGiveTinyStreams) {
  for (int lp : {17, 33}) {
    std::vector<uint8_t> symbols(256, static_cast<uint8_t>(lp / 2));
    auto cdf = BuildCdf(symbols, lp - 1);
    std::vector<uint8_t> bytes;
    ASSERT_OK(EncodeStream(symbols, cdf, &bytes));
    EXPECT_LT(bytes.size(), 4u);  // the decoder pads the first 4 bytes with zeros
    ExpectRoundTrip(symbols, cdf);
  }
}

TEST(CoderTest, TopSymbolAndUnusedSymbols) {
  for (int lp : {17, 33}) {
    const uint8_t top = static_cast<uint8_t>(lp - 2);
    std::vector<uint8_t> symbols;
    for (int i = 0; i < 256; ++i) symbols.push_back(i % 3 == 0 ? top : (i % 3 == 1 ? 0 : 2));
    ExpectRoundTrip(symbols, BuildCdf(symbols, lp - 1));
    // Only the top symbol.
    ExpectRoundTrip(std::vector<uint8_t>(100, top),
                    BuildCdf(std::vector<uint8_t>(100, top), lp - 1));
  }
}

TEST(CoderTest, ForeignCdfAndEveryLp) {
  std::mt19937_64 rng(7);
  for (int lp = 5; lp <= 65; lp += 4) {
    // Symbols drawn uniformly, coded with a CDF learned on a skewed sample (many rare symbols).
    std::vector<uint8_t> training(5000, static_cast<uint8_t>(lp / 2));
    auto cdf = BuildCdf(training, lp - 1);
    std::uniform_int_distribution<int> uni(0, lp - 2);
    std::vector<uint8_t> symbols(300);
    for (auto& s : symbols) s = static_cast<uint8_t>(uni(rng));
    ExpectRoundTrip(symbols, cdf);
  }
}

TEST(CoderTest, PayloadWithinOnePercentOfEntropyPlusTwoBytes) {
  std::mt19937_64 rng(3);
  for (size_t n : {256, 1000}) {
    for (int bins : {16, 32}) {
      double entropy_bytes = 0;
      size_t payload = 0;
      const int streams = 64;
      for (int i = 0; i < streams; ++i) {
        auto symbols = LaplaceSymbols(rng, n, bins, bins == 32 ? 3.0 : 1.5);
        auto cdf = BuildCdf(symbols, bins);
        std::vector<uint8_t> bytes;
        ASSERT_OK(EncodeStream(symbols, cdf, &bytes));
        payload += bytes.size();
        entropy_bytes += CrossEntropyBits(symbols, cdf) / 8.0;
      }
      EXPECT_LE(payload, 1.01 * entropy_bytes + 2.0 * streams) << "n=" << n << " bins=" << bins;
      // And the coder is not trivially loose either: overhead under 2 bytes per stream.
      EXPECT_GE(payload, entropy_bytes);
    }
  }
}

TEST(CoderTest, ArbitraryBytesDecodeToValidSymbols) {
  std::mt19937_64 rng(11);
  std::vector<uint8_t> training(1000, 3);
  auto cdf = BuildCdf(training, 16);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<uint8_t> junk(trial % 9);
    for (auto& b : junk) b = static_cast<uint8_t>(rng());
    std::vector<uint8_t> out(300);
    ASSERT_OK(DecodeStream(junk, cdf, out));
    for (uint8_t s : out) EXPECT_LE(s, 15);
  }
}

TEST(CoderTest, RejectsBadCdfAndSymbols) {
  std::vector<uint8_t> out;
  EXPECT_THAT(EncodeStream(std::vector<uint8_t>{0}, std::vector<uint16_t>{0, 5, 5, 65535}, &out),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(EncodeStream(std::vector<uint8_t>{0}, std::vector<uint16_t>{1, 5, 65535}, &out),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(EncodeStream(std::vector<uint8_t>{0}, std::vector<uint16_t>{0, 65535}, &out),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(EncodeStream(std::vector<uint8_t>{3}, std::vector<uint16_t>{0, 7, 9, 65535}, &out),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

// ---- bulk renormalisation == the reference loop, step for step -----------------------------

struct LiteralEncoder {
  uint32_t low = 0, high = 0xFFFFFFFFu;
  uint64_t pending = 0;
  std::vector<int> bits;
  void Emit(int b) {
    bits.push_back(b);
    for (uint64_t i = 0; i < pending; ++i) bits.push_back(1 - b);
    pending = 0;
  }
  void Encode(uint32_t c_lo, uint32_t c_hi) {
    uint64_t span = uint64_t{high} - low + 1;
    high = (low - 1) + static_cast<uint32_t>((span * c_hi) >> 16);
    low = low + static_cast<uint32_t>((span * c_lo) >> 16);
    for (;;) {
      if (high < 0x80000000u) {
        Emit(0);
        low <<= 1;
        high = (high << 1) | 1;
      } else if (low >= 0x80000000u) {
        Emit(1);
        low <<= 1;
        high = (high << 1) | 1;
      } else if (low >= 0x40000000u && high < 0xC0000000u) {
        ++pending;
        low = (low << 1) & 0x7FFFFFFFu;
        high = (high << 1) | 0x80000001u;
      } else {
        break;
      }
    }
  }
};

TEST(CoderTest, BulkRenormalisationEqualsLiteralLoop) {
  namespace cg = kernels::cachegen;
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 50; ++trial) {
    const int lp = 5 + static_cast<int>(rng() % 61);
    std::vector<uint8_t> sample(1 + rng() % 2000);
    std::uniform_int_distribution<int> narrow(0, std::min(lp - 2, 3));
    for (auto& s : sample) s = static_cast<uint8_t>(narrow(rng));
    auto cdf = BuildCdf(sample, lp - 1);
    uint32_t table[cg::kTableSize];
    cg::BuildTable(cg::CdfView{cdf.data()}, lp, cg::TableRef{table});
    std::vector<uint8_t> buf(1 << 16);
    cg::BitWriter w(buf.data(), buf.size());
    cg::EncoderState st;
    LiteralEncoder lit;
    std::uniform_int_distribution<int> any(0, lp - 2);
    for (int i = 0; i < 2000; ++i) {
      const int s = i % 5 == 0 ? any(rng) : narrow(rng);
      cg::EncodeSymbol(st, cg::TableView{table}, s, w);
      lit.Encode(table[s], table[s + 1]);
      ASSERT_EQ(st.low, lit.low);
      ASSERT_EQ(st.high, lit.high);
      ASSERT_EQ(st.pending, lit.pending);
    }
  }
}

}  // namespace
}  // namespace kvstash::codec
