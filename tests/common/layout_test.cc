#include "kvstash/common/layout.h"

#include <gtest/gtest.h>

#include <limits>

#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash {
namespace {

KvLayout SmolLayout() {
  KvLayout l;
  l.num_layers = 30;
  l.total_kv_heads = 3;
  l.head_begin = 0;
  l.head_end = 3;
  l.head_dim = 64;
  l.dtype = DType::kF16;
  l.num_tokens = 256;
  l.rope = RopeConvention::kNeox;
  l.rope_theta = 100000.0f;
  return l;
}

TEST(LayoutTest, RawBytesOfSmolLm2Chunk) {
  // 30 layers x (K,V) x 256 tokens x 3 heads x 64 dims x 2 bytes.
  EXPECT_EQ(SmolLayout().RawBytes(), size_t{30} * 2 * 256 * 3 * 64 * 2);
  EXPECT_OK(SmolLayout().Validate());
}

TEST(LayoutTest, RejectsEachBadField) {
  auto expect_bad = [](auto mutate) {
    KvLayout l = SmolLayout();
    mutate(l);
    Status s = l.Validate();
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  };
  expect_bad([](KvLayout& l) { l.num_layers = 0; });
  expect_bad([](KvLayout& l) { l.head_end = 4; });
  expect_bad([](KvLayout& l) { l.head_begin = 3; });
  expect_bad([](KvLayout& l) { l.head_dim = 0; });
  expect_bad([](KvLayout& l) { l.dtype = static_cast<DType>(9); });
  expect_bad([](KvLayout& l) { l.num_tokens = 0; });
  expect_bad([](KvLayout& l) { l.rope = static_cast<RopeConvention>(7); });
  expect_bad([](KvLayout& l) { l.rotary_dim = 65; });
  expect_bad([](KvLayout& l) { l.rope_theta = -1.0f; });
  expect_bad([](KvLayout& l) { l.position_start = -5; });
  expect_bad([](KvLayout& l) {
    l.num_layers = kMaxLayers;
    l.num_tokens = kMaxTokensPerObject;
  });
}

// A proto3 client that leaves rope_theta at its default (0) for keys stored before RoPE is
// valid: the field does not apply. Rotated keys still need a positive theta.
TEST(LayoutTest, RopeThetaIsCheckedOnlyWhereItApplies) {
  KvLayout none = SmolLayout();
  none.rope = RopeConvention::kNone;
  none.rope_theta = 0.0f;
  EXPECT_OK(none.Validate());
  none.rope_theta = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(none.Validate(), StatusIs(absl::StatusCode::kInvalidArgument));
  none.rope_theta = -1.0f;
  EXPECT_THAT(none.Validate(), StatusIs(absl::StatusCode::kInvalidArgument));
  KvLayout neox = SmolLayout();
  neox.rope_theta = 0.0f;
  EXPECT_THAT(neox.Validate(), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(LayoutTest, ObjectInfoChecksRawPayloadSize) {
  ObjectInfo info;
  info.layout = SmolLayout();
  info.payload_bytes = info.layout.RawBytes();
  EXPECT_OK(info.Validate());
  info.payload_bytes -= 1;
  EXPECT_THAT(info.Validate(), StatusIs(absl::StatusCode::kInvalidArgument));
  info.payload_bytes += 1;
  info.encoding_level = 2;
  EXPECT_THAT(info.Validate(), StatusIs(absl::StatusCode::kInvalidArgument));
  info.encoding = Encoding::kCacheGen;
  info.payload_bytes = 1000;
  EXPECT_OK(info.Validate());
  info.encoding_level = 4;  // KVQ's top level
  EXPECT_OK(info.Validate());
  info.encoding_level = 5;
  EXPECT_THAT(info.Validate(), StatusIs(absl::StatusCode::kInvalidArgument));
  info.encoding_level = 0;
  EXPECT_THAT(info.Validate(), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvstash
