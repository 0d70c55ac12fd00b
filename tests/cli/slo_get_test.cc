// `kvstash get --slo-ms MS --out-dir DIR KEY...` (cli/src/slo_get.h): the real CLI binary against
// a real cachesvc. KV chunks come from `kvstash synth` (30 layers x 256 tokens x 3 heads x 64,
// f16, 5.9 MB: SmolLM2-shaped, smooth enough for the codecs). "Slow" is --simulate-link-mbps,
// never a sleep, so what is asserted does not depend on this machine's speed.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "service_process.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr int kKeys = 3;

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
}

// The printed line of chunk `i`: "chunk I KEY: chose X, received Y, ...".
std::string ChunkLine(const std::string& out, int i) {
  std::istringstream lines(out);
  const std::string prefix = absl::StrCat("chunk ", i, " ");
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(prefix, 0) == 0) return line;
  }
  return "";
}

// "kvq-l3" out of "... chose kvq-l3, ..." (the word after `what`).
std::string Field(const std::string& line, const std::string& what) {
  const size_t at = line.find(what + " ");
  if (at == std::string::npos) return "";
  const size_t begin = at + what.size() + 1;
  return line.substr(begin, line.find(',', begin) - begin);
}

class SloGetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(svc_, ServiceProcess::Start(dir_.path()));
    for (int i = 0; i < kKeys; ++i) {
      const std::string file = absl::StrCat(dir_.path(), "/chunk", i, ".kvo");
      std::string out;
      ASSERT_EQ(
          RunProgram({BinaryPath("cli/kvstash"), "synth", file, "--seed", std::to_string(i + 1)},
                     &out),
          0)
          << out;
      ASSERT_EQ(Kvstash({"put", absl::StrCat("k", i), file}, &out), 0) << out;
      files_.push_back(ReadFile(file));
    }
  }
  int Kvstash(std::vector<std::string> args, std::string* out) {
    args.insert(args.begin(), BinaryPath("cli/kvstash"));
    args.emplace_back("--target");
    args.push_back(svc_->target());
    return RunProgram(args, out, 120'000);
  }
  std::vector<std::string> Keys() const {
    std::vector<std::string> keys;
    for (int i = 0; i < kKeys; ++i) keys.push_back(absl::StrCat("k", i));
    return keys;
  }
  std::vector<std::string> Get(std::vector<std::string> options) const {
    std::vector<std::string> args = {"get"};
    args.insert(args.end(), options.begin(), options.end());
    for (const std::string& k : Keys()) args.push_back(k);
    return args;
  }

  TempDir dir_;
  std::unique_ptr<ServiceProcess> svc_;
  std::vector<std::vector<uint8_t>> files_;  // as put
};

TEST_F(SloGetTest, AGenerousBudgetWritesEveryObjectRawAndExact) {
  const std::string out_dir = dir_.path() + "/out";
  std::string out;
  ASSERT_EQ(Kvstash(Get({"--slo-ms", "100000", "--out-dir", out_dir}), &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("candidates (calibrated on this host"));
  for (int i = 0; i < kKeys; ++i) {
    SCOPED_TRACE(i);
    const std::string line = ChunkLine(out, i);
    EXPECT_EQ(Field(line, "chose"), "raw") << out;
    EXPECT_EQ(Field(line, "received"), "raw") << out;
    EXPECT_THAT(line, HasSubstr(absl::StrCat(files_[i].size() - 64, " bytes on the wire")));
    EXPECT_EQ(ReadFile(absl::StrCat(out_dir, "/k", i)), files_[i]);
  }
  EXPECT_THAT(out, HasSubstr("against a budget of 100000.0 ms: within the budget"));
  // The first chunk measures the link; the others follow its throughput.
  EXPECT_THAT(ChunkLine(out, 0), HasSubstr("at link unknown"));
  EXPECT_THAT(ChunkLine(out, 1), Not(HasSubstr("at link unknown")));
}

// At 80 Mbit/s (10 MB/s) a raw chunk takes 0.59 s, so 0.7 s for three never lets one in and the
// fastest candidate is always an encoded one: every chunk comes encoded, among the candidates
// asked for, with the service's encode time, and its file has the object's size (lossy bytes).
TEST_F(SloGetTest, ATightBudgetOnASlowLinkWritesEncodedChunks) {
  for (const std::string& codecs : {std::string(), std::string("cachegen-l1,kvq-l2")}) {
    SCOPED_TRACE(codecs);
    const std::string out_dir = dir_.path() + "/tight" + std::to_string(codecs.size());
    std::vector<std::string> options = {"--slo-ms", "700",       "--simulate-link-mbps",
                                        "80",       "--out-dir", out_dir};
    if (!codecs.empty()) {
      options.emplace_back("--codecs");
      options.push_back(codecs);
    }
    std::string out;
    ASSERT_EQ(Kvstash(Get(options), &out), 0) << out;
    EXPECT_THAT(out, HasSubstr("simulated link: 80.0 Mbit/s"));
    for (int i = 0; i < kKeys; ++i) {
      SCOPED_TRACE(i);
      const std::string line = ChunkLine(out, i);
      const std::string chosen = Field(line, "chose");
      EXPECT_NE(chosen, "raw") << out;
      EXPECT_EQ(Field(line, "received"), chosen) << out;
      if (codecs.empty()) {
        EXPECT_TRUE(chosen.rfind("kvq-l", 0) == 0 || chosen == "cachegen-l2") << chosen;
      } else {
        EXPECT_TRUE(chosen == "cachegen-l1" || chosen == "kvq-l2") << chosen;
      }
      EXPECT_THAT(line, Not(HasSubstr("service encode 0.0 ms")));
      EXPECT_THAT(line, HasSubstr("at link 80.0 Mbit/s"));
      const std::vector<uint8_t> written = ReadFile(absl::StrCat(out_dir, "/k", i));
      EXPECT_EQ(written.size(), files_[i].size());
      EXPECT_NE(written, files_[i]);  // lossy
    }
  }
}

TEST_F(SloGetTest, BadInputIsRefusedWithAPreciseMessage) {
  const std::string out_dir = dir_.path() + "/bad";
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  for (const Case& k : {
           Case{{"get", "--slo-ms", "500", "--out-dir", out_dir}, "KEY is required"},
           Case{Get({"--slo-ms", "0", "--out-dir", out_dir}), "--slo-ms must be a positive"},
           Case{Get({"--slo-ms", "-5", "--out-dir", out_dir}), "--slo-ms must be a positive"},
           Case{Get({"--slo-ms", "500"}), "--slo-ms needs --out-dir DIR"},
           Case{Get({"--slo-ms", "500", "--out-dir", out_dir, "--codecs", "kvq-l2,zstd"}),
                "--codecs: unknown codec 'zstd'"},
           Case{Get({"--slo-ms", "500", "--out-dir", out_dir, "--codecs", "cachegen-l4"}),
                "--codecs: unknown codec 'cachegen-l4'"},
           Case{Get({"--slo-ms", "500", "--out-dir", out_dir, "--cachegen", "2"}),
                "--cachegen and --slo-ms exclude each other"},
           Case{{"get", "--slo-ms", "500", "--out-dir", out_dir, "k0", "k0"},
                "two KEYs would be written to the same file"},
           Case{Get({"--out-dir", out_dir}),
                "--out-dir, --codecs and --simulate-link-mbps go "
                "with --slo-ms"},
           Case{Get({}), "expected KEY FILE (3 operands given)"},
       }) {
    SCOPED_TRACE(k.message);
    std::string out;
    EXPECT_EQ(Kvstash(k.args, &out), 2) << out;
    EXPECT_THAT(out, HasSubstr(k.message));
  }
  EXPECT_FALSE(std::filesystem::exists(out_dir));
  // A key the service does not hold: the others are written, the command fails.
  std::string out;
  EXPECT_EQ(
      Kvstash({"get", "--slo-ms", "100000", "--out-dir", out_dir, "k0", "absent", "k2"}, &out), 1)
      << out;
  EXPECT_THAT(out, HasSubstr("absent: NOT_FOUND"));
  EXPECT_EQ(ReadFile(out_dir + "/k0"), files_[0]);
  EXPECT_EQ(ReadFile(out_dir + "/k2"), files_[2]);
  EXPECT_FALSE(std::filesystem::exists(out_dir + "/absent"));
}

}  // namespace
}  // namespace kvstash::testing
