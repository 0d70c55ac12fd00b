// RAG-style prompts for the blending evaluation: a pool of 128-256-token chunks cut from the
// public-domain texts in ../shared/data/text/, and prompts of k chunks (Zipf-popular, shuffled)
// behind a fixed system prefix, followed by a question or continuation cue, in SmolLM2's chat
// format. Deterministic per seed.
#ifndef KVSTASH_BENCH_BLEND_RAG_CORPUS_H_
#define KVSTASH_BENCH_BLEND_RAG_CORPUS_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "kvstash/blend/prompt.h"
#include "kvstash/engine/tokenizer.h"
#include "testing/rng.h"

namespace kvstash::bench {

struct RagOptions {
  std::string text_dir = "../shared/data/text";
  uint32_t pool_size = 60;
  uint32_t min_tokens = 128, max_tokens = 256;
  uint32_t k_min = 4, k_max = 6;
  double zipf_s = 0.8;  // chunk popularity, so chunks come back across prompts
  uint64_t seed = 1;
};

struct ChunkPool {
  std::vector<std::vector<int32_t>> chunks;  // segment tokens: "Document:\n" + text + "\n\n"
  std::vector<std::string> sources;          // file each chunk came from
};

inline const char* kSystemPrefix =
    "<|im_start|>system\nYou are a helpful assistant. Answer using the documents the user "
    "gives.<|im_end|>\n<|im_start|>user\n";

inline const std::vector<std::string>& QuestionCues() {
  static const std::vector<std::string> q = {
      "Question: Which people are mentioned in the documents above? Answer briefly.",
      "Question: Summarize the first document in one sentence.",
      "Question: What happens in the last document?",
      "Question: Where do the events in these documents take place?",
      "Continue the story of the second document.",
      "Question: What is the mood of these documents?",
      "Question: List three objects mentioned in the documents.",
      "Question: Who speaks in the documents, and to whom?",
  };
  return q;
}

// Paragraphs (blank-line separated) of a text file, lines joined with spaces, skipping the first
// `skip_chars` (licence headers).
inline std::vector<std::string> Paragraphs(const std::string& path, size_t skip_chars) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  std::vector<std::string> out;
  std::string cur;
  std::istringstream lines(text.size() > skip_chars ? text.substr(skip_chars) : std::string());
  std::string line;
  bool first = true;
  while (std::getline(lines, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (first) {  // drop the partial line the skip cut into
      first = false;
      continue;
    }
    if (line.find_first_not_of(" \t") == std::string::npos) {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
      continue;
    }
    if (!cur.empty()) cur += ' ';
    cur += line.substr(line.find_first_not_of(" \t"));
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

inline ChunkPool BuildChunkPool(const engine::Tokenizer& tok, const RagOptions& o) {
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(o.text_dir)) {
    if (e.path().extension() == ".txt") files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  testing::Rng rng(o.seed);
  std::vector<std::vector<std::string>> paras;
  for (const std::string& f : files) paras.push_back(Paragraphs(f, 4000));
  std::vector<size_t> next(files.size(), 0);
  ChunkPool pool;
  const std::vector<int32_t> head = tok.Encode("Document:\n", false);
  const std::vector<int32_t> tail = tok.Encode("\n\n", false);
  size_t f = 0, stuck = 0;
  while (pool.chunks.size() < o.pool_size && stuck < files.size()) {
    const uint32_t target =
        o.min_tokens + static_cast<uint32_t>(rng.Next() % (o.max_tokens - o.min_tokens + 1));
    const uint32_t body_max = target - static_cast<uint32_t>(head.size() + tail.size());
    std::vector<int32_t> body;
    std::vector<std::string>& ps = paras[f];
    while (next[f] < ps.size() && body.size() < body_max) {
      std::vector<int32_t> ids = tok.Encode((body.empty() ? "" : " ") + ps[next[f]++], false);
      const size_t room = body_max - body.size();
      body.insert(body.end(), ids.begin(),
                  ids.begin() + static_cast<ptrdiff_t>(std::min(room, ids.size())));
    }
    if (body.size() + head.size() + tail.size() >= o.min_tokens) {
      std::vector<int32_t> seg = head;
      seg.insert(seg.end(), body.begin(), body.end());
      seg.insert(seg.end(), tail.begin(), tail.end());
      pool.chunks.push_back(std::move(seg));
      pool.sources.push_back(std::filesystem::path(files[f]).filename().string());
      stuck = 0;
      next[f] += 3;  // leave a gap: chunks are excerpts, not a continuous text
    } else {
      ++stuck;
    }
    f = (f + 1) % files.size();
  }
  return pool;
}

struct PromptSpec {
  std::vector<uint32_t> chunks;  // pool indices, in prompt order
  uint32_t question = 0;
};

inline std::vector<PromptSpec> MakePromptSpecs(size_t count, size_t pool_size,
                                               const RagOptions& o) {
  testing::Rng rng(o.seed * 7919 + 13);
  std::vector<double> cdf(pool_size);
  double sum = 0;
  for (size_t r = 0; r < pool_size; ++r) cdf[r] = (sum += 1.0 / std::pow(r + 1.0, o.zipf_s));
  for (double& x : cdf) x /= sum;
  std::vector<uint32_t> by_rank(pool_size);
  for (size_t i = 0; i < pool_size; ++i) by_rank[i] = static_cast<uint32_t>(i);
  for (size_t i = pool_size; i > 1; --i) std::swap(by_rank[i - 1], by_rank[rng.Next() % i]);
  std::vector<PromptSpec> out;
  for (size_t p = 0; p < count; ++p) {
    PromptSpec s;
    const uint32_t k = o.k_min + static_cast<uint32_t>(rng.Next() % (o.k_max - o.k_min + 1));
    while (s.chunks.size() < std::min<size_t>(k, pool_size)) {
      const double u = rng.Uniform();
      size_t r = static_cast<size_t>(std::lower_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
      const uint32_t id = by_rank[std::min(r, pool_size - 1)];
      if (std::find(s.chunks.begin(), s.chunks.end(), id) == s.chunks.end()) s.chunks.push_back(id);
    }
    s.question = static_cast<uint32_t>(rng.Next() % QuestionCues().size());
    out.push_back(std::move(s));
  }
  return out;
}

inline blend::BlendPrompt BuildPrompt(const engine::Tokenizer& tok, const ChunkPool& pool,
                                      const PromptSpec& spec) {
  std::vector<blend::Segment> segs;
  segs.push_back({blend::SegmentKind::kPrefix, tok.Encode(kSystemPrefix, false)});
  for (uint32_t c : spec.chunks) segs.push_back({blend::SegmentKind::kChunk, pool.chunks[c]});
  segs.push_back(
      {blend::SegmentKind::kQuestion,
       tok.Encode(QuestionCues()[spec.question] + "<|im_end|>\n<|im_start|>assistant\n", false)});
  return *blend::BlendPrompt::Make(std::move(segs));
}

}  // namespace kvstash::bench

#endif  // KVSTASH_BENCH_BLEND_RAG_CORPUS_H_
