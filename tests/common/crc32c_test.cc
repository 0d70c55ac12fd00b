#include "kvstash/common/crc32c.h"

#include <gtest/gtest.h>

#include <string>

namespace kvstash {
namespace {

TEST(Crc32cTest, MatchesStandardCheckValue) {
  const std::string check = "123456789";
  EXPECT_EQ(Crc32c(check.data(), check.size()), 0xE3069283u);
}

TEST(Crc32cTest, EmptyInputIsZero) { EXPECT_EQ(Crc32c("", 0), 0u); }

TEST(Crc32cTest, KnownVectorsFromRfc3720) {
  // RFC 3720 B.4: 32 bytes of zeros and 32 bytes of 0xFF.
  std::string zeros(32, '\0');
  std::string ones(32, '\xFF');
  EXPECT_EQ(Crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(ones.data(), ones.size()), 0x62A8AB43u);
}

TEST(Crc32cTest, ExtendEqualsWhole) {
  std::string data(10000, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 31 + 7);
  uint32_t whole = Crc32c(data.data(), data.size());
  for (size_t split : {size_t{0}, size_t{1}, size_t{4095}, size_t{9999}, size_t{10000}}) {
    uint32_t part = Crc32c(data.data(), split);
    EXPECT_EQ(Crc32cExtend(part, data.data() + split, data.size() - split), whole) << split;
  }
}

}  // namespace
}  // namespace kvstash
