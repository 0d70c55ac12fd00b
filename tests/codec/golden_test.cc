// Bit-exact comparison with the independent Python statement of the spec
// (tests/reference/cachegen_reference.py, which generated golden_vectors.inc).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "kvstash/codec/cachegen.h"
#include "kvstash/codec/coder.h"
#include "kvstash/common/half.h"
#include "testing/status_matchers.h"

namespace golden_types {

struct StreamCase {
  const char* name;
  std::vector<uint16_t> cdf;
  std::vector<uint8_t> symbols;
  std::vector<uint8_t> bytes;
};
struct QuantCase {
  int bins;
  std::vector<uint16_t> x_f16;
  std::vector<uint8_t> sym;
  uint16_t scale_f16;
};
struct CdfCase {
  int mb;
  std::vector<uint8_t> symbols;
  std::vector<uint16_t> cdf;
};
struct ChunkCase {
  uint32_t layers, heads, head_dim, tokens, subchunk_tokens;
  int mode;
  std::vector<uint16_t> kv_f16;
  std::vector<uint8_t> container;
  std::vector<uint16_t> decoded_f16;
};

}  // namespace golden_types

namespace golden_types {
#include "golden_vectors.inc"
}  // namespace golden_types

namespace kvstash::codec {
namespace {

using golden_types::CdfCase;
using golden_types::ChunkCase;
using golden_types::QuantCase;
using golden_types::StreamCase;
namespace golden = golden_types::golden;

TEST(GoldenTest, StreamsMatchReferenceBytes) {
  ASSERT_FALSE(golden::kStreamCases.empty());
  for (const StreamCase& c : golden::kStreamCases) {
    SCOPED_TRACE(c.name);
    std::vector<uint8_t> out;
    ASSERT_OK(EncodeStream(c.symbols, c.cdf, &out));
    EXPECT_EQ(out, c.bytes);
    std::vector<uint8_t> back(c.symbols.size());
    ASSERT_OK(DecodeStream(c.bytes, c.cdf, back));
    EXPECT_EQ(back, c.symbols);
  }
}

TEST(GoldenTest, CdfMatchesElementWise) {
  for (const CdfCase& c : golden::kCdfCases) {
    EXPECT_EQ(BuildCdf(c.symbols, c.mb), c.cdf) << "mb=" << c.mb;
    EXPECT_OK(ValidateCdf(c.cdf));
  }
}

TEST(GoldenTest, QuantisationMatchesIncludingTies) {
  for (const QuantCase& c : golden::kQuantCases) {
    std::vector<float> x(c.x_f16.size());
    for (size_t i = 0; i < x.size(); ++i) x[i] = F16ToF32(c.x_f16[i]);
    std::vector<uint8_t> sym(x.size());
    auto scale = QuantizeVector(x, c.bins, sym);
    ASSERT_OK(scale);
    EXPECT_EQ(sym, c.sym) << "bins=" << c.bins;
    EXPECT_EQ(F32ToF16(*scale), c.scale_f16);
  }
}

TEST(GoldenTest, ChunkContainersMatchReferenceBytes) {
  ASSERT_EQ(golden::kChunkCases.size(), 2u);
  for (const ChunkCase& c : golden::kChunkCases) {
    SCOPED_TRACE(c.mode == 0 ? "reference mode" : "delta mode");
    KvLayout layout;
    layout.num_layers = c.layers;
    layout.total_kv_heads = c.heads;
    layout.head_begin = 0;
    layout.head_end = c.heads;
    layout.head_dim = c.head_dim;
    layout.num_tokens = c.tokens;
    layout.dtype = DType::kF16;
    std::vector<uint8_t> kv(c.kv_f16.size() * 2);
    std::memcpy(kv.data(), c.kv_f16.data(), kv.size());
    EncodeOptions options;
    options.level = 2;
    options.subchunk_tokens = c.subchunk_tokens;
    options.mode = c.mode == 0 ? CacheGenMode::kReference : CacheGenMode::kDelta;
    auto container = EncodeCacheGen(layout, kv, options);
    ASSERT_OK(container);
    ASSERT_EQ(container->size(), c.container.size());
    EXPECT_EQ(*container, c.container);

    auto decoded = DecodeCacheGen(c.container);
    ASSERT_OK(decoded);
    std::vector<uint16_t> got(decoded->size() / 2);
    std::memcpy(got.data(), decoded->data(), decoded->size());
    EXPECT_EQ(got, c.decoded_f16);
  }
}

}  // namespace
}  // namespace kvstash::codec
