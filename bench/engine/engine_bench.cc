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
#include <fstream>
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
    if (k == "--model")
      model_path = v;
    else if (k == "--text")
      text_path = v;
    else if (k == "--out")
      out_path = v;
    else if (k == "--runs")
      runs = std::stoi(v);
    else if (k == "--threads")
      threads = std::stoul(v);
    else if (k == "--decode-tokens")
      decode_tokens = std::stoi(v);
    else if (k == "--baseline-tokens")
      baseline_tokens = std::stoi(v);
    else if (k == "--lengths") {
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
  if (static_cast<int>(ids.size()) < max_len + decode_tokens) {
    std::fprintf(stderr, "text too short\n");
    return 1;
  }
  kvstash::engine::EngineOptions opts;
  opts.num_threads = threads;
  opts.kv.num_blocks = static_cast<uint32_t>((max_len + decode_tokens) / 16 + 2);
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
  std::printf("%-28s %10s %12s\n", "case", "tokens", "tokens/s");
  for (int len : lengths) {
    std::vector<double> rates;
    for (int r = 0; r < runs; ++r) {
      auto seq = e.NewSequence();
      auto t = Clock::now();
      auto logits = e.Prefill(*seq, std::span(ids).first(len), 0);
      double s = Since(t);
      if (!logits.ok()) return std::fprintf(stderr, "%s\n", logits.status().ToString().c_str()), 1;
      rates.push_back(len / s);
    }
    double med = Median(rates);
    std::printf("%-28s %10d %12.1f\n", "prefill (batched)", len, med);
    out["prefill"].push_back(
        {{"tokens", len}, {"tokens_per_s_median", med}, {"tokens_per_s_runs", rates}});
  }
  {  // decode after a 512-token prompt
    std::vector<double> rates;
    for (int r = 0; r < runs; ++r) {
      auto seq = e.NewSequence();
      auto logits = e.Prefill(*seq, std::span(ids).first(512), 0);
      auto t = Clock::now();
      for (int i = 0; i < decode_tokens && logits.ok(); ++i) {
        logits = e.Decode(*seq, kvstash::engine::Sampler::Argmax(*logits));
      }
      rates.push_back(decode_tokens / Since(t));
    }
    double med = Median(rates);
    std::printf("%-28s %10d %12.1f\n", "decode (after 512)", decode_tokens, med);
    out["decode"] = {{"context", 512},
                     {"tokens", decode_tokens},
                     {"tokens_per_s_median", med},
                     {"tokens_per_s_runs", rates}};
  }
  {  // baseline: the same prompt one token at a time, vs batched
    std::vector<double> seq_rates, batch_rates;
    auto prompt = std::span(ids).first(baseline_tokens);
    for (int r = 0; r < runs; ++r) {
      auto seq = e.NewSequence();
      auto t = Clock::now();
      for (int i = 0; i < baseline_tokens; ++i) {
        (void)e.Prefill(*seq, prompt.subspan(i, 1), i, {kvstash::engine::LogitsMode::kNone, {}});
      }
      seq_rates.push_back(baseline_tokens / Since(t));
      auto seq2 = e.NewSequence();
      t = Clock::now();
      (void)e.Prefill(*seq2, prompt, 0);
      batch_rates.push_back(baseline_tokens / Since(t));
    }
    double s = Median(seq_rates), b = Median(batch_rates);
    std::printf("%-28s %10d %12.1f\n", "prefill token-by-token", baseline_tokens, s);
    std::printf("%-28s %10d %12.1f   (x%.2f)\n", "prefill (batched)", baseline_tokens, b, b / s);
    out["batched_vs_token_by_token"] = {{"tokens", baseline_tokens},
                                        {"token_by_token_tokens_per_s", s},
                                        {"batched_tokens_per_s", b},
                                        {"speedup", b / s}};
  }
  if (!out_path.empty()) std::ofstream(out_path) << out.dump(2) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Run(argc, argv); }
