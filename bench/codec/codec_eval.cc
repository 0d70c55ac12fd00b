// CacheGen evaluation driver: size per token and KV error of every configuration against the
// fp16, 8-bit and lossless (zstd, lz4) baselines, on KV dumps or synthetic KV, per chunk size.
//
//   codec_eval --dump ctx1.kvo --dump ctx2.kvo ...   real KV dumps (object files: 64-byte header +
//                                                    raw layer-major payload), one context each
//   codec_eval --synthetic 8                         8 synthetic contexts (SmolLM2-135M shape)
// Contexts are cut into chunks of each --chunk-sizes value (a trailing partial chunk is dropped).
// The first --train-fraction of the contexts trains the model-level profiles; the rest is
// measured. Writes JSON (--out) and prints a markdown table.
#include <lz4.h>
#include <zstd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "eval_common.h"
#include "kv_corpus.h"
#include "kvstash/codec/cachegen.h"
#include "kvstash/codec/coder.h"
#include "kvstash/codec/profile.h"
#include "kvstash/codec/stream_controller.h"

namespace kvstash::bench {
namespace {

using codec::CacheGenMode;
using codec::ChunkCost;
using codec::ControllerConfig;
using codec::ControllerPolicy;
using codec::SimulateTrace;
using codec::TraceResult;
using nlohmann::json;

struct Config {
  std::string name;
  CacheGenMode mode = CacheGenMode::kReference;
  int level = 2;
  bool profile = false;
};

}  // namespace

int Main(int argc, char** argv) {
  CLI::App app{"CacheGen evaluation: sizes and KV error per configuration and chunk size"};
  std::vector<std::string> dumps;
  int synthetic = 0;
  uint32_t layers = 30, heads = 3, head_dim = 64, context_tokens = 2048;
  std::vector<uint32_t> chunk_sizes = {256, 1024};
  double train_fraction = 0.5;
  std::string out_path;
  bool speed = false;
  bool controller = false;
  app.add_option("--dump", dumps, "raw KV dump files, one context each");
  app.add_option("--synthetic", synthetic, "number of synthetic contexts");
  app.add_option("--layers", layers, "synthetic: layers");
  app.add_option("--heads", heads, "synthetic: KV heads");
  app.add_option("--head-dim", head_dim, "synthetic: head dim");
  app.add_option("--context-tokens", context_tokens, "synthetic: tokens per context");
  app.add_option("--chunk-sizes", chunk_sizes, "chunk sizes")->delimiter(',');
  app.add_option("--train-fraction", train_fraction, "share of contexts that train profiles");
  app.add_option("--out", out_path, "JSON output");
  app.add_flag("--speed", speed, "also time level-2 encode/decode on 1 thread and all cores");
  app.add_flag("--controller", controller,
               "also run the streaming controller on synthetic bandwidth traces");
  CLI11_PARSE(app, argc, argv);

  std::vector<KvChunk> contexts;
  std::string source;
  for (const std::string& path : dumps) {
    auto c = LoadDump(path);
    if (!c.ok()) {
      std::fprintf(stderr, "codec_eval: %s\n", c.status().ToString().c_str());
      return 1;
    }
    contexts.push_back(*std::move(c));
    source = "dumps";
  }
  for (int i = 0; i < synthetic; ++i) {
    contexts.push_back(
        SyntheticContext(ContextLayout(layers, heads, head_dim, context_tokens), 1000 + i));
    source = "synthetic";
  }
  if (contexts.size() < 2) {
    std::fprintf(stderr, "codec_eval: need at least 2 contexts (one to train profiles)\n");
    return 2;
  }
  const size_t train = std::clamp<size_t>(
      static_cast<size_t>(std::lround(contexts.size() * train_fraction)), 1, contexts.size() - 1);

  // Profiles from the training contexts (256-token chunks; CDFs do not depend on chunk size).
  const KvLayout& shape = contexts[0].layout;
  std::vector<codec::CdfProfileBuilder::TableSpec> specs;
  for (int level = 1; level <= 3; ++level) specs.push_back({CacheGenMode::kReference, level, {}});
  specs.push_back({CacheGenMode::kDelta, 2, {}});
  auto builder = codec::CdfProfileBuilder::Create(codec::ProfileShape::Of(shape), specs);
  if (!builder.ok()) return 1;
  for (size_t i = 0; i < train; ++i) {
    for (const KvChunk& c : Chunks(contexts[i], 256)) {
      Status s = builder->Add(c.layout, c.kv);
      if (!s.ok()) {
        std::fprintf(stderr, "codec_eval: %s\n", s.ToString().c_str());
        return 1;
      }
    }
  }
  auto profile = builder->Build();
  if (!profile.ok()) return 1;
  codec::ProfileSet profiles;
  profiles.Add(*profile);

  const std::vector<Config> configs = {
      {"cachegen_l1", CacheGenMode::kReference, 1, false},
      {"cachegen_l2", CacheGenMode::kReference, 2, false},
      {"cachegen_l3", CacheGenMode::kReference, 3, false},
      {"cachegen_profile_l1", CacheGenMode::kReference, 1, true},
      {"cachegen_profile_l2", CacheGenMode::kReference, 2, true},
      {"cachegen_profile_l3", CacheGenMode::kReference, 3, true},
      {"cachegen_delta_l2", CacheGenMode::kDelta, 2, false},
      {"cachegen_delta_profile_l2", CacheGenMode::kDelta, 2, true},
  };
  ThreadPool pool;
  json result;
  result["source"] = source;
  result["contexts"] = {{"train", train}, {"test", contexts.size() - train}};
  result["shape"] = {
      {"layers", shape.num_layers}, {"kv_heads", shape.heads()}, {"head_dim", shape.head_dim}};
  result["profile_bytes"] = profile->bytes().size();

  for (uint32_t chunk_tokens : chunk_sizes) {
    std::vector<KvChunk> chunks;
    for (size_t i = train; i < contexts.size(); ++i) {
      for (KvChunk& c : Chunks(contexts[i], chunk_tokens)) chunks.push_back(std::move(c));
    }
    if (chunks.empty()) continue;
    std::map<std::string, Totals> totals;
    for (const KvChunk& c : chunks) {
      const double tokens = c.layout.num_tokens;
      auto add = [&](const std::string& name, double bytes) {
        totals[name].bytes += bytes;
        totals[name].tokens += tokens;
      };
      add("fp16", static_cast<double>(c.kv.size()));
      add("int8", EightBitBytes(c.layout));
      totals["int8"].AddError(c, EightBitRoundTrip(c));
      std::vector<uint8_t> z(ZSTD_compressBound(c.kv.size()));
      add("zstd3_fp16", ZSTD_compress(z.data(), z.size(), c.kv.data(), c.kv.size(), 3));
      std::vector<char> l(LZ4_compressBound(static_cast<int>(c.kv.size())));
      add("lz4_fp16",
          LZ4_compress_default(reinterpret_cast<const char*>(c.kv.data()), l.data(),
                               static_cast<int>(c.kv.size()), static_cast<int>(l.size())));
      for (const Config& cfg : configs) {
        codec::EncodeOptions o;
        o.level = cfg.level;
        o.mode = cfg.mode;
        o.profile = cfg.profile ? &*profile : nullptr;
        o.pool = &pool;
        auto container = codec::EncodeCacheGen(c.layout, c.kv, o);
        if (!container.ok()) {
          std::fprintf(stderr, "codec_eval: %s\n", container.status().ToString().c_str());
          return 1;
        }
        codec::DecodeOptions d;
        d.profiles = &profiles;
        d.pool = &pool;
        auto decoded = codec::DecodeCacheGen(*container, d);
        auto view = codec::ParseContainer(*container);
        if (!decoded.ok() || !view.ok()) return 1;
        Totals& t = totals[cfg.name];
        t.bytes += container->size();
        t.tokens += tokens;
        t.AddParts(view->info.sizes);
        t.AddError(c, *decoded);
      }
    }
    const double fp16 = totals["fp16"].bytes / totals["fp16"].tokens;
    const double int8 = totals["int8"].bytes / totals["int8"].tokens;
    json& section = result["chunk_tokens"][std::to_string(chunk_tokens)];
    section["chunks"] = chunks.size();
    std::printf("\nchunk size %u tokens (%zu chunks)\n\n", chunk_tokens, chunks.size());
    std::printf("| config | bytes/token | vs fp16 | vs 8-bit | rel. MSE K | rel. MSE V |\n");
    std::printf("|---|---:|---:|---:|---:|---:|\n");
    for (const std::string name :
         {"fp16", "int8", "zstd3_fp16", "lz4_fp16", "cachegen_l1", "cachegen_l2", "cachegen_l3",
          "cachegen_profile_l1", "cachegen_profile_l2", "cachegen_profile_l3", "cachegen_delta_l2",
          "cachegen_delta_profile_l2"}) {
      const Totals& t = totals[name];
      const bool lossy = name != "fp16" && name.find("_fp16") == std::string::npos;
      section["configs"][name] = SizeRow(t, fp16, int8, lossy);
      const json& r = section["configs"][name];
      std::printf("| %s | %.1f | %.2fx | %.2fx | %s | %s |\n", name.c_str(),
                  r["bytes_per_token"].get<double>(), r["ratio_vs_fp16"].get<double>(),
                  r["ratio_vs_int8"].get<double>(),
                  lossy ? std::to_string(r["rel_mse_k"].get<double>()).c_str() : "0",
                  lossy ? std::to_string(r["rel_mse_v"].get<double>()).c_str() : "0");
    }
  }

  if (speed) {
    // Level 2, reference mode, 256-token chunks of the test contexts.
    std::vector<KvChunk> chunks;
    for (size_t i = train; i < contexts.size(); ++i) {
      for (KvChunk& c : Chunks(contexts[i], 256)) chunks.push_back(std::move(c));
    }
    double raw = 0;
    std::vector<std::vector<uint8_t>> containers;
    for (const KvChunk& c : chunks) {
      raw += c.kv.size();
      containers.push_back(*codec::EncodeCacheGen(c.layout, c.kv, {}));
    }
    const size_t cores = std::max(1u, std::thread::hardware_concurrency());
    for (size_t threads : {size_t{1}, cores}) {
      std::unique_ptr<ThreadPool> tp =
          threads > 1 ? std::make_unique<ThreadPool>(threads - 1) : nullptr;
      codec::EncodeOptions o;
      o.pool = tp.get();
      const double enc = MedianSeconds(5, [&] {
        for (const KvChunk& c : chunks) (void)codec::EncodeCacheGen(c.layout, c.kv, o);
      });
      codec::DecodeOptions d;
      d.pool = tp.get();
      std::vector<uint8_t> out;
      const double dec = MedianSeconds(5, [&] {
        for (size_t i = 0; i < chunks.size(); ++i) {
          out.resize(chunks[i].kv.size());
          (void)codec::DecodeCacheGen(containers[i], out, d);
        }
      });
      json& s = result["speed_level2_256"][std::to_string(threads) + "_threads"];
      s["encode_GBps"] = raw / enc / 1e9;
      s["decode_GBps"] = raw / dec / 1e9;
      s["encode_GBps_per_core"] = raw / enc / 1e9 / threads;
      s["decode_GBps_per_core"] = raw / dec / 1e9 / threads;
      std::printf(
          "\nlevel 2, 256-token chunks, %zu thread(s): encode %.3f GB/s, decode %.3f GB/s "
          "of fp16 KV\n",
          threads, raw / enc / 1e9, raw / dec / 1e9);
    }
  }
  if (controller) {
    // Contexts of 256-token chunks with their measured profile-mode sizes at levels 1-3; traces
    // as in the reference's bw.jsonl (each chunk's bandwidth uniform in [0.1, 10] Gbps) and a
    // correlated variant (log-bandwidth random walk); recompute at 4000 tokens/s.
    std::vector<std::vector<ChunkCost>> ctx_costs;
    for (size_t i = train; i < contexts.size(); ++i) {
      std::vector<ChunkCost> costs;
      for (const KvChunk& c : Chunks(contexts[i], 256)) {
        ChunkCost cost;
        cost.tokens = c.layout.num_tokens;
        for (int level = 1; level <= 3; ++level) {
          codec::EncodeOptions o;
          o.level = level;
          o.profile = &*profile;
          o.pool = &pool;
          cost.level_bytes[level - 1] = codec::EncodeCacheGen(c.layout, c.kv, o)->size();
        }
        costs.push_back(cost);
      }
      ctx_costs.push_back(std::move(costs));
    }
    std::printf("\n| trace | budget s | policy | violations | mean level | recomputed |\n");
    std::printf("|---|---:|---|---:|---:|---:|\n");
    for (const char* trace : {"uniform", "correlated"}) {
      for (double budget : {0.02, 0.05, 0.1, 0.2}) {
        struct Variant {
          const char* name;
          ControllerPolicy policy;
          codec::Fallback fallback;
        };
        for (const Variant& v :
             {Variant{"estimated", ControllerPolicy::kEstimated, codec::Fallback::kFastest},
              Variant{"estimated, recompute fallback", ControllerPolicy::kEstimated,
                      codec::Fallback::kRecompute},
              Variant{"oracle-share (reference)", ControllerPolicy::kOracleShare,
                      codec::Fallback::kRecompute}}) {
          std::mt19937_64 trace_rng(7);  // same traces for both policies
          int runs = 0, violations = 0, chunks = 0, recomputed = 0;
          double level_sum = 0;
          for (int r = 0; r < 300; ++r) {
            const auto& costs = ctx_costs[r % ctx_costs.size()];
            std::vector<double> bw(costs.size());
            double log_gbps =
                std::log(std::uniform_real_distribution<double>(0.1, 10.0)(trace_rng));
            for (double& b : bw) {
              double gbps;
              if (std::string(trace) == "uniform") {
                gbps = std::uniform_real_distribution<double>(0.1, 10.0)(trace_rng);
              } else {
                log_gbps =
                    std::clamp(log_gbps + std::normal_distribution<double>(0, 0.3)(trace_rng),
                               std::log(0.1), std::log(10.0));
                gbps = std::exp(log_gbps);
              }
              b = gbps * 1e9 / 8;
            }
            ControllerConfig config;
            config.policy = v.policy;
            config.fallback = v.fallback;
            config.ttft_budget_s = budget;
            config.prefill_tokens_per_s = 4000;
            config.initial_bandwidth_bps = 1e9 / 8;
            TraceResult t = SimulateTrace(config, costs, bw);
            ++runs;
            violations += t.violated ? 1 : 0;
            for (int l : t.levels) {
              ++chunks;
              level_sum += l;
              recomputed += l == 0 ? 1 : 0;
            }
          }
          const char* name = v.name;
          json& j = result["controller"][trace][std::to_string(budget)][name];
          j["violation_rate"] = static_cast<double>(violations) / runs;
          j["mean_level"] = level_sum / chunks;
          j["recompute_share"] = static_cast<double>(recomputed) / chunks;
          std::printf("| %s | %.2f | %s | %.1f%% | %.2f | %.1f%% |\n", trace, budget, name,
                      100.0 * violations / runs, level_sum / chunks, 100.0 * recomputed / chunks);
        }
      }
    }
  }
  if (!out_path.empty()) {
    std::ofstream f(out_path);
    f << result.dump(2) << "\n";
  }
  return 0;
}

}  // namespace kvstash::bench

// An exception (a file system or JSON error, say) ends the run with its message and status 1
// rather than std::terminate's abort.
int main(int argc, char** argv) {
  try {
    return kvstash::bench::Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "codec_eval: %s\n", e.what());
    return 1;
  }
}
