// Runs the real `kvstash codec ...` binary on KV dumps written to a temp directory.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "kvstash/codec/cachegen.h"
#include "kvstash/codec/object_file.h"
#include "kvstash/codec/synthetic_kv.h"
#include "test_util.h"
#include "testing/status_matchers.h"

namespace kvstash::codec {
namespace {

struct CliRun {
  int code;
  std::string output;
};

CliRun Kvstash(const std::string& args) {
  const std::string cmd = std::string(KVSTASH_BINARY_DIR) + "/cli/kvstash " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  CliRun r{-1, ""};
  if (p == nullptr) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        std::filesystem::path(::testing::TempDir()) / ("kvstash_cli_" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
    for (int i = 0; i < 3; ++i) {
      ObjectInfo info;
      info.layout = testing::MakeLayout(4, 2, 16, 300);
      SyntheticKvOptions o;
      o.seed = 10 + i;
      ASSERT_TRUE(WriteObjectFile(Path("ctx" + std::to_string(i) + ".kvo"), info,
                                  SyntheticKv(info.layout, o))
                      .ok());
    }
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  std::filesystem::path dir_;
};

TEST_F(CliTest, EncodeInspectDecodeRoundTrip) {
  CliRun enc = Kvstash("codec encode " + Path("ctx0.kvo") + " " + Path("ctx0.cg") + " --level 2");
  ASSERT_EQ(enc.code, 0) << enc.output;
  EXPECT_NE(enc.output.find("smaller than f16"), std::string::npos) << enc.output;

  CliRun ins = Kvstash("codec inspect " + Path("ctx0.cg"));
  ASSERT_EQ(ins.code, 0) << ins.output;
  for (const char* part :
       {"payload", "CDFs", "stream lengths", "scales", "header + bins", "vs 8-bit"}) {
    EXPECT_NE(ins.output.find(part), std::string::npos) << part << "\n" << ins.output;
  }

  CliRun dec = Kvstash("codec decode " + Path("ctx0.cg") + " " + Path("ctx0.out"));
  ASSERT_EQ(dec.code, 0) << dec.output;
  auto encoded = ReadObjectFile(Path("ctx0.cg"));
  auto decoded = ReadObjectFile(Path("ctx0.out"));
  ASSERT_OK(encoded);
  ASSERT_OK(decoded);
  EXPECT_EQ(encoded->info.encoding, Encoding::kCacheGen);
  EXPECT_EQ(encoded->info.encoding_level, 2);
  EXPECT_EQ(decoded->info.encoding, Encoding::kRaw);
  auto expect = DecodeCacheGen(encoded->payload);
  ASSERT_OK(expect);
  EXPECT_EQ(decoded->payload, *expect);
}

TEST_F(CliTest, ProfileEncodeDecode) {
  CliRun prof = Kvstash("codec profile --out " + Path("model.kvcp") + " " + Path("ctx1.kvo") + " " +
                        Path("ctx2.kvo") + " --delta");
  ASSERT_EQ(prof.code, 0) << prof.output;
  EXPECT_NE(prof.output.find("delta mode"), std::string::npos) << prof.output;
  CliRun ins = Kvstash("codec inspect " + Path("model.kvcp"));
  ASSERT_EQ(ins.code, 0) << ins.output;
  EXPECT_NE(ins.output.find("CacheGen profile"), std::string::npos);

  CliRun enc = Kvstash("codec encode " + Path("ctx0.kvo") + " " + Path("ctx0.cg") +
                       " --level 1 --delta --profile " + Path("model.kvcp"));
  ASSERT_EQ(enc.code, 0) << enc.output;
  CliRun without = Kvstash("codec decode " + Path("ctx0.cg") + " " + Path("x.out"));
  EXPECT_EQ(without.code, 1);
  EXPECT_NE(without.output.find("not available"), std::string::npos) << without.output;
  CliRun with = Kvstash("codec decode " + Path("ctx0.cg") + " " + Path("x.out") + " --profile " +
                        Path("model.kvcp"));
  EXPECT_EQ(with.code, 0) << with.output;
}

TEST_F(CliTest, ClearErrorsForBadInput) {
  CliRun missing = Kvstash("codec encode " + Path("nope.kvo") + " " + Path("o.cg"));
  EXPECT_NE(missing.code, 0);
  EXPECT_NE(missing.output.find("nope.kvo"), std::string::npos) << missing.output;

  CliRun level = Kvstash("codec encode " + Path("ctx0.kvo") + " " + Path("o.cg") + " --level 7");
  EXPECT_NE(level.code, 0);
  EXPECT_NE(level.output.find("--level"), std::string::npos) << level.output;

  // A raw dump is not a CacheGen object.
  CliRun not_cg = Kvstash("codec decode " + Path("ctx0.kvo") + " " + Path("o.out"));
  EXPECT_EQ(not_cg.code, 1);
  EXPECT_NE(not_cg.output.find("not a CacheGen object"), std::string::npos) << not_cg.output;

  // A corrupted encoded object fails its checksum.
  ASSERT_EQ(Kvstash("codec encode " + Path("ctx0.kvo") + " " + Path("c.cg")).code, 0);
  {
    std::fstream f(Path("c.cg"), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(64 + 100);
    f.put('\x55');
  }
  CliRun corrupt = Kvstash("codec inspect " + Path("c.cg"));
  EXPECT_EQ(corrupt.code, 1);
  EXPECT_NE(corrupt.output.find("checksum"), std::string::npos) << corrupt.output;
}

}  // namespace
}  // namespace kvstash::codec
