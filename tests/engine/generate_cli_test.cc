// `kvstash generate` end to end on stories260K: greedy text on stdout, timings on stderr.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(GenerateCliTest, StoriesGreedyTextAndTimings) {
  const std::string bin = std::string(KVSTASH_BINARY_DIR) + "/cli/kvstash";
  if (!std::filesystem::exists(bin)) GTEST_SKIP() << "build the kvstash target first";
  const std::string data = KVSTASH_SHARED_DATA;
  const std::string tmp = std::filesystem::temp_directory_path().string() + "/kvstash_gen_" +
                          std::to_string(::getpid());
  const std::string cmd = bin + " generate --model " + data + "/models/stories260K.bin" +
                          " --tokenizer " + data + "/models/tok512.bin" +
                          " --prompt '' --max-tokens 60 --temperature 0 > " + tmp + ".out 2> " +
                          tmp + ".err";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << ReadFile(tmp + ".err");
  std::string out = ReadFile(tmp + ".out"), err = ReadFile(tmp + ".err");
  EXPECT_EQ(out.rfind("Once upon a time, there was a little girl named Lily.", 0), 0u) << out;
  EXPECT_NE(err.find("TTFT"), std::string::npos) << err;
  EXPECT_NE(err.find("tokens/s"), std::string::npos) << err;
  // A llama2.c checkpoint without --tokenizer is a usage error with a message.
  const std::string bad = bin + " generate --model " + data + "/models/stories260K.bin" +
                          " --prompt hi > /dev/null 2> " + tmp + ".err";
  EXPECT_NE(std::system(bad.c_str()), 0);
  EXPECT_NE(ReadFile(tmp + ".err").find("--tokenizer"), std::string::npos);
  std::filesystem::remove(tmp + ".out");
  std::filesystem::remove(tmp + ".err");
}

}  // namespace
