// Encoded transfers (GetOptions::accept_encoding): streaming Gets of SmolLM2-135M-shaped KV
// chunks (256 tokens x 30 layers x 3 KV heads x 64 dims, f16, 5.9 MB), raw against CacheGen
// levels 1-3, from a real cachesvc on TCP 127.0.0.1 to one client thread.
//
// An encoded Get costs the service an encode and the client a decode, and saves wire bytes; which
// wins depends on the link. scripts/bench_transfer.sh runs this binary inside a network namespace
// whose loopback is rate-limited with `tc qdisc ... tbf`, once per rate; --label names the rate in
// the JSON. The KV is synthetic (codec/synthetic_kv.h): its CacheGen sizes are close to, not equal
// to, those of real SmolLM2 KV (docs/benchmarks-codec.md has both).
//
// Every received chunk is checked: raw Gets equal what was put, encoded Gets are lossy and carry
// the crc32c of their reconstruction (the client verifies it). Per mode: the median over --reps
// of the effective KV throughput (decoded bytes delivered per second), the p50 per-chunk
// latency, and the wire bytes per chunk.
//
// --slo-ms T (repeatable) then runs client::StreamedLoad over the same chunks with a budget of T
// ms per load of all of them, --reps times each: the streaming controller picks raw or a
// calibrated CacheGen/KVQ candidate per chunk (CalibrateCodecs at start, best of 3), starting
// from the raw Gets' median throughput as its bandwidth estimate and following its own
// measurements after that; the JSON records every chunk's choice.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "child_process.h"
#include "kvstash/client/kv_client.h"
#include "kvstash/client/streamed_load.h"
#include "kvstash/codec/codec_choice.h"
#include "kvstash/codec/synthetic_kv.h"
#include "kvstash/common/key.h"

namespace {

using Clock = std::chrono::steady_clock;
using kvstash::Encoding;
using kvstash::ObjectInfo;
using kvstash::ObjectName;

struct Config {
  int chunks = 8;
  int reps = 5;
  std::string cachesvc = KVSTASH_CACHESVC_PATH;
  std::string label = "loopback";
  std::string out = "bench/results/transfer_loopback.json";
  std::vector<double> slo_ms;  // StreamedLoad budgets; empty: none
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

ObjectInfo SmolChunkInfo() {
  ObjectInfo info;
  info.layout.num_layers = 30;
  info.layout.total_kv_heads = 3;
  info.layout.head_end = 3;
  info.layout.head_dim = 64;
  info.layout.dtype = kvstash::DType::kF16;
  info.layout.num_tokens = 256;
  info.layout.rope = kvstash::RopeConvention::kNeox;
  info.layout.rope_theta = 100000.0f;
  info.payload_bytes = info.layout.RawBytes();
  return info;
}

ObjectName ChunkName(int i) {
  kvstash::ModelSpec spec;
  spec.model_id = "transfer-bench";
  std::vector<uint32_t> tokens = {static_cast<uint32_t>(i)};
  return kvstash::MakeObjectName("transfer", kvstash::ModelFingerprint(spec),
                                 kvstash::IndependentTokenHash(tokens));
}

// StreamedLoad of every chunk at each budget of cfg.slo_ms, cfg.reps times; into `out`.
int RunLoads(const Config& cfg, kvstash::client::KvClient& kv,
             const std::vector<std::vector<uint8_t>>& payloads, double raw_bytes_per_s,
             nlohmann::json* out) {
  kvstash::codec::CalibrationOptions calibration;
  auto candidates = kvstash::codec::CalibrateCodecs(calibration);
  if (!candidates.ok()) {
    std::fprintf(stderr, "transfer_bench: calibration: %s\n",
                 std::string(candidates.status().message()).c_str());
    return 1;
  }
  for (const kvstash::codec::CodecRates& c : *candidates) {
    (*out)["candidates"].push_back({{"name", kvstash::codec::CodecRatesName(c)},
                                    {"ratio", c.ratio},
                                    {"encode_bytes_per_s", c.encode_bytes_per_s},
                                    {"decode_bytes_per_s", c.decode_bytes_per_s},
                                    {"rel_error", c.rel_error}});
  }
  (*out)["initial_bandwidth_bps"] = raw_bytes_per_s;
  std::vector<ObjectName> names;
  names.reserve(cfg.chunks);
  for (int i = 0; i < cfg.chunks; ++i) names.push_back(ChunkName(i));
  std::printf("\n%-8s %5s %12s %7s  %s\n", "slo ms", "rep", "total ms", "fits", "per chunk");
  for (double slo : cfg.slo_ms) {
    kvstash::client::StreamedLoadOptions options;
    options.budget_s = slo / 1e3;
    options.candidates = *candidates;
    options.initial_bandwidth_bps = raw_bytes_per_s;
    nlohmann::json reps = nlohmann::json::array();
    for (int rep = 0; rep < cfg.reps; ++rep) {
      auto load = kvstash::client::StreamedLoad(kv, names, options);
      if (!load.ok()) {
        std::fprintf(stderr, "transfer_bench: load: %s\n",
                     std::string(load.status().message()).c_str());
        return 1;
      }
      nlohmann::json chunks = nlohmann::json::array();
      std::string line;
      for (int i = 0; i < cfg.chunks; ++i) {
        const kvstash::client::StreamedChunk& c = load->chunks[i];
        const bool right = c.status.ok() && !c.recompute &&
                           (c.received == "raw" ? c.payload == payloads[i] : c.info.lossy);
        if (!right) {
          std::fprintf(
              stderr, "transfer_bench: load chunk %d (%s): %s\n", i, c.chosen.c_str(),
              c.status.ok() ? "unexpected bytes" : std::string(c.status.message()).c_str());
          return 1;
        }
        chunks.push_back({{"chosen", c.chosen},
                          {"received", c.received},
                          {"wire_bytes", c.wire_bytes},
                          {"bandwidth_bps", c.bandwidth_bps},
                          {"predicted_s", c.predicted_s},
                          {"seconds", c.seconds},
                          {"encode_s", c.encode_s},
                          {"decode_s", c.decode_s}});
        line += c.received + " ";
      }
      reps.push_back(
          {{"total_s", load->total_s}, {"within_budget", load->within_budget}, {"chunks", chunks}});
      std::printf("%-8.0f %5d %12.1f %7s  %s\n", slo, rep + 1, load->total_s * 1e3,
                  load->within_budget ? "yes" : "no", line.c_str());
    }
    (*out)["loads"][std::to_string(static_cast<int>(slo))] = reps;
  }
  return 0;
}

struct Mode {
  Mode(std::string n, int l) : name(std::move(n)), level(l) {}
  std::string name;
  int level;  // 0: raw
  std::vector<double> rep_gbps, chunk_ms;
  uint64_t wire_bytes_per_chunk = 0;
};

int Run(const Config& cfg) {
  const std::string dir = "/tmp/kvs-transfer-" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const std::string ready = dir + "/ready.json";
  const pid_t svc =
      kvstash::bench::Spawn({cfg.cachesvc, "--listen", "127.0.0.1:0", "--data-dir", dir + "/data",
                             "--cpu-capacity", "1GiB", "--ssd-capacity", "0", "--ready-file", ready,
                             "--metrics-port", "0", "--log-level", "warn"},
                            dir + "/cachesvc.log");
  auto stop = [&] {
    kvstash::bench::Reap(svc, SIGTERM);
    std::filesystem::remove_all(dir);
  };
  // The ready file names the TCP port cachesvc bound.
  std::string target;
  if (svc > 0) {
    kvstash::bench::WaitFor(
        [&] {
          std::ifstream in(ready);
          auto json = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
          if (in && !json.is_discarded()) target = json.value("target", "");
          return !target.empty();
        },
        30'000);
  }
  auto kv = kvstash::client::KvClient::Connect(target);
  if (svc < 0) {
    std::fprintf(stderr, "transfer_bench: cannot start %s\n", cfg.cachesvc.c_str());
    std::filesystem::remove_all(dir);
    return 1;
  }
  if (target.empty() || !kv.ok()) {
    std::fprintf(stderr, "transfer_bench: cachesvc (%s) did not come up. Its log:\n",
                 cfg.cachesvc.c_str());
    std::ifstream log(dir + "/cachesvc.log");
    std::fprintf(stderr, "%s\n", std::string(std::istreambuf_iterator<char>(log), {}).c_str());
    stop();
    return 1;
  }

  const ObjectInfo info = SmolChunkInfo();
  std::vector<std::vector<uint8_t>> payloads;
  for (int i = 0; i < cfg.chunks; ++i) {
    kvstash::codec::SyntheticKvOptions o;
    o.seed = 100 + i;
    payloads.push_back(kvstash::codec::SyntheticKv(info.layout, o));
    kvstash::Status s = (*kv)->Put(ChunkName(i), info, payloads.back());
    if (!s.ok()) {
      std::fprintf(stderr, "transfer_bench: put: %s\n", std::string(s.message()).c_str());
      stop();
      return 1;
    }
  }

  std::vector<Mode> modes = {
      {"raw", 0}, {"cachegen_l1", 1}, {"cachegen_l2", 2}, {"cachegen_l3", 3}};
  std::vector<uint8_t> out(info.payload_bytes);
  for (int rep = 0; rep < cfg.reps; ++rep) {
    for (Mode& m : modes) {  // modes interleaved within a rep
      kvstash::client::GetOptions options;
      if (m.level > 0) {
        options.accept_encoding = Encoding::kCacheGen;
        options.level = m.level;
      }
      const auto start = Clock::now();
      for (int i = 0; i < cfg.chunks; ++i) {
        const auto t0 = Clock::now();
        auto got = (*kv)->GetInto(ChunkName(i), out, options);
        m.chunk_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        const bool right = got.ok() && (m.level == 0 ? out == payloads[i] : got->info.lossy);
        if (!right) {
          std::fprintf(stderr, "transfer_bench: %s chunk %d: %s\n", m.name.c_str(), i,
                       got.ok() ? "unexpected bytes" : std::string(got.status().message()).c_str());
          stop();
          return 1;
        }
        m.wire_bytes_per_chunk = got->wire_bytes;
      }
      const double s = std::chrono::duration<double>(Clock::now() - start).count();
      m.rep_gbps.push_back(static_cast<double>(info.payload_bytes) * cfg.chunks / s / 1e9);
    }
    std::fprintf(stderr, "rep %d/%d done\n", rep + 1, cfg.reps);
  }
  nlohmann::json loads = nlohmann::json::object();
  if (!cfg.slo_ms.empty() &&
      RunLoads(cfg, **kv, payloads, Median(modes[0].rep_gbps) * 1e9, &loads) != 0) {
    stop();
    return 1;
  }
  stop();

  nlohmann::json j;
  j["label"] = cfg.label;
  j["chunk_bytes"] = info.payload_bytes;
  j["chunks"] = cfg.chunks;
  j["reps"] = cfg.reps;
  std::printf("%-12s %10s %12s %12s %10s\n", "mode", "GB/s KV", "p50 ms/chunk", "wire MB/chunk",
              "vs raw");
  const double raw_gbps = Median(modes[0].rep_gbps);
  for (const Mode& m : modes) {
    const double gbps = Median(m.rep_gbps);
    j["modes"][m.name] = {{"kv_gbps_median", gbps},
                          {"rep_kv_gbps", m.rep_gbps},
                          {"chunk_ms_p50", Median(m.chunk_ms)},
                          {"wire_bytes_per_chunk", m.wire_bytes_per_chunk},
                          {"speedup_vs_raw", gbps / raw_gbps}};
    std::printf("%-12s %10.3f %12.2f %12.3f %9.2fx\n", m.name.c_str(), gbps, Median(m.chunk_ms),
                static_cast<double>(m.wire_bytes_per_chunk) / 1e6, gbps / raw_gbps);
  }
  if (!cfg.slo_ms.empty()) j["streamed_load"] = loads;
  std::filesystem::path out_path(cfg.out);
  if (out_path.has_parent_path()) std::filesystem::create_directories(out_path.parent_path());
  std::ofstream(cfg.out) << j.dump(2) << "\n";
  return 0;
}

int Main(int argc, char** argv) {
  Config cfg;
  CLI::App app{"Streaming Get of KV chunks: raw vs CacheGen-encoded transfers"};
  app.add_option("--chunks", cfg.chunks, "KV chunks (5.9 MB each)")->capture_default_str();
  app.add_option("--reps", cfg.reps, "repetitions (median reported)")->capture_default_str();
  app.add_option("--cachesvc", cfg.cachesvc, "cachesvc binary")->capture_default_str();
  app.add_option("--label", cfg.label, "name of the link (e.g. 1gbit)")->capture_default_str();
  app.add_option("--out", cfg.out, "JSON results file")->capture_default_str();
  app.add_option("--slo-ms", cfg.slo_ms,
                 "also run StreamedLoad over the chunks with this budget in ms (repeatable)");
  CLI11_PARSE(app, argc, argv);
  return Run(cfg);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "transfer_bench: %s\n", e.what());
    return 1;
  }
}
