// shared_prefix_engine: one engine process of the shared-prefix workload
// (shared_prefix_harness.h): the reference engine, attached through the KV connector to its
// node's cachesvc (or to none), serving requests one at a time from stdin.
//
//   shared_prefix_engine --model M [--tokenizer T] [--cache-target ADDR] [--chunk-tokens N]
//                        [--namespace NS] [--threads N] [--max-context N]
//
// stdout: first {"ready":true,...}, then one JSON line per request. stdin: one JSON request per
// line, {"id":N,"doc":"FILE","offset":BYTES,"doc_tokens":N,"question":"TEXT","max_tokens":N};
// EOF ends the process (exit 0 once the connector's stores are flushed).
//
// A prompt is the document's first doc_tokens tokens (read from byte `offset` of FILE), then the
// question: with a GGUF model (SmolLM2) in the chat template (system turn, "Read this document",
// the document, the question, the assistant turn), with a llama2.c model as plain text after
// BOS. Documents and questions are tokenized separately, so every request on a document shares
// its prefix tokens exactly, whichever engine runs it. Decoding is greedy.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kvstash/connector/connector.h"
#include "kvstash/connector/engine_adapter.h"
#include "kvstash/engine/engine.h"
#include "kvstash/engine/sampler.h"
#include "kvstash/engine/tokenizer.h"

namespace {

using namespace kvstash;
using nlohmann::json;

struct Args {
  std::string model, tokenizer, cache_target, name_space = "shared-prefix";
  uint32_t chunk_tokens = connector::kDefaultChunkTokens;
  size_t threads = 0;
  uint32_t max_context = 2048;
};

[[noreturn]] void Die(const std::string& msg) {
  std::fprintf(stderr, "shared_prefix_engine: %s\n", msg.c_str());
  std::exit(1);
}

void Emit(const json& j) {
  std::string line = j.dump();
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fflush(stdout);
}

int Main(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--model") {
      a.model = value;
    } else if (flag == "--tokenizer") {
      a.tokenizer = value;
    } else if (flag == "--cache-target") {
      a.cache_target = value;
    } else if (flag == "--namespace") {
      a.name_space = value;
    } else if (flag == "--chunk-tokens") {
      a.chunk_tokens = static_cast<uint32_t>(std::atoi(value.c_str()));
    } else if (flag == "--threads") {
      a.threads = static_cast<size_t>(std::atoi(value.c_str()));
    } else if (flag == "--max-context") {
      a.max_context = static_cast<uint32_t>(std::atoi(value.c_str()));
    } else {
      Die(absl::StrCat("unknown flag ", flag));
    }
  }
  if (a.model.empty()) Die("--model is required");
  auto model = engine::Model::Load(a.model);
  if (!model.ok()) Die(model.status().ToString());
  const bool chat = (*model)->gguf() != nullptr;
  Result<std::unique_ptr<engine::Tokenizer>> tok =
      chat ? engine::LoadGgufTokenizer(*(*model)->gguf())
           : engine::LoadLlama2cTokenizer(a.tokenizer, (*model)->config().vocab_size);
  if (!tok.ok()) Die(tok.status().ToString());
  const engine::Tokenizer& t = **tok;
  const uint32_t max_seq = std::min(a.max_context, (*model)->config().max_seq_len);
  engine::EngineOptions opts;
  opts.num_threads = a.threads;
  opts.kv.num_blocks = (max_seq + 15) / 16;
  auto eng = engine::Engine::Create(*model, opts);
  if (!eng.ok()) Die(eng.status().ToString());

  std::unique_ptr<connector::KvConnector> cache;
  if (!a.cache_target.empty()) {
    connector::ConnectorOptions copts;
    copts.name_space = a.name_space;
    copts.chunk_tokens = a.chunk_tokens;
    // A remote hit's Acquire waits for the node's peer fetch; give it room on a loaded machine.
    copts.client.rpc_timeout = std::chrono::milliseconds(10'000);
    auto c =
        connector::KvConnector::Create(a.cache_target, connector::EngineCacheSpec(**eng), copts);
    if (!c.ok()) Die(c.status().ToString());
    cache = std::move(*c);
    if (!cache->client_status().ok())
      Die(absl::StrCat("cache unreachable: ", cache->client_status().ToString()));
  }
  Emit({{"ready", true},
        {"kernels", engine::Engine::KernelIsa()},
        {"chat", chat},
        {"shared_memory", cache != nullptr && cache->shared_memory()}});

  auto encode = [&](const std::string& s) { return t.Encode(s, false); };
  const int32_t stop = chat ? encode("<|im_end|>").front() : t.eos_id();
  std::map<std::string, std::vector<int32_t>> doc_cache;  // "file@offset#tokens" -> ids
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    json req = json::parse(line, nullptr, false);
    if (req.is_discarded()) Die(absl::StrCat("bad request line: ", line));
    const std::string doc = req.at("doc").get<std::string>();
    const size_t offset = req.at("offset").get<size_t>();
    const uint32_t doc_tokens = req.at("doc_tokens").get<uint32_t>();
    const int max_tokens = req.value("max_tokens", 8);
    const std::string key = absl::StrCat(doc, "@", offset, "#", doc_tokens);
    auto it = doc_cache.find(key);
    if (it == doc_cache.end()) {
      std::ifstream in(doc, std::ios::binary);
      if (!in) Die(absl::StrCat("cannot read ", doc));
      std::stringstream s;
      s << in.rdbuf();
      const std::string text = s.str();
      std::vector<int32_t> ids =
          encode(text.substr(std::min(offset, text.size()), size_t{doc_tokens} * 8));
      if (ids.size() > doc_tokens) ids.resize(doc_tokens);
      it = doc_cache.emplace(key, std::move(ids)).first;
    }
    std::vector<int32_t> prompt;
    if (chat) {
      prompt = encode(
          "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
          "Face<|im_end|>\n<|im_start|>user\nRead this document:\n\n");
    } else if (t.bos_id() >= 0) {
      prompt.push_back(t.bos_id());
    }
    prompt.insert(prompt.end(), it->second.begin(), it->second.end());
    const std::string q = req.at("question").get<std::string>();
    std::vector<int32_t> tail =
        encode(chat ? absl::StrCat("\n\n", q, "<|im_end|>\n<|im_start|>assistant\n")
                    : absl::StrCat(" ", q));
    prompt.insert(prompt.end(), tail.begin(), tail.end());
    if (prompt.size() + static_cast<size_t>(max_tokens) + 1 > max_seq) {
      Die(absl::StrCat("prompt of ", prompt.size(), " tokens exceeds --max-context"));
    }

    auto seq = (*eng)->NewSequence();
    json out = {{"id", req.at("id")}, {"prompt_tokens", prompt.size()}};
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<float> logits;
    std::shared_ptr<connector::StoreHandle> store;
    if (cache) {
      connector::EngineConnector adapter(**eng, *cache);
      auto r = adapter.Prefill(*seq, prompt);
      if (!r.ok()) Die(r.status().ToString());
      logits = std::move(r->logits);
      store = r->store;
      out["hit_tokens"] = r->hit_tokens;
      out["cpu_hit_tokens"] = r->cpu_hit_tokens;
      out["ssd_hit_tokens"] = r->ssd_hit_tokens;
      out["other_hit_tokens"] = r->other_hit_tokens;  // served from another node (remote)
      out["computed_tokens"] = r->computed_tokens;
      out["lookup_status"] = r->lookup_status.ToString();
      out["load_failed"] = !r->load_failure.ok();
      out["lookup_ms"] = r->lookup_seconds * 1e3;
      out["transfer_ms"] = r->load.transfer_seconds * 1e3;
      out["scatter_ms"] = r->load.scatter_seconds * 1e3;
      out["wait_ms"] = r->load.wait_seconds * 1e3;
    } else {
      auto r = (*eng)->Prefill(*seq, prompt, 0);
      if (!r.ok()) Die(r.status().ToString());
      logits = std::move(*r);
      out["hit_tokens"] = out["cpu_hit_tokens"] = out["ssd_hit_tokens"] = 0;
      out["other_hit_tokens"] = 0;
      out["computed_tokens"] = prompt.size();
      out["load_failed"] = false;
      out["lookup_ms"] = out["transfer_ms"] = out["scatter_ms"] = out["wait_ms"] = 0.0;
    }
    int32_t next = engine::Sampler::Argmax(logits);
    out["ttft_ms"] =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::vector<int32_t> answer;
    while (true) {
      answer.push_back(next);
      if (next == stop || static_cast<int>(answer.size()) >= max_tokens) break;
      auto l = (*eng)->Decode(*seq, next);
      if (!l.ok()) Die(l.status().ToString());
      next = engine::Sampler::Argmax(*l);
    }
    if (store) {
      store->Wait();  // before the sequence's blocks are freed, and before the next request
      out["stored_chunks"] = store->chunks_stored();
      out["store_status"] = store->status().ToString();
    }
    out["tokens"] = answer;
    Emit(out);
  }
  if (cache) cache->Flush();
  return 0;
}

}  // namespace

// An exception (a file system or JSON error, say) ends the run with its message and status 1
// rather than std::terminate's abort.
int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shared_prefix_engine: %s\n", e.what());
    return 1;
  }
}
