// The CLI's progress bar: its line, and that it stays quiet off a terminal.
#include "progress.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace kvstash::cli {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(ProgressTest, FormatShowsBarPercentRateAndEta) {
  // 48 MiB of 96 MiB in 4 s: 12 MiB/s, 4 s to go.
  const std::string line =
      Progress::Format("put big.bin", 48u << 20, 96u << 20, ProgressUnit::kBytes, 4.0, 10);
  EXPECT_EQ(line, "put big.bin  [#####-----]  50%  48.0 MiB of 96.0 MiB  12.0 MiB/s  ETA 0:04");
}

TEST(ProgressTest, FormatWhenDoneGivesTheTimeTaken) {
  EXPECT_EQ(Progress::Format("bench", 32, 32, ProgressUnit::kItems, 125.0, 4),
            "bench  [####] 100%  32 of 32  0 /s  in 2:05");
}

TEST(ProgressTest, FormatWithoutTotalOrRate) {
  EXPECT_EQ(Progress::Format("get", 1536, 0, ProgressUnit::kBytes, 0.0), "get  1.5 KiB  0 B/s");
  EXPECT_THAT(Progress::Format("get", 0, 100, ProgressUnit::kBytes, 0.0, 4),
              HasSubstr("ETA --:--"));
  // Hours once it is that long.
  EXPECT_THAT(Progress::Format("x", 1, 3601, ProgressUnit::kItems, 1.0, 4),
              HasSubstr("ETA 1:00:00"));
}

TEST(ProgressTest, QuietWhenNotATerminal) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    Progress p("put", 100, ProgressUnit::kBytes, f, std::chrono::milliseconds(0));
    EXPECT_FALSE(p.enabled());
    p.Update(50);
    p.Update(100);
    p.Finish();
  }
  EXPECT_EQ(std::ftell(f), 0);
  std::fclose(f);
}

TEST(ProgressTest, DrawsOnATerminal) {
  const int master = posix_openpt(O_RDWR | O_NOCTTY);
  if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0) {
    GTEST_SKIP() << "no pseudo-terminal available";
  }
  const char* name = ptsname(master);
  ASSERT_NE(name, nullptr);
  std::FILE* tty = std::fopen(name, "w");
  ASSERT_NE(tty, nullptr);
  {
    Progress p("get", 10, ProgressUnit::kItems, tty, std::chrono::milliseconds(0));
    EXPECT_TRUE(p.enabled());
    p.Update(10);
    p.Finish();
  }
  std::fclose(tty);
  std::string seen;
  char buf[512];
  fcntl(master, F_SETFL, O_NONBLOCK);
  for (ssize_t n; (n = read(master, buf, sizeof(buf))) > 0;) seen.append(buf, n);
  close(master);
  EXPECT_THAT(seen, HasSubstr("get  ["));
  EXPECT_THAT(seen, HasSubstr("100%"));
  EXPECT_THAT(seen, Not(HasSubstr("ETA")));  // finished: the time taken instead
}

}  // namespace
}  // namespace kvstash::cli
