// Tokenizers of the models the engine loads.
//
//   GGUF tokenizer.ggml.model = "gpt2": byte-level BPE (vocab + ranked merges from the GGUF).
//     Pre-tokenisation follows tokenizer.ggml.pre: "smollm" (and the StarCoder family) isolates
//     every Unicode number character, then applies the GPT-2 split
//       's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//     implemented as a hand-written scanner (no std::regex). Letter/number/space classes come
//     from Unicode 14 tables (src/unicode_tables.inc); malformed UTF-8 bytes count as
//     punctuation of their own. Control and user-defined tokens (<|im_start|>, ...) written in
//     the text are recognised (longest match first) before pre-tokenisation.
//   llama2.c tokenizer.bin (vocab with scores, e.g. tok512.bin): SentencePiece-style greedy
//     merges by score over code points, a dummy-prefix space, byte fallback <0xXX>.
//
// Tokenizers are immutable after loading; Encode/Decode are thread-safe.
#ifndef KVSTASH_ENGINE_TOKENIZER_H_
#define KVSTASH_ENGINE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvstash/common/status.h"

namespace kvstash::engine {

class GgufFile;

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text` (UTF-8), with the BOS token first when add_bos.
  virtual std::vector<int32_t> Encode(std::string_view text, bool add_bos) const = 0;
  // Bytes that `token` contributes to the output when it follows `prev` (-1 at the start).
  // Concatenating the pieces of a sequence gives Decode() of it; a piece may end inside a
  // UTF-8 character.
  virtual std::string Piece(int32_t prev, int32_t token) const = 0;
  std::string Decode(std::span<const int32_t> tokens) const;

  virtual size_t vocab_size() const = 0;
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  // Whether prompts of this model conventionally start with BOS.
  bool add_bos_default() const { return add_bos_default_; }

 protected:
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  bool add_bos_default_ = false;
};

// From a GGUF file's tokenizer.ggml.* metadata. InvalidArgument for a missing or inconsistent
// vocabulary; Unimplemented for a tokenizer model other than "gpt2" or an unknown "pre".
Result<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const GgufFile& gguf);

// From a llama2.c tokenizer file. `vocab_size` is the model's (the file does not store it);
// InvalidArgument when the file is malformed or holds fewer tokens.
Result<std::unique_ptr<Tokenizer>> LoadLlama2cTokenizer(const std::string& path, size_t vocab_size);

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_TOKENIZER_H_
