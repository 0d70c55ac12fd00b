// `kvstash generate --cache-target` end to end against a real cachesvc: the second run loads
// the prompt's prefix from the cache and prints the same text as a run without the cache.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "service_process.h"
#include "testing/status_matchers.h"

namespace {

using kvstash::testing::RunProgram;

// Output without the "[kvstash generate] ..." report lines: the generated text.
std::string Text(const std::string& out) {
  std::stringstream in(out);
  std::string line, text;
  while (std::getline(in, line)) {
    if (line.rfind("[kvstash generate]", 0) != 0) text += line + "\n";
  }
  return text;
}

// The N of "cache: hit N of M prompt tokens", or -1. (Parsed by hand: GCC 12's <regex> warns
// -Wmaybe-uninitialized at -O3.)
int HitTokens(const std::string& out) {
  const size_t at = out.find("cache: hit ");
  int hit = 0, total = 0;
  if (at == std::string::npos ||
      std::sscanf(out.c_str() + at, "cache: hit %d of %d prompt tokens", &hit, &total) != 2) {
    return -1;
  }
  return hit;
}

TEST(GenerateCacheCliTest, SecondRunHitsAndPrintsTheSameText) {
  const std::string bin = kvstash::testing::BinaryPath("cli/kvstash");
  if (!std::filesystem::exists(bin)) GTEST_SKIP() << "build the kvstash target first";
  // RunProgram captures stdout and stderr together; gRPC's own log lines (e.g. the backup
  // poller's at channel shutdown) would land in the middle of the generated text.
  ::setenv("GRPC_VERBOSITY", "NONE", 1);
  kvstash::testing::TempDir dir;
  auto svc = kvstash::testing::ServiceProcess::Start(dir.path());
  ASSERT_OK(svc);
  const std::string data = KVSTASH_SHARED_DATA;
  const std::string prompt =
      "Once upon a time, there was a little boy named Tim. Tim had a big red ball. "
      "He liked to play with it in the park with his friends every day after school.";
  const std::vector<std::string> base = {bin,
                                         "generate",
                                         "--model",
                                         data + "/models/stories260K.bin",
                                         "--tokenizer",
                                         data + "/models/tok512.bin",
                                         "--prompt",
                                         prompt,
                                         "--max-tokens",
                                         "40",
                                         "--threads",
                                         "2"};
  std::vector<std::string> cached = base;
  cached.insert(cached.end(), {"--cache-target", (*svc)->target(), "--chunk-tokens", "16"});

  std::string plain, cold, warm;
  ASSERT_EQ(RunProgram(base, &plain), 0) << plain;
  ASSERT_EQ(RunProgram(cached, &cold), 0) << cold;
  ASSERT_EQ(RunProgram(cached, &warm), 0) << warm;
  EXPECT_EQ(HitTokens(cold), 0) << cold;
  EXPECT_NE(cold.find("stored"), std::string::npos) << cold;
  EXPECT_GE(HitTokens(warm), 32) << warm;
  EXPECT_EQ(Text(cold), Text(plain));
  EXPECT_EQ(Text(warm), Text(plain));

  // An unreachable cache is reported and the text is still the same.
  std::vector<std::string> absent = base;
  absent.insert(absent.end(), {"--cache-target", "unix://" + dir.path() + "/absent.sock"});
  std::string offline;
  ASSERT_EQ(RunProgram(absent, &offline), 0) << offline;
  EXPECT_NE(offline.find("cache unreachable"), std::string::npos) << offline;
  EXPECT_EQ(Text(offline), Text(plain));
}

}  // namespace
