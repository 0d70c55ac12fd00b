#include "kvstash/blend/prompt.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"

namespace kvstash::blend {

Hash128 ChunkKey(std::span<const int32_t> tokens) {
  std::vector<uint32_t> ids(tokens.begin(), tokens.end());
  return IndependentTokenHash(ids);
}

Result<BlendPrompt> BlendPrompt::Make(std::vector<Segment> segments) {
  auto bad = [](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("BlendPrompt: ", what));
  };
  if (segments.empty()) return bad("no segments");
  for (size_t i = 0; i < segments.size(); ++i) {
    const Segment& s = segments[i];
    if (s.tokens.empty()) return bad(absl::StrCat("segment ", i, " is empty"));
    if (s.kind == SegmentKind::kPrefix && i != 0)
      return bad("only the first segment may be a prefix");
    if (s.kind == SegmentKind::kQuestion && i + 1 != segments.size()) {
      return bad("the question must be the last segment");
    }
  }
  if (segments.back().kind != SegmentKind::kQuestion)
    return bad("the last segment must be the question");
  BlendPrompt p;
  p.starts_.push_back(0);
  for (const Segment& s : segments) {
    uint64_t end = uint64_t{p.starts_.back()} + s.tokens.size();
    if (end > (uint64_t{1} << 31)) return bad("prompt too long");
    p.starts_.push_back(static_cast<uint32_t>(end));
    p.keys_.push_back(ChunkKey(s.tokens));
  }
  p.segments_ = std::move(segments);
  return p;
}

Result<BlendPrompt> BlendPrompt::Split(std::span<const int32_t> tokens,
                                       std::span<const int32_t> separator) {
  if (separator.empty()) return absl::InvalidArgumentError("BlendPrompt::Split: empty separator");
  std::vector<std::vector<int32_t>> pieces(1);
  size_t i = 0;
  bool found = false;
  while (i < tokens.size()) {
    if (i + separator.size() <= tokens.size() &&
        std::equal(separator.begin(), separator.end(),
                   tokens.begin() + static_cast<ptrdiff_t>(i))) {
      pieces.back().insert(pieces.back().end(), separator.begin(), separator.end());
      pieces.emplace_back();
      i += separator.size();
      found = true;
    } else {
      pieces.back().push_back(tokens[i++]);
    }
  }
  if (!found) return absl::InvalidArgumentError("BlendPrompt::Split: separator not found");
  std::vector<Segment> segments;
  for (size_t k = 0; k < pieces.size(); ++k) {
    SegmentKind kind = k == 0                   ? SegmentKind::kPrefix
                       : k + 1 == pieces.size() ? SegmentKind::kQuestion
                                                : SegmentKind::kChunk;
    segments.push_back(Segment{kind, std::move(pieces[k])});
  }
  return Make(std::move(segments));
}

std::vector<int32_t> BlendPrompt::Tokens() const {
  std::vector<int32_t> out;
  out.reserve(num_tokens());
  for (const Segment& s : segments_) out.insert(out.end(), s.tokens.begin(), s.tokens.end());
  return out;
}

size_t BlendPrompt::SegmentAt(uint32_t p) const {
  auto it = std::upper_bound(starts_.begin(), starts_.end(), p);
  return static_cast<size_t>(it - starts_.begin()) - 1;
}

}  // namespace kvstash::blend
