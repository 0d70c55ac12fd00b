#include "kvstash/common/object_header.h"

#include <gtest/gtest.h>

#include "kvstash/common/crc32c.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash {
namespace {

ObjectInfo SampleInfo() {
  ObjectInfo info;
  info.layout.num_layers = 5;
  info.layout.layer_begin = 0;
  info.layout.total_kv_heads = 4;
  info.layout.head_begin = 1;
  info.layout.head_end = 3;
  info.layout.head_dim = 8;
  info.layout.dtype = DType::kF32;
  info.layout.num_tokens = 37;
  info.layout.rope = RopeConvention::kGptj;
  info.layout.rope_theta = 10000.0f;
  info.layout.position_start = 12;
  info.payload_bytes = info.layout.RawBytes();
  info.payload_crc32c = 0xDEADBEEF;
  return info;
}

TEST(ObjectHeaderTest, RoundTrip) {
  auto bytes = EncodeObjectHeader(SampleInfo());
  ASSERT_OK(bytes);
  auto back = DecodeObjectHeader(*bytes);
  ASSERT_OK(back);
  EXPECT_EQ(*back, SampleInfo());
}

TEST(ObjectHeaderTest, LittleEndianFixedFields) {
  auto bytes = EncodeObjectHeader(SampleInfo());
  ASSERT_OK(bytes);
  const auto& b = *bytes;
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(b.data()), 4), "KVSO");
  EXPECT_EQ(b[4], 1);    // version
  EXPECT_EQ(b[6], 64);   // header bytes
  EXPECT_EQ(b[8], 5);    // num_layers
  EXPECT_EQ(b[28], 37);  // num_tokens
  EXPECT_EQ(b[32], 12);  // position_start
  EXPECT_EQ(b[56], 0xEF);
  EXPECT_EQ(b[59], 0xDE);
}

TEST(ObjectHeaderTest, RejectsTruncatedCorruptAndInvalid) {
  auto bytes = EncodeObjectHeader(SampleInfo());
  ASSERT_OK(bytes);
  auto b = *bytes;
  EXPECT_THAT(DecodeObjectHeader(std::span(b).first(63)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  for (size_t i = 0; i < b.size(); ++i) {
    auto copy = b;
    copy[i] ^= 0x40;
    // Magic, version and header length (bytes 0..7) are checked before the checksum.
    EXPECT_THAT(DecodeObjectHeader(copy),
                StatusIs(i < 8 ? absl::StatusCode::kInvalidArgument : absl::StatusCode::kDataLoss))
        << "flip at byte " << i;
  }
  // A header whose checksum is right but whose fields are invalid is still refused.
  auto invalid = b;
  invalid[8] = 0;  // num_layers = 0
  uint32_t crc = Crc32c(invalid.data(), 60);
  for (int i = 0; i < 4; ++i) invalid[60 + i] = static_cast<uint8_t>(crc >> (8 * i));
  EXPECT_THAT(DecodeObjectHeader(invalid), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ObjectHeaderTest, EncodeRejectsInvalidInfo) {
  ObjectInfo info = SampleInfo();
  info.payload_bytes += 1;
  EXPECT_THAT(EncodeObjectHeader(info), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvstash
