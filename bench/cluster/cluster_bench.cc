// Cluster driver with real processes: one etcd and three cachesvc nodes on loopback (R = 2).
//
//   detection:  a node is killed (SIGKILL) or stopped (SIGSTOP); the time until every survivor's
//               view (kvstash_cluster_nodes) has dropped it, polled every 10 ms; --reps times each.
//   shared:     three clients, one per node, each a stand-in for an engine: requests of a shared
//               system prefix (16 chunks, the same for every client), the 8 chunks the next
//               node's client stored in its previous request, and 8 new chunks of their own;
//               per request: Lookup, Get of the hits, Put of the misses (64 KiB chunks). Hit rate
//               and Get latency, clustered (etcd, R = 2) against three isolated nodes.
//
//   puts:       put latency of replication_mode async against sync, and of sync with the
//               owners reading offered leases (the default) against sync without offers
//               (--replicate-offers false: owners Acquire and Release on the writer): three
//               clusters of three nodes (R = 2) on the same etcd, one client on node 0's TCP
//               listener of each (byte-stream puts), puts taking turns between the clusters so all
//               see the same load; median, p90 and p99 per object size, the sync / async ratio
//               of the medians and offered / not offered.
//
//   cluster_bench [--cases detection,shared,puts] [--ttl-s 2] [--reps 3] [--requests 60]
//                 [--puts 300] [--out FILE]        (default cases: detection,shared)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "etcd_process.h"
#include "kvstash/client/kv_client.h"
#include "service_process.h"
#include "test_objects.h"

namespace {

using namespace kvstash;
using namespace kvstash::testing;
using namespace kvstash::client;
using Clock = std::chrono::steady_clock;

constexpr int kNodes = 3;

struct Cluster {
  std::unique_ptr<EtcdProcess> etcd;
  std::vector<std::unique_ptr<TempDir>> dirs;
  std::vector<std::unique_ptr<ServiceProcess>> nodes;
  std::string secret;
};

void Die(const std::string& what) {
  std::fprintf(stderr, "cluster_bench: %s\n", what.c_str());
  std::exit(1);
}

std::unique_ptr<ServiceProcess> StartNode(Cluster& c, int i, bool clustered, int ttl_s,
                                          const std::vector<std::string>& more = {}) {
  ServiceOptions o;
  o.tcp = true;
  o.metrics = true;
  o.cpu_capacity = "256MiB";
  o.extra_args = {"--peer-secret-file", c.secret, "--node-id",       absl::StrCat("n", i),
                  "--peer-timeout-ms",  "2000",   "--peer-retry-ms", "300"};
  if (clustered) {
    for (const std::string& a :
         {std::string("--etcd"), c.etcd->endpoint(), std::string("--replicas"), std::string("2"),
          std::string("--cluster-ttl-s"), std::to_string(ttl_s)}) {
      o.extra_args.push_back(a);
    }
  }
  o.extra_args.insert(o.extra_args.end(), more.begin(), more.end());
  auto p = ServiceProcess::Start(c.dirs[i]->path(), o);
  if (!p.ok()) Die(std::string(p.status().message()));
  return std::move(*p);
}

bool WaitNodes(Cluster& c, int n, int skip, std::chrono::milliseconds limit, double* seconds) {
  const auto start = Clock::now();
  while (Clock::now() - start < limit) {
    bool all = true;
    for (int i = 0; i < kNodes && all; ++i) {
      if (i == skip) continue;
      all = MetricSum(c.nodes[i]->metrics_port(), "kvstash_cluster_nodes") == n;
    }
    if (all) {
      if (seconds) *seconds = std::chrono::duration<double>(Clock::now() - start).count();
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

Cluster Make(bool clustered, int ttl_s) {
  Cluster c;
  if (clustered) {
    auto etcd = EtcdProcess::Start();
    if (!etcd.ok()) Die(std::string(etcd.status().message()));
    c.etcd = std::move(*etcd);
  }
  for (int i = 0; i < kNodes; ++i) c.dirs.push_back(std::make_unique<TempDir>());
  c.secret = c.dirs[0]->path() + "/secret";
  std::ofstream(c.secret) << "kvstash-cluster-bench-secret-0123456789\n";
  for (int i = 0; i < kNodes; ++i) c.nodes.push_back(StartNode(c, i, clustered, ttl_s));
  if (clustered && !WaitNodes(c, kNodes, -1, std::chrono::seconds(10), nullptr)) {
    Die("nodes did not see each other");
  }
  return c;
}

std::vector<std::string> Detection(int ttl_s, int reps) {
  std::vector<std::string> rows;
  Cluster c = Make(true, ttl_s);
  for (const char* how : {"kill", "stop"}) {
    for (int r = 0; r < reps; ++r) {
      const int victim = r % kNodes;
      const auto start = Clock::now();
      if (std::strcmp(how, "kill") == 0) {
        c.nodes[victim]->Kill();
      } else {
        c.nodes[victim]->Stop();
      }
      double s = 0;
      if (!WaitNodes(c, kNodes - 1, victim, std::chrono::seconds(ttl_s + 10), &s)) {
        Die("survivors did not drop the node");
      }
      s = std::chrono::duration<double>(Clock::now() - start).count();
      std::fprintf(stderr, "detection %s ttl %d s: %.3f s\n", how, ttl_s, s);
      char line[256];
      std::snprintf(line, sizeof line,
                    "{\"case\":\"detection\",\"fault\":\"%s\",\"ttl_s\":%d,\"rep\":%d,"
                    "\"seconds\":%.3f}",
                    how, ttl_s, r, s);
      rows.emplace_back(line);
      if (std::strcmp(how, "stop") == 0) c.nodes[victim]->Continue();
      c.nodes[victim].reset();  // SIGKILL if still running
      c.nodes[victim] = StartNode(c, victim, true, ttl_s);
      if (!WaitNodes(c, kNodes, -1, std::chrono::seconds(15), nullptr)) Die("no rejoin");
    }
  }
  return rows;
}

std::string Shared(bool clustered, int ttl_s, int requests) {
  Cluster c = Make(clustered, ttl_s);
  std::atomic<uint64_t> hits{0}, asked{0};
  std::vector<double> get_us;
  std::mutex mu;
  auto engine = [&](int node) {
    ClientOptions o;
    o.use_shared_memory = false;
    auto kv = KvClient::Connect(c.nodes[node]->target(), o);
    if (!kv.ok()) Die(std::string(kv.status().message()));
    std::vector<double> mine;
    for (int r = 0; r < requests; ++r) {
      std::vector<ObjectName> names;
      std::vector<uint64_t> seeds;
      for (uint64_t k = 0; k < 16; ++k) seeds.push_back(1'000'000 + k);  // shared prefix
      // A conversation another engine (on the next node) stored in its previous request, then
      // this request's own new chunks.
      if (r > 0) {
        for (uint64_t k = 0; k < 8; ++k) {
          seeds.push_back(((node + 1) % kNodes + 1) * 100'000 + (r - 1) * 8 + k);
        }
      }
      for (uint64_t k = 0; k < 8; ++k) seeds.push_back((node + 1) * 100'000 + r * 8 + k);
      names.reserve(seeds.size());
      for (uint64_t s : seeds) names.push_back(TestName(s, "bench"));
      auto look = (*kv)->Lookup(names);
      if (!look.ok()) Die(std::string(look.status().message()));
      for (size_t i = 0; i < names.size(); ++i) {
        asked++;
        const ObjectInfo info = TestInfo(256);  // 64 KiB
        if (look->results[i].present) {
          const auto t0 = Clock::now();
          auto got = (*kv)->Get(names[i]);
          const double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
          if (got.ok()) {
            hits++;
            mine.push_back(us);
            continue;
          }
        }
        std::vector<uint8_t> payload = TestPayload(seeds[i], info.payload_bytes);
        (void)(*kv)->Put(names[i], WithCrc(info, payload), payload);
      }
    }
    std::lock_guard<std::mutex> lock(mu);
    get_us.insert(get_us.end(), mine.begin(), mine.end());
  };
  std::vector<std::thread> threads;
  threads.reserve(kNodes);
  for (int i = 0; i < kNodes; ++i) threads.emplace_back(engine, i);
  for (auto& t : threads) t.join();
  std::sort(get_us.begin(), get_us.end());
  auto pct = [&](double q) {
    return get_us.empty() ? 0.0 : get_us[std::min(get_us.size() - 1, size_t(q * get_us.size()))];
  };
  const double rate = asked ? double(hits) / double(asked) : 0;
  std::fprintf(stderr, "shared prefix %s: hit rate %.3f  Get p50 %.0f us  p99 %.0f us (%zu gets)\n",
               clustered ? "clustered" : "isolated", rate, pct(0.5), pct(0.99), get_us.size());
  char line[320];
  std::snprintf(line, sizeof line,
                "{\"case\":\"shared_prefix\",\"mode\":\"%s\",\"requests_per_client\":%d,"
                "\"chunks_asked\":%llu,\"hits\":%llu,\"hit_rate\":%.4f,\"get_p50_us\":%.1f,"
                "\"get_p99_us\":%.1f}",
                clustered ? "clustered" : "isolated", requests,
                static_cast<unsigned long long>(asked.load()),
                static_cast<unsigned long long>(hits.load()), rate, pct(0.5), pct(0.99));
  return line;
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

std::vector<std::string> PutLatency(int ttl_s, int puts) {
  // Clusters "async", "sync" (owners read offered leases) and "syncnooffer" share one etcd; each
  // has three nodes.
  auto etcd = EtcdProcess::Start();
  if (!etcd.ok()) Die(std::string(etcd.status().message()));
  constexpr int kModes = 3;
  Cluster modes[kModes];
  const char* names[kModes] = {"async", "sync", "syncnooffer"};
  const char* replication[kModes] = {"async", "sync", "sync"};
  const char* offers[kModes] = {"true", "true", "false"};
  for (int m = 0; m < kModes; ++m) {
    Cluster& c = modes[m];
    for (int i = 0; i < kNodes; ++i) c.dirs.push_back(std::make_unique<TempDir>());
    c.secret = c.dirs[0]->path() + "/secret";
    std::ofstream(c.secret) << "kvstash-cluster-bench-secret-0123456789\n";
    for (int i = 0; i < kNodes; ++i) {
      c.nodes.push_back(StartNode(
          c, i, /*clustered=*/false, ttl_s,
          {"--etcd", (*etcd)->endpoint(), "--replicas", "2", "--cluster-ttl-s",
           std::to_string(ttl_s), "--cluster-name", names[m], "--replication-mode", replication[m],
           "--sync-timeout-ms", "10000", "--replicate-offers", offers[m]}));
    }
    if (!WaitNodes(c, kNodes, -1, std::chrono::seconds(15), nullptr)) Die("no cluster view");
  }
  std::unique_ptr<KvClient> kv[kModes];
  for (int m = 0; m < kModes; ++m) {
    auto client = KvClient::Connect(modes[m].nodes[0]->target(), ClientOptions{});
    if (!client.ok()) Die(std::string(client.status().message()));
    kv[m] = std::move(*client);
  }
  std::vector<std::string> rows;
  uint64_t seed = 0;
  for (uint32_t tokens : {16u, 256u, 4096u}) {  // 4 KiB, 64 KiB, 1 MiB with TestInfo's layout
    const ObjectInfo shape = TestInfo(tokens);
    std::vector<double> us[kModes];
    int failures[kModes] = {0, 0, 0};
    for (int r = 0; r < puts; ++r) {
      for (int m = 0; m < kModes; ++m) {
        const uint64_t id = ++seed;
        const ObjectName name = TestName(id, names[m]);
        std::vector<uint8_t> payload = TestPayload(id, shape.payload_bytes);
        const ObjectInfo info = WithCrc(shape, payload);
        const auto t0 = Clock::now();
        const Status s = kv[m]->Put(name, info, payload);
        const double t = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
        if (s.ok()) {
          us[m].push_back(t);
        } else {
          ++failures[m];
        }
      }
    }
    double p50[kModes], p90[kModes], p99[kModes];
    for (int m = 0; m < kModes; ++m) {
      p50[m] = Percentile(us[m], 0.5);
      p90[m] = Percentile(us[m], 0.9);
      p99[m] = Percentile(us[m], 0.99);
    }
    const double sync_over_async = p50[0] > 0 ? p50[1] / p50[0] : 0.0;
    const double offered_over_not = p50[2] > 0 ? p50[1] / p50[2] : 0.0;
    std::fprintf(stderr,
                 "put %8llu B: async p50 %.0f p90 %.0f p99 %.0f us | sync p50 %.0f p90 %.0f p99 "
                 "%.0f us | sync without offers p50 %.0f p90 %.0f p99 %.0f us | sync/async %.2f "
                 "| offered/not %.2f | failures %d/%d/%d\n",
                 static_cast<unsigned long long>(shape.payload_bytes), p50[0], p90[0], p99[0],
                 p50[1], p90[1], p99[1], p50[2], p90[2], p99[2], sync_over_async, offered_over_not,
                 failures[0], failures[1], failures[2]);
    char line[768];
    std::snprintf(line, sizeof line,
                  "{\"case\":\"put_latency\",\"bytes\":%llu,\"puts\":%d,\"replicas\":2,"
                  "\"async_p50_us\":%.1f,\"async_p90_us\":%.1f,\"async_p99_us\":%.1f,"
                  "\"sync_p50_us\":%.1f,\"sync_p90_us\":%.1f,\"sync_p99_us\":%.1f,"
                  "\"sync_no_offers_p50_us\":%.1f,\"sync_no_offers_p90_us\":%.1f,"
                  "\"sync_no_offers_p99_us\":%.1f,\"sync_over_async_p50\":%.3f,"
                  "\"offered_over_not_p50\":%.3f,\"async_failures\":%d,\"sync_failures\":%d,"
                  "\"sync_no_offers_failures\":%d}",
                  static_cast<unsigned long long>(shape.payload_bytes), puts, p50[0], p90[0],
                  p99[0], p50[1], p90[1], p99[1], p50[2], p90[2], p99[2], sync_over_async,
                  offered_over_not, failures[0], failures[1], failures[2]);
    rows.emplace_back(line);
  }
  for (int m = 0; m < kModes; ++m) kv[m].reset();
  for (int m = 0; m < kModes; ++m) modes[m].nodes.clear();  // before etcd goes
  return rows;
}

}  // namespace

int main(int argc, char** argv) {
  int ttl_s = 2, reps = 3, requests = 60, puts = 300;
  std::string out_path;
  std::string cases = "detection,shared";
  for (int i = 1; i + 1 < argc; ++i) {
    if (!std::strcmp(argv[i], "--ttl-s")) {
      ttl_s = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--reps")) {
      reps = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--requests")) {
      requests = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--puts")) {
      puts = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--cases")) {
      cases = argv[++i];
    } else if (!std::strcmp(argv[i], "--out")) {
      out_path = argv[++i];
    }
  }
  auto wanted = [&](const char* name) {
    // StrCat, not operator+ on std::string: GCC 12 raises a false -Wrestrict on "," + str.
    return absl::StrCat(",", cases, ",").find(absl::StrCat(",", name, ",")) != std::string::npos;
  };
  std::vector<std::string> rows;
  if (wanted("detection")) rows = Detection(ttl_s, reps);
  if (wanted("shared")) {
    rows.push_back(Shared(false, ttl_s, requests));
    rows.push_back(Shared(true, ttl_s, requests));
  }
  if (wanted("puts")) {
    for (std::string& row : PutLatency(ttl_s, puts)) rows.push_back(std::move(row));
  }
  std::string json = "{\"benchmark\":\"cluster\",\"results\":[";
  for (size_t i = 0; i < rows.size(); ++i) json += (i ? "," : "") + rows[i];
  json += "]}\n";
  std::fputs(json.c_str(), stdout);
  if (!out_path.empty()) std::ofstream(out_path) << json;
  return 0;
}
