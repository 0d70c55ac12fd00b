// Throughput of the reference engine: batched prefill at several prompt lengths, decode, and
// the baseline of feeding the same prompt token by token (matrix-vector instead of
// matrix-matrix). Prompts are consecutive tokens of a public-domain novel. Prints a table and
// writes JSON (--out). Medians over --runs repetitions; the machine is shared, read ratios.
//
//   engine_bench --model ~/.cache/kvstash/models/SmolLM2-135M-Instruct.Q4_1.gguf
//     --text ../shared/data/text/botchan.txt --out bench/results/engine.json
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kvstash/engine/engine.h"
#include "kvstash/engine/sampler.h"
#include "kvstash/engine/tokenizer.h"

namespace {

using kvstash::engine::Engine;
using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// CPU seconds of the whole process (every engine thread): tokens per CPU-second is far less
// sensitive than wall time to other jobs sharing the machine.
double CpuNow() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

int Run(int argc, char** argv) {
  std::string model_path, text_path, out_path;
  std::vector<int> lengths = {512, 1024, 2048};
  int runs = 3, decode_tokens = 64, baseline_tokens = 256;
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
      runs = std::stoi(v);
    } else if (k == "--threads") {
      threads = std::stoul(v);
    } else if (k == "--decode-tokens") {
      decode_tokens = std::stoi(v);
    } else if (k == "--baseline-tokens") {
      baseline_tokens = std::stoi(v);
    } else if (k == "--lengths") {
      lengths.clear();
      std::stringstream ss(v);
      std::string x;
      while (std::getline(ss, x, ',')) lengths.push_back(std::stoi(x));
    }
  }
  if (model_path.empty() || text_path.empty()) {
    std::fprintf(stderr,
                 "usage: engine_bench --model M.gguf --text T.txt [--out J] [--runs N] "
                 "[--threads N] [--lengths 512,1024,2048]\n");
    return 2;
  }
  auto model = kvstash::engine::Model::Load(model_path);
  if (!model.ok()) return std::fprintf(stderr, "%s\n", model.status().ToString().c_str()), 1;
  auto tok = kvstash::engine::LoadGgufTokenizer(*(*model)->gguf());
  if (!tok.ok()) return std::fprintf(stderr, "%s\n", tok.status().ToString().c_str()), 1;
  std::ifstream f(text_path);
  std::stringstream text;
  text << f.rdbuf();
  std::vector<int32_t> ids = (*tok)->Encode(text.str(), false);
  int max_len = *std::max_element(lengths.begin(), lengths.end());
  if (static_cast<int>(ids.size()) < std::max(max_len, 512 + decode_tokens)) {
    std::fprintf(stderr, "text too short\n");
    return 1;
  }
  kvstash::engine::EngineOptions opts;
  opts.num_threads = threads;
  // The decode runs keep `runs` 512-token sequences alive at once.
  const int longest = std::max(max_len, 512 + decode_tokens);
  opts.kv.num_blocks = static_cast<uint32_t>(runs * (longest / 16 + 2));
  auto engine = Engine::Create(*model, opts);
  if (!engine.ok()) return std::fprintf(stderr, "%s\n", engine.status().ToString().c_str()), 1;
  Engine& e = **engine;
  size_t used_threads = threads ? threads : std::max(1u, std::thread::hardware_concurrency());
  nlohmann::json out;
  out["model"] = (*model)->model_id();
  out["weights_sha256"] = (*model)->WeightsSha256();
  out["kernels"] = Engine::KernelIsa();
  out["threads"] = used_threads;
  out["kv_dtype"] = "f16";
  std::printf("engine_bench: %s, %s kernels, %zu threads\n", (*model)->model_id().c_str(),
              Engine::KernelIsa(), used_threads);

  {  // warm-up: page in the weights
    auto seq = e.NewSequence();
    (void)e.Prefill(*seq, std::span(ids).first(32), 0);
  }
  // Runs fn() `runs` times; returns median tokens per wall second and per CPU second.
  struct Rate {
    double wall, cpu;
    std::vector<double> wall_runs;
  };
  auto measure = [runs](int tokens, const std::function<bool()>& fn) -> Rate {
    std::vector<double> wall, cpu;
    for (int r = 0; r < runs; ++r) {
      auto t = Clock::now();
      double c = CpuNow();
      if (!fn()) return {0, 0, {}};
      wall.push_back(tokens / Since(t));
      cpu.push_back(tokens / (CpuNow() - c));
    }
    return {Median(wall), Median(cpu), wall};
  };
  auto row = [](const char* name, int tokens, const Rate& r) {
    std::printf("%-28s %10d %12.1f %14.1f\n", name, tokens, r.wall, r.cpu);
  };
  std::printf("%-28s %10s %12s %14s\n", "case", "tokens", "tokens/s", "tokens/cpu-s");
  for (int len : lengths) {
    Rate r = measure(len, [&] {
      auto seq = e.NewSequence();
      return e.Prefill(*seq, std::span(ids).first(len), 0).ok();
    });
    row("prefill (batched)", len, r);
    out["prefill"].push_back({{"tokens", len},
                              {"tokens_per_s_median", r.wall},
                              {"tokens_per_cpu_s_median", r.cpu},
                              {"tokens_per_s_runs", r.wall_runs}});
  }
  {  // decode after a 512-token prompt (the prompt's prefill is outside the timed part)
    std::vector<std::unique_ptr<kvstash::engine::Sequence>> seqs;
    std::vector<std::vector<float>> first;
    for (int r = 0; r < runs; ++r) {
      seqs.push_back(e.NewSequence());
      auto logits = e.Prefill(*seqs.back(), std::span(ids).first(512), 0);
      if (!logits.ok()) {
        std::fprintf(stderr, "%s\n", logits.status().ToString().c_str());
        return 1;
      }
      first.push_back(*logits);
    }
    int next_run = 0;
    Rate r = measure(decode_tokens, [&] {
      auto& seq = *seqs[next_run];
      std::vector<float> logits = first[next_run++];
      for (int i = 0; i < decode_tokens; ++i) {
        auto l = e.Decode(seq, kvstash::engine::Sampler::Argmax(logits));
        if (!l.ok()) return false;
        logits = std::move(*l);
      }
      return true;
    });
    seqs.clear();
    row("decode (after 512)", decode_tokens, r);
    out["decode"] = {{"context", 512},
                     {"tokens", decode_tokens},
                     {"tokens_per_s_median", r.wall},
                     {"tokens_per_cpu_s_median", r.cpu},
                     {"tokens_per_s_runs", r.wall_runs}};
  }
  {  // baseline: the same prompt one token at a time (matrix-vector), vs batched
    auto prompt = std::span(ids).first(baseline_tokens);
    Rate s = measure(baseline_tokens, [&] {
      auto seq = e.NewSequence();
      for (int i = 0; i < baseline_tokens; ++i) {
        kvstash::engine::PrefillOptions none{kvstash::engine::LogitsMode::kNone, {}};
        if (!e.Prefill(*seq, prompt.subspan(i, 1), i, none).ok()) return false;
      }
      return true;
    });
    Rate b = measure(baseline_tokens, [&] {
      auto seq = e.NewSequence();
      return e.Prefill(*seq, prompt, 0).ok();
    });
    row("prefill token-by-token", baseline_tokens, s);
    row("prefill (batched)", baseline_tokens, b);
    std::printf("batched / token-by-token: x%.2f wall, x%.2f cpu\n", b.wall / s.wall,
                b.cpu / s.cpu);
    out["batched_vs_token_by_token"] = {
        {"tokens", baseline_tokens},         {"token_by_token_tokens_per_s", s.wall},
        {"batched_tokens_per_s", b.wall},    {"token_by_token_tokens_per_cpu_s", s.cpu},
        {"batched_tokens_per_cpu_s", b.cpu}, {"speedup_wall", b.wall / s.wall},
        {"speedup_cpu", b.cpu / s.cpu}};
  }
  if (!out_path.empty()) std::ofstream(out_path) << out.dump(2) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // A bad number (std::stoi) or a JSON error ends the run with a message and status 1 instead
  // of std::terminate's abort.
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "engine_bench: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "engine_bench: unknown exception\n");
  }
  return 1;
}
