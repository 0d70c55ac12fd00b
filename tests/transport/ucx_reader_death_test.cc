// A reader process killed (SIGKILL) while it connects to, or Fetches from, a serving transport:
// the serving transport must go on serving, and a new reader must connect and Fetch byte for
// byte. The killed reader is this test binary run again as a child (ReaderChild.FetchesUntilKilled,
// which skips unless the parent set KVSTASH_TEST_FETCH_READER), so that its death is a real
// process's.
//
// DISABLED: a reproducer of why `--peer-ucx-fetch` is off by default. Against Debian's UCX 1.13
// the serving process itself aborts inside UCX in most runs (4 of 6 and 5 of 6 release
// runs, 2026-12-07): UCX's tcp lane to the dead reader fails ("connect(...) failed: Connection
// refused"), ucp_ep_set_failed purges the endpoint's pending requests, and a pending wire-up REP
// message trips `ucp_request.c:684 Assertion ... got REP message` in ucp_request_send_state_ff
// (an assertion UCX removed upstream, openucx/ucx#8175). The same abort ended the serving
// cachesvc in PeerTest.ADecodeNodeRestartedMidFetchFetchesAgain/UcxDefault with Fetch on. With
// the keepalive at 1 s as here, a variant whose reader used Read instead of Fetch aborted the
// server too (4 of 6 runs: `ucp_request.inl:346 Fatal: unexpected error: Endpoint timeout` in
// ucp_get_req_handler). Run it with --gtest_also_run_disabled_tests.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "kvstash/transport/ucx_transport.h"
#include "testing/status_matchers.h"

extern char** environ;

namespace kvstash::transport {
namespace {

using ::kvstash::testing::IsOk;
using namespace std::chrono_literals;

constexpr size_t kServedBytes = 8 << 20;
constexpr size_t kOpBytes = 512 << 10;
constexpr const char* kReaderEnv = "KVSTASH_TEST_FETCH_READER";
// The child reports on this fd (its stdout carries googletest's own output).
constexpr int kReportFd = 3;

uint8_t ServedByte(size_t i) { return static_cast<uint8_t>(i * 131 + 7); }

// Fetches all of the served region in kOpBytes ranges.
Status FetchAll(UcxTransport& reader, PeerId peer, std::vector<uint8_t>& landing) {
  std::vector<ReadOp> ops;
  for (size_t at = 0; at < kServedBytes; at += kOpBytes) {
    ops.push_back({.remote_offset = at, .local = landing.data() + at, .length = kOpBytes});
  }
  return reader.Fetch(peer, ops, Clock::now() + 20s);
}

bool LandedByteForByte(const std::vector<uint8_t>& landing) {
  for (size_t i = 0; i < landing.size(); ++i) {
    if (landing[i] != ServedByte(i)) return false;
  }
  return true;
}

// The child: connects to the server named in the environment, reports "c" on kReportFd, then
// Fetches the whole region again and again, reporting "f" after each, for at most 60 s or 10000
// Fetches (the parent kills it long before).
TEST(ReaderChild, FetchesUntilKilled) {
  const char* spec = std::getenv(kReaderEnv);
  if (spec == nullptr) GTEST_SKIP() << "run by UcxReaderDeathTest as its reader process";
  std::vector<std::string> parts = absl::StrSplit(spec, ':');
  ASSERT_EQ(parts.size(), 4u);
  // Old absl (Debian's): HexStringToBytes returns the bytes and cannot report bad digits.
  const std::string worker_address = absl::HexStringToBytes(parts[0]);
  const std::string rkey = absl::HexStringToBytes(parts[3]);
  RemoteRegion region{
      .address = std::stoull(parts[1]), .bytes = std::stoull(parts[2]), .packed_rkey = rkey};
  ASSERT_OK_AND_ASSIGN(auto reader, UcxTransport::Create({.name = "doomed-reader"}));
  std::vector<uint8_t> landing(kServedBytes, 0);
  ASSERT_THAT(reader->RegisterRegion(landing.data(), landing.size()), IsOk());
  ASSERT_OK_AND_ASSIGN(PeerId peer, reader->Connect(worker_address, region, Clock::now() + 20s));
  ASSERT_EQ(::write(kReportFd, "c", 1), 1);
  const auto until = Clock::now() + 60s;
  for (int i = 0; i < 10000 && Clock::now() < until; ++i) {
    ASSERT_THAT(FetchAll(*reader, peer, landing), IsOk());
    ASSERT_EQ(::write(kReportFd, "f", 1), 1);
  }
}

// Over UCX's own choice of transports (shared memory on one host: the plane of the failure seen
// in PeerTest) and over TCP.
class UcxReaderDeathTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam().empty()) {
      ::unsetenv("UCX_TLS");
    } else {
      ::setenv("UCX_TLS", GetParam().c_str(), 1);
    }
    // UCX checks its peers every 20 s by default; every second here, so that the server learns
    // of each dead reader (and handles its failure) while the test runs.
    ::setenv("UCX_KEEPALIVE_INTERVAL", "1s", 1);
    ASSERT_OK_AND_ASSIGN(server_, UcxTransport::Create({.name = "server"}));
    served_.resize(kServedBytes);
    for (size_t i = 0; i < served_.size(); ++i) served_[i] = ServedByte(i);
    ASSERT_OK_AND_ASSIGN(region_, server_->RegisterRegion(served_.data(), served_.size()));
  }
  void TearDown() override {
    ::unsetenv("UCX_TLS");
    ::unsetenv("UCX_KEEPALIVE_INTERVAL");
  }

  // Starts a reader process and returns once it has completed `fetches` Fetches (0: at once);
  // *out reads its reports (on its fd kReportFd).
  void StartReader(int fetches, pid_t* pid, int* out) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    // Both ends above the child's report fd and close-on-exec, so the child keeps only its dup.
    const int read_end = ::fcntl(fds[0], F_DUPFD_CLOEXEC, 10);
    const int write_end = ::fcntl(fds[1], F_DUPFD_CLOEXEC, 10);
    ::close(fds[0]);
    ::close(fds[1]);
    ASSERT_GE(read_end, 0);
    ASSERT_GE(write_end, 0);
    *out = read_end;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, write_end, kReportFd);
    const std::string spec =
        absl::StrCat(absl::BytesToHexString(server_->worker_address()), ":", region_.address, ":",
                     region_.bytes, ":", absl::BytesToHexString(region_.packed_rkey));
    std::vector<std::string> env_strings = {absl::StrCat(kReaderEnv, "=", spec)};
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::strncmp(*e, kReaderEnv, std::strlen(kReaderEnv)) != 0) env_strings.push_back(*e);
    }
    std::vector<char*> env;
    for (std::string& s : env_strings) env.push_back(s.data());
    env.push_back(nullptr);
    std::string self = "/proc/self/exe";
    std::string filter = "--gtest_filter=ReaderChild.FetchesUntilKilled";
    char* argv[] = {self.data(), filter.data(), nullptr};
    const int rc = posix_spawn(pid, "/proc/self/exe", &actions, nullptr, argv, env.data());
    posix_spawn_file_actions_destroy(&actions);
    ::close(write_end);
    ASSERT_EQ(rc, 0) << std::strerror(rc);
    // "c" once connected, then one "f" per Fetch; a child that fails exits and closes the pipe.
    int seen = 0;
    char c;
    while (seen < fetches) {
      ASSERT_EQ(::read(read_end, &c, 1), 1)
          << "the reader process ended before " << fetches << " Fetches";
      if (c == 'f') ++seen;
    }
  }

  // Kills the reader process (if one started) and reaps it; returns its wait status.
  static int KillReader(pid_t pid, int out) {
    int status = 0;
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
    }
    if (out >= 0) ::close(out);
    return status;
  }

  std::unique_ptr<UcxTransport> server_;
  std::vector<uint8_t> served_;
  RemoteRegion region_;
};

TEST_P(UcxReaderDeathTest, DISABLED_AServerGoesOnServingAfterAReaderDiesMidFetch) {
  // Rounds 0-9 kill the reader 0-135 ms after it was started, whatever it is doing then
  // (starting, connecting: the UCX wire-up with the server, its first Fetch); rounds 10-14 after
  // it completed two Fetches, while it Fetches back to back, so the server is sending it data
  // nearly all the time.
  constexpr int kRounds = 15;
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    pid_t pid = -1;
    int out = -1;
    StartReader(round < 10 ? 0 : 2, &pid, &out);
    if (HasFatalFailure()) {
      KillReader(pid, out);
      return;
    }
    std::this_thread::sleep_for(round < 10 ? std::chrono::microseconds(15000 * round)
                                           : std::chrono::microseconds(300 * (round - 10)));
    const TransportStats before = server_->Stats();
    const int status = KillReader(pid, out);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;

    // A new reader connects and Fetches everything, byte for byte.
    ASSERT_OK_AND_ASSIGN(auto reader, UcxTransport::Create({.name = "next-reader"}));
    std::vector<uint8_t> landing(kServedBytes, 0);
    ASSERT_THAT(reader->RegisterRegion(landing.data(), landing.size()), IsOk());
    ASSERT_OK_AND_ASSIGN(PeerId peer,
                         reader->Connect(server_->worker_address(), region_, Clock::now() + 20s));
    ASSERT_THAT(FetchAll(*reader, peer, landing), IsOk());
    EXPECT_TRUE(LandedByteForByte(landing));
    EXPECT_GT(server_->Stats().fetches_served, before.fetches_served);
  }
}

INSTANTIATE_TEST_SUITE_P(Transports, UcxReaderDeathTest, ::testing::Values("", "tcp"),
                         [](const auto& info) {
                           return info.param.empty() ? std::string("default") : info.param;
                         });

}  // namespace
}  // namespace kvstash::transport
