// `kvstash generate`: runs the reference engine on a prompt and prints the continuation, then
// time to first token and decode speed (on stderr, so stdout is only the text).
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "commands.h"
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
};

int Fail(const std::string& msg) {
  std::fprintf(stderr, "kvstash generate: %s\n", msg.c_str());
  return 1;
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

  auto t0 = std::chrono::steady_clock::now();
  auto logits = (*eng)->Prefill(*seq, ids, 0);
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
  sub->callback([args] { ExitCode() = RunGenerate(*args); });
}

}  // namespace kvstash::cli
