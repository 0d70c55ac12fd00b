// llama2.c tokenizer: {int32 max_token_length; vocab_size x (f32 score, int32 len, bytes)}.
// Ids 0..2 are <unk>, <s>, </s>; ids 3..258 the byte-fallback tokens <0x00>..<0xFF>.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <limits>
#include <unordered_map>

#include "kvstash/engine/tokenizer.h"
#include "mapped_file.h"

namespace kvstash::engine {
namespace {

class Llama2cTokenizer : public Tokenizer {
 public:
  Llama2cTokenizer(std::vector<std::string> pieces, std::vector<float> scores)
      : pieces_(std::move(pieces)), scores_(std::move(scores)) {
    for (size_t i = 0; i < pieces_.size(); ++i) {
      index_.emplace(pieces_[i], static_cast<int32_t>(i));  // first occurrence wins
    }
    bos_id_ = 1;
    eos_id_ = 2;
    add_bos_default_ = true;
  }

  size_t vocab_size() const override { return pieces_.size(); }

  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override {
    std::vector<int32_t> out;
    if (add_bos) out.push_back(bos_id_);
    std::vector<int32_t> ids;
    if (!text.empty()) {
      if (int32_t space = Find(" "); space >= 0) ids.push_back(space);  // dummy prefix
    }
    for (size_t i = 0; i < text.size();) {
      size_t len = CodePointLength(text, i);
      int32_t id = Find(text.substr(i, len));
      if (id >= 0) {
        ids.push_back(id);
      } else {
        for (size_t j = 0; j < len; ++j) ids.push_back(static_cast<uint8_t>(text[i + j]) + 3);
      }
      i += len;
    }
    // Merge the adjacent pair whose concatenation is a token with the highest score, until no
    // pair concatenates to a token.
    std::string merged;
    for (;;) {
      float best = -std::numeric_limits<float>::infinity();
      int32_t best_id = -1;
      size_t best_at = 0;
      for (size_t i = 0; i + 1 < ids.size(); ++i) {
        merged = pieces_[ids[i]] + pieces_[ids[i + 1]];
        int32_t id = Find(merged);
        if (id >= 0 && scores_[id] > best) {
          best = scores_[id];
          best_id = id;
          best_at = i;
        }
      }
      if (best_id < 0) break;
      ids[best_at] = best_id;
      ids.erase(ids.begin() + static_cast<ptrdiff_t>(best_at) + 1);
    }
    out.insert(out.end(), ids.begin(), ids.end());
    return out;
  }

  std::string Piece(int32_t prev, int32_t token) const override {
    if (token < 0 || static_cast<size_t>(token) >= pieces_.size()) return "";
    if (token == bos_id_ || token == eos_id_) return "";  // markers, not text
    std::string_view p = pieces_[token];
    if (prev == bos_id_ && !p.empty() && p[0] == ' ') p.remove_prefix(1);
    unsigned byte;
    if (p.size() == 6 && p.substr(0, 3) == "<0x" && p[5] == '>' &&
        std::sscanf(std::string(p.substr(3, 2)).c_str(), "%2x", &byte) == 1) {
      return std::string(1, static_cast<char>(byte));
    }
    return std::string(p);
  }

 private:
  int32_t Find(std::string_view s) const {
    auto it = index_.find(std::string(s));
    return it == index_.end() ? -1 : it->second;
  }

  // Bytes of the UTF-8 character starting at i (1 for a stray continuation or invalid byte).
  static size_t CodePointLength(std::string_view s, size_t i) {
    uint8_t c = static_cast<uint8_t>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    if (i + len > s.size()) return 1;
    for (size_t j = 1; j < len; ++j) {
      if ((static_cast<uint8_t>(s[i + j]) & 0xC0) != 0x80) return 1;
    }
    return len;
  }

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> index_;
};

}  // namespace

Result<std::unique_ptr<Tokenizer>> LoadLlama2cTokenizer(const std::string& path,
                                                        size_t vocab_size) {
  KVSTASH_ASSIGN_OR_RETURN(auto file, MappedFile::Open(path));
  auto bytes = file->bytes();
  size_t pos = 0;
  auto read = [&](void* out, size_t n) {
    if (bytes.size() - pos < n) return false;
    std::memcpy(out, bytes.data() + pos, n);
    pos += n;
    return true;
  };
  int32_t max_len;
  if (!read(&max_len, 4) || max_len <= 0) {
    return absl::InvalidArgumentError(path + ": not a llama2.c tokenizer");
  }
  if (vocab_size < 259) {
    return absl::InvalidArgumentError("llama2.c tokenizer needs at least 259 tokens");
  }
  std::vector<std::string> pieces(vocab_size);
  std::vector<float> scores(vocab_size);
  for (size_t i = 0; i < vocab_size; ++i) {
    int32_t len;
    if (!read(&scores[i], 4) || !read(&len, 4) || len < 0 || len > max_len ||
        static_cast<size_t>(len) > bytes.size() - pos) {
      return absl::InvalidArgumentError(path + ": truncated or malformed at token " +
                                        std::to_string(i));
    }
    pieces[i].assign(reinterpret_cast<const char*>(bytes.data() + pos), len);
    pos += len;
  }
  return std::unique_ptr<Tokenizer>(new Llama2cTokenizer(std::move(pieces), std::move(scores)));
}

}  // namespace kvstash::engine
