// GPT-2-style byte-level BPE from GGUF metadata (tokenizer.ggml.model = "gpt2").
#include <algorithm>
#include <limits>
#include <unordered_map>

#include "kvstash/engine/gguf.h"
#include "kvstash/engine/tokenizer.h"
#include "unicode.h"

namespace kvstash::engine {
namespace {

// GGUF token types.
constexpr int kTypeControl = 3;
constexpr int kTypeUserDefined = 4;

// GPT-2's reversible byte <-> printable code point mapping: printable Latin-1 bytes map to
// themselves, the rest to 256, 257, ... in byte order.
struct ByteMap {
  std::string to_unicode[256];
  std::unordered_map<uint32_t, uint8_t> to_byte;
  ByteMap() {
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      uint32_t cp = printable ? b : next++;
      AppendUtf8(cp, &to_unicode[b]);
      to_byte[cp] = static_cast<uint8_t>(b);
    }
  }
};

const ByteMap& Bytes() {
  static const ByteMap* map = new ByteMap();
  return *map;
}

class BpeTokenizer : public Tokenizer {
 public:
  BpeTokenizer(std::vector<std::string> tokens, std::vector<int> types,
               const std::vector<std::string>& merges, bool isolate_digits)
      : tokens_(std::move(tokens)), types_(std::move(types)), isolate_digits_(isolate_digits) {
    for (size_t i = 0; i < tokens_.size(); ++i) index_.emplace(tokens_[i], static_cast<int32_t>(i));
    for (size_t i = 0; i < merges.size(); ++i) ranks_.emplace(merges[i], static_cast<int>(i));
    for (size_t i = 0; i < tokens_.size(); ++i) {
      if ((types_[i] == kTypeControl || types_[i] == kTypeUserDefined) && !tokens_[i].empty()) {
        specials_.emplace_back(tokens_[i], static_cast<int32_t>(i));
      }
    }
    std::stable_sort(specials_.begin(), specials_.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  }

  void SetIds(int32_t bos, int32_t eos, bool add_bos) {
    bos_id_ = bos;
    eos_id_ = eos;
    add_bos_default_ = add_bos;
  }

  size_t vocab_size() const override { return tokens_.size(); }

  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override {
    std::vector<int32_t> out;
    if (add_bos && bos_id_ >= 0) out.push_back(bos_id_);
    size_t start = 0;
    for (size_t i = 0; i < text.size();) {
      int32_t special = -1;
      size_t special_len = 0;
      for (const auto& [s, id] : specials_) {
        if (text.compare(i, s.size(), s) == 0) {
          special = id;
          special_len = s.size();
          break;
        }
      }
      if (special < 0) {
        ++i;
        continue;
      }
      EncodeText(text.substr(start, i - start), &out);
      out.push_back(special);
      i += special_len;
      start = i;
    }
    EncodeText(text.substr(start), &out);
    return out;
  }

  std::string Piece(int32_t, int32_t token) const override {
    if (token < 0 || static_cast<size_t>(token) >= tokens_.size()) return "";
    const std::string& t = tokens_[token];
    if (types_[token] == kTypeControl || types_[token] == kTypeUserDefined) return t;
    std::string out;
    const auto& to_byte = Bytes().to_byte;
    for (size_t i = 0; i < t.size();) {
      size_t len;
      uint32_t cp = DecodeUtf8(t, i, &len);
      auto it = to_byte.find(cp);
      if (it != to_byte.end()) {
        out.push_back(static_cast<char>(it->second));
      } else {
        out.append(t, i, len);  // not a byte-level token: keep its text
      }
      i += len;
    }
    return out;
  }

 private:
  // Pre-tokenises `text` (no special tokens inside) and appends the BPE ids of every word.
  void EncodeText(std::string_view text, std::vector<int32_t>* out) const {
    if (text.empty()) return;
    std::vector<uint32_t> cps;
    std::vector<size_t> offsets;  // byte offset of each code point, plus the end
    for (size_t i = 0; i < text.size();) {
      size_t len;
      cps.push_back(DecodeUtf8(text, i, &len));
      offsets.push_back(i);
      i += len;
    }
    offsets.push_back(text.size());
    auto emit = [&](size_t a, size_t b) {
      EncodeWord(text.substr(offsets[a], offsets[b] - offsets[a]), out);
    };
    size_t piece = 0;
    for (size_t i = 0; i <= cps.size(); ++i) {
      bool digit = i < cps.size() && isolate_digits_ && Classify(cps[i]) == CharClass::kNumber;
      if (i == cps.size() || digit) {
        SplitGpt2(cps, piece, i, emit);
        if (digit) emit(i, i + 1);
        piece = i + 1;
      }
    }
  }

  // The GPT-2 split of cps[begin, end), see tokenizer.h.
  template <typename Emit>
  static void SplitGpt2(const std::vector<uint32_t>& cps, size_t begin, size_t end, Emit& emit) {
    auto cls = [&](size_t k) { return Classify(cps[k]); };
    size_t i = begin;
    while (i < end) {
      uint32_t c = cps[i];
      if (c == '\'' && i + 1 < end) {
        uint32_t a = cps[i + 1], b = i + 2 < end ? cps[i + 2] : 0;
        size_t len = 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') len = 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) len = 3;
        if (len != 0) {
          emit(i, i + len);
          i += len;
          continue;
        }
      }
      size_t j = (c == ' ' && i + 1 < end) ? i + 1 : i;
      CharClass cj = cls(j);
      if (cj != CharClass::kSpace) {
        size_t k = j + 1;
        if (cj == CharClass::kOther) {
          while (k < end && cls(k) == CharClass::kOther) ++k;
        } else {
          while (k < end && cls(k) == cj) ++k;
        }
        emit(i, k);
        i = k;
        continue;
      }
      // Whitespace run: \s+(?!\S) leaves the last space to prefix the next word.
      size_t k = i;
      while (k < end && cls(k) == CharClass::kSpace) ++k;
      if (k < end && k - i >= 2) --k;
      emit(i, k);
      i = k;
    }
  }

  void EncodeWord(std::string_view word, std::vector<int32_t>* out) const {
    const auto& to_unicode = Bytes().to_unicode;
    std::vector<std::string> sym;
    sym.reserve(word.size());
    for (char ch : word) sym.push_back(to_unicode[static_cast<uint8_t>(ch)]);
    // rank[i]: merge rank of the pair (sym[i], sym[i + 1]); only the two pairs touching a
    // merge change, so each step is an integer scan instead of re-hashing every pair.
    constexpr int kNone = std::numeric_limits<int>::max();
    std::string key;
    auto pair_rank = [&](size_t i) {
      key.assign(sym[i]).append(" ").append(sym[i + 1]);
      auto it = ranks_.find(key);
      return it == ranks_.end() ? kNone : it->second;
    };
    std::vector<int> rank(sym.size() > 1 ? sym.size() - 1 : 0);
    for (size_t i = 0; i < rank.size(); ++i) rank[i] = pair_rank(i);
    while (!rank.empty()) {
      size_t best_at = static_cast<size_t>(std::min_element(rank.begin(), rank.end()) -
                                           rank.begin());  // leftmost lowest rank
      if (rank[best_at] == kNone) break;
      sym[best_at] += sym[best_at + 1];
      sym.erase(sym.begin() + static_cast<ptrdiff_t>(best_at) + 1);
      rank.erase(rank.begin() + static_cast<ptrdiff_t>(best_at));
      if (best_at < rank.size()) rank[best_at] = pair_rank(best_at);
      if (best_at > 0) rank[best_at - 1] = pair_rank(best_at - 1);
    }
    for (const auto& s : sym) {
      auto it = index_.find(s);
      if (it != index_.end()) {
        out->push_back(it->second);
        continue;
      }
      // A symbol outside the vocabulary (a vocabulary without every byte): emit its bytes one
      // by one where they exist.
      for (size_t i = 0; i < s.size();) {
        size_t len;
        DecodeUtf8(s, i, &len);
        auto b = index_.find(s.substr(i, len));
        if (b != index_.end()) out->push_back(b->second);
        i += len;
      }
    }
  }

  std::vector<std::string> tokens_;
  std::vector<int> types_;
  bool isolate_digits_;
  std::unordered_map<std::string, int32_t> index_;
  std::unordered_map<std::string, int> ranks_;
  std::vector<std::pair<std::string, int32_t>> specials_;
};

}  // namespace

Result<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const GgufFile& gguf) {
  KVSTASH_ASSIGN_OR_RETURN(std::string model, gguf.GetString("tokenizer.ggml.model"));
  if (model != "gpt2") {
    return absl::UnimplementedError("tokenizer model " + model + " is not supported (gpt2 only)");
  }
  std::string pre = "gpt2";
  if (gguf.Find("tokenizer.ggml.pre") != nullptr) {
    KVSTASH_ASSIGN_OR_RETURN(pre, gguf.GetString("tokenizer.ggml.pre"));
  }
  bool isolate_digits;
  if (pre == "smollm" || pre == "starcoder" || pre == "refact" || pre == "codeshell") {
    isolate_digits = true;
  } else if (pre == "gpt2" || pre == "gpt-2") {
    isolate_digits = false;
  } else {
    return absl::UnimplementedError("tokenizer pre-tokenizer " + pre + " is not supported");
  }
  KVSTASH_ASSIGN_OR_RETURN(const std::vector<std::string>* tokens,
                           gguf.GetStringArray("tokenizer.ggml.tokens"));
  KVSTASH_ASSIGN_OR_RETURN(const std::vector<std::string>* merges,
                           gguf.GetStringArray("tokenizer.ggml.merges"));
  std::vector<int> types(tokens->size(), 1);
  if (gguf.Find("tokenizer.ggml.token_type") != nullptr) {
    KVSTASH_ASSIGN_OR_RETURN(const std::vector<double>* t,
                             gguf.GetNumArray("tokenizer.ggml.token_type"));
    if (t->size() != tokens->size()) {
      return absl::InvalidArgumentError("tokenizer.ggml.token_type length differs from tokens");
    }
    for (size_t i = 0; i < t->size(); ++i) types[i] = static_cast<int>((*t)[i]);
  }
  auto id = [&](const char* key) -> Result<int32_t> {
    if (gguf.Find(key) == nullptr) return -1;
    KVSTASH_ASSIGN_OR_RETURN(uint32_t v, gguf.GetU32(key));
    if (v >= tokens->size()) return absl::InvalidArgumentError(std::string(key) + " out of range");
    return static_cast<int32_t>(v);
  };
  KVSTASH_ASSIGN_OR_RETURN(int32_t bos, id("tokenizer.ggml.bos_token_id"));
  KVSTASH_ASSIGN_OR_RETURN(int32_t eos, id("tokenizer.ggml.eos_token_id"));
  bool add_bos = false;
  if (gguf.Find("tokenizer.ggml.add_bos_token") != nullptr) {
    KVSTASH_ASSIGN_OR_RETURN(add_bos, gguf.GetBool("tokenizer.ggml.add_bos_token"));
  }
  auto tok = std::make_unique<BpeTokenizer>(*tokens, std::move(types), *merges, isolate_digits);
  tok->SetIds(bos, eos, add_bos);
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace kvstash::engine
