// The CLI's progress bar: its lines, that it stays quiet off a terminal, and that on one it
// erases itself before other output (Clear) and shows work without progress of its own.
#include "progress.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

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
            "bench  [####] 100%  32 of 32  0.26 /s  in 2:05");
  EXPECT_EQ(Progress::Format("turns", 10, 20, ProgressUnit::kItems, 5.0, 4),
            "turns  [##--]  50%  10 of 20  2.00 /s  ETA 0:05");
  EXPECT_EQ(Progress::Format("turns", 600, 600, ProgressUnit::kItems, 2.0, 4),
            "turns  [####] 100%  600 of 600  300 /s  in 0:02");
}

TEST(ProgressTest, FormatBusyMovesAMarkerAndShowsTheTime) {
  EXPECT_EQ(Progress::FormatBusy("encode", 96u << 20, ProgressUnit::kBytes, 0.0, 10),
            "encode  [<=>-------]  96.0 MiB  0:00");
  // One step per 100 ms; at the far end it comes back.
  EXPECT_EQ(Progress::FormatBusy("encode", 96u << 20, ProgressUnit::kBytes, 0.35, 10),
            "encode  [---<=>----]  96.0 MiB  0:00");
  EXPECT_EQ(Progress::FormatBusy("encode", 96u << 20, ProgressUnit::kBytes, 0.75, 10),
            "encode  [-------<=>]  96.0 MiB  0:01");
  EXPECT_EQ(Progress::FormatBusy("encode", 96u << 20, ProgressUnit::kBytes, 0.95, 10),
            "encode  [-----<=>--]  96.0 MiB  0:01");
  // Without a total: the marker and the time only (65.9 s: step 659 of a 14-step round trip).
  EXPECT_EQ(Progress::FormatBusy("encode", 0, ProgressUnit::kBytes, 65.9, 10),
            "encode  [-<=>------]  1:06");
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

TEST(ProgressTest, ClearAndRunBusyAreQuietWhenNotATerminal) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  bool ran = false;
  {
    Progress p("encode", 100, ProgressUnit::kBytes, f, std::chrono::milliseconds(0));
    p.Update(10);
    p.Clear();
    p.RunBusy([&] { ran = true; });
  }
  EXPECT_TRUE(ran);
  EXPECT_EQ(std::ftell(f), 0);
  std::fclose(f);
}

// A pseudo-terminal: `tty` is the end a Progress writes to, Read() what appeared on it.
class Pty {
 public:
  Pty() {
    master_ = posix_openpt(O_RDWR | O_NOCTTY);
    if (master_ < 0 || grantpt(master_) != 0 || unlockpt(master_) != 0) return;
    const char* name = ptsname(master_);
    if (name != nullptr) tty_ = std::fopen(name, "w");
  }
  ~Pty() {
    if (tty_ != nullptr) std::fclose(tty_);
    if (master_ >= 0) close(master_);
  }
  std::FILE* tty() const { return tty_; }
  std::string Read() {
    std::fflush(tty_);
    std::string seen;
    char buf[512];
    fcntl(master_, F_SETFL, O_NONBLOCK);
    for (ssize_t n; (n = read(master_, buf, sizeof(buf))) > 0;) seen.append(buf, n);
    return seen;
  }

 private:
  int master_ = -1;
  std::FILE* tty_ = nullptr;
};

TEST(ProgressTest, ClearErasesTheBarBeforeOtherOutput) {
  Pty pty;
  if (pty.tty() == nullptr) GTEST_SKIP() << "no pseudo-terminal available";
  Progress p("turns", 4, ProgressUnit::kItems, pty.tty(), std::chrono::milliseconds(0));
  p.Update(1);
  // The bar, then on Clear: back to the line's start and erase it, so the text printed next
  // starts on a clean line.
  std::string seen = pty.Read();
  EXPECT_THAT(seen, HasSubstr("turns  ["));
  p.Clear();
  EXPECT_EQ(pty.Read(), "\r\033[K");
  p.Clear();  // nothing drawn any more: nothing written
  EXPECT_EQ(pty.Read(), "");
  // The next update draws again at once (no 100 ms wait after a Clear).
  p.Update(2);
  EXPECT_THAT(pty.Read(), HasSubstr(" 50%"));
  p.Update(4);  // may be throttled (100 ms since the last draw); Finish draws it regardless
  p.Finish();   // the final state, on its own line
  const std::string last = pty.Read();
  EXPECT_THAT(last, HasSubstr("100%"));
  EXPECT_THAT(last, HasSubstr("\n"));
}

TEST(ProgressTest, RunBusyDrawsTheElapsedTimeThenTheRate) {
  Pty pty;
  if (pty.tty() == nullptr) GTEST_SKIP() << "no pseudo-terminal available";
  {
    Progress p("encode", 1000, ProgressUnit::kBytes, pty.tty(), std::chrono::milliseconds(0));
    // Work that takes long enough for the helper thread to draw at least once (it draws at once
    // with no delay); no timing is asserted.
    p.RunBusy([] { std::this_thread::sleep_for(std::chrono::milliseconds(250)); });
    p.Finish();
  }
  const std::string seen = pty.Read();
  EXPECT_THAT(seen, HasSubstr("<=>"));
  EXPECT_THAT(seen, HasSubstr("100%  1000 B of 1000 B"));
  EXPECT_THAT(seen, HasSubstr(" in 0:00"));
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
