#include "etcd_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "kvstash/cluster/etcd_client.h"
#include "service_process.h"

namespace kvstash::testing {

Result<std::unique_ptr<EtcdProcess>> EtcdProcess::Start(
    const std::string& host, const std::vector<std::string>& command_prefix) {
  if (::access("/usr/bin/etcd", X_OK) != 0) {
    return absl::FailedPreconditionError("/usr/bin/etcd not installed (Debian etcd-server)");
  }
  std::unique_ptr<EtcdProcess> p(new EtcdProcess());
  char tmpl[] = "/tmp/kvetcd-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return absl::InternalError("mkdtemp failed");
  p->dir_ = tmpl;
  p->host_ = host;
  p->prefix_ = command_prefix;
  p->log_ = p->dir_ + "/etcd.log";
  // A port taken between FreeTcpPort and etcd's bind makes etcd exit: retry a few times.
  Status s;
  for (int attempt = 0; attempt < 5; ++attempt) {
    p->client_port_ = FreeTcpPort();
    p->peer_port_ = FreeTcpPort();
    p->endpoint_ = absl::StrCat("http://", host, ":", p->client_port_);
    s = p->Spawn();
    if (s.ok()) s = p->WaitReady(15'000);
    if (s.ok()) return p;
    p->Kill();
    std::filesystem::remove_all(p->dir_ + "/data");
  }
  return s;
}

EtcdProcess::~EtcdProcess() {
  Kill();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

Status EtcdProcess::Spawn() {
  const std::string peer = absl::StrCat("http://", host_, ":", peer_port_);
  std::vector<std::string> argv = prefix_;
  for (const std::string& a :
       {std::string("/usr/bin/etcd"), std::string("--name=kvt"), "--data-dir=" + dir_ + "/data",
        "--listen-client-urls=" + endpoint_, "--advertise-client-urls=" + endpoint_,
        "--listen-peer-urls=" + peer, "--initial-advertise-peer-urls=" + peer,
        "--initial-cluster=kvt=" + peer, std::string("--log-level=warn"),
        std::string("--logger=zap")}) {
    argv.push_back(a);
  }
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  const int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError("cannot open the etcd log");
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::dup2(fd, STDOUT_FILENO);
    ::dup2(fd, STDERR_FILENO);
    ::execve(args[0], args.data(), environ);
    ::_exit(127);
  }
  ::close(fd);
  if (pid < 0) return absl::InternalError("fork failed");
  pid_ = pid;
  return OkStatus();
}

Status EtcdProcess::WaitReady(int timeout_ms) {
  auto client = cluster::EtcdClient::Create({.endpoints = {endpoint_}, .timeout_ms = 500});
  if (!client.ok()) return client.status();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  Status last;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (pid_ > 0 && ::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::UnavailableError(absl::StrCat("etcd exited during start-up: ", Log()));
    }
    Result<cluster::RangeResult> r = (*client)->Get("/kvstash-ready-probe");
    if (r.ok()) return OkStatus();
    last = r.status();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrCat("etcd not ready: ", last.message()));
}

void EtcdProcess::Kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
}

void EtcdProcess::Pause() {
  if (pid_ > 0) ::kill(pid_, SIGSTOP);
}

void EtcdProcess::Resume() {
  if (pid_ > 0) ::kill(pid_, SIGCONT);
}

Status EtcdProcess::Restart() {
  Kill();
  KVSTASH_RETURN_IF_ERROR(Spawn());
  return WaitReady(15'000);
}

std::string EtcdProcess::Log() const {
  std::ifstream in(log_);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace kvstash::testing
