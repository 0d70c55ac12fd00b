// The copies of the shared-memory put path: bytes and crc32c for every size and alignment, on
// both sides of the streaming-store threshold.
#include "copy_crc.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "kvstash/common/crc32c.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::client::internal {
namespace {

std::vector<uint8_t> Pattern(size_t n) { return kvstash::testing::TestPayload(n, n); }

TEST(CopyForPutTest, CopiesEverySizeAndAlignmentWithItsCrc) {
  const size_t sizes[] = {0,
                          1,
                          63,
                          64,
                          4095,
                          (64 << 10) - 1,
                          64 << 10,
                          (64 << 10) + 1,
                          (16 << 10) * 5 + 37,
                          (2 << 20) + 13};
  for (size_t n : sizes) {
    for (size_t dst_offset : {0, 1, 31, 32, 63}) {
      for (size_t src_offset : {0, 7}) {
        std::vector<uint8_t> source = Pattern(n + src_offset);
        // Guard bytes on both sides of the destination catch a copy that runs over.
        std::vector<uint8_t> arena(n + dst_offset + 128, 0xA5);
        uint8_t* dst = arena.data() + dst_offset;
        Result<uint32_t> crc = CopyForPut(dst, source.data() + src_offset, n, 0);
        ASSERT_OK(crc);
        EXPECT_EQ(*crc, Crc32c(source.data() + src_offset, n))
            << "n=" << n << " dst_offset=" << dst_offset;
        EXPECT_TRUE(n == 0 || std::memcmp(dst, source.data() + src_offset, n) == 0)
            << "n=" << n << " dst_offset=" << dst_offset << " src_offset=" << src_offset;
        for (size_t i = 0; i < dst_offset; ++i) ASSERT_EQ(arena[i], 0xA5) << "before, n=" << n;
        for (size_t i = dst_offset + n; i < arena.size(); ++i) {
          ASSERT_EQ(arena[i], 0xA5) << "after, n=" << n << " dst_offset=" << dst_offset;
        }
      }
    }
  }
}

TEST(CopyForPutTest, AcceptsTheRightDeclaredCrcAndRejectsAWrongOne) {
  for (size_t n : {size_t{1000}, size_t{1} << 20}) {
    std::vector<uint8_t> source = Pattern(n);
    std::vector<uint8_t> dst(n);
    const uint32_t right = Crc32c(source.data(), n);
    Result<uint32_t> ok = CopyForPut(dst.data(), source.data(), n, right);
    ASSERT_OK(ok);
    EXPECT_EQ(*ok, right);
    Result<uint32_t> wrong = CopyForPut(dst.data(), source.data(), n, right ^ 1);
    EXPECT_THAT(wrong, StatusIs(absl::StatusCode::kInvalidArgument));
  }
}

TEST(CopyWithCrcTest, ExtendsTheCrcItIsGiven) {
  std::vector<uint8_t> source = Pattern(300 << 10);
  std::vector<uint8_t> dst(source.size());
  const size_t split = 100 << 10;
  uint32_t crc = CopyWithCrc(dst.data(), source.data(), split);
  crc = CopyWithCrc(dst.data() + split, source.data() + split, source.size() - split, crc);
  EXPECT_EQ(crc, Crc32c(source.data(), source.size()));
  EXPECT_EQ(dst, source);
}

}  // namespace
}  // namespace kvstash::client::internal
