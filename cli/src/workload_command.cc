// `kvstash workload`: a multi-turn, long-document chat workload (SmolLM2 chat template) run
// through the KV connector, one pass per invocation. Each document from --text-dir is read
// into the first user turn; every later turn appends the model's previous answer and a new
// question as tokens, so each turn's prompt extends the previous one (the cache's best case
// in a real chat service, and the demo's workload). Prints TTFT and cache hits per turn; with
// --out writes them (and the generated tokens) as JSON; with --reference compares the tokens
// with an earlier pass's JSON. `kvstash workload --summary a.json b.json ...` tabulates passes.
// On a terminal a progress bar on stderr counts the turns (rate, ETA).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "client_flags.h"
#include "commands.h"
#include "kvstash/connector/connector.h"
#include "kvstash/connector/engine_adapter.h"
#include "kvstash/engine/engine.h"
#include "kvstash/engine/sampler.h"
#include "kvstash/engine/tokenizer.h"
#include "progress.h"

namespace kvstash::cli {
namespace {

using nlohmann::json;

struct WorkloadArgs {
  std::string model;
  std::string text_dir = "../shared/data/text";
  std::vector<std::string> docs = {"botchan.txt", "wizard_of_oz.txt"};
  uint32_t doc_tokens = 900;
  size_t doc_offset = 3000;  // bytes skipped at the start of each file (licence headers)
  int turns = 3;
  int max_tokens = 24;
  size_t threads = 0;
  std::string cache_target;  // empty or --no-cache: no connector
  ClientFlags cache_client;  // TLS and bearer token towards --cache-target
  std::string cache_namespace = "workload";
  uint32_t chunk_tokens = connector::kDefaultChunkTokens;
  std::string pass = "pass";
  std::string out;
  std::string reference;
  std::vector<std::string> summary;
};

const char* kQuestions[] = {
    "What is this text about? Answer in one sentence.",
    "Who is the main character, and what do we learn about them?",
    "Describe the setting of the text in a few words.",
    "What happens next, do you think?",
    "Give the text a short title.",
};

int Fail(const std::string& msg) {
  std::fprintf(stderr, "kvstash workload: %s\n", msg.c_str());
  return 1;
}

Result<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError("cannot read " + path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

int RunSummary(const std::vector<std::string>& files) {
  std::vector<json> passes;
  for (const std::string& f : files) {
    auto text = ReadFile(f);
    if (!text.ok()) return Fail(text.status().ToString());
    json j = json::parse(*text, nullptr, false);
    if (j.is_discarded() || !j.contains("turns")) return Fail(f + " is not a workload result");
    passes.push_back(std::move(j));
  }
  std::printf("%-12s %7s %8s %8s %8s %9s %12s %12s %8s\n", "pass", "turns", "prompt", "hit cpu",
              "hit ssd", "computed", "TTFT median", "TTFT total", "speedup");
  double base_total = 0;
  for (const json& p : passes) {
    uint64_t prompt = 0, cpu = 0, ssd = 0, computed = 0;
    std::vector<double> ttft;
    for (const json& t : p["turns"]) {
      prompt += t["prompt_tokens"].get<uint64_t>();
      cpu += t["cpu_hit_tokens"].get<uint64_t>();
      ssd += t["ssd_hit_tokens"].get<uint64_t>();
      computed += t["computed_tokens"].get<uint64_t>();
      ttft.push_back(t["ttft_ms"].get<double>());
    }
    double total = 0;
    for (double x : ttft) total += x;
    if (base_total == 0) base_total = total;
    auto pct = [&](uint64_t x) { return prompt ? 100.0 * x / prompt : 0.0; };
    std::printf("%-12s %7zu %8llu %7.1f%% %7.1f%% %8.1f%% %9.1f ms %9.1f ms %7.1fx\n",
                p.value("pass", "?").c_str(), ttft.size(), static_cast<unsigned long long>(prompt),
                pct(cpu), pct(ssd), pct(computed), Median(ttft), total,
                total > 0 ? base_total / total : 0.0);
  }
  return 0;
}

int RunWorkload(const WorkloadArgs& a) {
  if (!a.summary.empty()) return RunSummary(a.summary);
  if (a.model.empty()) return Fail("--model is required");
  auto model = engine::Model::Load(a.model);
  if (!model.ok()) return Fail(model.status().ToString());
  if ((*model)->gguf() == nullptr) return Fail("the workload uses a GGUF chat model (SmolLM2)");
  auto tok = engine::LoadGgufTokenizer(*(*model)->gguf());
  if (!tok.ok()) return Fail(tok.status().ToString());
  engine::EngineOptions opts;
  opts.num_threads = a.threads;
  auto eng = engine::Engine::Create(*model, opts);
  if (!eng.ok()) return Fail(eng.status().ToString());

  std::unique_ptr<connector::KvConnector> cache;
  if (!a.cache_target.empty()) {
    connector::ConnectorOptions copts;
    copts.name_space = a.cache_namespace;
    copts.chunk_tokens = a.chunk_tokens;
    if (Status s = ApplyClientFlags(a.cache_client, &copts.client); !s.ok()) {
      return Fail(s.ToString());
    }
    auto c =
        connector::KvConnector::Create(a.cache_target, connector::EngineCacheSpec(**eng), copts);
    if (!c.ok()) return Fail(c.status().ToString());
    cache = std::move(*c);
  }

  json reference;
  if (!a.reference.empty()) {
    auto text = ReadFile(a.reference);
    if (!text.ok()) return Fail(text.status().ToString());
    reference = json::parse(*text, nullptr, false);
    if (reference.is_discarded()) return Fail(a.reference + " is not JSON");
  }

  const engine::Tokenizer& t = **tok;
  auto encode = [&](const std::string& s) { return t.Encode(s, false); };
  const int32_t im_end = encode("<|im_end|>").front();
  json result = {{"pass", a.pass}, {"cache", !a.cache_target.empty()}, {"turns", json::array()}};
  size_t compared = 0, differing = 0;
  std::printf("[%s] %s\n", a.pass.c_str(),
              cache ? ("through cachesvc at " + a.cache_target).c_str() : "no cache");
  std::fflush(stdout);
  // Turns done of all; cleared before each printed line (and an error), drawn again after it.
  Progress bar("workload " + a.pass, a.docs.size() * static_cast<uint64_t>(a.turns),
               ProgressUnit::kItems);
  uint64_t turns_done = 0;
  auto fail = [&bar](const std::string& msg) {
    bar.Clear();
    return Fail(msg);
  };
  for (const std::string& doc : a.docs) {
    auto text = ReadFile(a.text_dir + "/" + doc);
    if (!text.ok()) return fail(text.status().ToString());
    const std::string window =
        text->substr(std::min(a.doc_offset, text->size()), size_t{a.doc_tokens} * 8);
    std::vector<int32_t> doc_ids = encode(window);
    if (doc_ids.size() > a.doc_tokens) doc_ids.resize(a.doc_tokens);

    std::vector<int32_t> prompt = encode(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nRead this document:\n\n");
    prompt.insert(prompt.end(), doc_ids.begin(), doc_ids.end());
    for (int turn = 0; turn < a.turns; ++turn) {
      const std::string q = kQuestions[turn % std::size(kQuestions)];
      std::vector<int32_t> tail = encode(std::string(turn == 0 ? "\n\n" : "<|im_start|>user\n") +
                                         q + "<|im_end|>\n<|im_start|>assistant\n");
      prompt.insert(prompt.end(), tail.begin(), tail.end());
      if (prompt.size() + a.max_tokens + 8 > (*eng)->config().max_seq_len) {
        return fail("the conversation outgrew the context length; lower --doc-tokens or --turns");
      }

      auto seq = (*eng)->NewSequence();
      const auto t0 = std::chrono::steady_clock::now();
      json row = {{"doc", doc}, {"turn", turn}, {"prompt_tokens", prompt.size()}};
      std::vector<float> logits;
      std::shared_ptr<connector::StoreHandle> store;
      if (cache) {
        connector::EngineConnector adapter(**eng, *cache);
        auto r = adapter.Prefill(*seq, prompt);
        if (!r.ok()) return fail(r.status().ToString());
        logits = std::move(r->logits);
        store = r->store;
        row["hit_tokens"] = r->hit_tokens;
        row["cpu_hit_tokens"] = r->cpu_hit_tokens;
        row["ssd_hit_tokens"] = r->ssd_hit_tokens;
        row["computed_tokens"] = r->computed_tokens;
        row["load_failed"] = !r->load_failure.ok();
        row["lookup_ms"] = r->lookup_seconds * 1e3;
        row["transfer_ms"] = r->load.transfer_seconds * 1e3;
        row["scatter_ms"] = r->load.scatter_seconds * 1e3;
      } else {
        auto r = (*eng)->Prefill(*seq, prompt, 0);
        if (!r.ok()) return fail(r.status().ToString());
        logits = std::move(*r);
        row["hit_tokens"] = row["cpu_hit_tokens"] = row["ssd_hit_tokens"] = 0;
        row["computed_tokens"] = prompt.size();
      }
      int32_t next = engine::Sampler::Argmax(logits);
      const double ttft_ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      std::vector<int32_t> answer;
      while (true) {
        answer.push_back(next);
        if (next == im_end || static_cast<int>(answer.size()) >= a.max_tokens) break;
        auto l = (*eng)->Decode(*seq, next);
        if (!l.ok()) return fail(l.status().ToString());
        next = engine::Sampler::Argmax(*l);
      }
      if (store) store->Wait();  // before the sequence's blocks are freed
      row["ttft_ms"] = ttft_ms;
      row["tokens"] = answer;
      std::string shown = t.Decode(answer);
      std::replace(shown.begin(), shown.end(), '\n', ' ');
      bar.Clear();
      std::printf(
          "  %-16s turn %d: prompt %5zu tokens, hit %5u (cpu %5u, ssd %5u), TTFT %8.1f ms | %s\n",
          doc.c_str(), turn + 1, prompt.size(), row["hit_tokens"].get<uint32_t>(),
          row["cpu_hit_tokens"].get<uint32_t>(), row["ssd_hit_tokens"].get<uint32_t>(), ttft_ms,
          shown.substr(0, 60).c_str());
      std::fflush(stdout);
      if (!reference.is_null()) {
        const size_t i = result["turns"].size();
        ++compared;
        if (i >= reference["turns"].size() || reference["turns"][i]["tokens"] != row["tokens"]) {
          ++differing;
          std::printf("    tokens differ from pass '%s'!\n", reference.value("pass", "?").c_str());
        }
      }
      result["turns"].push_back(row);
      bar.Update(++turns_done);
      // The next turn continues the conversation with this answer.
      prompt.insert(prompt.end(), answer.begin(), answer.end());
      if (answer.back() != im_end) prompt.push_back(im_end);
      std::vector<int32_t> nl = encode("\n");
      prompt.insert(prompt.end(), nl.begin(), nl.end());
    }
  }
  bar.Finish();
  if (cache) {
    cache->Flush();
    connector::ConnectorStats s = cache->Stats();
    const uint64_t load_failures = s.load_timeouts + s.leases_lost + s.loads_failed;
    std::printf(
        "  connector: %llu chunks stored, hit tokens cpu %llu / ssd %llu, %llu corrupt, "
        "%llu load failures\n",
        static_cast<unsigned long long>(s.chunks_stored),
        static_cast<unsigned long long>(s.hit_tokens_cpu),
        static_cast<unsigned long long>(s.hit_tokens_ssd),
        static_cast<unsigned long long>(s.corrupt_chunks),
        static_cast<unsigned long long>(load_failures));
  }
  if (!a.out.empty()) {
    std::ofstream out(a.out);
    out << result.dump(1) << "\n";
    if (!out) return Fail("cannot write " + a.out);
  }
  if (!reference.is_null()) {
    std::printf("  tokens identical to pass '%s': %s (%zu turns compared)\n",
                reference.value("pass", "?").c_str(), differing == 0 ? "yes" : "NO", compared);
    if (differing != 0) return 3;
  }
  return 0;
}

}  // namespace

void RegisterWorkloadCommand(CLI::App& app) {
  auto a = std::make_shared<WorkloadArgs>();
  CLI::App* sub = app.add_subcommand(
      "workload", "Multi-turn long-document chat workload through the KV connector (demo)");
  sub->add_option("--model", a->model, "GGUF chat model (SmolLM2)");
  sub->add_option("--text-dir", a->text_dir, "directory of the documents")->capture_default_str();
  sub->add_option("--docs", a->docs, "document files in --text-dir")->delimiter(',');
  sub->add_option("--doc-tokens", a->doc_tokens, "tokens of each document in the first turn")
      ->capture_default_str();
  sub->add_option("--doc-offset", a->doc_offset, "bytes skipped at the start of each document");
  sub->add_option("--turns", a->turns, "questions per document")->check(CLI::PositiveNumber);
  sub->add_option("--max-tokens", a->max_tokens, "answer length (greedy)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--threads", a->threads, "compute threads (0 = all cores)");
  sub->add_option("--cache-target", a->cache_target, "cachesvc address; omit for no cache");
  AddClientFlags(sub, a->cache_client);
  sub->add_option("--cache-namespace", a->cache_namespace, "namespace of the cached KV");
  sub->add_option("--chunk-tokens", a->chunk_tokens, "tokens per cached chunk")
      ->check(CLI::PositiveNumber);
  sub->add_option("--pass", a->pass, "name of this pass (in the output)");
  sub->add_option("--out", a->out, "write per-turn results and tokens as JSON");
  sub->add_option("--reference", a->reference, "JSON of an earlier pass: compare the tokens");
  sub->add_option("--summary", a->summary, "tabulate pass JSON files instead of running")
      ->expected(1, 16);
  sub->callback([a] { ExitCode() = RunWorkload(*a); });
}

}  // namespace kvstash::cli
