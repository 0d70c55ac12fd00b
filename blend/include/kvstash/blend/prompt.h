// A RAG prompt as segments: a system prefix, retrieved chunks, and the question (or continuation
// cue). Chunks are the unit of reuse: each is keyed by its tokens alone
// (IndependentTokenHash, domain tag "KVS1IND"), so its KV can be found whatever precedes it.
//
// Plain value types; functions are pure and thread-safe.
#ifndef KVSTASH_BLEND_PROMPT_H_
#define KVSTASH_BLEND_PROMPT_H_

#include <cstdint>
#include <span>
#include <vector>

#include "kvstash/common/key.h"
#include "kvstash/common/status.h"

namespace kvstash::blend {

enum class SegmentKind : uint8_t {
  kPrefix,    // starts the prompt (position 0); its cache is exact, like a prefix cache
  kChunk,     // a retrieved chunk, reusable at any position
  kQuestion,  // the tail after the last chunk; always recomputed
};

struct Segment {
  SegmentKind kind = SegmentKind::kChunk;
  std::vector<int32_t> tokens;
};

class BlendPrompt {
 public:
  BlendPrompt() = default;
  // InvalidArgument unless: at least one segment; every segment non-empty; kPrefix only first;
  // exactly one kQuestion, and it is last.
  static Result<BlendPrompt> Make(std::vector<Segment> segments);

  // Splits `tokens` at every occurrence of `separator` (non-empty): the first piece is the
  // prefix, the last the question, the pieces between are chunks. Each separator stays at the
  // end of the piece before it, so Tokens() reproduces the input exactly (a prompt that starts
  // with a separator has that separator alone as its prefix). InvalidArgument when there is no
  // separator, or when a chunk or the question would be empty.
  static Result<BlendPrompt> Split(std::span<const int32_t> tokens,
                                   std::span<const int32_t> separator);

  const std::vector<Segment>& segments() const { return segments_; }
  size_t size() const { return segments_.size(); }
  const Segment& segment(size_t i) const { return segments_[i]; }
  // First position of segment i in the prompt, and one past the last.
  uint32_t begin(size_t i) const { return starts_[i]; }
  uint32_t end(size_t i) const { return starts_[i + 1]; }
  uint32_t num_tokens() const { return starts_.back(); }
  // The whole prompt.
  std::vector<int32_t> Tokens() const;
  // Segment containing position p (p < num_tokens()).
  size_t SegmentAt(uint32_t p) const;
  // Key of segment i: IndependentTokenHash of its tokens (u32 little-endian).
  Hash128 Key(size_t i) const { return keys_[i]; }

 private:
  std::vector<Segment> segments_;
  std::vector<uint32_t> starts_;  // size() + 1 entries
  std::vector<Hash128> keys_;
};

// IndependentTokenHash of signed token ids (they are non-negative vocabulary ids).
Hash128 ChunkKey(std::span<const int32_t> tokens);

}  // namespace kvstash::blend

#endif  // KVSTASH_BLEND_PROMPT_H_
