// Remote Gets over a rate-limited link, raw against CacheGen- and KVQ-encoded peer fetches
// (--peer-transfer-encoding; scripts/bench_peer_slowlink.sh sets up the link and runs this).
//
// Node A runs in another network namespace (--a-netns, started through `ip netns exec`) and
// listens on --a-listen; this process and node B run in the current one, B naming A as its peer
// (UCX over TCP: the caller exports UCX_TLS=tcp). A holds --count KV chunks of SmolLM2-135M's
// shape (256 tokens x 30 layers x 3 KV heads x 64, f16: 5.9 MB; synthetic KV with CacheGen's
// statistics, codec/synthetic_kv.h), put over the link once. For each policy (raw, cachegen,
// kvq, auto; a policy ending in "+grpc" runs B with --peer-data-plane grpc, so that its encoded
// fetches come over KvStash.Get streams, where plain ones are pulled from A's staging over UCX)
// a fresh B (--remote-promote false: every Get crosses the link) is asked for `batch`
// chunks per AcquireMany over shared memory; the figure is the p50 latency of those calls over
// --reps passes, and whether what arrived was the lossy reconstruction (encoded) or the stored
// bytes. Results: JSON (--out).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "child_process.h"
#include "kvstash/client/kv_client.h"
#include "kvstash/codec/synthetic_kv.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/common/key.h"

namespace {

using Clock = std::chrono::steady_clock;
using kvstash::ObjectInfo;
using kvstash::ObjectName;
namespace client = kvstash::client;
using kvstash::bench::Reap;
using kvstash::bench::Spawn;
using kvstash::bench::WaitFor;
using nlohmann::json;

struct Config {
  std::string a_netns;
  std::string a_listen;
  std::string link = "unknown";  // label of the link (the tbf rate), recorded as is
  std::vector<std::string> policies = {"raw", "cachegen", "kvq", "auto"};
  std::vector<int> batches = {1, 8};
  int count = 8;
  int reps = 3;
  std::string cachesvc = KVSTASH_CACHESVC_PATH;
  std::string out = "bench/results/peer_slowlink.json";
};

std::vector<pid_t> children;

[[noreturn]] void Die(const std::string& why) {
  std::fprintf(stderr, "peer_slowlink_bench: %s\n", why.c_str());
  for (pid_t pid : children) Reap(pid, SIGKILL);
  std::exit(1);
}

void Stop(pid_t pid) {
  Reap(pid, SIGTERM);
  children.erase(std::remove(children.begin(), children.end(), pid), children.end());
}

// Starts cachesvc (under `prefix`, e.g. ip netns exec NS) with its files in `dir`; its pid and
// gRPC target.
std::pair<pid_t, std::string> StartNode(const Config& cfg, const std::vector<std::string>& prefix,
                                        const std::string& dir, const std::string& listen,
                                        const std::vector<std::string>& extra) {
  std::filesystem::create_directories(dir);
  const std::string ready = dir + "/ready.json";
  std::filesystem::remove(ready);
  std::vector<std::string> argv = prefix;
  argv.insert(argv.end(),
              {cfg.cachesvc, "--listen", listen, "--data-dir", dir + "/data", "--ready-file", ready,
               "--cpu-capacity", "1GiB", "--ssd-capacity", "1GiB", "--metrics-port", "0",
               "--log-level", "info", "--arena-socket", dir + "/arena.sock"});
  argv.insert(argv.end(), extra.begin(), extra.end());
  pid_t pid = Spawn(argv, dir + "/cachesvc.log");
  if (pid > 0) children.push_back(pid);
  if (pid < 0 || !WaitFor([&] { return std::filesystem::exists(ready); }, 60'000)) {
    Die("cachesvc did not start; see " + dir + "/cachesvc.log");
  }
  std::ifstream in(ready);
  return {pid, json::parse(in).value("target", "")};
}

ObjectInfo ChunkInfo() {
  ObjectInfo info;
  info.layout.num_layers = 30;
  info.layout.total_kv_heads = 3;
  info.layout.head_begin = 0;
  info.layout.head_end = 3;
  info.layout.head_dim = 64;
  info.layout.dtype = kvstash::DType::kF16;
  info.layout.num_tokens = 256;
  info.encoding = kvstash::Encoding::kRaw;
  info.payload_bytes = info.layout.RawBytes();
  return info;
}

ObjectName NameFor(int i) {
  kvstash::ModelSpec spec;
  spec.model_id = "peer-slowlink-bench";
  std::vector<uint32_t> tokens = {static_cast<uint32_t>(i)};
  return kvstash::MakeObjectName("bench", kvstash::ModelFingerprint(spec),
                                 kvstash::IndependentTokenHash(tokens));
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

int Main(int argc, char** argv) {
  Config cfg;
  CLI::App app{"peer_slowlink_bench: remote Gets over a slow link, raw vs CacheGen peer fetches"};
  app.add_option("--a-netns", cfg.a_netns, "network namespace of node A")->required();
  app.add_option("--a-listen", cfg.a_listen, "node A's gRPC HOST:PORT in it")->required();
  app.add_option("--link", cfg.link, "label of the link (recorded)");
  app.add_option("--policies", cfg.policies, "raw, cachegen, kvq, auto; +grpc: over streams")
      ->delimiter(',');
  app.add_option("--batches", cfg.batches, "chunks per AcquireMany")->delimiter(',');
  app.add_option("--count", cfg.count, "chunks held by A");
  app.add_option("--reps", cfg.reps, "passes over the chunks (median reported)");
  app.add_option("--cachesvc", cfg.cachesvc, "cachesvc binary");
  app.add_option("--out", cfg.out, "JSON results");
  CLI11_PARSE(app, argc, argv);
  for (int b : cfg.batches) {
    if (b < 1 || b > cfg.count) Die("every batch must be in 1..--count");
  }

  const std::string root =
      std::filesystem::temp_directory_path() / ("peer-slowlink-" + std::to_string(::getpid()));
  std::filesystem::create_directories(root);
  const std::string secret = root + "/secret";
  std::ofstream(secret) << "peer-slowlink-bench-secret-0123456789\n";
  const std::vector<std::string> peer_args = {"--peer-secret-file", secret};
  std::vector<std::string> a_args = peer_args;
  a_args.emplace_back("--insecure-tcp");  // plain TCP on the link's private address
  auto [a_pid, a_target] =
      StartNode(cfg, {"ip", "netns", "exec", cfg.a_netns}, root + "/a", cfg.a_listen, a_args);
  const ObjectInfo base = ChunkInfo();
  {
    client::ClientOptions stream;
    stream.use_shared_memory = false;
    stream.rpc_timeout = std::chrono::seconds(120);
    auto writer = client::KvClient::Connect(a_target, stream);
    if (!writer.ok()) Die("connect to A: " + std::string(writer.status().message()));
    for (int i = 0; i < cfg.count; ++i) {
      kvstash::codec::SyntheticKvOptions so;
      so.seed = 1000 + static_cast<uint64_t>(i);
      std::vector<uint8_t> kv = kvstash::codec::SyntheticKv(base.layout, so);
      ObjectInfo info = base;
      info.payload_crc32c = kvstash::Crc32c(kv.data(), kv.size());
      auto s = (*writer)->Put(NameFor(i), info, kv);
      if (!s.ok()) Die("put on A: " + std::string(s.message()));
    }
  }

  json results = json::array();
  for (const std::string& policy : cfg.policies) {
    std::string dir = root;
    dir.append("/b-").append(policy);
    std::vector<std::string> b_args = peer_args;
    const bool over_grpc = policy.size() > 5 && policy.substr(policy.size() - 5) == "+grpc";
    const std::string encoding = over_grpc ? policy.substr(0, policy.size() - 5) : policy;
    b_args.insert(b_args.end(), {"--peer", a_target, "--remote-promote", "false", "--remote-lookup",
                                 "false", "--peer-timeout-ms", "120000", "--peer-transfer-encoding",
                                 encoding, "--peer-data-plane", over_grpc ? "grpc" : "ucx"});
    auto [b_pid, b_target] = StartNode(cfg, {}, dir, "unix://" + dir + "/b.sock", b_args);
    client::ClientOptions shm;
    shm.rpc_timeout = std::chrono::seconds(120);
    auto reader = client::KvClient::Connect(b_target, shm);
    if (!reader.ok()) Die("connect to B: " + std::string(reader.status().message()));
    for (int batch : cfg.batches) {
      std::vector<double> ms;
      int lossy = 0, objects = 0;
      // One pass untimed: connects, and lets auto measure the link before the timed passes.
      for (int rep = -1; rep < cfg.reps; ++rep) {
        for (int first = 0; first + batch <= cfg.count; first += batch) {
          std::vector<ObjectName> names;
          for (int i = first; i < first + batch; ++i) names.push_back(NameFor(i));
          const Clock::time_point start = Clock::now();
          auto leases = (*reader)->AcquireMany(names);
          const double t = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
          if (!leases.ok()) Die("acquire: " + std::string(leases.status().message()));
          for (auto& l : *leases) {
            if (!l.ok()) Die("acquire item: " + std::string(l.status().message()));
            if (rep >= 0) {
              lossy += l->info().lossy ? 1 : 0;
              ++objects;
            }
          }
          if (rep >= 0) ms.push_back(t);
        }
      }
      const double p50 = Median(ms);
      const double bytes = static_cast<double>(base.payload_bytes) * batch;
      std::printf("link %-8s %-9s x%-2d p50 %9.2f ms  %7.3f GB/s  encoded %d/%d\n",
                  cfg.link.c_str(), policy.c_str(), batch, p50, bytes / (p50 / 1e3) / 1e9, lossy,
                  objects);
      std::fflush(stdout);
      results.push_back({{"link", cfg.link},
                         {"policy", policy},
                         {"data_plane", over_grpc ? "grpc" : "ucx"},
                         {"size_bytes", base.payload_bytes},
                         {"batch", batch},
                         {"p50_ms", p50},
                         {"gbytes_per_s", bytes / (p50 / 1e3) / 1e9},
                         {"samples", ms.size()},
                         {"encoded_objects", lossy},
                         {"objects", objects}});
    }
    reader->reset();
    // The policy line of B's log (auto: the measured break-even rate).
    std::ifstream log(dir + "/cachesvc.log");
    for (std::string line; std::getline(log, line);) {
      if (line.find("event=peer_transfer_encoding") != std::string::npos) {
        results.back()["policy_log"] = line;
      }
      // Which plane carried B's encoded fetches (the last change).
      if (line.find("event=peer_encoded_plane") != std::string::npos) {
        results.back()["plane_log"] = line;
      }
    }
    Stop(b_pid);
  }
  Stop(a_pid);
  std::filesystem::remove_all(root);
  json doc = {{"bench", "peer_slowlink"}, {"link", cfg.link}, {"results", results}};
  std::filesystem::create_directories(std::filesystem::path(cfg.out).parent_path());
  std::ofstream(cfg.out) << doc.dump(2) << "\n";
  std::printf("wrote %s\n", cfg.out.c_str());
  return 0;
}

}  // namespace

// An exception (a file system or JSON error, say) ends the run with its message and status 1
// rather than std::terminate's abort.
int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "peer_slowlink_bench: %s\n", e.what());
    return 1;
  }
}
