#include "shared_prefix_harness.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "etcd_process.h"
#include "service_process.h"

namespace kvstash::testing {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

const char* kQuestions[] = {
    "What is this text about? Answer in one sentence.",
    "Who is the main character, and what do we learn about them?",
    "Describe the setting of the text in a few words.",
    "What happens next, do you think?",
    "Give the text a short title.",
    "Which word in the text is the most unusual?",
    "Summarise the text for a child.",
    "What is the mood of the text?",
};

std::string Tail(const std::string& path, size_t bytes = 2000) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  std::string text = s.str();
  return text.size() > bytes ? text.substr(text.size() - bytes) : text;
}

// An engine process driven over pipes: requests on its stdin, answers on its stdout, stderr to
// a log file.
class EnginePipe {
 public:
  static Result<std::unique_ptr<EnginePipe>> Start(const std::vector<std::string>& argv,
                                                   const std::string& log_path) {
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0) return absl::InternalError("pipe2 failed");
    if (::pipe2(out, O_CLOEXEC) != 0) {
      ::close(in[0]);
      ::close(in[1]);
      return absl::InternalError("pipe2 failed");
    }
    const int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid == 0) {
      // Only async-signal-safe calls between fork and exec.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(126);
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      if (log >= 0) ::dup2(log, 2);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    if (log >= 0) ::close(log);
    if (pid < 0) {
      ::close(in[1]);
      ::close(out[0]);
      return absl::InternalError("fork failed");
    }
    std::unique_ptr<EnginePipe> p(new EnginePipe());
    p->pid_ = pid;
    p->in_ = in[1];
    p->out_ = out[0];
    p->log_path_ = log_path;
    return p;
  }

  ~EnginePipe() {
    CloseInput();
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0) ::close(out_);
  }

  Status Send(const std::string& line) {
    std::string data = line + "\n";
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = ::write(in_, data.data() + done, data.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Failed("exited (write failed)");
      done += static_cast<size_t>(n);
    }
    return OkStatus();
  }

  // The next line on stdout within `timeout_ms`.
  Result<std::string> ReadLine(int timeout_ms) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    while (true) {
      const size_t nl = buffered_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buffered_.substr(0, nl);
        buffered_.erase(0, nl + 1);
        return line;
      }
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return Failed(absl::StrCat("did not answer within ", timeout_ms, " ms"));
      pollfd p{out_, POLLIN, 0};
      const int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
      if (r <= 0) continue;
      char buf[65536];
      const ssize_t n = ::read(out_, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Failed("exited");
      buffered_.append(buf, static_cast<size_t>(n));
    }
  }

  void CloseInput() {
    if (in_ >= 0) ::close(in_);
    in_ = -1;
  }

  // After CloseInput: the exit code within `timeout_ms`, or -1 (then killed).
  int Wait(int timeout_ms) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    while (pid_ > 0) {
      int status = 0;
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      if (Clock::now() > deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }

 private:
  EnginePipe() = default;
  Status Failed(const std::string& what) const {
    return absl::UnavailableError(
        absl::StrCat("engine ", what, "; its log ends with:\n", Tail(log_path_)));
  }

  pid_t pid_ = -1;
  int in_ = -1, out_ = -1;
  std::string buffered_, log_path_;
};

bool WaitUntil(const std::function<bool()>& cond, std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return cond();
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

double Metric(const ServiceProcess& node, const std::string& family) {
  return std::max(0.0, MetricSum(node.metrics_port(), family));
}

}  // namespace

const char* PrefixConfigName(PrefixConfig config) {
  switch (config) {
    case PrefixConfig::kCluster:
      return "cluster";
    case PrefixConfig::kIsolated:
      return "isolated";
    case PrefixConfig::kNoCache:
      return "nocache";
  }
  return "?";
}

std::vector<PrefixRequest> MakeSharedPrefixWorkload(const SharedPrefixOptions& o) {
  std::mt19937_64 rng(o.seed);
  std::vector<PrefixRequest> requests;
  for (int i = 0; i < o.requests; ++i) {
    PrefixRequest r;
    r.id = i;
    r.engine = i % std::max(1, o.engines);
    r.doc = static_cast<int>(rng() % static_cast<uint64_t>(std::max(1, o.docs)));
    r.question = absl::StrCat("Question ", i, ": ",
                              kQuestions[rng() % (sizeof kQuestions / sizeof kQuestions[0])]);
    requests.push_back(std::move(r));
  }
  return requests;
}

Result<PrefixRun> RunSharedPrefix(PrefixConfig config, const SharedPrefixOptions& o) {
  ::signal(SIGPIPE, SIG_IGN);
  if (o.doc_files.empty()) return absl::InvalidArgumentError("no document files");
  const std::string engine_bin = BinaryPath("tests/cluster/shared_prefix_engine");
  if (::access(engine_bin.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(engine_bin + " is not built");
  }
  PrefixRun run;
  run.config = config;
  TempDir root;
  std::unique_ptr<EtcdProcess> etcd;
  std::vector<std::unique_ptr<TempDir>> dirs;
  std::vector<std::unique_ptr<ServiceProcess>> nodes;
  if (config == PrefixConfig::kCluster) {
    KVSTASH_ASSIGN_OR_RETURN(etcd, EtcdProcess::Start());
  }
  if (config != PrefixConfig::kNoCache) {
    const std::string secret = root.path() + "/secret";
    std::ofstream(secret) << "kvstash-shared-prefix-secret-0123456789\n";
    for (int i = 0; i < o.engines; ++i) {
      dirs.push_back(std::make_unique<TempDir>());
      ServiceOptions so;
      so.tcp = true;  // a cluster member needs a TCP listener; isolated nodes use the same path
      so.metrics = true;
      so.cpu_capacity = o.cpu_capacity;
      so.extra_args = {"--peer-secret-file", secret, "--node-id", absl::StrCat("n", i)};
      if (etcd != nullptr) {
        for (const std::string& a : {std::string("--etcd"), etcd->endpoint(),
                                     std::string("--cluster-ttl-s"), std::to_string(o.ttl_s)}) {
          so.extra_args.push_back(a);
        }
      }
      KVSTASH_ASSIGN_OR_RETURN(auto node, ServiceProcess::Start(dirs.back()->path(), so));
      nodes.push_back(std::move(node));
    }
    if (etcd != nullptr) {
      const bool joined = WaitUntil(
          [&] {
            for (const auto& n : nodes) {
              if (MetricSum(n->metrics_port(), "kvstash_cluster_nodes") != o.engines) return false;
            }
            return true;
          },
          std::chrono::seconds(30));
      if (!joined) return absl::DeadlineExceededError("the nodes did not see each other in 30 s");
    }
  }

  std::vector<std::unique_ptr<EnginePipe>> engines;
  for (int i = 0; i < o.engines; ++i) {
    std::vector<std::string> argv = {engine_bin,
                                     "--model",
                                     o.model,
                                     "--chunk-tokens",
                                     std::to_string(o.chunk_tokens),
                                     "--threads",
                                     std::to_string(o.threads),
                                     "--max-context",
                                     std::to_string(o.doc_tokens + 256)};
    if (!o.tokenizer.empty()) argv.insert(argv.end(), {"--tokenizer", o.tokenizer});
    if (!nodes.empty()) argv.insert(argv.end(), {"--cache-target", nodes[i]->target()});
    KVSTASH_ASSIGN_OR_RETURN(
        auto e, EnginePipe::Start(argv, absl::StrCat(root.path(), "/engine", i, ".log")));
    engines.push_back(std::move(e));
  }
  for (auto& e : engines) {
    KVSTASH_ASSIGN_OR_RETURN(std::string line, e->ReadLine(o.ready_timeout_ms));
    json ready = json::parse(line, nullptr, false);
    if (ready.is_discarded() || !ready.value("ready", false)) {
      return absl::InternalError(absl::StrCat("engine's first line is not ready: ", line));
    }
    run.kernels = ready.value("kernels", "");
    run.shared_memory = ready.value("shared_memory", false);
  }

  for (const PrefixRequest& r : MakeSharedPrefixWorkload(o)) {
    const std::string& file = o.doc_files[static_cast<size_t>(r.doc) % o.doc_files.size()];
    const size_t offset =
        o.doc_offset + static_cast<size_t>(r.doc) / o.doc_files.size() * size_t{40'000};
    json req = {{"id", r.id},
                {"doc", file},
                {"offset", offset},
                {"doc_tokens", o.doc_tokens},
                {"question", r.question},
                {"max_tokens", o.max_tokens}};
    const double fetched_before =
        nodes.empty() ? 0 : Metric(*nodes[r.engine], "kvstash_peer_fetched_objects_total");
    KVSTASH_RETURN_IF_ERROR(engines[r.engine]->Send(req.dump()));
    KVSTASH_ASSIGN_OR_RETURN(std::string line, engines[r.engine]->ReadLine(o.request_timeout_ms));
    json a = json::parse(line, nullptr, false);
    if (a.is_discarded() || a.value("id", -1) != r.id) {
      return absl::InternalError(absl::StrCat("unexpected engine answer: ", line));
    }
    PrefixRequestResult res;
    res.request = r;
    res.prompt_tokens = a.at("prompt_tokens").get<uint32_t>();
    res.hit_tokens = a.at("hit_tokens").get<uint32_t>();
    res.remote_hit_tokens = a.at("other_hit_tokens").get<uint32_t>();
    res.computed_tokens = a.at("computed_tokens").get<uint32_t>();
    res.load_failed = a.at("load_failed").get<bool>();
    res.lookup_ms = a.at("lookup_ms").get<double>();
    res.transfer_ms = a.at("transfer_ms").get<double>();
    res.ttft_ms = a.at("ttft_ms").get<double>();
    res.tokens = a.at("tokens").get<std::vector<int32_t>>();
    if (!nodes.empty()) {
      res.peer_fetched_objects =
          Metric(*nodes[r.engine], "kvstash_peer_fetched_objects_total") - fetched_before;
    }
    if (o.verbose) {
      std::fprintf(stderr,
                   "[%s] request %2d engine %d doc %d: prompt %4u, hit %4u (remote %4u), "
                   "lookup %7.2f ms, transfer %7.2f ms, TTFT %8.1f ms\n",
                   PrefixConfigName(config), r.id, r.engine, r.doc, res.prompt_tokens,
                   res.hit_tokens, res.remote_hit_tokens, res.lookup_ms, res.transfer_ms,
                   res.ttft_ms);
    }
    run.results.push_back(std::move(res));
    if (etcd != nullptr) {
      // The next request starts once the new chunks reached their owners.
      WaitUntil(
          [&] {
            for (const auto& n : nodes) {
              if (MetricSum(n->metrics_port(), "kvstash_cluster_replication_pending") > 0) {
                return false;
              }
            }
            return true;
          },
          std::chrono::seconds(10));
    }
  }
  for (auto& e : engines) e->CloseInput();
  for (auto& e : engines) {
    const int code = e->Wait(30'000);
    if (code != 0) return absl::InternalError(absl::StrCat("engine exited with ", code));
  }
  for (const auto& n : nodes) {
    run.replicated_objects += Metric(*n, "kvstash_cluster_replicated_objects_total");
  }
  engines.clear();
  nodes.clear();  // before etcd goes
  return run;
}

PrefixSummary Summarize(const PrefixRun& run) {
  PrefixSummary s;
  std::vector<double> load, remote_load, local_load, ttft;
  for (const PrefixRequestResult& r : run.results) {
    ++s.requests;
    s.prompt_tokens += r.prompt_tokens;
    s.hit_tokens += r.hit_tokens;
    s.remote_hit_tokens += r.remote_hit_tokens;
    s.computed_tokens += r.computed_tokens;
    s.load_failures += r.load_failed ? 1 : 0;
    s.peer_fetched_objects += r.peer_fetched_objects;
    ttft.push_back(r.ttft_ms);
    s.ttft_total_ms += r.ttft_ms;
    if (r.hit_tokens > 0) {
      ++s.hit_requests;
      load.push_back(r.lookup_ms + r.transfer_ms);
    }
    if (r.remote_hit_tokens > 0) {
      ++s.remote_hit_requests;
      remote_load.push_back(r.lookup_ms + r.transfer_ms);
    } else if (r.hit_tokens > 0) {
      local_load.push_back(r.lookup_ms + r.transfer_ms);
    }
  }
  if (s.prompt_tokens > 0) {
    s.hit_rate = static_cast<double>(s.hit_tokens) / static_cast<double>(s.prompt_tokens);
    s.remote_hit_rate =
        static_cast<double>(s.remote_hit_tokens) / static_cast<double>(s.prompt_tokens);
  }
  s.load_p50_ms = Percentile(load, 0.5);
  s.load_p90_ms = Percentile(load, 0.9);
  s.remote_load_p50_ms = Percentile(remote_load, 0.5);
  s.local_load_p50_ms = Percentile(local_load, 0.5);
  s.ttft_p50_ms = Percentile(ttft, 0.5);
  s.ttft_p90_ms = Percentile(ttft, 0.9);
  return s;
}

}  // namespace kvstash::testing
