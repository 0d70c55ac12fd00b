// Node-to-node data plane, in one run:
//
//   transport:  KVStash's UcxTransport between two processes (a forked child registers a buffer
//               and hands over its worker address and rkey through a pipe; the parent reads
//               batches of 1 or --batches objects with Fetch, Read (one-sided gets, flushed) and
//               FetchInPlace, --read-ops, repetitions alternated). Over UCX_TLS=tcp
//               (the network path; on loopback here) and over UCX's default transports on one
//               host (shared memory, CMA). memcpy of the same bytes is the upper bound.
//   remote_get: end to end, a client on node B (shared memory, AcquireMany) asking for objects
//               that live only on node A: B fetches them from A into its arena (--remote-promote
//               false, so every request crosses), over UCX tcp, UCX default and gRPC streams.
//               Against: a local SSD hit on B (objects on B's SSD only, after a restart) and a
//               local CPU hit. Both nodes are real cachesvc processes.
//
// Every figure is the median of --reps repetitions; throughput in GB/s (1e9 bytes/s).
// Results: JSON (--out); docs/benchmarks-transfer.md has the tables and commands.
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "child_process.h"
#include "kvstash/client/kv_client.h"
#include "kvstash/common/byte_size.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/common/key.h"
#include "kvstash/transport/ucx_transport.h"

namespace {

using Clock = std::chrono::steady_clock;
using kvstash::ObjectInfo;
using kvstash::ObjectName;
namespace client = kvstash::client;
namespace transport = kvstash::transport;
using kvstash::bench::Reap;
using kvstash::bench::Spawn;
using kvstash::bench::WaitFor;
using nlohmann::json;

struct Config {
  std::vector<std::string> sizes = {"64KiB", "1MiB", "4MiB", "32MiB"};  // transport
  std::vector<std::string> get_sizes = {"1MiB", "2MiB", "32MiB"};       // remote_get
  std::vector<int> batches = {1, 16};
  int reps = 5;
  double seconds_per_point = 0.3;  // per rep, at least 3 transfers
  std::vector<std::string> modes = {"transport", "remote_get"};
  // transport: UCX_TLS of each measured path; "default" leaves UCX_TLS unset (UCX's choice).
  std::vector<std::string> tls = {"tcp", "default"};
  // transport: how the reading transport waits for its reads, each measured at every point in
  // turn (A/B in one run): "caller" (TransportOptions::caller_progress, the default: the reader
  // drives the worker itself) and "queued" (every read handed to the progress thread; its path
  // is reported as <path>_queued).
  std::vector<std::string> client_progress = {"caller"};
  // transport: TransportOptions::progress_poll of both ends, in microseconds; < 0: the default.
  int progress_poll_us = -1;
  // transport: how the reader moves the bytes, each measured at every point, repetitions
  // alternated (A/B in one run): "get" (UcxTransport::Read, one-sided gets), "fetch"
  // (UcxTransport::Fetch, the serving side sends the ranges as eager active messages) and
  // "fetch_inplace" (UcxTransport::FetchInPlace, the same by rendezvous, received into place).
  // The first is reported as <path>, the others as <path>_<op>.
  std::vector<std::string> read_ops = {"fetch", "get", "fetch_inplace"};
  std::string cachesvc = KVSTASH_CACHESVC_PATH;
  std::string out = "bench/results/peer_transfer.json";
};

// Children to stop if the bench gives up half way (cachesvc nodes, the transport server).
std::vector<pid_t>& Children() {
  static std::vector<pid_t> pids;
  return pids;
}

// Stops one child (sends `sig`, waits) and forgets it.
void Stop(pid_t pid, int sig) {
  Reap(pid, sig);
  auto& pids = Children();
  pids.erase(std::remove(pids.begin(), pids.end(), pid), pids.end());
}

// Stops every child still running and exits with status 1: nothing outlives a failed run.
[[noreturn]] void Die() {
  for (pid_t pid : Children()) Reap(pid, SIGKILL);
  std::exit(1);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// ---- transport ---------------------------------------------------------------------------------

constexpr uint64_t kRegionBytes = 256ull << 20;

void WriteBlob(int fd, const std::string& s) {
  uint64_t n = s.size();
  (void)!::write(fd, &n, sizeof n);
  (void)!::write(fd, s.data(), s.size());
}

bool ReadAll(int fd, void* p, size_t n) {
  auto* c = static_cast<char*>(p);
  while (n > 0) {
    ssize_t r = ::read(fd, c, n);
    if (r <= 0) return false;
    c += r;
    n -= r;
  }
  return true;
}

bool ReadBlob(int fd, std::string* s) {
  uint64_t n;
  if (!ReadAll(fd, &n, sizeof n) || n > (1 << 20)) return false;
  s->resize(n);
  return ReadAll(fd, s->data(), n);
}

// The serving side: registers a buffer, says where it is, and lives until the pipe closes.
[[noreturn]] void ServeRegion(int to_parent, int from_parent, const Config& cfg) {
  std::vector<uint8_t> buffer(kRegionBytes, 0x5a);
  transport::TransportOptions options{.name = "bench-server"};
  if (cfg.progress_poll_us >= 0)
    options.progress_poll = std::chrono::microseconds(cfg.progress_poll_us);
  auto t = transport::UcxTransport::Create(options);
  if (!t.ok()) _exit(2);
  auto region = (*t)->RegisterRegion(buffer.data(), buffer.size());
  if (!region.ok()) _exit(3);
  WriteBlob(to_parent, (*t)->worker_address());
  WriteBlob(to_parent, region->packed_rkey);
  WriteBlob(to_parent, std::to_string(region->address));
  char c;
  while (::read(from_parent, &c, 1) > 0) {
  }
  _exit(0);
}

// How a reader moves the bytes (Config::read_ops).
enum class ReadPath { kGet, kFetch, kFetchInPlace };

bool ParseReadPath(const std::string& name, ReadPath* op) {
  if (name == "get") {
    *op = ReadPath::kGet;
  } else if (name == "fetch") {
    *op = ReadPath::kFetch;
  } else if (name == "fetch_inplace") {
    *op = ReadPath::kFetchInPlace;
  } else {
    return false;
  }
  return true;
}

// One repetition: back-to-back transfers for --seconds; GB/s.
double TransportRep(transport::UcxTransport& t, transport::PeerId peer, ReadPath how, uint8_t* dst,
                    uint64_t size, int batch, const Config& cfg) {
  std::vector<transport::ReadOp> ops;
  for (int i = 0; i < batch; ++i) {
    uint64_t off = (static_cast<uint64_t>(i) * size) % (kRegionBytes - size + 1);
    ops.push_back({off, dst + off, size});
  }
  int n = 0;
  auto start = Clock::now();
  double elapsed = 0;
  while (n < 3 || elapsed < cfg.seconds_per_point) {
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    auto s = how == ReadPath::kFetch          ? t.Fetch(peer, ops, deadline)
             : how == ReadPath::kFetchInPlace ? t.FetchInPlace(peer, ops, deadline)
                                              : t.Read(peer, ops, deadline);
    if (!s.ok()) {
      std::fprintf(stderr, "transfer failed: %s\n", std::string(s.message()).c_str());
      Die();
    }
    ++n;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  }
  return static_cast<double>(size) * batch * n / elapsed / 1e9;
}

json MemcpyPoint(uint8_t* src, uint8_t* dst, uint64_t size, int batch, const Config& cfg) {
  std::vector<double> gbps;
  for (int rep = 0; rep < cfg.reps; ++rep) {
    int n = 0;
    auto start = Clock::now();
    double elapsed = 0;
    while (n < 3 || elapsed < cfg.seconds_per_point) {
      for (int i = 0; i < batch; ++i) {
        uint64_t off = (static_cast<uint64_t>(i) * size) % (kRegionBytes - size + 1);
        std::memcpy(dst + off, src + off, size);
      }
      ++n;
      elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    }
    gbps.push_back(static_cast<double>(size) * batch * n / elapsed / 1e9);
  }
  return {{"gbytes_per_s", Median(gbps)}, {"reps", gbps}};
}

json RunTransport(const Config& cfg, const std::vector<uint64_t>& sizes) {
  json out = json::array();
  std::vector<uint8_t> dst(kRegionBytes, 0), src(kRegionBytes, 1);
  for (std::string tls : cfg.tls) {
    if (tls == "default") tls.clear();
    if (tls.empty()) {
      ::unsetenv("UCX_TLS");
    } else {
      ::setenv("UCX_TLS", tls.c_str(), 1);
    }
    int up[2], down[2];
    if (::pipe(up) != 0 || ::pipe(down) != 0) Die();
    pid_t child = ::fork();
    if (child > 0) Children().push_back(child);
    if (child == 0) {
      ::close(up[0]);
      ::close(down[1]);
      ServeRegion(up[1], down[0], cfg);
    }
    ::close(up[1]);
    ::close(down[0]);
    std::string address, rkey, base;
    if (!ReadBlob(up[0], &address) || !ReadBlob(up[0], &rkey) || !ReadBlob(up[0], &base)) {
      std::fprintf(stderr, "transport server failed to start\n");
      Die();
    }
    struct Reader {
      std::string progress;
      std::string op;
      ReadPath how = ReadPath::kGet;
      std::unique_ptr<transport::UcxTransport> t;
      transport::PeerId peer = 0;
    };
    std::vector<Reader> readers;
    transport::RemoteRegion region{std::stoull(base), kRegionBytes, rkey};
    for (const std::string& progress : cfg.client_progress) {
      for (const std::string& op : cfg.read_ops) {
        transport::TransportOptions options{.name = "bench-client"};
        if (cfg.progress_poll_us >= 0) {
          options.progress_poll = std::chrono::microseconds(cfg.progress_poll_us);
        }
        options.caller_progress = progress != "queued";
        auto t = transport::UcxTransport::Create(options);
        if (!t.ok()) Die();
        // Fetch lands only in registered memory; reads into it skip per-call registration.
        if (!(*t)->RegisterRegion(dst.data(), dst.size()).ok()) Die();
        auto peer = (*t)->Connect(address, region, Clock::now() + std::chrono::seconds(30));
        if (!peer.ok()) {
          std::fprintf(stderr, "connect: %s\n", std::string(peer.status().message()).c_str());
          Die();
        }
        ReadPath how;
        if (!ParseReadPath(op, &how)) {
          std::fprintf(stderr, "unknown read op %s (get, fetch, fetch_inplace)\n", op.c_str());
          Die();
        }
        readers.push_back({progress, op, how, std::move(*t), *peer});
      }
    }
    std::string path = "ucx_" + (tls.empty() ? std::string("default") : tls);
    std::replace(path.begin(), path.end(), ',', '+');
    for (uint64_t size : sizes) {
      for (int batch : cfg.batches) {
        json bound = MemcpyPoint(src.data(), dst.data(), size, batch, cfg);
        // Repetitions alternate between the readers, so that a change in the machine's load
        // falls on all of them alike.
        std::vector<std::vector<double>> gbps(readers.size());
        for (int rep = 0; rep < cfg.reps; ++rep) {
          for (size_t k = 0; k < readers.size(); ++k) {
            Reader& r = readers[k];
            gbps[k].push_back(TransportRep(*r.t, r.peer, r.how, dst.data(), size, batch, cfg));
          }
        }
        for (size_t k = 0; k < readers.size(); ++k) {
          const Reader& r = readers[k];
          std::string label = r.progress == "queued" ? path + "_queued" : path;
          if (r.op != cfg.read_ops.front()) label += "_" + r.op;
          const double median = Median(gbps[k]);
          const double ratio = median / bound["gbytes_per_s"].get<double>();
          std::printf("transport %-22s %9s x%-2d  %7.2f GB/s   memcpy %7.2f GB/s  (%.2f)\n",
                      label.c_str(), kvstash::FormatByteSize(size).c_str(), batch, median,
                      bound["gbytes_per_s"].get<double>(), ratio);
          std::fflush(stdout);
          out.push_back({{"path", label},
                         {"client_progress", r.progress},
                         {"read_op", r.op},
                         {"size_bytes", size},
                         {"batch", batch},
                         {"gbytes_per_s", median},
                         {"reps", gbps[k]},
                         {"ucx_version", transport::UcxTransport::UcxVersion()},
                         {"memcpy_gbytes_per_s", bound["gbytes_per_s"]}});
        }
      }
    }
    for (Reader& r : readers) {
      r.t->Disconnect(r.peer);
      r.t.reset();
    }
    ::close(down[1]);
    ::close(up[0]);
    int status;
    ::waitpid(child, &status, 0);
    Children().erase(std::remove(Children().begin(), Children().end(), child), Children().end());
  }
  ::unsetenv("UCX_TLS");
  return out;
}

// ---- remote get --------------------------------------------------------------------------------

struct Node {
  pid_t pid = -1;
  std::string target;
  std::string dir;
};

Node StartNode(const Config& cfg, const std::string& dir, const std::string& listen,
               const std::vector<std::string>& extra) {
  std::filesystem::create_directories(dir);
  const std::string ready = dir + "/ready.json";
  std::filesystem::remove(ready);
  std::vector<std::string> argv = {cfg.cachesvc,
                                   "--listen",
                                   listen,
                                   "--data-dir",
                                   dir + "/data",
                                   "--ready-file",
                                   ready,
                                   "--cpu-capacity",
                                   "1GiB",
                                   "--ssd-capacity",
                                   "2GiB",
                                   "--metrics-port",
                                   "0",
                                   "--log-level",
                                   "warn",
                                   "--arena-socket",
                                   dir + "/arena.sock"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  Node node;
  node.dir = dir;
  node.pid = Spawn(argv, dir + "/cachesvc.log");
  if (node.pid > 0) Children().push_back(node.pid);
  if (node.pid < 0 || !WaitFor([&] { return std::filesystem::exists(ready); }, 60'000)) {
    std::fprintf(stderr, "cachesvc did not start; see %s/cachesvc.log\n", dir.c_str());
    Die();
  }
  std::ifstream in(ready);
  node.target = json::parse(in).value("target", "");
  return node;
}

ObjectInfo InfoFor(uint64_t size) {
  ObjectInfo info;
  info.layout.num_layers = 1;
  info.layout.total_kv_heads = 1;
  info.layout.head_begin = 0;
  info.layout.head_end = 1;
  info.layout.head_dim = 64;
  info.layout.dtype = kvstash::DType::kF16;
  info.layout.num_tokens = static_cast<uint32_t>(size / 256);  // 256 bytes per token
  info.encoding = kvstash::Encoding::kRaw;
  info.payload_bytes = info.layout.RawBytes();
  return info;
}

ObjectName NameFor(uint64_t size, int i) {
  kvstash::ModelSpec spec;
  spec.model_id = "peer-bench";
  std::vector<uint32_t> tokens = {static_cast<uint32_t>(size >> 10), static_cast<uint32_t>(i)};
  return kvstash::MakeObjectName("bench", kvstash::ModelFingerprint(spec),
                                 kvstash::IndependentTokenHash(tokens));
}

// Puts `count` objects of each size through `writer` (gRPC streams).
void PutObjects(client::KvClient& writer, const std::vector<uint64_t>& sizes, int count,
                bool durable) {
  for (uint64_t size : sizes) {
    std::vector<uint8_t> payload(size);
    for (int i = 0; i < count; ++i) {
      for (size_t j = 0; j < payload.size(); j += 64) payload[j] = static_cast<uint8_t>(i + j);
      ObjectInfo info = InfoFor(size);
      info.payload_crc32c = kvstash::Crc32c(payload.data(), payload.size());
      auto s = writer.Put(NameFor(size, i), info, payload, {.durable = durable});
      if (!s.ok()) {
        std::fprintf(stderr, "put: %s\n", std::string(s.message()).c_str());
        Die();
      }
    }
  }
}

// Median latency (ms) of AcquireMany over `batch` objects, each batch a fresh set of names.
json AcquirePoint(client::KvClient& reader, uint64_t size, int batch, int count, int reps) {
  std::vector<double> ms;
  for (int rep = 0; rep < reps; ++rep) {
    for (int first = 0; first + batch <= count; first += batch) {
      std::vector<ObjectName> names;
      for (int i = first; i < first + batch; ++i) names.push_back(NameFor(size, i));
      auto start = Clock::now();
      auto leases = reader.AcquireMany(names);
      double t = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
      if (!leases.ok()) {
        std::fprintf(stderr, "acquire: %s\n", std::string(leases.status().message()).c_str());
        Die();
      }
      for (auto& l : *leases) {
        if (!l.ok()) {
          std::fprintf(stderr, "acquire item: %s\n", std::string(l.status().message()).c_str());
          Die();
        }
      }
      ms.push_back(t);
    }
  }
  double p50 = Median(ms);
  return {{"p50_ms", p50},
          {"gbytes_per_s", static_cast<double>(size) * batch / (p50 / 1e3) / 1e9},
          {"samples", ms.size()}};
}

json RunRemoteGet(const Config& cfg, const std::vector<uint64_t>& sizes) {
  json out = json::array();
  const std::string root =
      std::filesystem::temp_directory_path() / ("peer-bench-" + std::to_string(::getpid()));
  const std::string secret = root + "/secret";
  std::filesystem::create_directories(root);
  std::ofstream(secret) << "peer-bench-cluster-secret-0123456789\n";
  const int count = 16;
  client::ClientOptions stream;
  stream.use_shared_memory = false;
  stream.rpc_timeout = std::chrono::seconds(60);
  client::ClientOptions shm;
  shm.rpc_timeout = std::chrono::seconds(60);

  auto record = [&](const std::string& path, uint64_t size, int batch, const json& p) {
    std::printf("remote_get %-12s %9s x%-2d  p50 %8.3f ms  %7.2f GB/s\n", path.c_str(),
                kvstash::FormatByteSize(size).c_str(), batch, p["p50_ms"].get<double>(),
                p["gbytes_per_s"].get<double>());
    std::fflush(stdout);
    out.push_back({{"path", path},
                   {"size_bytes", size},
                   {"batch", batch},
                   {"p50_ms", p["p50_ms"]},
                   {"gbytes_per_s", p["gbytes_per_s"]},
                   {"samples", p["samples"]}});
  };

  // Local baselines on one node: SSD hits (restart between reps, objects on SSD only) and CPU
  // hits.
  {
    const std::string dir = root + "/local";
    Node node = StartNode(cfg, dir, "unix://" + dir + "/svc.sock", {});
    {
      auto writer = client::KvClient::Connect(node.target, stream);
      if (!writer.ok()) Die();
      PutObjects(**writer, sizes, count, /*durable=*/true);
    }
    for (uint64_t size : sizes) {
      for (int batch : cfg.batches) {
        std::vector<double> ssd_ms, cpu_ms;
        for (int rep = 0; rep < cfg.reps; ++rep) {
          Stop(node.pid, SIGTERM);
          node = StartNode(cfg, dir, "unix://" + dir + "/svc.sock", {});
          auto reader = client::KvClient::Connect(node.target, shm);
          if (!reader.ok()) Die();
          json ssd = AcquirePoint(**reader, size, batch, count, 1);
          json cpu = AcquirePoint(**reader, size, batch, count, 1);
          ssd_ms.push_back(ssd["p50_ms"]);
          cpu_ms.push_back(cpu["p50_ms"]);
        }
        for (auto [path, v] : {std::pair{"local_ssd", ssd_ms}, std::pair{"local_cpu", cpu_ms}}) {
          double p50 = Median(v);
          record(path, size, batch,
                 {{"p50_ms", p50},
                  {"gbytes_per_s", static_cast<double>(size) * batch / (p50 / 1e3) / 1e9},
                  {"samples", v.size()}});
        }
      }
    }
    Stop(node.pid, SIGTERM);
  }

  struct Plane {
    const char* name;
    const char* tls;  // UCX_TLS for both nodes; nullptr: UCX's default
    const char* data_plane;
    const char* ucx_fetch;  // --peer-ucx-fetch
  };
  // peer_ucx_tcp_get: B reads with gets (--peer-ucx-fetch false) instead of A writing into B's
  // arena, the A/B of the UCX data plane's two ways end to end.
  for (const Plane& plane : {Plane{"peer_ucx_tcp", "tcp", "ucx", "true"},
                             Plane{"peer_ucx_tcp_get", "tcp", "ucx", "false"},
                             Plane{"peer_ucx_default", nullptr, "ucx", "true"},
                             Plane{"peer_grpc", nullptr, "grpc", "true"}}) {
    if (plane.tls != nullptr) {
      ::setenv("UCX_TLS", plane.tls, 1);
    } else {
      ::unsetenv("UCX_TLS");
    }
    const std::string dir = root + "/" + plane.name;
    std::vector<std::string> common = {"--peer-secret-file", secret,
                                       "--peer-data-plane",  plane.data_plane,
                                       "--peer-ucx-fetch",   plane.ucx_fetch};
    Node a = StartNode(cfg, dir + "/a", "127.0.0.1:0", common);
    std::vector<std::string> b_args = common;
    b_args.insert(b_args.end(), {"--peer", a.target, "--remote-promote", "false", "--remote-lookup",
                                 "false", "--peer-timeout-ms", "60000"});
    Node b = StartNode(cfg, dir + "/b", "unix://" + dir + "/b.sock", b_args);
    {
      auto writer = client::KvClient::Connect(a.target, stream);
      if (!writer.ok()) Die();
      PutObjects(**writer, sizes, count, /*durable=*/false);
    }
    auto reader = client::KvClient::Connect(b.target, shm);
    if (!reader.ok()) Die();
    (void)AcquirePoint(**reader, sizes.front(), 1, 1, 1);  // connect to the peer
    for (uint64_t size : sizes) {
      for (int batch : cfg.batches) {
        record(plane.name, size, batch, AcquirePoint(**reader, size, batch, count, cfg.reps));
      }
    }
    reader->reset();
    Stop(b.pid, SIGTERM);
    Stop(a.pid, SIGTERM);
  }
  ::unsetenv("UCX_TLS");
  std::filesystem::remove_all(root);
  return out;
}

int Main(int argc, char** argv) {
  Config cfg;
  CLI::App app{"peer_bench: node-to-node transfers (UCX, gRPC) and remote Gets end to end"};
  app.add_option("--sizes", cfg.sizes, "transport: object sizes")->delimiter(',');
  app.add_option("--get-sizes", cfg.get_sizes, "remote_get: object sizes")->delimiter(',');
  app.add_option("--batches", cfg.batches, "objects per transfer")->delimiter(',');
  app.add_option("--reps", cfg.reps, "repetitions (median reported)");
  app.add_option("--seconds", cfg.seconds_per_point, "transport: seconds per point and rep");
  app.add_option("--modes", cfg.modes, "transport, remote_get")->delimiter(',');
  app.add_option("--progress-poll-us", cfg.progress_poll_us,
                 "transport: TransportOptions::progress_poll of both ends (us; default: the "
                 "transport's)");
  app.add_option("--client-progress", cfg.client_progress,
                 "transport: caller (reader drives UCX) and/or queued (progress thread), A/B")
      ->delimiter(',');
  app.add_option(
         "--read-ops", cfg.read_ops,
         "transport: get (Read), fetch (Fetch: the server sends) and/or fetch_inplace "
         "(FetchInPlace: by rendezvous, into place), A/B; the first is reported as the path")
      ->delimiter(',');
  app.add_option("--tls", cfg.tls, "transport: UCX_TLS per path ('default': unset)")
      ->delimiter(';');
  app.add_option("--cachesvc", cfg.cachesvc, "cachesvc binary");
  app.add_option("--out", cfg.out, "JSON results");
  CLI11_PARSE(app, argc, argv);
  std::vector<uint64_t> sizes, get_sizes;
  for (auto [in, out] : {std::pair{&cfg.sizes, &sizes}, std::pair{&cfg.get_sizes, &get_sizes}}) {
    for (const std::string& s : *in) {
      auto size = kvstash::ParseByteSize(s);
      if (!size.ok() || *size < 4096 || *size > (64ull << 20)) {
        std::fprintf(stderr, "bad size %s (4KiB..64MiB)\n", s.c_str());
        return 2;
      }
      out->push_back(*size);
    }
  }
  json result = {{"bench", "peer_transfer"},
                 {"reps", cfg.reps},
                 {"host_cpus", std::thread::hardware_concurrency()},
                 {"ucx_version", transport::UcxTransport::UcxVersion()}};
  for (const std::string& mode : cfg.modes) {
    if (mode == "transport") {
      result["transport"] = RunTransport(cfg, sizes);
    } else if (mode == "remote_get") {
      result["remote_get"] = RunRemoteGet(cfg, get_sizes);
    } else {
      std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
      return 2;
    }
  }
  std::filesystem::create_directories(std::filesystem::path(cfg.out).parent_path());
  std::ofstream(cfg.out) << result.dump(2) << "\n";
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
    std::fprintf(stderr, "peer_bench: %s\n", e.what());
    return 1;
  }
}
