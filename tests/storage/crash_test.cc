// Crash consistency: a child process runs a storm of durable commits and reports each key the
// store acknowledged through a pipe; the parent SIGKILLs it mid-storm and reopens the directory.
// Every acknowledged object must be there and intact, and every visible object must verify.
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <set>
#include <thread>

#include "store_test_util.h"
#include "testing/status_matchers.h"

namespace kvstash::storage {
namespace {

using testing::MakeObject;
using testing::Put;
using testing::ReadsBack;
using testing::TempDir;

uint64_t SizeOf(uint64_t id) { return 4096 + (id * 104729) % (768 * 1024); }

StoreOptions CrashOptions(const std::string& dir) {
  StoreOptions o;
  o.data_dir = dir;
  o.cpu_capacity_bytes = 32ull << 20;
  o.ssd_capacity_bytes = 1ull << 30;
  o.ssd_io_threads = 4;
  return o;
}

[[noreturn]] void RunStorm(const std::string& dir, int report_fd) {
  auto store = ObjectStore::Open(CrashOptions(dir));
  if (!store.ok()) _exit(3);
  std::atomic<uint64_t> next{0};
  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&] {
      for (;;) {
        uint64_t id = next.fetch_add(1);
        // Every fourth write is not durable: those may or may not survive, but must verify.
        bool durable = id % 4 != 0;
        Status s = Put(**store, MakeObject("crash", id, SizeOf(id)), durable);
        if (!s.ok()) _exit(4);
        if (durable && write(report_fd, &id, sizeof(id)) != sizeof(id)) _exit(5);
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::seconds(60));  // the parent kills us long before
  _exit(6);
}

void CrashAndVerify(size_t kill_after) {
  TempDir dir;
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    RunStorm(dir.path(), fds[1]);
  }
  close(fds[1]);
  std::set<uint64_t> acknowledged;
  auto read_ids = [&](int timeout_ms) {
    pollfd p{fds[0], POLLIN, 0};
    if (poll(&p, 1, timeout_ms) <= 0) return false;
    uint64_t ids[64];
    ssize_t n = read(fds[0], ids, sizeof(ids));  // writes of 8 bytes are atomic on a pipe
    if (n <= 0) return false;
    for (ssize_t i = 0; i < n / 8; ++i) acknowledged.insert(ids[i]);
    return true;
  };
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (acknowledged.size() < kill_after && std::chrono::steady_clock::now() < deadline) {
    if (!read_ids(100)) {
      int status;
      ASSERT_EQ(waitpid(pid, &status, WNOHANG), 0) << "the writer died on its own: " << status;
    }
  }
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  while (read_ids(0)) {
  }
  close(fds[0]);
  ASSERT_GE(acknowledged.size(), kill_after);

  auto store = ObjectStore::Open(CrashOptions(dir.path()));
  ASSERT_OK(store);
  for (uint64_t id : acknowledged) {
    EXPECT_TRUE(ReadsBack(**store, MakeObject("crash", id, SizeOf(id)))) << "lost object " << id;
  }
  auto all = (*store)->List("crash", false, 10000, "");
  ASSERT_OK(all);
  EXPECT_GE(all->objects.size(), acknowledged.size());
  for (const auto& l : all->objects) {
    uint64_t id = l.name.token_hash.hi;
    EXPECT_TRUE(ReadsBack(**store, MakeObject("crash", id, SizeOf(id)))) << "bad object " << id;
  }
  EXPECT_EQ((*store)->Stats().checksum_failures, 0u);
}

// Write-through (non-durable) commits are durable once Flush() returns.
TEST(StorageCrashTest, FlushMakesWriteThroughDurable) {
  TempDir dir;
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    auto store = ObjectStore::Open(CrashOptions(dir.path()));
    if (!store.ok()) _exit(3);
    for (uint64_t id = 0; id < 40; ++id) {
      if (!Put(**store, MakeObject("crash", id, SizeOf(id)), false).ok()) _exit(4);
    }
    if (!(*store)->Flush().ok()) _exit(5);
    uint64_t done = 40;
    if (write(fds[1], &done, sizeof(done)) != sizeof(done)) _exit(6);
    std::this_thread::sleep_for(std::chrono::seconds(60));  // killed before this ends
    _exit(7);
  }
  close(fds[1]);
  uint64_t flushed = 0;
  ASSERT_EQ(read(fds[0], &flushed, sizeof(flushed)), static_cast<ssize_t>(sizeof(flushed)));
  close(fds[0]);
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  auto store = ObjectStore::Open(CrashOptions(dir.path()));
  ASSERT_OK(store);
  for (uint64_t id = 0; id < flushed; ++id) {
    EXPECT_TRUE(ReadsBack(**store, MakeObject("crash", id, SizeOf(id)))) << "lost object " << id;
  }
}

TEST(StorageCrashTest, KillEarlyInTheStorm) { CrashAndVerify(10); }
TEST(StorageCrashTest, KillMidStorm) { CrashAndVerify(150); }

}  // namespace
}  // namespace kvstash::storage
