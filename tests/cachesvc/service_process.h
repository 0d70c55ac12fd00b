// Test helper: runs the real `cachesvc` binary as a child process on a temporary unix socket (or
// TCP loopback) with a temporary data dir, waits until it is serving (ready file), and stops it
// with SIGTERM, SIGKILL or SIGSTOP/SIGCONT. Shared by tests/cachesvc, tests/client and tests/cli.
#ifndef KVSTASH_TESTS_CACHESVC_SERVICE_PROCESS_H_
#define KVSTASH_TESTS_CACHESVC_SERVICE_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "kvstash/common/status.h"

namespace kvstash::testing {

struct ServiceOptions {
  bool tcp = false;      // listen on 127.0.0.1:<free port> instead of a unix socket
  bool metrics = false;  // enable /metrics and /healthz on a free port
  // Where /metrics listens (e.g. the daemon's address inside a network namespace).
  std::string metrics_address = "127.0.0.1";
  std::string cpu_capacity = "64MiB";
  std::string ssd_capacity = "256MiB";
  std::vector<std::string> extra_args;
  // Leave --arena-socket out, so the daemon picks its default (next to a unix listener, in the
  // data dir for TCP).
  bool default_arena_socket = false;
  // Listen here instead (e.g. an address inside a network namespace); overrides `tcp`.
  std::string listen;
  // With a TCP listener: also --local-listen unix://<dir>/local.sock (local_target()), the
  // same-node listener; with default_arena_socket its arena socket is local.sock.arena.
  bool local_listen = false;
  // Run cachesvc under this command, e.g. {"/usr/sbin/ip", "netns", "exec", "ns"} (which execs
  // it, so pid() is still the daemon's).
  std::vector<std::string> command_prefix;
};

// Creates a short temporary directory (unix socket paths are limited to 107 bytes), removed with
// everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

class ServiceProcess {
 public:
  // Starts cachesvc with its data under `dir` (reuse the same dir to restart on the same data).
  static Result<std::unique_ptr<ServiceProcess>> Start(const std::string& dir,
                                                       const ServiceOptions& options = {});
  ~ServiceProcess();  // SIGKILL if still running

  const std::string& target() const { return target_; }
  // The ready file's local_target: "unix://<dir>/local.sock" with ServiceOptions::local_listen,
  // else empty.
  const std::string& local_target() const { return local_target_; }
  const std::string& unix_socket() const { return unix_socket_; }
  const std::string& data_dir() const { return data_dir_; }
  const std::string& log_path() const { return log_path_; }
  int metrics_port() const { return metrics_port_; }
  pid_t pid() const { return pid_; }

  // SIGTERM and wait; returns the exit code (or 128 + signal).
  int Terminate(int timeout_ms = 30'000);
  void Kill();              // SIGKILL and reap
  void Stop();              // SIGSTOP
  void Continue();          // SIGCONT
  std::string Log() const;  // what the daemon wrote to stderr so far

 private:
  ServiceProcess() = default;
  static Result<std::unique_ptr<ServiceProcess>> StartOnce(const std::string& dir,
                                                           const ServiceOptions& options);
  int Wait(int timeout_ms);

  pid_t pid_ = -1;
  std::string target_, local_target_, unix_socket_, data_dir_, log_path_;
  int metrics_port_ = 0;
};

// Path of a built executable, e.g. BinaryPath("cachesvc/cachesvc"): under the build tree, or
// under $KVSTASH_TEST_BINARY_DIR when set (a bundle run elsewhere, scripts/gpu_bundle.sh).
std::string BinaryPath(const std::string& relative);

// Runs a program to completion (no shell); returns exit code, output in *out (stdout + stderr).
int RunProgram(const std::vector<std::string>& argv, std::string* out, int timeout_ms = 60'000);

// A child process whose stdout the test reads line by line (stderr goes to the test's stderr).
class ChildProcess {
 public:
  static Result<std::unique_ptr<ChildProcess>> Start(const std::vector<std::string>& argv);
  ~ChildProcess();  // SIGKILL if still running
  // Waits until the child prints `line`; DeadlineExceeded / Unavailable (child exited) otherwise.
  Status WaitForLine(const std::string& line, int timeout_ms = 30'000);
  void Kill();  // SIGKILL and reap
  pid_t pid() const { return pid_; }

 private:
  ChildProcess() = default;
  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::string buffered_;
};

// A TCP port that was free a moment ago on 127.0.0.1.
int FreeTcpPort();

// GET http://host:port/path (host 127.0.0.1 unless given); returns the HTTP status (0 on
// connection failure).
int HttpGet(int port, const std::string& path, std::string* body);
int HttpGet(const std::string& host, int port, const std::string& path, std::string* body);
// Sum of a metric family over all its label sets, read from the daemon's /metrics on `port`
// (at `host`, 127.0.0.1 unless given); -1 when /metrics cannot be read.
double MetricSum(int port, const std::string& family);
double MetricSum(const std::string& host, int port, const std::string& family);

}  // namespace kvstash::testing

#endif  // KVSTASH_TESTS_CACHESVC_SERVICE_PROCESS_H_
