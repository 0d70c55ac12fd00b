// Prefill/decode disaggregation with the reference engine (stories260K): a prefill-only
// `kvstash generate` on node A offers the prompt's KV, a decode-only one on node B fetches the
// handoff and generates. The tokens must equal a single-node run without any cache, also when
// the handoff cannot be fetched (the decode side recomputes).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>

#include "service_process.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kPrompt[] =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "park with her friends. One day, she saw a big red ball under a tree. She ran to the ball "
    "and picked it up. It was shiny and new. Lily wanted to show her mom the ball, so she ran "
    "home as fast as she could. Her mom smiled and said the ball was very pretty.";

class PdGenerateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string secret = files_.path() + "/secret";
    std::ofstream(secret) << "pd-generate-test-cluster-secret\n";
    ServiceOptions a_opts;
    a_opts.tcp = true;
    a_opts.extra_args = {"--peer-secret-file", secret, "--peer-retry-ms", "60000"};
    ASSERT_OK_AND_ASSIGN(a_, ServiceProcess::Start(dir_a_.path(), a_opts));
    ServiceOptions b_opts;
    b_opts.tcp = true;
    b_opts.extra_args = {"--peer-secret-file", secret, "--peer", a_->target(),
                         "--peer-timeout-ms",  "20000"};
    ASSERT_OK_AND_ASSIGN(b_, ServiceProcess::Start(dir_b_.path(), b_opts));
  }

  // Runs `kvstash generate` on stories260K with `extra` flags; stdout (the text) in *text,
  // stderr in *log.
  int Generate(std::vector<std::string> extra, std::string* text, std::string* log,
               const std::string& max_tokens = "24") {
    std::vector<std::string> argv = {BinaryPath("cli/kvstash"),
                                     "generate",
                                     "--model",
                                     std::string(KVSTASH_SHARED_DATA) + "/models/stories260K.bin",
                                     "--tokenizer",
                                     std::string(KVSTASH_SHARED_DATA) + "/models/tok512.bin",
                                     "--prompt",
                                     kPrompt,
                                     "--max-tokens",
                                     max_tokens,
                                     "--chunk-tokens",
                                     "32",
                                     "--threads",
                                     "1"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    const std::string out_path = files_.path() + "/stdout";
    argv.insert(argv.begin(), {"/bin/sh", "-c", "\"$0\" \"$@\" >\"$OUT\""});
    ::setenv("OUT", out_path.c_str(), 1);
    int rc = RunProgram(argv, log, 120'000);
    std::ifstream in(out_path);
    text->assign(std::istreambuf_iterator<char>(in), {});
    return rc;
  }

  TempDir dir_a_, dir_b_, files_;
  std::unique_ptr<ServiceProcess> a_, b_;
};

TEST_F(PdGenerateTest, DecodeAfterAHandoffGeneratesTheTokensOfOneNode) {
  std::string single, log;
  ASSERT_EQ(Generate({}, &single, &log), 0) << log;
  ASSERT_FALSE(single.empty());
  const std::string handoff = files_.path() + "/handoff.bin";
  std::string prefill_text;
  ASSERT_EQ(Generate({"--cache-target", a_->target(), "--handoff-out", handoff}, &prefill_text,
                     &log, "1"),
            0)
      << log;
  EXPECT_THAT(log, HasSubstr("handoff: offered"));
  std::string decoded;
  ASSERT_EQ(
      Generate({"--cache-target", b_->target(), "--handoff-in", handoff, "--handoff-required"},
               &decoded, &log),
      0)
      << log;
  EXPECT_THAT(log, HasSubstr("already here 0"));
  EXPECT_THAT(log, ::testing::Not(HasSubstr("fetched 0 ")));
  EXPECT_THAT(log, ::testing::Not(HasSubstr("hit 0 of")));  // the KV came through the handoff
  EXPECT_EQ(decoded, single);
}

TEST_F(PdGenerateTest, AHandoffThatCannotBeFetchedIsRecomputedWithTheSameTokens) {
  std::string single, log;
  ASSERT_EQ(Generate({}, &single, &log), 0) << log;
  const std::string handoff = files_.path() + "/handoff.bin";
  std::string ignored;
  ASSERT_EQ(
      Generate({"--cache-target", a_->target(), "--handoff-out", handoff}, &ignored, &log, "1"), 0)
      << log;
  a_->Kill();  // the prefill node is gone before the decode side asks
  // Policy "fail": the request refuses to go on.
  std::string decoded;
  EXPECT_NE(
      Generate({"--cache-target", b_->target(), "--handoff-in", handoff, "--handoff-required"},
               &decoded, &log),
      0);
  EXPECT_THAT(log, HasSubstr("handoff"));
  // Policy "recompute" (the default): the same tokens as one node without any cache.
  ASSERT_EQ(Generate({"--cache-target", b_->target(), "--handoff-in", handoff}, &decoded, &log), 0)
      << log;
  EXPECT_THAT(log, HasSubstr("fetched 0"));
  EXPECT_THAT(log, HasSubstr("hit 0 of"));
  EXPECT_EQ(decoded, single);
}

// --handoff-land-tier: gpu on a decode node without a GPU pool is refused up front
// (FailedPrecondition naming --gpu-pool-capacity) and, with --handoff-required, ends the run
// without touching the prefill node's pins; the same handoff then lands with cpu and generates
// the tokens of one node, and gpu without --handoff-required recomputes (a failed fetch); a value
// the parser does not know is refused before anything runs.
TEST_F(PdGenerateTest, TheLandTierFlagLandsInCpuAndRefusesGpuWithoutAPool) {
  std::string single, log;
  ASSERT_EQ(Generate({}, &single, &log), 0) << log;
  const std::string handoff = files_.path() + "/handoff.bin";
  std::string ignored;
  ASSERT_EQ(
      Generate({"--cache-target", a_->target(), "--handoff-out", handoff}, &ignored, &log, "1"), 0)
      << log;

  std::string decoded;
  EXPECT_NE(Generate({"--cache-target", b_->target(), "--handoff-in", handoff, "--handoff-required",
                      "--handoff-land-tier", "gpu"},
                     &decoded, &log),
            0);
  EXPECT_THAT(log, HasSubstr("handoff: FAILED_PRECONDITION"));
  EXPECT_THAT(log, HasSubstr("--gpu-pool-capacity"));
  EXPECT_THAT(log, ::testing::Not(HasSubstr("cache: hit")));  // it stopped before prefill

  // The refusal released nothing on the prefill node: cpu lands the whole handoff.
  ASSERT_EQ(Generate({"--cache-target", b_->target(), "--handoff-in", handoff, "--handoff-required",
                      "--handoff-land-tier", "cpu"},
                     &decoded, &log),
            0)
      << log;
  EXPECT_THAT(log, HasSubstr("already here 0"));
  EXPECT_THAT(log, ::testing::Not(HasSubstr("fetched 0 ")));
  EXPECT_THAT(log, ::testing::Not(HasSubstr("hit 0 of")));  // the KV came through the handoff
  EXPECT_EQ(decoded, single);

  // Policy "recompute" (no --handoff-required): a refused landing is a failed fetch, and the run
  // goes on with the same tokens (here from the chunks the cpu landing left on this node).
  ASSERT_EQ(Generate({"--cache-target", b_->target(), "--handoff-in", handoff,
                      "--handoff-land-tier", "gpu"},
                     &decoded, &log),
            0)
      << log;
  EXPECT_THAT(log, HasSubstr("handoff: fetch failed (FAILED_PRECONDITION"));
  EXPECT_EQ(decoded, single);

  std::string text;
  EXPECT_NE(Generate({"--cache-target", b_->target(), "--handoff-in", handoff,
                      "--handoff-land-tier", "tpu"},
                     &text, &log),
            0);
  EXPECT_THAT(log, HasSubstr("--handoff-land-tier"));
  EXPECT_THAT(log, HasSubstr("tpu"));
  EXPECT_THAT(log, ::testing::Not(HasSubstr("handoff:")));  // refused by the parser
}

TEST_F(PdGenerateTest, AGarbageHandoffFileIsRefused) {
  const std::string handoff = files_.path() + "/garbage.bin";
  std::ofstream(handoff) << "this is not a handoff";
  std::string text, log;
  EXPECT_NE(Generate({"--cache-target", b_->target(), "--handoff-in", handoff}, &text, &log), 0);
  EXPECT_THAT(log, HasSubstr("not a serialized handoff"));
  EXPECT_NE(Generate({"--handoff-in", handoff}, &text, &log), 0);
  EXPECT_THAT(log, HasSubstr("need --cache-target"));
}

}  // namespace
}  // namespace kvstash::testing
