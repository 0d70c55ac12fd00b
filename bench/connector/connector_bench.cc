// End-to-end benchmark of the KV connector with the reference engine (SmolLM2-135M): time to
// first token for prompts of 512 / 1024 / 2048 tokens with no cache, on a hit from cachesvc's
// CPU tier and on a hit from its SSD tier (the daemon restarted, so its arena is empty), the
// engine's prefill rate, and where a hit's time goes (lookup, transfer, verification, layout
// conversion, compute waiting for the loader). Starts its own cachesvc (tests/cachesvc
// harness) in a temporary directory. Every hit's first-token logits are compared bit for bit
// with the no-cache run. Medians over --runs; the machine is shared: read the ratios.
//
//   connector_bench --model ~/.cache/kvstash/models/SmolLM2-135M-Instruct.Q4_1.gguf
//     --text ../shared/data/text/botchan.txt --out bench/results/connector.json
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kvstash/connector/connector.h"
#include "kvstash/connector/engine_adapter.h"
#include "kvstash/engine/engine.h"
#include "kvstash/engine/sampler.h"
#include "kvstash/engine/tokenizer.h"
#include "service_process.h"

namespace {

using kvstash::connector::CachedPrefill;
using kvstash::connector::EngineConnector;
using kvstash::connector::KvConnector;
using kvstash::engine::Engine;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

double CpuMsNow() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return 1e3 * static_cast<double>(ts.tv_sec) + 1e-6 * static_cast<double>(ts.tv_nsec);
}

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

struct Sample {
  double ttft_ms = 0, cpu_ms = 0;
  std::vector<float> logits;
  CachedPrefill prefill;  // hits only
};

// One cached prefill + first token; waits for the store afterwards (outside the timing).
Sample CachedRun(Engine& engine, KvConnector& connector, const std::vector<int32_t>& prompt,
                 bool* ok) {
  Sample s;
  auto seq = engine.NewSequence();
  EngineConnector adapter(engine, connector);
  const double cpu0 = CpuMsNow();
  const auto t0 = Clock::now();
  auto r = adapter.Prefill(*seq, prompt);
  if (!r.ok()) {
    std::fprintf(stderr, "cached prefill failed: %s\n", r.status().ToString().c_str());
    *ok = false;
    return s;
  }
  (void)kvstash::engine::Sampler::Argmax(r->logits);
  s.ttft_ms = MsSince(t0);
  s.cpu_ms = CpuMsNow() - cpu0;
  r->store->Wait();
  s.logits = r->logits;
  s.prefill = std::move(*r);
  return s;
}

Sample UncachedRun(Engine& engine, const std::vector<int32_t>& prompt, bool* ok) {
  Sample s;
  auto seq = engine.NewSequence();
  const double cpu0 = CpuMsNow();
  const auto t0 = Clock::now();
  auto r = engine.Prefill(*seq, prompt, 0);
  if (!r.ok()) {
    std::fprintf(stderr, "prefill failed: %s\n", r.status().ToString().c_str());
    *ok = false;
    return s;
  }
  (void)kvstash::engine::Sampler::Argmax(*r);
  s.ttft_ms = MsSince(t0);
  s.cpu_ms = CpuMsNow() - cpu0;
  s.logits = std::move(*r);
  return s;
}

json Breakdown(const std::vector<Sample>& runs) {
  std::vector<double> ttft, lookup, transfer, verify, scatter, wait, cpu;
  for (const Sample& s : runs) {
    ttft.push_back(s.ttft_ms);
    cpu.push_back(s.cpu_ms);
    lookup.push_back(s.prefill.lookup_seconds * 1e3);
    transfer.push_back(s.prefill.load.transfer_seconds * 1e3);
    verify.push_back(s.prefill.load.verify_seconds * 1e3);
    scatter.push_back(s.prefill.load.scatter_seconds * 1e3);
    wait.push_back(s.prefill.load.wait_seconds * 1e3);
  }
  const double t = Median(ttft);
  const double critical = Median(lookup) + Median(transfer) + Median(verify) + Median(wait);
  return {{"ttft_ms", t},
          {"ttft_ms_runs", ttft},
          {"cpu_ms", Median(cpu)},
          {"hit_tokens", runs.empty() ? 0 : runs.front().prefill.hit_tokens},
          {"computed_tokens", runs.empty() ? 0 : runs.front().prefill.computed_tokens},
          {"lookup_ms", Median(lookup)},
          {"transfer_ms", Median(transfer)},
          {"verify_ms", Median(verify)},
          {"layout_conversion_ms", Median(scatter)},
          {"compute_wait_ms", Median(wait)},
          // lookup + transfer + verify happen before compute starts; the layout conversion
          // overlaps compute and shows up on the critical path only as compute_wait.
          {"connector_share_of_ttft", t > 0 ? critical / t : 0},
          {"layout_conversion_share_of_ttft", t > 0 ? Median(scatter) / t : 0}};
}

int Run(int argc, char** argv) {
  std::string model_path, text_path, out_path;
  std::vector<int> lengths = {512, 1024, 2048};
  int runs = 3;
  size_t threads = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") {
      model_path = v;
    } else if (k == "--text") {
      text_path = v;
    } else if (k == "--out") {
      out_path = v;
    } else if (k == "--runs") {
      runs = std::max(1, std::stoi(v));
    } else if (k == "--threads") {
      threads = std::stoul(v);
    } else if (k == "--lengths") {
      lengths.clear();
      std::stringstream ss(v);
      for (std::string item; std::getline(ss, item, ',');) lengths.push_back(std::stoi(item));
    } else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (model_path.empty() || text_path.empty()) {
    std::fprintf(stderr,
                 "usage: connector_bench --model M.gguf --text T.txt [--lengths 512,1024,2048] "
                 "[--runs N] [--threads N] [--out file.json]\n");
    return 2;
  }
  auto model = kvstash::engine::Model::Load(model_path);
  if (!model.ok() || (*model)->gguf() == nullptr) {
    std::fprintf(stderr, "cannot load %s\n", model_path.c_str());
    return 1;
  }
  auto tok = kvstash::engine::LoadGgufTokenizer(*(*model)->gguf());
  if (!tok.ok()) return 1;
  std::ifstream in(text_path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  const int max_len = *std::max_element(lengths.begin(), lengths.end());
  std::vector<int32_t> all = (*tok)->Encode(text.str().substr(3000, size_t(max_len) * 8), false);
  if (all.size() < size_t(max_len)) {
    std::fprintf(stderr, "text too short\n");
    return 1;
  }
  kvstash::engine::EngineOptions eopts;
  eopts.num_threads = threads;
  auto engine = Engine::Create(*model, eopts);
  if (!engine.ok()) return 1;

  kvstash::testing::TempDir dir;
  kvstash::testing::ServiceOptions sopts;
  sopts.cpu_capacity = "1GiB";
  sopts.ssd_capacity = "4GiB";
  auto svc = kvstash::testing::ServiceProcess::Start(dir.path(), sopts);
  if (!svc.ok()) {
    std::fprintf(stderr, "cachesvc: %s\n", svc.status().ToString().c_str());
    return 1;
  }
  const kvstash::ModelSpec spec = kvstash::connector::EngineCacheSpec(**engine);
  auto connect = [&](int length) -> std::unique_ptr<KvConnector> {
    kvstash::connector::ConnectorOptions o;
    o.name_space = "connector-bench-" + std::to_string(length);  // no hits across lengths
    auto c = KvConnector::Create((*svc)->target(), spec, o);
    if (!c.ok() || !(*c)->client_status().ok()) return nullptr;
    return std::move(*c);
  };

  json results = json::array();
  bool ok = true;
  std::printf("%6s %12s %12s %12s %12s %9s %9s %11s %10s\n", "tokens", "no cache", "miss+store",
              "CPU hit", "SSD hit", "x CPU", "x SSD", "prefill t/s", "connector%");
  for (int length : lengths) {
    const std::vector<int32_t> prompt(all.begin(), all.begin() + length);
    std::vector<Sample> nocache, cpu, ssd;
    for (int r = 0; r < runs && ok; ++r) nocache.push_back(UncachedRun(**engine, prompt, &ok));
    auto c = connect(length);
    if (c == nullptr) return 1;
    Sample miss = CachedRun(**engine, *c, prompt, &ok);  // computes and stores every chunk
    for (int r = 0; r < runs && ok; ++r) cpu.push_back(CachedRun(**engine, *c, prompt, &ok));
    c.reset();
    for (int r = 0; r < runs && ok; ++r) {
      // A restarted cachesvc has a new, empty arena: the chunks are only on SSD.
      if ((*svc)->Terminate() != 0) return 1;
      svc = kvstash::testing::ServiceProcess::Start(dir.path(), sopts);
      if (!svc.ok()) return 1;
      auto cs = connect(length);
      if (cs == nullptr) return 1;
      ssd.push_back(CachedRun(**engine, *cs, prompt, &ok));
    }
    if (!ok) return 1;
    bool identical = true;
    for (const auto* set : {&cpu, &ssd}) {
      for (const Sample& s : *set) {
        identical = identical && s.logits.size() == nocache[0].logits.size() &&
                    std::memcmp(s.logits.data(), nocache[0].logits.data(),
                                s.logits.size() * sizeof(float)) == 0;
      }
    }
    identical = identical && miss.logits == nocache[0].logits;
    std::vector<double> nocache_ms, nocache_cpu;
    for (const Sample& s : nocache) {
      nocache_ms.push_back(s.ttft_ms);
      nocache_cpu.push_back(s.cpu_ms);
    }
    const double base = Median(nocache_ms);
    json cpu_j = Breakdown(cpu), ssd_j = Breakdown(ssd);
    cpu_j["served_from_cpu_tokens"] = cpu.front().prefill.cpu_hit_tokens;
    ssd_j["served_from_ssd_tokens"] = ssd.front().prefill.ssd_hit_tokens;
    json row = {{"prompt_tokens", length},
                {"no_cache",
                 {{"ttft_ms", base},
                  {"ttft_ms_runs", nocache_ms},
                  {"cpu_ms", Median(nocache_cpu)},
                  {"prefill_tokens_per_s", length / (base / 1e3)},
                  {"prefill_tokens_per_cpu_s", length / (Median(nocache_cpu) / 1e3)}}},
                {"miss_and_store",
                 {{"ttft_ms", miss.ttft_ms},
                  {"lookup_ms", miss.prefill.lookup_seconds * 1e3},
                  {"chunks_stored", miss.prefill.store->chunks_stored()}}},
                {"cpu_hit", cpu_j},
                {"ssd_hit", ssd_j},
                {"speedup_cpu_hit", base / cpu_j["ttft_ms"].get<double>()},
                {"speedup_ssd_hit", base / ssd_j["ttft_ms"].get<double>()},
                {"speedup_cpu_hit_cpu_time", Median(nocache_cpu) / cpu_j["cpu_ms"].get<double>()},
                {"tokens_identical", identical}};
    std::printf("%6d %9.1f ms %9.1f ms %9.1f ms %9.1f ms %8.1fx %8.1fx %11.1f %9.1f%%%s\n", length,
                base, miss.ttft_ms, cpu_j["ttft_ms"].get<double>(), ssd_j["ttft_ms"].get<double>(),
                row["speedup_cpu_hit"].get<double>(), row["speedup_ssd_hit"].get<double>(),
                row["no_cache"]["prefill_tokens_per_s"].get<double>(),
                100 * cpu_j["connector_share_of_ttft"].get<double>(),
                identical ? "" : "  LOGITS DIFFER");
    std::fflush(stdout);
    results.push_back(row);
    ok = ok && identical;
  }
  json out = {{"benchmark", "connector"},
              {"model", (*model)->model_id()},
              {"kernels", Engine::KernelIsa()},
              {"threads", threads == 0 ? std::thread::hardware_concurrency() : threads},
              {"runs", runs},
              {"chunk_tokens", kvstash::connector::kDefaultChunkTokens},
              {"kv_dtype", "f16"},
              {"load_average_at_end", LoadAverage()},
              {"results", results}};
  std::printf("breakdown of a CPU-tier hit (medians, ms): ");
  for (const json& r : results) {
    const json& h = r["cpu_hit"];
    std::printf(
        "[%d: lookup %.2f, transfer %.2f, verify %.2f, layout conversion %.2f "
        "(overlapped), compute wait %.2f] ",
        r["prompt_tokens"].get<int>(), h["lookup_ms"].get<double>(), h["transfer_ms"].get<double>(),
        h["verify_ms"].get<double>(), h["layout_conversion_ms"].get<double>(),
        h["compute_wait_ms"].get<double>());
  }
  std::printf("\n");
  if (!out_path.empty()) {
    std::ofstream f(out_path);
    f << out.dump(2) << "\n";
  }
  return ok ? 0 : 1;
}

}  // namespace

// An exception (a file system or JSON error, say) ends the run with its message and status 1
// rather than std::terminate's abort.
int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "connector_bench: %s\n", e.what());
    return 1;
  }
}
