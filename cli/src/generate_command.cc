// `kvstash generate`: runs the reference engine on a prompt and prints the continuation, then
// time to first token and decode speed (on stderr, so stdout is only the text). With
// --cache-target the prefill goes through the KV connector: the longest cached prefix is loaded
// from cachesvc instead of computed, and new full chunks are stored after the prefill.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>

#include "client_flags.h"
#include "commands.h"
#include "kvstash/connector/chunker.h"
#include "kvstash/connector/connector.h"
#include "kvstash/connector/engine_adapter.h"
#include "kvstash/engine/engine.h"
#include "kvstash/engine/sampler.h"
#include "kvstash/engine/tokenizer.h"

namespace kvstash::cli {
namespace {

struct GenerateArgs {
  std::string model;
  std::string tokenizer;
  std::string prompt;
  int max_tokens = 256;
  float temperature = 0.0f;
  float top_p = 0.9f;
  uint64_t seed = 0;
  size_t threads = 0;
  bool chat = false;
  std::string kv_dtype = "f16";
  std::string cache_target;  // empty: no cache
  std::string cache_namespace;
  ClientFlags cache_client;  // TLS and bearer token towards --cache-target
  uint32_t chunk_tokens = connector::kDefaultChunkTokens;
  bool no_store = false;
  // Prefill/decode handoff (docs/connector.md "P/D"): the prefill side offers the prompt's
  // stored chunks and writes the descriptor here; the decode side has its own cachesvc fetch the
  // descriptor before the prefill (then loads the prompt's KV from it).
  std::string handoff_out;
  std::string handoff_in;
  bool handoff_required = false;  // decode: fail instead of recomputing when the fetch fails
  std::string handoff_land_tier = "cpu";  // decode: where the fetched chunks land (cpu, gpu)
};

int Fail(const std::string& msg) {
  std::fprintf(stderr, "kvstash generate: %s\n", msg.c_str());
  return 1;
}

// A client of --cache-target with the TLS and token flags (the handoff calls).
Result<std::unique_ptr<client::KvClient>> ConnectCache(const GenerateArgs& a) {
  client::ClientOptions options;
  KVSTASH_RETURN_IF_ERROR(ApplyClientFlags(a.cache_client, &options));
  return client::KvClient::Connect(a.cache_target, options);
}

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

int RunGenerate(const GenerateArgs& a) {
  using engine::Engine;
  auto model = engine::Model::Load(a.model);
  if (!model.ok()) return Fail(model.status().ToString());
  const engine::ModelConfig& config = (*model)->config();
  Result<std::unique_ptr<engine::Tokenizer>> tok = absl::InvalidArgumentError(
      "llama2.c checkpoints keep their tokenizer apart: pass --tokenizer");
  if (!a.tokenizer.empty()) {
    tok = engine::LoadLlama2cTokenizer(a.tokenizer, config.vocab_size);
  } else if ((*model)->gguf() != nullptr) {
    tok = engine::LoadGgufTokenizer(*(*model)->gguf());
  }
  if (!tok.ok()) return Fail(tok.status().ToString());
  std::string prompt = a.prompt;
  if (a.chat) {
    prompt =
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
        "Hugging Face<|im_end|>\n<|im_start|>user\n" +
        a.prompt + "<|im_end|>\n<|im_start|>assistant\n";
  }
  std::vector<int32_t> ids = (*tok)->Encode(prompt, (*tok)->add_bos_default());
  if (ids.empty() && (*tok)->bos_id() >= 0) ids.push_back((*tok)->bos_id());
  if (ids.empty()) return Fail("the prompt encodes to no tokens");

  if ((!a.handoff_in.empty() || !a.handoff_out.empty()) && a.cache_target.empty()) {
    return Fail("--handoff-in and --handoff-out need --cache-target (this node's cachesvc)");
  }
  engine::EngineOptions opts;
  opts.num_threads = a.threads;
  if (a.kv_dtype == "f32") {
    opts.kv.dtype = DType::kF32;
  } else if (a.kv_dtype != "f16") {
    return Fail("--kv-dtype must be f16 or f32");
  }
  const uint32_t total = static_cast<uint32_t>(ids.size()) + static_cast<uint32_t>(a.max_tokens);
  opts.kv.num_blocks = (std::min(total, config.max_seq_len) + 15) / 16;
  auto eng = Engine::Create(*model, opts);
  if (!eng.ok()) return Fail(eng.status().ToString());
  auto seq = (*eng)->NewSequence();
  engine::Sampler sampler(a.temperature, a.top_p, a.seed);

  std::unique_ptr<connector::KvConnector> cache;
  if (!a.cache_target.empty()) {
    connector::ConnectorOptions copts;
    copts.name_space = a.cache_namespace;
    copts.chunk_tokens = a.chunk_tokens;
    copts.store = !a.no_store;
    if (Status s = ApplyClientFlags(a.cache_client, &copts.client); !s.ok()) {
      return Fail(s.ToString());
    }
    auto c =
        connector::KvConnector::Create(a.cache_target, connector::EngineCacheSpec(**eng), copts);
    if (!c.ok()) return Fail(c.status().ToString());
    cache = std::move(*c);
    if (!cache->client_status().ok()) {
      std::fprintf(stderr, "[kvstash generate] cache unreachable (%s): computing everything\n",
                   cache->client_status().ToString().c_str());
    }
  }

  std::string handoff_line;
  auto t0 = std::chrono::steady_clock::now();
  if (!a.handoff_in.empty()) {
    // Decode side: pull what the prefill node offered into this node's cachesvc, then prefill
    // through the connector, which finds the prompt's chunks here. A failed fetch costs the
    // prefix it did not bring: the engine recomputes (or stops, with --handoff-required).
    std::ifstream in(a.handoff_in, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in.good() && !in.eof()) return Fail("cannot read " + a.handoff_in);
    auto handoff = client::Handoff::Parse(bytes);
    if (!handoff.ok()) return Fail(a.handoff_in + ": " + handoff.status().ToString());
    auto kv = ConnectCache(a);
    const Tier land = a.handoff_land_tier == "gpu" ? Tier::kGpu : Tier::kCpu;
    Result<client::HandoffFetch> fetched =
        kv.ok() ? (*kv)->FetchHandoff(*handoff, a.handoff_required, land) : kv.status();
    if (!fetched.ok()) {
      if (a.handoff_required) return Fail("handoff: " + fetched.status().ToString());
      handoff_line = "[kvstash generate] handoff: fetch failed (" + fetched.status().ToString() +
                     "); recomputing\n";
    } else {
      char buf[256];
      std::snprintf(buf, sizeof(buf),
                    "[kvstash generate] handoff: %zu chunks from %s: fetched %u (%.1f MiB), "
                    "already here %u, usable prefix %u chunks, %.1f ms\n",
                    handoff->names.size(), handoff->node.c_str(), fetched->fetched,
                    fetched->fetched_bytes / 1048576.0, fetched->already_local,
                    fetched->longest_prefix, Seconds(std::chrono::steady_clock::now() - t0) * 1e3);
      handoff_line = buf;
    }
  }
  Result<std::vector<float>> logits = std::vector<float>();
  std::shared_ptr<connector::StoreHandle> store;
  std::string cache_line;
  if (cache != nullptr) {
    connector::EngineConnector adapter(**eng, *cache);
    auto r = adapter.Prefill(*seq, ids);
    if (!r.ok()) return Fail(r.status().ToString());
    logits = std::move(r->logits);
    store = r->store;
    char buf[512];
    std::snprintf(buf, sizeof(buf),
                  "[kvstash generate] cache: hit %u of %u prompt tokens (cpu %u, ssd %u), "
                  "computed %u; lookup %.2f ms, transfer %.2f ms, verify %.2f ms, scatter %.2f "
                  "ms, waited %.2f ms%s%s\n",
                  r->hit_tokens, r->prompt_tokens, r->cpu_hit_tokens, r->ssd_hit_tokens,
                  r->computed_tokens, r->lookup_seconds * 1e3, r->load.transfer_seconds * 1e3,
                  r->load.verify_seconds * 1e3, r->load.scatter_seconds * 1e3,
                  r->load.wait_seconds * 1e3, r->load_failure.ok() ? "" : "; load failed: ",
                  r->load_failure.ok() ? "" : r->load_failure.ToString().c_str());
    cache_line = buf;
  } else {
    logits = (*eng)->Prefill(*seq, ids, 0);
  }
  if (!logits.ok()) return Fail(logits.status().ToString());
  int32_t next = sampler.Sample(*logits);
  auto t_first = std::chrono::steady_clock::now();
  int32_t prev = ids.back();
  int generated = 0;
  const bool llama2c = (*model)->format() == engine::ModelFormat::kLlama2c;
  while (generated < a.max_tokens) {
    if (next == (*tok)->eos_id() || (llama2c && next == (*tok)->bos_id())) break;
    std::string piece = (*tok)->Piece(prev, next);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    ++generated;
    if (generated == a.max_tokens || seq->length() + 1 >= config.max_seq_len) break;
    logits = (*eng)->Decode(*seq, next);
    if (!logits.ok()) return Fail(logits.status().ToString());
    prev = next;
    next = sampler.Sample(*logits);
  }
  auto t_end = std::chrono::steady_clock::now();
  std::printf("\n");
  std::fflush(stdout);
  std::fputs(handoff_line.c_str(), stderr);
  if (store != nullptr) {
    store->Wait();  // the sequence's blocks must outlive the store
    std::fprintf(stderr,
                 "%s[kvstash generate] cache: stored %u new chunks (%u already present)%s%s\n",
                 cache_line.c_str(), store->chunks_stored(), store->chunks_already_present(),
                 store->status().ok() ? "" : "; store: ",
                 store->status().ok() ? "" : store->status().ToString().c_str());
  }
  if (!a.handoff_out.empty()) {
    // Prefill side: pin the prompt's chunks on this node for the decode node and hand over
    // the descriptor.
    auto chunker = connector::Chunker::Create(connector::EngineCacheSpec(**eng), a.cache_namespace,
                                              a.chunk_tokens);
    if (!chunker.ok()) return Fail(chunker.status().ToString());
    connector::ChunkPlan plan = chunker->Plan(ids);
    auto kv = ConnectCache(a);
    if (!kv.ok()) return Fail("handoff: " + kv.status().ToString());
    auto offered = (*kv)->Offer(plan.names);
    if (!offered.ok()) return Fail("handoff: " + offered.status().ToString());
    std::ofstream out(a.handoff_out, std::ios::binary | std::ios::trunc);
    const std::string bytes = offered->Serialize();
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out.good()) return Fail("cannot write " + a.handoff_out);
    std::fprintf(stderr,
                 "[kvstash generate] handoff: offered %zu of %u chunks from %s (id %016llx, "
                 "pinned for %llu ms) -> %s\n",
                 offered->names.size(), plan.full_chunks(), offered->node.c_str(),
                 static_cast<unsigned long long>(offered->id),
                 static_cast<unsigned long long>(offered->expires_in_ms), a.handoff_out.c_str());
  }
  double ttft = Seconds(t_first - t0);
  double decode = Seconds(t_end - t_first);
  std::fprintf(
      stderr,
      "[kvstash generate] prompt %zu tokens, TTFT %.1f ms (prefill %.1f tokens/s); "
      "generated %d tokens, decode %.1f tokens/s; %zu threads, %s kernels\n",
      ids.size(), ttft * 1e3, static_cast<double>(ids.size()) / ttft, generated,
      generated > 1 ? (generated - 1) / decode : 0.0,
      a.threads == 0 ? static_cast<size_t>(std::thread::hardware_concurrency()) : a.threads,
      Engine::KernelIsa());
  return 0;
}

}  // namespace

void RegisterGenerateCommand(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* sub = app.add_subcommand(
      "generate", "Generate text with the reference engine (GGUF or llama2.c model)");
  sub->add_option("--model", args->model, "GGUF file or llama2.c checkpoint")->required();
  sub->add_option("--tokenizer", args->tokenizer, "llama2.c tokenizer file (llama2.c models)");
  sub->add_option("--prompt", args->prompt,
                  "prompt text (special tokens such as <|im_start|> "
                  "are recognised)");
  sub->add_option("--max-tokens", args->max_tokens, "tokens to generate")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--temperature", args->temperature, "0 = greedy");
  sub->add_option("--top-p", args->top_p, "nucleus sampling mass when temperature > 0");
  sub->add_option("--seed", args->seed, "sampling seed");
  sub->add_option("--threads", args->threads, "compute threads (0 = all cores)");
  sub->add_option("--kv-dtype", args->kv_dtype, "paged KV dtype: f16 or f32");
  sub->add_flag("--chat", args->chat, "wrap the prompt in the SmolLM2 chat template");
  sub->add_option("--cache-target", args->cache_target,
                  "cachesvc address (unix:///path or host:port): reuse cached prefixes");
  sub->add_option("--cache-namespace", args->cache_namespace, "namespace of the cached KV");
  AddClientFlags(sub, args->cache_client);
  sub->add_option("--chunk-tokens", args->chunk_tokens, "tokens per cached chunk")
      ->check(CLI::PositiveNumber);
  sub->add_flag("--no-store", args->no_store, "only load from the cache, never store");
  sub->add_option("--handoff-out", args->handoff_out,
                  "prefill side: offer the prompt's chunks to a decode node, descriptor to FILE");
  sub->add_option("--handoff-in", args->handoff_in,
                  "decode side: fetch the handoff in FILE into --cache-target before prefill");
  sub->add_flag("--handoff-required", args->handoff_required,
                "decode side: fail when the handoff cannot be fetched (default: recompute)");
  sub->add_option("--handoff-land-tier", args->handoff_land_tier,
                  "decode side: where fetched chunks land on --cache-target: cpu (its arena, "
                  "default) or gpu (its GPU pool, over UCX into CUDA memory)")
      ->check(CLI::IsMember({"cpu", "gpu"}));
  sub->callback([args] { ExitCode() = RunGenerate(*args); });
}

}  // namespace kvstash::cli
