// Cost-aware vs LRU eviction of chunk caches on Zipf request traces (algorithms.md 3.4.5): saved
// prefill FLOPs at equal capacity. Chunks of 128-256 tokens with SmolLM2-135M KV sizes and FLOPs;
// a hit saves the chunk's prefill FLOPs x (1 - CFO), CFO uniform in [0, 0.6]. Prints a table and
// writes JSON (--out).
//
//   eviction_sim --out bench/results/blend_eviction.json
#include <cstdio>
#include <exception>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "testing/eviction_trace.h"

namespace {

int Run(int argc, char** argv) {
  std::string out_path;
  uint32_t chunks = 2000, requests = 20000;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--out") {
      out_path = v;
    } else if (k == "--chunks") {
      chunks = static_cast<uint32_t>(std::stoul(v));
    } else if (k == "--requests") {
      requests = static_cast<uint32_t>(std::stoul(v));
    } else {
      std::fprintf(stderr, "eviction_sim: unknown argument %s\n", k.c_str());
      return 2;
    }
  }
  nlohmann::json rows = nlohmann::json::array();
  std::printf("%6s %9s %5s %12s %12s %9s %9s\n", "zipf", "capacity", "seed", "saved lru",
              "saved cost", "hits lru", "hits cost");
  for (double s : {0.8, 1.0, 1.2}) {
    for (uint64_t seed : {1, 2, 3}) {
      kvstash::testing::TraceConfig cfg;
      cfg.num_chunks = chunks;
      cfg.num_requests = requests;
      cfg.zipf_s = s;
      cfg.seed = seed;
      const kvstash::testing::Trace trace = kvstash::testing::MakeTrace(cfg);
      for (double cap : {0.02, 0.05, 0.10, 0.20, 0.40}) {
        const uint64_t bytes =
            static_cast<uint64_t>(cap * static_cast<double>(trace.catalog_bytes));
        auto lru = kvstash::storage::NewLruPolicy();
        auto cost = kvstash::storage::NewCostAwarePolicy();
        const auto a = kvstash::testing::Simulate(trace, bytes, *lru);
        const auto b = kvstash::testing::Simulate(trace, bytes, *cost);
        std::printf("%6.1f %8.0f%% %5lu %11.1f%% %11.1f%% %8.1f%% %8.1f%%\n", s, 100 * cap,
                    static_cast<unsigned long>(seed), 100 * a.saved_fraction(),
                    100 * b.saved_fraction(), 100 * a.hit_ratio(), 100 * b.hit_ratio());
        rows.push_back({{"zipf_s", s},
                        {"capacity_fraction", cap},
                        {"seed", seed},
                        {"lru_saved_fraction", a.saved_fraction()},
                        {"cost_saved_fraction", b.saved_fraction()},
                        {"lru_hit_ratio", a.hit_ratio()},
                        {"cost_hit_ratio", b.hit_ratio()},
                        {"saved_ratio_cost_over_lru", b.saved_flops / a.saved_flops}});
      }
    }
  }
  if (!out_path.empty()) {
    nlohmann::json out = {
        {"chunks", chunks}, {"requests", requests}, {"chunks_per_request", 5}, {"rows", rows}};
    std::ofstream(out_path) << out.dump(2) << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // A bad number (std::stoul) or a JSON error ends the run with a message and status 1 instead
  // of std::terminate's abort.
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "eviction_sim: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "eviction_sim: unknown exception\n");
  }
  return 1;
}
