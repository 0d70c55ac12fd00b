#include "kvstash/codec/object_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "kvstash/codec/synthetic_kv.h"
#include "test_util.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::codec {
namespace {

std::string TempPath(const char* name) {
  return std::string(::testing::TempDir()) + "/" + name + "_" + std::to_string(getpid());
}

TEST(ObjectFileTest, RoundTripAndCorruption) {
  ObjectInfo info;
  info.layout = testing::MakeLayout(2, 2, 4, 10);
  auto kv = SyntheticKv(info.layout);
  const std::string path = TempPath("dump.kvo");
  ASSERT_OK(WriteObjectFile(path, info, kv));
  auto back = ReadObjectFile(path);
  ASSERT_OK(back);
  EXPECT_EQ(back->payload, kv);
  EXPECT_EQ(back->info.layout, info.layout);

  // Flip one payload byte: checksum mismatch.
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(64 + 5);
    f.put(static_cast<char>(kv[5] ^ 1));
  }
  EXPECT_THAT(ReadObjectFile(path), StatusIs(absl::StatusCode::kDataLoss));
  // Truncate: size no longer matches the header.
  ASSERT_EQ(truncate(path.c_str(), 64 + 7), 0);
  EXPECT_THAT(ReadObjectFile(path), StatusIs(absl::StatusCode::kInvalidArgument));
  std::remove(path.c_str());
  EXPECT_THAT(ReadObjectFile(path), StatusIs(absl::StatusCode::kNotFound));
}

TEST(ObjectFileTest, RawPayloadMustMatchLayout) {
  ObjectInfo info;
  info.layout = testing::MakeLayout(1, 1, 4, 2);
  std::vector<uint8_t> wrong(7);
  EXPECT_THAT(WriteObjectFile(TempPath("bad.kvo"), info, wrong),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvstash::codec
