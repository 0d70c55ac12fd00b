// Child processes of the end-to-end service benchmarks (cachesvc, redis-server): start one with
// its output in a log file, wait for a condition, stop it.
#ifndef KVSTASH_BENCH_SERVICE_CHILD_PROCESS_H_
#define KVSTASH_BENCH_SERVICE_CHILD_PROCESS_H_

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace kvstash::bench {

// Starts argv[0] (looked up in PATH) with stdout and stderr in `log`; the pid, or -1.
inline pid_t Spawn(const std::vector<std::string>& argv, const std::string& log) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  return rc == 0 ? pid : -1;
}

// Sends `sig` and waits for the child to exit; nothing for pid <= 0.
inline void Reap(pid_t pid, int sig) {
  if (pid <= 0) return;
  ::kill(pid, sig);
  int status;
  ::waitpid(pid, &status, 0);
}

// Polls `ready` every 20 ms; false when it is still false after timeout_ms.
inline bool WaitFor(const std::function<bool()>& ready, int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    if (ready()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

}  // namespace kvstash::bench

#endif  // KVSTASH_BENCH_SERVICE_CHILD_PROCESS_H_
