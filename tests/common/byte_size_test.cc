#include "kvstash/common/byte_size.h"

#include <gtest/gtest.h>

#include <cstdint>

#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash {
namespace {

TEST(ParseByteSize, AcceptsUnits) {
  EXPECT_EQ(*ParseByteSize("4096"), 4096u);
  EXPECT_EQ(*ParseByteSize("512MiB"), 512ull << 20);
  EXPECT_EQ(*ParseByteSize("4GiB"), 4ull << 30);
  EXPECT_EQ(*ParseByteSize("4gib"), 4ull << 30);
  EXPECT_EQ(*ParseByteSize("1.5G"), 3ull << 29);
  EXPECT_EQ(*ParseByteSize("100MB"), 100'000'000u);
  EXPECT_EQ(*ParseByteSize("2 KiB"), 2048u);
  EXPECT_EQ(*ParseByteSize("18446744073709551615"), UINT64_MAX);
}

TEST(ParseByteSize, RejectsGarbage) {
  for (const char* bad : {"", "MiB", "12XB", "1..5G", "-1", "1e3", "99999999999TiB"}) {
    auto r = ParseByteSize(bad);
    EXPECT_THAT(r, StatusIs(absl::StatusCode::kInvalidArgument)) << bad;
  }
}

TEST(FormatByteSize, PicksBinaryUnits) {
  EXPECT_EQ(FormatByteSize(512), "512 B");
  EXPECT_EQ(FormatByteSize(1536), "1.5 KiB");
  EXPECT_EQ(FormatByteSize(5898240), "5.6 MiB");
  EXPECT_EQ(FormatByteSize(4ull << 30), "4.0 GiB");
}

}  // namespace
}  // namespace kvstash
