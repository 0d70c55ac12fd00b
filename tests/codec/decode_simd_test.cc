// The AVX-512 stream decoder and the portable one give identical results, for valid containers
// and for containers whose streams are random bytes.
#include "decode_simd.h"

#include <gtest/gtest.h>

#include <random>

#include "kvstash/codec/cachegen.h"
#include "kvstash/codec/synthetic_kv.h"
#include "test_util.h"

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
        ASSERT_TRUE(c.ok()) << c.status();
        auto a = Decode(*c, true);
        auto b = Decode(*c, false);
        ASSERT_TRUE(a.ok() && b.ok());
        EXPECT_EQ(*a, *b);
        // Same container with random stream bytes: same symbols (or the same rejection).
        auto view = ParseContainer(*c);
        ASSERT_TRUE(view.ok());
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
