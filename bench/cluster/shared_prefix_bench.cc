// Shared-prefix workload from three real engine processes on three cachesvc nodes: one cluster
// (etcd, default R, UCX peer fetch) against three isolated nodes, with the engines without a
// cache as the compute baseline (tests/cluster/shared_prefix_harness.h has the workload and
// how the processes run). Per configuration and repetition: hit rate (tokens reused / prompt
// tokens), remote hit rate, the connector's load latency (Lookup + Acquire/Get of the hit) p50 /
// p90, TTFT p50 / p90 / total, prefill tokens and TTFT saved against no cache; medians over the
// repetitions and cluster / isolated ratios. Every run's generated tokens are checked against
// the first run's (exit code 3 if any differ). The no-cache baseline computes every request
// each time, so it runs --baseline-reps times (default 1).
//
//   shared_prefix_bench --model GGUF [--tokenizer T] [--text-dir DIR] [--docs 4]
//       [--doc-tokens 512] [--requests 24] [--max-tokens 8] [--chunk-tokens 256] [--reps 3]
//       [--baseline-reps 1] [--seed 1] [--threads 0] [--configs cluster,isolated,nocache]
//       [--out FILE]
//
// scripts/bench_shared_prefix.sh runs it with the documented sizes; docs/benchmarks-cluster.md.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "shared_prefix_harness.h"

namespace {

using namespace kvstash::testing;
using nlohmann::json;

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

json SummaryJson(const PrefixSummary& s) {
  return {{"requests", s.requests},
          {"prompt_tokens", s.prompt_tokens},
          {"hit_tokens", s.hit_tokens},
          {"remote_hit_tokens", s.remote_hit_tokens},
          {"computed_tokens", s.computed_tokens},
          {"hit_rate", s.hit_rate},
          {"remote_hit_rate", s.remote_hit_rate},
          {"hit_requests", s.hit_requests},
          {"remote_hit_requests", s.remote_hit_requests},
          {"load_failures", s.load_failures},
          {"load_p50_ms", s.load_p50_ms},
          {"load_p90_ms", s.load_p90_ms},
          {"remote_load_p50_ms", s.remote_load_p50_ms},
          {"local_load_p50_ms", s.local_load_p50_ms},
          {"ttft_p50_ms", s.ttft_p50_ms},
          {"ttft_p90_ms", s.ttft_p90_ms},
          {"ttft_total_ms", s.ttft_total_ms},
          {"peer_fetched_objects", s.peer_fetched_objects}};
}

[[noreturn]] void Die(const std::string& msg) {
  std::fprintf(stderr, "shared_prefix_bench: %s\n", msg.c_str());
  std::exit(1);
}

int Main(int argc, char** argv) {
  SharedPrefixOptions o;
  o.verbose = true;
  std::string text_dir = KVSTASH_SHARED_DATA "/text";
  std::string configs = "cluster,isolated,nocache", out_path;
  int reps = 3;
  int baseline_reps = 1;  // nocache: every request computed, the same work each time
  std::string command;
  for (int i = 0; i < argc; ++i) absl::StrAppend(&command, i ? " " : "", argv[i]);
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string f = argv[i], v = argv[i + 1];
    if (f == "--model") {
      o.model = v;
    } else if (f == "--tokenizer") {
      o.tokenizer = v;
    } else if (f == "--text-dir") {
      text_dir = v;
    } else if (f == "--docs") {
      o.docs = std::atoi(v.c_str());
    } else if (f == "--doc-tokens") {
      o.doc_tokens = static_cast<uint32_t>(std::atoi(v.c_str()));
    } else if (f == "--requests") {
      o.requests = std::atoi(v.c_str());
    } else if (f == "--max-tokens") {
      o.max_tokens = std::atoi(v.c_str());
    } else if (f == "--chunk-tokens") {
      o.chunk_tokens = static_cast<uint32_t>(std::atoi(v.c_str()));
    } else if (f == "--reps") {
      reps = std::atoi(v.c_str());
    } else if (f == "--baseline-reps") {
      baseline_reps = std::atoi(v.c_str());
    } else if (f == "--seed") {
      o.seed = std::strtoull(v.c_str(), nullptr, 10);
    } else if (f == "--threads") {
      o.threads = static_cast<size_t>(std::atoi(v.c_str()));
    } else if (f == "--configs") {
      configs = v;
    } else if (f == "--out") {
      out_path = v;
    } else {
      Die(absl::StrCat("unknown flag ", f));
    }
  }
  if (o.model.empty()) Die("--model is required");
  o.doc_files = {text_dir + "/botchan.txt", text_dir + "/wizard_of_oz.txt",
                 text_dir + "/tinyshakespeare.txt", text_dir + "/tinystories_sample.txt"};
  std::vector<PrefixConfig> order;
  for (PrefixConfig c : {PrefixConfig::kCluster, PrefixConfig::kIsolated, PrefixConfig::kNoCache}) {
    if (absl::StrCat(",", configs, ",").find(absl::StrCat(",", PrefixConfigName(c), ",")) !=
        std::string::npos) {
      order.push_back(c);
    }
  }
  if (order.empty()) Die("--configs names none of cluster, isolated, nocache");

  json result = {{"benchmark", "cluster_shared_prefix"},
                 {"command", command},
                 {"model", o.model},
                 {"engines", o.engines},
                 {"docs", o.docs},
                 {"doc_tokens", o.doc_tokens},
                 {"requests", o.requests},
                 {"max_tokens", o.max_tokens},
                 {"chunk_tokens", o.chunk_tokens},
                 {"seed", o.seed},
                 {"reps", reps},
                 {"baseline_reps", baseline_reps},
                 {"loadavg_before", LoadAverage()},
                 {"runs", json::array()}};
  std::map<std::string, std::vector<json>> per_config;
  bool identical = true;
  std::vector<std::vector<int32_t>> reference;  // the first run's tokens, request by request
  std::string reference_name;
  for (int r = 0; r < reps; ++r) {
    // Rotate the order each repetition so drift in the machine's load spreads over configs.
    for (size_t k = 0; k < order.size(); ++k) {
      const PrefixConfig c = order[(k + static_cast<size_t>(r)) % order.size()];
      if (c == PrefixConfig::kNoCache && r >= baseline_reps) continue;
      std::fprintf(stderr, "== rep %d: %s (load %s)\n", r, PrefixConfigName(c),
                   LoadAverage().c_str());
      auto run = RunSharedPrefix(c, o);
      if (!run.ok()) Die(absl::StrCat(PrefixConfigName(c), ": ", run.status().ToString()));
      std::vector<std::vector<int32_t>> tokens;
      for (const PrefixRequestResult& x : run->results) tokens.push_back(x.tokens);
      if (reference.empty()) {
        reference = tokens;
        reference_name = absl::StrCat(PrefixConfigName(c), " rep ", r);
      } else if (tokens != reference) {
        identical = false;
        std::fprintf(stderr, "rep %d: %s generated other tokens than %s\n", r, PrefixConfigName(c),
                     reference_name.c_str());
      }
      json row = SummaryJson(Summarize(*run));
      row["config"] = PrefixConfigName(c);
      row["rep"] = r;
      row["kernels"] = run->kernels;
      row["shared_memory"] = run->shared_memory;
      row["replicated_objects"] = run->replicated_objects;
      row["loadavg"] = LoadAverage();
      std::fprintf(stderr, "   %s\n", row.dump().c_str());
      row["per_request"] = json::array();
      for (const PrefixRequestResult& x : run->results) {
        row["per_request"].push_back({{"id", x.request.id},
                                      {"engine", x.request.engine},
                                      {"doc", x.request.doc},
                                      {"prompt_tokens", x.prompt_tokens},
                                      {"hit_tokens", x.hit_tokens},
                                      {"remote_hit_tokens", x.remote_hit_tokens},
                                      {"lookup_ms", x.lookup_ms},
                                      {"transfer_ms", x.transfer_ms},
                                      {"ttft_ms", x.ttft_ms}});
      }
      result["runs"].push_back(row);
      per_config[PrefixConfigName(c)].push_back(row);
    }
  }
  json medians = json::object();
  for (const auto& [name, rows] : per_config) {
    json m = json::object();
    for (const char* field :
         {"hit_rate", "remote_hit_rate", "load_p50_ms", "load_p90_ms", "remote_load_p50_ms",
          "local_load_p50_ms", "ttft_p50_ms", "ttft_p90_ms", "ttft_total_ms", "hit_tokens",
          "remote_hit_tokens", "computed_tokens", "prompt_tokens", "hit_requests",
          "remote_hit_requests", "load_failures", "peer_fetched_objects"}) {
      std::vector<double> v;
      for (const json& row : rows) v.push_back(row[field].get<double>());
      m[field] = Median(v);
    }
    medians[name] = m;
  }
  auto ratio = [&](const char* a, const char* b, const char* field) -> json {
    if (!medians.contains(a) || !medians.contains(b)) return nullptr;
    const double den = medians[b][field].get<double>();
    return den > 0 ? json(medians[a][field].get<double>() / den) : json(nullptr);
  };
  json ratios = {{"hit_rate", ratio("cluster", "isolated", "hit_rate")},
                 {"load_p50", ratio("cluster", "isolated", "load_p50_ms")},
                 {"load_p90", ratio("cluster", "isolated", "load_p90_ms")},
                 {"ttft_p50", ratio("cluster", "isolated", "ttft_p50_ms")},
                 {"ttft_total", ratio("cluster", "isolated", "ttft_total_ms")},
                 {"computed_tokens", ratio("cluster", "isolated", "computed_tokens")}};
  if (medians.contains("nocache")) {
    json saved = json::object();
    const double base_ttft = medians["nocache"]["ttft_total_ms"].get<double>();
    const double base_tokens = medians["nocache"]["computed_tokens"].get<double>();
    for (const char* c : {"cluster", "isolated"}) {
      if (!medians.contains(c)) continue;
      saved[c] = {
          {"prefill_tokens_saved", base_tokens - medians[c]["computed_tokens"].get<double>()},
          {"prefill_tokens_saved_fraction",
           base_tokens > 0 ? 1 - medians[c]["computed_tokens"].get<double>() / base_tokens : 0},
          {"ttft_total_saved_ms", base_ttft - medians[c]["ttft_total_ms"].get<double>()}};
    }
    result["saved_vs_nocache"] = saved;
  }
  result["median"] = medians;
  result["cluster_over_isolated"] = ratios;
  result["tokens_identical"] = identical;
  result["loadavg_after"] = LoadAverage();
  const std::string text = result.dump(1);
  std::printf("%s\n", text.c_str());
  if (!out_path.empty()) {
    std::ofstream out(out_path);
    out << text << "\n";
    if (!out) Die(absl::StrCat("cannot write ", out_path));
  }
  return identical ? 0 : 3;
}

}  // namespace

// An exception (a file system or JSON error, say) ends the run with its message and status 1
// rather than std::terminate's abort.
int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shared_prefix_bench: %s\n", e.what());
    return 1;
  }
}
