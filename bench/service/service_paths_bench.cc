// Data paths of the service, against plain memcpy and Redis, in one run.
//
// For each object size (default 256 KiB, 2 MiB, 32 MiB), one client thread:
//   shm:    KvClient over the unix socket with the arena attached. put = Reserve RPC + copy into
//           the arena with crc32c + Commit RPC (the service verifies the crc32c); get = Acquire RPC
//           + memcpy out of the arena into the reader's buffer + dropping the lease (its Release
//           RPC is sent without waiting for the answer).
//   shm_pipe: the same arena, many objects per call (--per-call): put = KvClient::PutMany, i.e.
//           one ReserveMany + one CommitMany RPC per --batch objects, batches pipelined (the next
//           batch's Reserve and the previous batch's Commit run while this thread copies); get =
//           one AcquireMany RPC per --batch objects, then the same memcpy per object and dropping
//           the leases. Latencies of this path are per call of --per-call objects.
//   grpc:   KvClient on the same unix socket, byte streams: put = streaming Put in 1 MiB
//           messages, get = streaming GetInto the reader's buffer (crc32c verified).
//   memcpy: the same bytes copied source -> one of N distinct destination slots (put) and slot ->
//           one reader buffer (get), i.e. what the shm path does minus the service.
//   redis:  hiredis SET/GET on a redis-server the bench starts itself (unix socket, no
//           persistence); get copies the reply into the reader's buffer, like shm does.
// cachesvc runs as its own process (the real binary), CPU tier only (--ssd-capacity 0), arena
// prefaulted on both sides (--prefault-arena true in the service, ClientOptions::prefault_arena
// in the client), so no path pays first-touch page faults; the comparison is about the data path,
// not the SSD. Each (size, path) is measured --reps times,
// paths interleaved within a rep; throughput is the median of the reps, latencies are p50/p99
// over all operations. Each path also reports the server's CPU time while it ran (cachesvc's, or
// redis-server's for redis; all threads, clock_getcpuclockid) per GB moved: the cost
// beside the client thread, e.g. of the local control channel's polling. --service-arg and
// --client-poll-us / --stream-poll-us change the service's flags and the client's polling windows
// for A/B runs.
// Results: JSON (--out) and a markdown table (--markdown).
#include <hiredis/hiredis.h>
#include <malloc.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "child_process.h"
#include "kvstash/client/kv_client.h"
#include "kvstash/common/byte_size.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/common/key.h"

namespace {

using Clock = std::chrono::steady_clock;
using kvstash::ObjectInfo;
using kvstash::ObjectName;
using kvstash::Status;
namespace client = kvstash::client;
using kvstash::bench::Reap;
using kvstash::bench::Spawn;
using kvstash::bench::WaitFor;

struct Config {
  std::vector<std::string> sizes = {"256KiB", "2MiB", "32MiB"};
  uint64_t bytes_per_rep = 256ull << 20;  // per size and path; count = max(8, this / size)
  int reps = 3;
  std::string cachesvc = KVSTASH_CACHESVC_PATH;
  std::string redis_server = "redis-server";
  std::string out = "bench/results/service_paths.json";
  std::string markdown;
  int batch = 8;      // shm_pipe objects per ReserveMany / CommitMany / AcquireMany RPC
  int per_call = 32;  // shm_pipe objects per measured call (PutMany, AcquireMany loop)
  std::vector<std::string> service_args;  // appended to cachesvc's command line
  int client_poll_us = -1;                // ClientOptions::local_control_poll; -1: the default
  int stream_poll_us = -1;                // ClientOptions::stream_poll; -1: the default
  std::vector<std::string> only = {"shm",  "shm_grpcctl", "shm_pipe", "shm_pipe_grpcctl",
                                   "grpc", "memcpy",      "redis"};
  std::string command_line;  // recorded in the JSON
};

// ---- measurement ----------------------------------------------------------------------

struct OpStats {
  std::vector<double> rep_gbps;  // one per rep
  std::vector<double> lat_ms;    // every op of every rep
  double server_cpu_s = 0;       // the server process's CPU time over every rep
  double bytes_moved = 0;        // over every rep
  // The server's CPU milliseconds per GB moved: what the path costs beside the client thread.
  double ServerCpuMsPerGb() const {
    return bytes_moved == 0 ? 0 : server_cpu_s * 1e3 / (bytes_moved / 1e9);
  }
  double Median() const {
    std::vector<double> v = rep_gbps;
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
  }
  double Pct(double p) const {
    std::vector<double> v = lat_ms;
    std::sort(v.begin(), v.end());
    if (v.empty()) return 0;
    return v[std::min(v.size() - 1,
                      static_cast<size_t>(std::lround(p * static_cast<double>(v.size() - 1))))];
  }
};

// CPU time of process `pid` so far, every thread's (ended ones too), in seconds; 0 for no process
// or when the clock cannot be read.
double ProcessCpuSeconds(pid_t pid) {
  clockid_t clock;
  timespec ts{};
  if (pid <= 0 || ::clock_getcpuclockid(pid, &clock) != 0 || ::clock_gettime(clock, &ts) != 0) {
    return 0;
  }
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// Runs op(i) for i in [0, count), recording per-op latency, the rep's throughput and the CPU
// time the server process `server` (none: -1) spent meanwhile.
Status Measure(int count, uint64_t bytes, OpStats* stats, const std::function<Status(int)>& op,
               pid_t server = -1) {
  const double server_cpu_before = ProcessCpuSeconds(server);
  auto start = Clock::now();
  for (int i = 0; i < count; ++i) {
    auto t0 = Clock::now();
    KVSTASH_RETURN_IF_ERROR(op(i));
    stats->lat_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  double s = std::chrono::duration<double>(Clock::now() - start).count();
  stats->rep_gbps.push_back(static_cast<double>(bytes) * count / s / 1e9);
  stats->server_cpu_s += ProcessCpuSeconds(server) - server_cpu_before;
  stats->bytes_moved += static_cast<double>(bytes) * count;
  return kvstash::OkStatus();
}

ObjectInfo InfoFor(uint64_t bytes) {
  // Raw f16, one head of dim 64, one layer: 256 bytes per token.
  ObjectInfo info;
  info.layout.num_layers = 1;
  info.layout.total_kv_heads = 1;
  info.layout.head_end = 1;
  info.layout.head_dim = 64;
  info.layout.dtype = kvstash::DType::kF16;
  info.layout.num_tokens = static_cast<uint32_t>(bytes / 256);
  info.payload_bytes = info.layout.RawBytes();
  return info;
}

ObjectName NameFor(const std::string& path, uint64_t size, int rep, int i) {
  kvstash::ModelSpec spec;
  spec.model_id = "service-paths-bench";
  std::vector<uint32_t> tokens = {static_cast<uint32_t>(size >> 10), static_cast<uint32_t>(rep),
                                  static_cast<uint32_t>(i), static_cast<uint32_t>(path.size())};
  return kvstash::MakeObjectName(path, kvstash::ModelFingerprint(spec),
                                 kvstash::IndependentTokenHash(tokens));
}

struct SizeResult {
  uint64_t bytes = 0;
  int count = 0;
  OpStats put[7], get[7];  // indexed like kPaths
};
const char* kPaths[] = {"shm",      "grpc",        "memcpy",          "redis",
                        "shm_pipe", "shm_grpcctl", "shm_pipe_grpcctl"};
constexpr int kShm = 0, kGrpc = 1, kMemcpy = 2, kRedis = 3, kShmPipe = 4, kShmGrpcCtl = 5,
              kShmPipeGrpcCtl = 6;

int Run(const Config& cfg) {
  std::string dir = "/tmp/kvs-bench-" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  auto cleanup_dir = [&] { std::filesystem::remove_all(dir); };

  std::string ready = dir + "/ready.json";
  std::vector<std::string> svc_command(
      {cfg.cachesvc, "--listen", "unix://" + dir + "/svc.sock", "--data-dir", dir + "/data",
       "--cpu-capacity", "1GiB", "--ssd-capacity", "0", "--prefault-arena", "true",
       "--metrics-port", "0", "--ready-file", ready, "--log-level", "warn"});
  svc_command.insert(svc_command.end(), cfg.service_args.begin(), cfg.service_args.end());
  pid_t svc = Spawn(svc_command, dir + "/cachesvc.log");
  std::string redis_sock = dir + "/redis.sock";
  pid_t redis =
      Spawn({cfg.redis_server, "--port", "0", "--unixsocket", redis_sock, "--unixsocketperm", "700",
             "--save", "", "--appendonly", "no", "--dir", dir, "--daemonize", "no"},
            dir + "/redis.log");
  auto stop_all = [&] {
    Reap(svc, SIGTERM);
    Reap(redis, SIGTERM);
    cleanup_dir();
  };
  if (svc < 0 || redis < 0 || !WaitFor([&] { return std::filesystem::exists(ready); }, 30'000)) {
    std::fprintf(stderr, "service_paths_bench: cachesvc (%s) or redis-server did not start\n",
                 cfg.cachesvc.c_str());
    stop_all();
    return 1;
  }
  redisContext* rc = nullptr;
  WaitFor(
      [&] {
        if (rc != nullptr) redisFree(rc);
        rc = redisConnectUnix(redis_sock.c_str());
        return rc != nullptr && rc->err == 0;
      },
      30'000);
  if (rc == nullptr || rc->err != 0) {
    std::fprintf(stderr, "service_paths_bench: cannot reach redis-server\n");
    stop_all();
    return 1;
  }
  client::ClientOptions local_control;
  if (cfg.client_poll_us >= 0) {
    local_control.local_control_poll = std::chrono::microseconds{cfg.client_poll_us};
  }
  if (cfg.stream_poll_us >= 0) {
    local_control.stream_poll = std::chrono::microseconds{cfg.stream_poll_us};
  }
  auto kv_or = client::KvClient::Connect("unix://" + dir + "/svc.sock", local_control);
  if (!kv_or.ok() || !(*kv_or)->shared_memory_attached()) {
    std::fprintf(stderr, "service_paths_bench: cannot attach to cachesvc: %s\n",
                 kv_or.ok() ? (*kv_or)->shared_memory_status().ToString().c_str()
                            : kv_or.status().ToString().c_str());
    stop_all();
    return 1;
  }
  client::KvClient& kv = **kv_or;
  // The same shared-memory data path with every control call over gRPC (*_grpcctl paths).
  client::ClientOptions grpc_control = local_control;
  grpc_control.local_control = false;
  auto kv_grpc_or = client::KvClient::Connect("unix://" + dir + "/svc.sock", grpc_control);
  if (!kv.local_control_active() || !kv_grpc_or.ok() || !(*kv_grpc_or)->shared_memory_attached()) {
    std::fprintf(stderr, "service_paths_bench: no local control channel or no second client\n");
    stop_all();
    return 1;
  }
  client::KvClient& kv_grpc = **kv_grpc_or;

  // Round trip of a minimal control call (Lookup of one key) over the local control channel and
  // over gRPC: the floor under every shm operation.
  OpStats rtt, rtt_grpc;
  {
    std::vector<ObjectName> one = {NameFor("rtt", 0, 0, 0)};
    Status s = Measure(500, 0, &rtt, [&](int) { return kv.Lookup(one).status(); });
    s.Update(Measure(500, 0, &rtt_grpc, [&](int) { return kv_grpc.Lookup(one).status(); }));
    if (!s.ok()) {
      std::fprintf(stderr, "service_paths_bench: %s\n", s.ToString().c_str());
      stop_all();
      return 1;
    }
    std::fprintf(stderr,
                 "control round trip: local channel p50 %.3f ms, p99 %.3f ms; gRPC p50 %.3f ms, "
                 "p99 %.3f ms\n",
                 rtt.Pct(0.5), rtt.Pct(0.99), rtt_grpc.Pct(0.5), rtt_grpc.Pct(0.99));
  }

  auto want = [&](const char* path) {
    return std::find(cfg.only.begin(), cfg.only.end(), path) != cfg.only.end();
  };
  std::vector<SizeResult> results;
  for (const std::string& size_text : cfg.sizes) {
    auto parsed = kvstash::ParseByteSize(size_text);
    if (!parsed.ok() || *parsed < 256) {
      std::fprintf(stderr, "service_paths_bench: bad size %s\n", size_text.c_str());
      stop_all();
      return 2;
    }
    SizeResult r;
    ObjectInfo info = InfoFor(*parsed);
    r.bytes = info.payload_bytes;
    r.count = static_cast<int>(std::max<uint64_t>(8, cfg.bytes_per_rep / r.bytes));
    const int per_call = std::min(cfg.per_call, r.count);
    r.count = (r.count + per_call - 1) / per_call * per_call;  // whole calls for shm_pipe
    std::vector<uint8_t> source(r.bytes);
    uint64_t x = 88172645463325252ull;
    for (auto& b : source) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      b = static_cast<uint8_t>(x);
    }
    std::vector<uint8_t> reader(r.bytes, 1);
    std::vector<uint8_t> slots(r.bytes * r.count, 1);  // memcpy baseline's "store"
    std::fprintf(stderr, "size %s: %d objects x %d reps per path\n",
                 kvstash::FormatByteSize(r.bytes).c_str(), r.count, cfg.reps);

    for (int rep = 0; rep < cfg.reps; ++rep) {
      Status s;
      // shm, one object per call; shm_pipe, pipelined puts and batched leases. The plain paths
      // send their control calls over the local control channel, the *_grpcctl paths over gRPC.
      auto run_shm = [&](client::KvClient& c, int path) {
        const char* tag = kPaths[path];
        client::PutOptions shm_put;
        shm_put.path = client::DataPath::kSharedMemory;
        s.Update(Measure(
            r.count, r.bytes, &r.put[path],
            [&](int i) { return c.Put(NameFor(tag, r.bytes, rep, i), info, source, shm_put); },
            svc));
        s.Update(Measure(
            r.count, r.bytes, &r.get[path],
            [&](int i) -> Status {
              KVSTASH_ASSIGN_OR_RETURN(client::ReadLease lease,
                                       c.Acquire(NameFor(tag, r.bytes, rep, i)));
              std::memcpy(reader.data(), lease.data().data(), lease.data().size());
              return kvstash::OkStatus();  // dropping the lease sends its Release, unawaited
            },
            svc));
      };
      auto run_shm_pipe = [&](client::KvClient& c, int path) {
        const char* tag = kPaths[path];
        client::PutOptions pipe_put;
        pipe_put.path = client::DataPath::kSharedMemory;
        pipe_put.max_batch = static_cast<uint32_t>(cfg.batch);
        std::vector<client::PutItem> items(per_call);
        std::vector<ObjectName> names;
        s.Update(Measure(
            r.count / per_call, r.bytes * per_call, &r.put[path],
            [&](int k) -> Status {
              for (int j = 0; j < per_call; ++j) {
                items[j] = {NameFor(tag, r.bytes, rep, k * per_call + j), info, source};
              }
              for (const Status& item : c.PutMany(items, pipe_put)) KVSTASH_RETURN_IF_ERROR(item);
              return kvstash::OkStatus();
            },
            svc));
        s.Update(Measure(
            r.count / per_call, r.bytes * per_call, &r.get[path],
            [&](int k) -> Status {
              for (int first = 0; first < per_call; first += cfg.batch) {
                names.clear();
                for (int j = first; j < std::min(per_call, first + cfg.batch); ++j) {
                  names.push_back(NameFor(tag, r.bytes, rep, k * per_call + j));
                }
                KVSTASH_ASSIGN_OR_RETURN(std::vector<kvstash::Result<client::ReadLease>> leases,
                                         c.AcquireMany(names));
                for (auto& lease : leases) {
                  KVSTASH_RETURN_IF_ERROR(lease.status());
                  std::memcpy(reader.data(), lease->data().data(), lease->data().size());
                }
              }  // dropping the leases sends their Releases, unawaited
              return kvstash::OkStatus();
            },
            svc));
      };
      if (want("shm")) run_shm(kv, kShm);
      if (want("shm_grpcctl")) run_shm(kv_grpc, kShmGrpcCtl);
      if (want("shm_pipe")) run_shm_pipe(kv, kShmPipe);
      if (want("shm_pipe_grpcctl")) run_shm_pipe(kv_grpc, kShmPipeGrpcCtl);
      // grpc streams
      if (want("grpc")) {
        client::PutOptions stream_put;
        stream_put.path = client::DataPath::kStream;
        s.Update(Measure(
            r.count, r.bytes, &r.put[kGrpc],
            [&](int i) {
              return kv.Put(NameFor("grpc", r.bytes, rep, i), info, source, stream_put);
            },
            svc));
        s.Update(Measure(
            r.count, r.bytes, &r.get[kGrpc],
            [&](int i) -> Status {
              return kv.GetInto(NameFor("grpc", r.bytes, rep, i), reader).status();
            },
            svc));
      }
      // memcpy
      if (want("memcpy")) {
        s.Update(Measure(r.count, r.bytes, &r.put[kMemcpy], [&](int i) {
          std::memcpy(slots.data() + r.bytes * i, source.data(), r.bytes);
          return kvstash::OkStatus();
        }));
        s.Update(Measure(r.count, r.bytes, &r.get[kMemcpy], [&](int i) {
          std::memcpy(reader.data(), slots.data() + r.bytes * i, r.bytes);
          return kvstash::OkStatus();
        }));
      }
      // redis
      if (want("redis")) {
        s.Update(Measure(
            r.count, r.bytes, &r.put[kRedis],
            [&](int i) -> Status {
              std::string key = "bench:" + std::to_string(r.bytes) + ":" + std::to_string(i);
              auto* reply = static_cast<redisReply*>(redisCommand(
                  rc, "SET %b %b", key.data(), key.size(), source.data(), source.size()));
              bool ok = reply != nullptr && reply->type == REDIS_REPLY_STATUS;
              if (reply != nullptr) freeReplyObject(reply);
              return ok ? kvstash::OkStatus() : absl::UnavailableError("redis SET failed");
            },
            redis));
        s.Update(Measure(
            r.count, r.bytes, &r.get[kRedis],
            [&](int i) -> Status {
              std::string key = "bench:" + std::to_string(r.bytes) + ":" + std::to_string(i);
              auto* reply =
                  static_cast<redisReply*>(redisCommand(rc, "GET %b", key.data(), key.size()));
              bool ok = reply != nullptr && reply->type == REDIS_REPLY_STRING &&
                        static_cast<uint64_t>(reply->len) == r.bytes;
              if (ok) std::memcpy(reader.data(), reply->str, r.bytes);
              if (reply != nullptr) freeReplyObject(reply);
              return ok ? kvstash::OkStatus() : absl::UnavailableError("redis GET failed");
            },
            redis));
      }
      if (!s.ok()) {
        std::fprintf(stderr, "service_paths_bench: %s\n", s.ToString().c_str());
        stop_all();
        return 1;
      }
      // Every path must deliver the right bytes (the last reader fill came from redis GET).
      if (std::memcmp(reader.data(), source.data(), r.bytes) != 0) {
        std::fprintf(stderr, "service_paths_bench: read back wrong bytes\n");
        stop_all();
        return 1;
      }
      // Free the rep's objects so the next rep starts from the same fill.
      std::vector<ObjectName> names;
      for (int i = 0; i < r.count; ++i) {
        names.push_back(NameFor("shm", r.bytes, rep, i));
        names.push_back(NameFor("grpc", r.bytes, rep, i));
        names.push_back(NameFor("shm_pipe", r.bytes, rep, i));
      }
      (void)kv.Delete(names);
      auto* flush = static_cast<redisReply*>(redisCommand(rc, "FLUSHALL"));
      if (flush != nullptr) freeReplyObject(flush);
    }
    results.push_back(std::move(r));
  }
  redisFree(rc);
  kv_or->reset();
  kv_grpc_or->reset();
  stop_all();

  // ---- report ----
  nlohmann::json json;
  json["bench"] = "service_paths";
  json["command"] = cfg.command_line;
  json["machine"] = {{"cpus", std::thread::hardware_concurrency()}};
  json["local_control_round_trip"] = {{"p50_ms", rtt.Pct(0.5)}, {"p99_ms", rtt.Pct(0.99)}};
  json["unary_rpc_round_trip"] = {{"p50_ms", rtt_grpc.Pct(0.5)}, {"p99_ms", rtt_grpc.Pct(0.99)}};
  json["notes"] =
      "single client thread; cachesvc CPU tier only (--ssd-capacity 0), arena prefaulted, unix "
      "socket; redis over a unix socket, no persistence; throughput = median of reps, latency "
      "over all ops; shm_pipe: `batch` objects per ReserveMany/CommitMany/AcquireMany RPC, "
      "latencies per call of `per_call` objects; shm*: control calls over the local control "
      "channel, shm*_grpcctl: the same over gRPC; server_cpu_ms_per_gb: CPU time of cachesvc "
      "(redis-server for redis) while the path ran, per GB moved";
  json["service_args"] = cfg.service_args;
  json["client_poll_us"] = cfg.client_poll_us;
  json["stream_poll_us"] = cfg.stream_poll_us;
  json["batch"] = cfg.batch;
  json["per_call"] = cfg.per_call;
  std::string md =
      "| size | path | put GB/s | put p50 ms | put p99 ms | get GB/s | get p50 ms | get p99 ms "
      "| server CPU ms/GB put | server CPU ms/GB get "
      "|\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
      "---:|\n";
  std::string ratios_md =
      "| size | shm put / memcpy | shm get / memcpy | shm_pipe put / memcpy | shm_pipe get / "
      "memcpy "
      "| gRPC put / Redis | gRPC get / Redis |\n|---|---:|---:|---:|---:|---:|---:|\n";
  std::string control_md =
      "| size | shm put local / gRPC control | shm get local / gRPC control | shm_pipe put local "
      "/ gRPC control | shm_pipe get local / gRPC control |\n|---|---:|---:|---:|---:|\n";
  auto ratio = [](const OpStats& a, const OpStats& b) {
    return a.rep_gbps.empty() || b.rep_gbps.empty() ? 0.0 : a.Median() / b.Median();
  };
  for (const SizeResult& r : results) {
    nlohmann::json entry = {{"bytes", r.bytes}, {"count", r.count}, {"reps", cfg.reps}};
    char line[512];
    for (int p : {kShm, kShmGrpcCtl, kShmPipe, kShmPipeGrpcCtl, kGrpc, kMemcpy, kRedis}) {
      if (r.put[p].rep_gbps.empty()) continue;  // not run (--only)
      entry["paths"][kPaths[p]] = {{"put",
                                    {{"gbps", r.put[p].Median()},
                                     {"p50_ms", r.put[p].Pct(0.5)},
                                     {"p99_ms", r.put[p].Pct(0.99)}}},
                                   {"get",
                                    {{"gbps", r.get[p].Median()},
                                     {"p50_ms", r.get[p].Pct(0.5)},
                                     {"p99_ms", r.get[p].Pct(0.99)}}}};
      entry["paths"][kPaths[p]]["put"]["server_cpu_ms_per_gb"] = r.put[p].ServerCpuMsPerGb();
      entry["paths"][kPaths[p]]["get"]["server_cpu_ms_per_gb"] = r.get[p].ServerCpuMsPerGb();
      std::snprintf(line, sizeof(line),
                    "| %s | %s | %.2f | %.3f | %.3f | %.2f | %.3f | %.3f | %.0f | %.0f |\n",
                    kvstash::FormatByteSize(r.bytes).c_str(), kPaths[p], r.put[p].Median(),
                    r.put[p].Pct(0.5), r.put[p].Pct(0.99), r.get[p].Median(), r.get[p].Pct(0.5),
                    r.get[p].Pct(0.99), r.put[p].ServerCpuMsPerGb(), r.get[p].ServerCpuMsPerGb());
      md += line;
    }
    double shm_put = ratio(r.put[kShm], r.put[kMemcpy]);
    double shm_get = ratio(r.get[kShm], r.get[kMemcpy]);
    double pipe_put = ratio(r.put[kShmPipe], r.put[kMemcpy]);
    double pipe_get = ratio(r.get[kShmPipe], r.get[kMemcpy]);
    double grpc_put = ratio(r.put[kGrpc], r.put[kRedis]);
    double grpc_get = ratio(r.get[kGrpc], r.get[kRedis]);
    entry["ratios"] = {{"shm_put_vs_memcpy", shm_put},       {"shm_get_vs_memcpy", shm_get},
                       {"shm_pipe_put_vs_memcpy", pipe_put}, {"shm_pipe_get_vs_memcpy", pipe_get},
                       {"grpc_put_vs_redis", grpc_put},      {"grpc_get_vs_redis", grpc_get}};
    // What the local control channel buys: the same path with gRPC control calls.
    const double local_ratios[4] = {ratio(r.put[kShm], r.put[kShmGrpcCtl]),
                                    ratio(r.get[kShm], r.get[kShmGrpcCtl]),
                                    ratio(r.put[kShmPipe], r.put[kShmPipeGrpcCtl]),
                                    ratio(r.get[kShmPipe], r.get[kShmPipeGrpcCtl])};
    entry["ratios"]["shm_put_local_vs_grpcctl"] = local_ratios[0];
    entry["ratios"]["shm_get_local_vs_grpcctl"] = local_ratios[1];
    entry["ratios"]["shm_pipe_put_local_vs_grpcctl"] = local_ratios[2];
    entry["ratios"]["shm_pipe_get_local_vs_grpcctl"] = local_ratios[3];
    std::snprintf(line, sizeof(line), "| %s | %.2f | %.2f | %.2f | %.2f |\n",
                  kvstash::FormatByteSize(r.bytes).c_str(), local_ratios[0], local_ratios[1],
                  local_ratios[2], local_ratios[3]);
    control_md += line;
    std::snprintf(line, sizeof(line), "| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n",
                  kvstash::FormatByteSize(r.bytes).c_str(), shm_put, shm_get, pipe_put, pipe_get,
                  grpc_put, grpc_get);
    ratios_md += line;
    json["sizes"].push_back(entry);
  }
  std::string report = md + "\n" + ratios_md + "\n" + control_md;
  std::printf("%s", report.c_str());
  if (!cfg.out.empty()) {
    std::filesystem::create_directories(std::filesystem::path(cfg.out).parent_path());
    std::ofstream(cfg.out) << json.dump(2) << "\n";
  }
  if (!cfg.markdown.empty()) std::ofstream(cfg.markdown) << report;
  return 0;
}

int Main(int argc, char** argv) {
  Config cfg;
  CLI::App app{"Service data paths (shared memory, gRPC streams) vs memcpy and Redis"};
  app.add_option("--sizes", cfg.sizes, "object sizes")->capture_default_str();
  std::string per_rep = "256MiB";
  app.add_option("--bytes-per-rep", per_rep, "bytes moved per size, path and rep")
      ->capture_default_str();
  app.add_option("--reps", cfg.reps, "repetitions (median reported)")->capture_default_str();
  app.add_option("--cachesvc", cfg.cachesvc, "cachesvc binary")->capture_default_str();
  app.add_option("--redis-server", cfg.redis_server, "redis-server binary")->capture_default_str();
  app.add_option("--out", cfg.out, "JSON results file")->capture_default_str();
  app.add_option("--markdown", cfg.markdown, "also write the tables to this file");
  app.add_option("--only", cfg.only,
                 "paths to run (shm shm_grpcctl shm_pipe shm_pipe_grpcctl grpc memcpy redis)")
      ->capture_default_str();
  app.add_option("--batch", cfg.batch, "shm_pipe: objects per batched RPC")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--per-call", cfg.per_call, "shm_pipe: objects per measured call")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--service-arg", cfg.service_args,
                 "extra cachesvc flag, repeatable (--service-arg=--local-control-poll-us=0)");
  app.add_option("--client-poll-us", cfg.client_poll_us,
                 "ClientOptions::local_control_poll in microseconds (default: the client's)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--stream-poll-us", cfg.stream_poll_us,
                 "ClientOptions::stream_poll in microseconds (default: the client's)")
      ->check(CLI::NonNegativeNumber);
  CLI11_PARSE(app, argc, argv);
  for (int i = 0; i < argc; ++i) cfg.command_line += (i ? " " : "") + std::string(argv[i]);
  auto bytes = kvstash::ParseByteSize(per_rep);
  if (!bytes.ok()) {
    std::fprintf(stderr, "%s\n", bytes.status().ToString().c_str());
    return 2;
  }
  cfg.bytes_per_rep = *bytes;
  ::signal(SIGPIPE, SIG_IGN);
  // As in cachesvc: MiB-sized buffers (gRPC messages, hiredis replies) stay on the heap instead
  // of being mmapped and zero-filled per call. Applies to every path measured in this process.
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  return Run(cfg);
}

}  // namespace

// An exception (a file system or JSON error, say) ends the run with its message and status 1
// rather than std::terminate's abort.
int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "service_paths_bench: %s\n", e.what());
    return 1;
  }
}
