// End-to-end evaluation of chunk-level KV reuse on RAG-style prompts (docs/blend.md): full
// prefill, prefix caching, naive full reuse, random selection, CacheBlend at several ratios and
// Cache-Craft, all through cachesvc (KvClient, shared memory) in the same run. Per prompt: one
// full prefill is the reference for every method (TTFT ratio, next-token KL, per-layer KV
// deviation, agreement of a 32-token greedy continuation); chunk caches are prefilled once per
// chunk; Cache-Craft variants come from the full prefills (with attention statistics) of the
// warm-up prompts and of every evaluated prompt after its own evaluation.
//
// Progress goes to stderr; per-prompt results are appended to --progress (JSON lines) as they
// finish, and a run restarted with --resume skips the prompts found there (their variants are
// recomputed, so later prompts see the same store). --demo prints one side-by-side table.
//
//   blend_eval --model ~/.cache/kvstash/models/SmolLM2-135M-Instruct.Q4_1.gguf
//     --target unix:///tmp/kvstash.sock --prompts 100 --out bench/results/blend.json
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "kvstash/blend/blender.h"
#include "kvstash/blend/service_store.h"
#include "kvstash/client/kv_client.h"
#include "kvstash/engine/engine.h"
#include "kvstash/engine/tokenizer.h"
#include "methods.h"
#include "rag_corpus.h"

namespace {

using namespace kvstash;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double CpuNow() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

double Median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double Mean(const std::vector<double>& v) {
  if (v.empty()) return NAN;
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

struct Args {
  std::string model, target, out, progress, text_dir = "../shared/data/text";
  std::string methods =
      "full,prefix,naive,random:0.15,cb:0.05,cb:0.15,cb:0.30,cb:0.15:br,craft:0.25:paper,"
      "craft:0.5:paper,craft:1:paper,craft:0.1,craft:0.15,craft:0.25,craft:0.5,craft:1";
  size_t prompts = 100, warmup = 20, gen = 32, threads = 2;
  bench::RagOptions rag;
  bool in_process = false, resume = false, demo = false;
  std::string name_space = "blend-eval";
  std::string chunk_lead;  // text prefilled before each chunk alone (BlenderOptions::chunk_lead)
};

Result<Args> ParseArgsOrThrow(int argc, char** argv);

// A malformed number (std::stoul throws) is a usage error, not a crash.
Result<Args> ParseArgs(int argc, char** argv) {
  try {
    return ParseArgsOrThrow(argc, argv);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(std::string("bad flag value: ") + e.what());
  }
}

Result<Args> ParseArgsOrThrow(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (k == "--model") {
      a.model = value();
    } else if (k == "--target") {
      a.target = value();
    } else if (k == "--out") {
      a.out = value();
    } else if (k == "--progress") {
      a.progress = value();
    } else if (k == "--text-dir") {
      a.rag.text_dir = value();
    } else if (k == "--methods") {
      a.methods = value();
    } else if (k == "--prompts") {
      a.prompts = std::stoul(value());
    } else if (k == "--warmup") {
      a.warmup = std::stoul(value());
    } else if (k == "--gen") {
      a.gen = std::stoul(value());
    } else if (k == "--threads") {
      a.threads = std::stoul(value());
    } else if (k == "--pool") {
      a.rag.pool_size = static_cast<uint32_t>(std::stoul(value()));
    } else if (k == "--seed") {
      a.rag.seed = std::stoull(value());
    } else if (k == "--namespace") {
      a.name_space = value();
    } else if (k == "--chunk-lead") {
      a.chunk_lead = value();
    } else if (k == "--in-process") {
      a.in_process = true;
    } else if (k == "--resume") {
      a.resume = true;
    } else if (k == "--demo") {
      a.demo = true;
    } else {
      return absl::InvalidArgumentError("unknown argument " + k);
    }
  }
  if (a.model.empty()) return absl::InvalidArgumentError("--model is required");
  if (a.target.empty() && !a.in_process) {
    return absl::InvalidArgumentError("--target (cachesvc) or --in-process is required");
  }
  return a;
}

struct Accum {
  std::vector<double> ttft, ttft_ratio, cpu_ratio, kl, top1, agree, matched, kl_cont, recompute;
  std::vector<double> kv_dev_sum;
  size_t kv_dev_count = 0;
};

// One prompt under every method; returns the prompt's JSON record.
Result<json> EvaluatePrompt(engine::Engine& e, blend::Blender& b, const blend::BlendPrompt& p,
                            const std::vector<bench::MethodSpec>& methods, size_t gen) {
  json rec;
  rec["tokens"] = p.num_tokens();
  rec["chunks"] = p.size() - 2;
  // The reference: a plain full prefill (Engine::Prefill), timed like every method.
  auto ref_seq = e.NewSequence();
  blend::BlendOptions full;
  full.method = blend::Method::kFullPrefill;
  double c0 = CpuNow();
  auto t0 = Clock::now();
  KVSTASH_ASSIGN_OR_RETURN(blend::BlendReport ref, b.Prefill(*ref_seq, p, full));
  const double ref_wall = std::chrono::duration<double>(Clock::now() - t0).count();
  const double ref_cpu = CpuNow() - c0;
  KVSTASH_ASSIGN_OR_RETURN(bench::Continuation ref_cont,
                           bench::Greedy(e, *ref_seq, ref.logits, gen));
  rec["full_ttft_s"] = ref_wall;
  rec["full_cpu_s"] = ref_cpu;
  const int32_t ref_top1 = engine::Sampler::Argmax(ref.logits);
  for (const bench::MethodSpec& m : methods) {
    json r;
    if (m.options.method == blend::Method::kFullPrefill) {
      r = {{"ttft_s", ref_wall},
           {"cpu_s", ref_cpu},
           {"kl", 0.0},
           {"top1", 1.0},
           {"agree", 1.0},
           {"matched", 1.0},
           {"kl_cont", 0.0},
           {"recompute", 1.0},
           {"kv_dev", std::vector<double>(e.config().num_layers, 0.0)}};
      rec["methods"][m.name] = r;
      continue;
    }
    auto seq = e.NewSequence();
    c0 = CpuNow();
    t0 = Clock::now();
    KVSTASH_ASSIGN_OR_RETURN(blend::BlendReport rep, b.Prefill(*seq, p, m.options));
    r["ttft_s"] = std::chrono::duration<double>(Clock::now() - t0).count();
    r["cpu_s"] = CpuNow() - c0;
    r["recompute"] = rep.recompute_fraction;
    r["cached_tokens"] = rep.cached_tokens;
    r["missing"] = rep.missing_chunks;
    r["kl"] = bench::KlDivergence(ref.logits, rep.logits);
    r["top1"] = engine::Sampler::Argmax(rep.logits) == ref_top1 ? 1.0 : 0.0;
    r["kv_dev"] = bench::KvDeviationPerLayer(e, *seq, *ref_seq, p.num_tokens());
    if (rep.ratio > 0) r["ratio"] = rep.ratio;
    if (m.options.method == blend::Method::kCacheCraft) {
      std::vector<double> cfo;
      for (size_t s = 1; s + 1 < p.size(); ++s) cfo.push_back(rep.craft[s].cfo);
      r["cfo"] = cfo;
    }
    if (m.options.blend.ratio < 0) r["controller_tier"] = static_cast<int>(rep.decision.tier);
    KVSTASH_ASSIGN_OR_RETURN(bench::Agreement ag, bench::AgreeAlong(e, *seq, rep.logits, ref_cont));
    r["agree"] = static_cast<double>(ag.leading) / static_cast<double>(gen);
    r["matched"] = ag.matched;
    r["kl_cont"] = ag.kl_mean;
    rec["methods"][m.name] = r;
  }
  return rec;
}

json Summarize(const std::vector<json>& records, const std::vector<bench::MethodSpec>& methods,
               uint32_t layers) {
  json out = json::object();
  for (const bench::MethodSpec& m : methods) {
    Accum a;
    a.kv_dev_sum.assign(layers, 0.0);
    for (const json& rec : records) {
      if (!rec["methods"].contains(m.name)) continue;
      const json& r = rec["methods"][m.name];
      const double full = rec["full_ttft_s"].get<double>();
      a.ttft.push_back(r["ttft_s"].get<double>());
      a.ttft_ratio.push_back(r["ttft_s"].get<double>() / full);
      a.cpu_ratio.push_back(r["cpu_s"].get<double>() / rec["full_cpu_s"].get<double>());
      a.kl.push_back(r["kl"].get<double>());
      a.top1.push_back(r["top1"].get<double>());
      a.agree.push_back(r["agree"].get<double>());
      a.matched.push_back(r["matched"].get<double>());
      a.kl_cont.push_back(r["kl_cont"].get<double>());
      a.recompute.push_back(r["recompute"].get<double>());
      const auto dev = r["kv_dev"].get<std::vector<double>>();
      for (uint32_t l = 0; l < layers && l < dev.size(); ++l) a.kv_dev_sum[l] += dev[l];
      ++a.kv_dev_count;
    }
    std::vector<double> dev = a.kv_dev_sum;
    for (double& d : dev) d /= std::max<size_t>(1, a.kv_dev_count);
    out[m.name] = {{"prompts", a.ttft.size()},
                   {"ttft_s_median", Median(a.ttft)},
                   {"ttft_ratio_median", Median(a.ttft_ratio)},
                   {"cpu_ratio_median", Median(a.cpu_ratio)},
                   {"kl_mean", Mean(a.kl)},
                   {"kl_median", Median(a.kl)},
                   {"top1_agreement", Mean(a.top1)},
                   {"greedy_agreement_mean", Mean(a.agree)},
                   {"forced_match_mean", Mean(a.matched)},
                   {"kl_continuation_mean", Mean(a.kl_cont)},
                   {"recompute_fraction_mean", Mean(a.recompute)},
                   {"kv_dev_mean", Mean(dev)},
                   {"kv_dev_per_layer", dev}};
  }
  return out;
}

void PrintTable(const json& summary, const std::vector<bench::MethodSpec>& methods) {
  std::fprintf(stdout, "%-18s %9s %8s %9s %9s %9s %7s %7s %7s %9s\n", "method", "TTFT(s)", "xFull",
               "recompute", "KL", "KL(cont)", "top1", "greedy", "forced", "KV dev");
  for (const bench::MethodSpec& m : methods) {
    const json& s = summary[m.name];
    std::fprintf(stdout, "%-18s %9.3f %8.3f %8.1f%% %9.5f %9.5f %7.2f %7.2f %7.2f %9.5f\n",
                 m.name.c_str(), s["ttft_s_median"].get<double>(),
                 s["ttft_ratio_median"].get<double>(),
                 100 * s["recompute_fraction_mean"].get<double>(), s["kl_mean"].get<double>(),
                 s["kl_continuation_mean"].get<double>(), s["top1_agreement"].get<double>(),
                 s["greedy_agreement_mean"].get<double>(), s["forced_match_mean"].get<double>(),
                 s["kv_dev_mean"].get<double>());
  }
  std::fflush(stdout);
}

// --demo: what the prompt was and how each method did on it.
void PrintPrompt(const bench::ChunkPool& pool, const bench::PromptSpec& spec, const json& rec,
                 const std::vector<bench::MethodSpec>& methods, size_t gen) {
  std::printf("\nPrompt: system prefix + %zu chunks (", spec.chunks.size());
  for (size_t i = 0; i < spec.chunks.size(); ++i) {
    std::printf("%s#%u %s", i ? ", " : "", spec.chunks[i], pool.sources[spec.chunks[i]].c_str());
  }
  std::printf(") + \"%s\"  [%d tokens]\n", bench::QuestionCues()[spec.question].c_str(),
              rec["tokens"].get<int>());
  std::printf("  %-18s %9s %8s %10s %10s %8s %8s\n", "method", "TTFT(s)", "xFull", "recompute",
              "KL", "greedy", "forced");
  const double full = rec["full_ttft_s"].get<double>();
  for (const bench::MethodSpec& m : methods) {
    const json& r = rec["methods"][m.name];
    std::printf("  %-18s %9.3f %8.3f %9.1f%% %10.5f %5.0f/%zu %5.0f/%zu\n", m.name.c_str(),
                r["ttft_s"].get<double>(), r["ttft_s"].get<double>() / full,
                100 * r["recompute"].get<double>(), r["kl"].get<double>(),
                r["agree"].get<double>() * static_cast<double>(gen), gen,
                r["matched"].get<double>() * static_cast<double>(gen), gen);
  }
  std::fflush(stdout);
}

int Run(int argc, char** argv) {
  auto args = ParseArgs(argc, argv);
  if (!args.ok()) {
    std::fprintf(stderr, "blend_eval: %s\n", std::string(args.status().message()).c_str());
    return 2;
  }
  Args& a = *args;
  std::vector<bench::MethodSpec> methods;
  {
    std::stringstream ss(a.methods);
    for (std::string m; std::getline(ss, m, ',');) {
      auto spec = bench::ParseMethod(m);
      if (!spec.ok()) {
        std::fprintf(stderr, "blend_eval: %s\n", std::string(spec.status().message()).c_str());
        return 2;
      }
      methods.push_back(*spec);
    }
  }
  auto fail = [](const Status& s) {
    std::fprintf(stderr, "blend_eval: %s\n", s.ToString().c_str());
    return 1;
  };
  auto model = engine::Model::Load(a.model);
  if (!model.ok()) return fail(model.status());
  if ((*model)->gguf() == nullptr)
    return fail(absl::InvalidArgumentError("a GGUF model is needed"));
  auto tok = engine::LoadGgufTokenizer(*(*model)->gguf());
  if (!tok.ok()) return fail(tok.status());
  engine::EngineOptions eo;
  eo.num_threads = a.threads;
  auto eng = engine::Engine::Create(*model, eo);
  if (!eng.ok()) return fail(eng.status());
  engine::Engine& e = **eng;

  std::unique_ptr<client::KvClient> kv;
  std::unique_ptr<blend::ChunkKvStore> store;
  if (a.in_process) {
    store = blend::NewInProcessChunkStore();
  } else {
    auto c = client::KvClient::Connect(a.target);
    if (!c.ok()) return fail(c.status());
    kv = std::move(*c);
    blend::ServiceStoreOptions so;
    so.name_space = a.name_space;
    store = blend::NewServiceChunkStore(kv.get(), ModelFingerprint(e.Spec()), so);
  }
  blend::BlenderOptions bo;
  if (!a.chunk_lead.empty()) bo.chunk_lead = (*tok)->Encode(a.chunk_lead, false);
  auto blender = blend::Blender::Create(&e, store.get(), bo);
  if (!blender.ok()) return fail(blender.status());
  blend::Blender& b = **blender;

  const bench::ChunkPool pool = bench::BuildChunkPool(**tok, a.rag);
  const std::vector<bench::PromptSpec> specs =
      bench::MakePromptSpecs(a.warmup + a.prompts, pool.chunks.size(), a.rag);
  std::fprintf(stderr, "[blend_eval] %zu chunks in the pool, %zu warm-up + %zu prompts, store %s\n",
               pool.chunks.size(), a.warmup, a.prompts,
               a.in_process ? "in process" : a.target.c_str());

  // Chunk caches: every pool chunk (and the system prefix) prefilled alone once.
  {
    bench::PromptSpec all;
    for (uint32_t i = 0; i < pool.chunks.size(); ++i) all.chunks.push_back(i);
    auto t0 = Clock::now();
    auto n = b.PrepareChunks(bench::BuildPrompt(**tok, pool, all));
    if (!n.ok()) return fail(n.status());
    std::fprintf(stderr, "[blend_eval] %u chunk caches prefilled alone in %.1f s\n", *n,
                 std::chrono::duration<double>(Clock::now() - t0).count());
  }

  std::set<size_t> done;
  std::vector<json> records;
  if (a.resume && !a.progress.empty()) {
    std::ifstream in(a.progress);
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      json r = json::parse(line, nullptr, false);
      if (r.is_discarded()) continue;
      done.insert(r["index"].get<size_t>());
      records.push_back(std::move(r));
    }
  }
  std::ofstream progress;
  if (!a.progress.empty()) progress.open(a.progress, a.resume ? std::ios::app : std::ios::trunc);

  auto capture = [&](const blend::BlendPrompt& p, const std::vector<float>* want) -> Status {
    auto seq = e.NewSequence();
    KVSTASH_ASSIGN_OR_RETURN(blend::CapturedPrefill cap, b.PrefillWithStats(*seq, p));
    if (want != nullptr && cap.logits != *want) {
      return absl::InternalError("statistics prefill differs from the full prefill");
    }
    return b.StoreVariants(*seq, p, cap.stats);
  };
  for (size_t w = 0; w < a.warmup; ++w) {
    Status st = capture(bench::BuildPrompt(**tok, pool, specs[w]), nullptr);
    if (!st.ok()) return fail(st);
    std::fprintf(stderr, "[blend_eval] warm-up %zu/%zu\n", w + 1, a.warmup);
  }
  for (size_t i = 0; i < a.prompts; ++i) {
    const blend::BlendPrompt p = bench::BuildPrompt(**tok, pool, specs[a.warmup + i]);
    if (!done.count(i)) {
      auto t0 = Clock::now();
      auto rec = EvaluatePrompt(e, b, p, methods, a.gen);
      if (!rec.ok()) return fail(rec.status());
      (*rec)["index"] = i;
      records.push_back(*rec);
      if (progress.is_open()) progress << rec->dump() << "\n" << std::flush;
      if (a.demo) PrintPrompt(pool, specs[a.warmup + i], *rec, methods, a.gen);
      std::fprintf(stderr, "[blend_eval] prompt %zu/%zu: %u tokens, full %.2f s, %.1f s total\n",
                   i + 1, a.prompts, p.num_tokens(), (*rec)["full_ttft_s"].get<double>(),
                   std::chrono::duration<double>(Clock::now() - t0).count());
    }
    // Now (not before) the prompt's own full prefill may become Cache-Craft variants.
    Status st = capture(p, nullptr);
    if (!st.ok()) return fail(st);
  }

  const json summary = Summarize(records, methods, e.config().num_layers);
  PrintTable(summary, methods);
  if (!a.out.empty()) {
    json out;
    out["model"] = (*model)->model_id();
    out["kernels"] = engine::Engine::KernelIsa();
    out["threads"] = a.threads;
    out["store"] = a.in_process ? "in-process" : "cachesvc " + a.target;
    out["prompts"] = records.size();
    out["warmup"] = a.warmup;
    out["pool_chunks"] = pool.chunks.size();
    out["generated_tokens"] = a.gen;
    out["methods"] = summary;
    std::ofstream(a.out) << out.dump(2) << "\n";
    std::fprintf(stderr, "[blend_eval] wrote %s\n", a.out.c_str());
  }
  return 0;
}

}  // namespace

// An exception (a file system or JSON error, say) ends the run with its message and status 1
// rather than std::terminate's abort.
int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "blend_eval: %s\n", e.what());
    return 1;
  }
}
