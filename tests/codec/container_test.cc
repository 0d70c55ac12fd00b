// The container decoder rejects malformed input with an error and never reads out of bounds
// (run under ASan in the asan preset; libFuzzer target in tests/fuzz/).
#include "kvstash/codec/container.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "kvstash/codec/cachegen.h"
#include "kvstash/codec/synthetic_kv.h"
#include "test_util.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::codec {
namespace {

using testing::MakeLayout;

std::vector<uint8_t> SmallContainer(CacheGenMode mode = CacheGenMode::kReference) {
  KvLayout layout = MakeLayout(2, 1, 4, 23);
  EncodeOptions options;
  options.mode = mode;
  options.subchunk_tokens = 8;
  auto c = EncodeCacheGen(layout, SyntheticKv(layout), options);
  EXPECT_OK(c);
  return *c;
}

template <typename T>
void PutLe(std::vector<uint8_t>& b, size_t off, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) b[off + i] = static_cast<uint8_t>(uint64_t(v) >> (8 * i));
}

// Applies `edit`, fixes the checksums and expects InvalidArgument (not a crash, not OK).
void ExpectRejected(const std::vector<uint8_t>& original,
                    const std::function<void(std::vector<uint8_t>&)>& edit, const char* what) {
  std::vector<uint8_t> b = original;
  edit(b);
  RefreshContainerChecksums(b);
  auto parsed = ParseContainer(b);
  EXPECT_THAT(parsed, StatusIs(absl::StatusCode::kInvalidArgument)) << what;
}

TEST(ContainerTest, ParsesWhatTheEncoderWrites) {
  auto c = SmallContainer();
  auto v = ParseContainer(c);
  ASSERT_OK(v);
  EXPECT_EQ(v->info.num_layers, 2u);
  EXPECT_EQ(v->info.num_heads, 1u);
  EXPECT_EQ(v->info.head_dim, 4u);
  EXPECT_EQ(v->info.num_tokens, 23u);
  EXPECT_EQ(v->info.subchunk_tokens, 8u);
  EXPECT_EQ(v->info.subchunks(), 3u);
  EXPECT_EQ(v->info.level, 2);
  EXPECT_EQ(v->info.length_width, 2);
  EXPECT_EQ(v->info.sizes.total(), c.size());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(c.data()), 4), "KVCG");
}

TEST(ContainerTest, EveryTruncationIsRejected) {
  for (CacheGenMode mode : {CacheGenMode::kReference, CacheGenMode::kDelta}) {
    auto c = SmallContainer(mode);
    for (size_t n = 0; n < c.size(); ++n) {
      EXPECT_THAT(ParseContainer(std::span<const uint8_t>(c).first(n)),
                  StatusIs(absl::StatusCode::kInvalidArgument))
          << n;
    }
    c.push_back(0);
    EXPECT_THAT(ParseContainer(c), StatusIs(absl::StatusCode::kInvalidArgument));
  }
}

TEST(ContainerTest, EverySingleBitFlipIsDetected) {
  auto c = SmallContainer();
  for (size_t i = 0; i < c.size(); ++i) {
    for (int bit = 0; bit < 8; bit += 3) {
      auto b = c;
      b[i] ^= static_cast<uint8_t>(1u << bit);
      // Magic, version and header length (bytes 0..7) are checked before the checksums; the
      // header crc covers the rest of the header (the body crc included), the body crc the body.
      EXPECT_THAT(ParseContainer(b), StatusIs(i < 8 ? absl::StatusCode::kInvalidArgument
                                                    : absl::StatusCode::kDataLoss))
          << "byte " << i << " bit " << bit;
    }
  }
}

TEST(ContainerTest, HeaderFieldsOutOfRange) {
  const auto c = SmallContainer();
  ExpectRejected(
      c, [](auto& b) { b[0] = 'X'; }, "magic");
  ExpectRejected(
      c, [](auto& b) { PutLe<uint16_t>(b, 4, 2); }, "version");
  ExpectRejected(
      c, [](auto& b) { PutLe<uint16_t>(b, 6, 80); }, "header bytes");
  ExpectRejected(
      c, [](auto& b) { b[8] = 2; }, "mode");
  ExpectRejected(
      c, [](auto& b) { b[9] = 4; }, "level");
  ExpectRejected(
      c, [](auto& b) { b[10] = 0; }, "dtype 0");
  ExpectRejected(
      c, [](auto& b) { b[10] = 4; }, "dtype 4");
  ExpectRejected(
      c, [](auto& b) { b[11] = 3; }, "scale dtype");
  ExpectRejected(
      c, [](auto& b) { b[12] = 2; }, "cdf source");
  ExpectRejected(
      c, [](auto& b) { b[12] = 1; }, "profile source without id");
  ExpectRejected(
      c, [](auto& b) { b[13] = 3; }, "length width");
  ExpectRejected(
      c, [](auto& b) { b[13] = 4; }, "length width 4 with 2-byte lengths");
  ExpectRejected(
      c, [](auto& b) { b[14] = 4; }, "lp too small");
  ExpectRejected(
      c, [](auto& b) { b[14] = 66; }, "lp too large");
  ExpectRejected(
      c, [](auto& b) { b[14] = 17; }, "lp not max bins + 1");
  ExpectRejected(
      c, [](auto& b) { b[15] = 1; }, "reserved");
  ExpectRejected(
      c, [](auto& b) { PutLe<uint32_t>(b, 16, 0); }, "no layers");
  ExpectRejected(
      c, [](auto& b) { PutLe<uint32_t>(b, 16, 3); }, "layers vs sizes");
  ExpectRejected(
      c, [](auto& b) { PutLe<uint32_t>(b, 16, 0xFFFFFFFF); }, "huge layers");
  ExpectRejected(
      c, [](auto& b) { PutLe<uint32_t>(b, 20, 0); }, "no heads");
  ExpectRejected(
      c, [](auto& b) { PutLe<uint32_t>(b, 24, 0x10000); }, "huge head_dim");
  ExpectRejected(
      c, [](auto& b) { PutLe<uint32_t>(b, 28, 0); }, "no tokens");
  ExpectRejected(
      c, [](auto& b) { PutLe<uint32_t>(b, 28, 24); }, "tokens vs sizes");
  ExpectRejected(
      c, [](auto& b) { PutLe<uint32_t>(b, 32, 0); }, "subchunk 0");
  ExpectRejected(
      c, [](auto& b) { PutLe<uint32_t>(b, 32, 0x10000); }, "subchunk too large");
  ExpectRejected(
      c, [](auto& b) { PutLe<uint32_t>(b, 36, 10); }, "group in reference mode");
  ExpectRejected(
      c, [](auto& b) { b[40] = 1; }, "profile id on inline container");
  ExpectRejected(
      c, [](auto& b) { PutLe<uint64_t>(b, 56, ~uint64_t{0}); }, "huge payload");
  ExpectRejected(
      c, [](auto& b) { PutLe<uint64_t>(b, 56, 1); }, "payload size");
}

TEST(ContainerTest, SectionContentsOutOfRange) {
  const auto c = SmallContainer();
  auto v = ParseContainer(c);
  ASSERT_OK(v);
  const size_t bins = kContainerHeaderBytes;
  const size_t cdf = bins + v->info.sizes.bins;
  const size_t scales = cdf + v->info.sizes.cdf;
  const size_t lengths = scales + v->info.sizes.scales + v->info.sizes.anchors;
  ExpectRejected(
      c, [&](auto& b) { b[bins] = 15; }, "odd bins");
  ExpectRejected(
      c, [&](auto& b) { b[bins] = 2; }, "bins below 4");
  ExpectRejected(
      c, [&](auto& b) { b[bins] = 66; }, "bins above 64");
  ExpectRejected(
      c, [&](auto& b) { PutLe<uint16_t>(b, cdf, 1); }, "cdf[0] != 0");
  ExpectRejected(
      c, [&](auto& b) { PutLe<uint16_t>(b, cdf + 4, 0); }, "cdf not increasing");
  ExpectRejected(
      c, [&](auto& b) { PutLe<uint16_t>(b, cdf + 2 * 32, 65534); }, "cdf end");
  ExpectRejected(
      c, [&](auto& b) { PutLe<uint16_t>(b, scales, 0x8001); }, "negative scale");
  ExpectRejected(
      c, [&](auto& b) { PutLe<uint16_t>(b, scales, 0x7C00); }, "infinite scale");
  ExpectRejected(
      c, [&](auto& b) { PutLe<uint16_t>(b, scales, 0x7E00); }, "NaN scale");
  ExpectRejected(
      c, [&](auto& b) { PutLe<uint16_t>(b, lengths, 0); }, "empty stream");
  ExpectRejected(
      c, [&](auto& b) { PutLe<uint16_t>(b, lengths, 60000); }, "stream too long");
}

TEST(ContainerTest, DeltaAnchorsChecked) {
  const auto c = SmallContainer(CacheGenMode::kDelta);
  auto v = ParseContainer(c);
  ASSERT_OK(v);
  EXPECT_EQ(v->info.anchors_per_row(), 3u);
  EXPECT_EQ(v->info.scale_dtype, DType::kF32);
  const size_t anchors =
      kContainerHeaderBytes + v->info.sizes.bins + v->info.sizes.cdf + v->info.sizes.scales;
  ExpectRejected(
      c, [&](auto& b) { b[anchors] = 255; }, "anchor symbol 255");
  ExpectRejected(
      c, [&](auto& b) { PutLe<uint32_t>(b, 36, 0); }, "delta group 0");
  ExpectRejected(
      c, [&](auto& b) { b[11] = 1; }, "delta scales in f16");
}

TEST(ContainerTest, GarbageStreamsDecodeSafely) {
  // A well-formed container whose stream bytes are random: decoding either succeeds or reports
  // InvalidArgument (a symbol outside its row's bins); it never crashes or reads outside.
  KvLayout layout = MakeLayout(2, 2, 4, 40);
  EncodeOptions options;
  options.row_bins = {12, 32, 16, 32};  // rows with fewer bins than lp - 1 can decode junk
  auto c = EncodeCacheGen(layout, SyntheticKv(layout), options);
  ASSERT_OK(c);
  auto v = ParseContainer(*c);
  ASSERT_OK(v);
  const size_t payload = c->size() - v->payload.size();
  std::mt19937 rng(1);
  int rejected = 0;
  for (int trial = 0; trial < 50; ++trial) {
    auto b = *c;
    for (size_t i = payload; i < b.size(); ++i) b[i] = static_cast<uint8_t>(rng());
    RefreshContainerChecksums(b);
    std::vector<uint8_t> out(layout.RawBytes());
    Status s = DecodeCacheGen(b, out);
    if (!s.ok()) {
      EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 0);
}

}  // namespace
}  // namespace kvstash::codec
