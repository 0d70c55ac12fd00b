#include "service_process.h"

#include <fcntl.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"

extern char** environ;

namespace kvstash::testing {
namespace {

using Clock = std::chrono::steady_clock;

// gRPC (1.51) reads an idle client channel's socket only from a backup poller that runs every
// 5 s, so a daemon's graceful shutdown waits that long for idle test clients to answer its GOAWAY
// ping. Poll often in tests; must be set before gRPC initialises.
const bool kFastBackupPoll = [] {
  ::setenv("GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS", "50", /*overwrite=*/0);
  return true;
}();

// fork + exec rather than posix_spawn, for PR_SET_PDEATHSIG: a test process that crashes must
// not leave daemons behind. Between fork and exec only async-signal-safe calls.
pid_t Spawn(const std::vector<std::string>& argv, int out_fd, bool stdout_only = false) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid != 0) return pid;  // parent (or -1)
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(127);  // the parent is already gone
  // The child starts with default signal handling and an empty mask, whatever the runner set.
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  for (int sig = 1; sig < NSIG; ++sig) ::signal(sig, SIG_DFL);
  if (out_fd >= 0) {
    ::dup2(out_fd, STDOUT_FILENO);
    if (!stdout_only) ::dup2(out_fd, STDERR_FILENO);
  }
  ::execve(args[0], args.data(), environ);
  ::_exit(127);
}

int ExitCodeOf(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

TempDir::TempDir() {
  char tmpl[] = "/tmp/kvst-XXXXXX";
  char* dir = ::mkdtemp(tmpl);
  path_ = dir != nullptr ? dir : "/tmp";
}

TempDir::~TempDir() {
  std::error_code ec;
  if (path_ != "/tmp") std::filesystem::remove_all(path_, ec);
}

std::string BinaryPath(const std::string& relative) {
  // A bundle of tests run away from the build tree (scripts/gpu_bundle.sh) says where its
  // executables are.
  const char* moved = std::getenv("KVSTASH_TEST_BINARY_DIR");
  if (moved != nullptr && *moved != '\0') return absl::StrCat(moved, "/", relative);
  return absl::StrCat(KVSTASH_BINARY_DIR, "/", relative);
}

int FreeTcpPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return 0;  // as before this check: an unbound socket's getsockname reports port 0
  }
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

double MetricSum(int port, const std::string& family) {
  return MetricSum("127.0.0.1", port, family);
}

double MetricSum(const std::string& host, int port, const std::string& family) {
  std::string body;
  if (HttpGet(host, port, "/metrics", &body) != 200) return -1;
  double sum = 0;
  std::istringstream lines(body);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(family, 0) != 0) continue;
    char next = line.size() > family.size() ? line[family.size()] : ' ';
    if (next != '{' && next != ' ') continue;
    sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

int HttpGet(int port, const std::string& path, std::string* body) {
  return HttpGet("127.0.0.1", port, path, body);
}

int HttpGet(const std::string& host, int port, const std::string& path, std::string* body) {
  httplib::Client http(host, port);
  http.set_connection_timeout(5);
  http.set_read_timeout(10);
  auto res = http.Get(path);
  if (!res) return 0;
  if (body != nullptr) *body = res->body;
  return res->status;
}

int RunProgram(const std::vector<std::string>& argv, std::string* out, int timeout_ms) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return -1;
  pid_t pid = Spawn(argv, pipe_fds[1]);
  ::close(pipe_fds[1]);
  if (pid < 0) {
    ::close(pipe_fds[0]);
    return -1;
  }
  std::string text;
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  char buf[65536];
  while (true) {
    int left = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
    if (left <= 0) {
      ::kill(pid, SIGKILL);
      text += "\n[killed: timeout]\n";
      break;
    }
    pollfd p{pipe_fds[0], POLLIN, 0};
    if (::poll(&p, 1, left) <= 0) continue;
    ssize_t n = ::read(pipe_fds[0], buf, sizeof(buf));
    if (n <= 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  ::close(pipe_fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (out != nullptr) *out = std::move(text);
  return ExitCodeOf(status);
}

Result<std::unique_ptr<ChildProcess>> ChildProcess::Start(const std::vector<std::string>& argv) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return absl::InternalError("pipe2 failed");
  std::unique_ptr<ChildProcess> child(new ChildProcess());
  child->pid_ = Spawn(argv, pipe_fds[1], /*stdout_only=*/true);
  ::close(pipe_fds[1]);
  child->out_fd_ = pipe_fds[0];
  if (child->pid_ < 0) return absl::InternalError(absl::StrCat("cannot spawn ", argv[0]));
  return child;
}

ChildProcess::~ChildProcess() {
  Kill();
  if (out_fd_ >= 0) ::close(out_fd_);
}

Status ChildProcess::WaitForLine(const std::string& line, int timeout_ms) {
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  char buf[4096];
  while (buffered_.find(line + "\n") == std::string::npos) {
    int left = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
    if (left <= 0) return absl::DeadlineExceededError(absl::StrCat("no '", line, "' in time"));
    pollfd p{out_fd_, POLLIN, 0};
    if (::poll(&p, 1, left) <= 0) continue;
    ssize_t n = ::read(out_fd_, buf, sizeof(buf));
    if (n <= 0) {
      return absl::UnavailableError(
          absl::StrCat("child exited before printing '", line, "'; output: ", buffered_));
    }
    buffered_.append(buf, static_cast<size_t>(n));
  }
  return OkStatus();
}

void ChildProcess::Kill() {
  if (pid_ < 0) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
}

Result<std::unique_ptr<ServiceProcess>> ServiceProcess::Start(const std::string& dir,
                                                              const ServiceOptions& options) {
  // The metrics port is one FreeTcpPort() found free a moment ago; another process (a parallel
  // test, or UCX's ephemeral listeners) can take it before cachesvc binds it. That failure is
  // retried with a fresh port; every other start-up failure is returned as it is.
  for (int attempt = 1;; ++attempt) {
    Result<std::unique_ptr<ServiceProcess>> svc = StartOnce(dir, options);
    if (svc.ok() || !options.metrics || attempt == 5 ||
        std::string(svc.status().message()).find("cannot listen for HTTP metrics") ==
            std::string::npos) {
      return svc;
    }
  }
}

Result<std::unique_ptr<ServiceProcess>> ServiceProcess::StartOnce(const std::string& dir,
                                                                  const ServiceOptions& options) {
  std::unique_ptr<ServiceProcess> svc(new ServiceProcess());
  svc->data_dir_ = dir + "/data";
  svc->unix_socket_ = dir + "/svc.sock";
  svc->log_path_ = dir + "/cachesvc.log";
  std::string ready = dir + "/ready.json";
  std::filesystem::remove(ready);
  std::vector<std::string> argv = {BinaryPath("cachesvc/cachesvc"),
                                   "--listen",
                                   !options.listen.empty() ? options.listen
                                   : options.tcp           ? "127.0.0.1:0"
                                                           : "unix://" + svc->unix_socket_,
                                   "--data-dir",
                                   svc->data_dir_,
                                   "--ready-file",
                                   ready,
                                   "--cpu-capacity",
                                   options.cpu_capacity,
                                   "--ssd-capacity",
                                   options.ssd_capacity,
                                   "--metrics-address",
                                   options.metrics_address,
                                   "--metrics-port",
                                   options.metrics ? std::to_string(FreeTcpPort()) : "0",
                                   "--log-level",
                                   "info"};
  if (!options.default_arena_socket) {
    argv.insert(argv.end(), {"--arena-socket", dir + "/arena.sock"});
  }
  if (options.local_listen) {
    argv.insert(argv.end(), {"--local-listen", "unix://" + dir + "/local.sock"});
  }
  argv.insert(argv.end(), options.extra_args.begin(), options.extra_args.end());
  argv.insert(argv.begin(), options.command_prefix.begin(), options.command_prefix.end());
  int log_fd = ::open(svc->log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  svc->pid_ = Spawn(argv, log_fd);
  ::close(log_fd);
  if (svc->pid_ < 0) return absl::InternalError("cannot spawn cachesvc");
  // Sanitizer builds start slowly; a healthy daemon is ready in well under a second.
  auto deadline = Clock::now() + std::chrono::seconds(60);
  while (Clock::now() < deadline) {
    int status = 0;
    if (::waitpid(svc->pid_, &status, WNOHANG) == svc->pid_) {
      svc->pid_ = -1;
      return absl::UnavailableError(absl::StrCat("cachesvc exited with ", ExitCodeOf(status),
                                                 " during start-up:\n", svc->Log()));
    }
    std::ifstream in(ready);
    if (in) {
      auto json = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
      if (!json.is_discarded()) {
        svc->target_ = json.value("target", "");
        svc->local_target_ = json.value("local_target", "");
        svc->metrics_port_ = json.value("metrics_port", 0);
        return svc;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return absl::DeadlineExceededError(absl::StrCat("cachesvc not ready in time:\n", svc->Log()));
}

ServiceProcess::~ServiceProcess() { Kill(); }

int ServiceProcess::Wait(int timeout_ms) {
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (true) {
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      return ExitCodeOf(status);
    }
    if (Clock::now() > deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

int ServiceProcess::Terminate(int timeout_ms) {
  if (pid_ < 0) return -1;
  ::kill(pid_, SIGTERM);
  int code = Wait(timeout_ms);
  if (code == -1) Kill();
  return code;
}

void ServiceProcess::Kill() {
  if (pid_ < 0) return;
  ::kill(pid_, SIGCONT);
  ::kill(pid_, SIGKILL);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
}

void ServiceProcess::Stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGSTOP);
  // SIGSTOP is delivered asynchronously: wait until the kernel reports the process stopped, or a
  // call made right after Stop() can still be answered (and a test expecting a stall flakes).
  const std::string stat_path = "/proc/" + std::to_string(pid_) + "/stat";
  for (int i = 0; i < 1000; ++i) {
    std::ifstream in(stat_path);
    std::string line;
    std::getline(in, line);
    const size_t paren = line.rfind(')');
    if (paren == std::string::npos || paren + 2 >= line.size()) return;  // gone
    const char state = line[paren + 2];
    if (state == 'T' || state == 't') return;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void ServiceProcess::Continue() {
  if (pid_ > 0) ::kill(pid_, SIGCONT);
}

std::string ServiceProcess::Log() const {
  std::ifstream in(log_path_);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace kvstash::testing
