#include "unicode.h"

#include <algorithm>
#include <iterator>

namespace kvstash::engine {
namespace {

struct CodeRange {
  uint32_t first;
  uint32_t last;
};

#include "unicode_tables.inc"

template <size_t N>
bool InRanges(const CodeRange (&ranges)[N], uint32_t cp) {
  auto it = std::upper_bound(std::begin(ranges), std::end(ranges), cp,
                             [](uint32_t v, const CodeRange& r) { return v < r.first; });
  return it != std::begin(ranges) && cp <= std::prev(it)->last;
}

}  // namespace

CharClass Classify(uint32_t cp) {
  if (cp < 0x80) {
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return CharClass::kLetter;
    if (cp >= '0' && cp <= '9') return CharClass::kNumber;
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return CharClass::kSpace;
    return CharClass::kOther;
  }
  if (cp >= kInvalidBase) return CharClass::kOther;
  if (InRanges(kLetterRanges, cp)) return CharClass::kLetter;
  if (InRanges(kNumberRanges, cp)) return CharClass::kNumber;
  if (InRanges(kSpaceRanges, cp)) return CharClass::kSpace;
  return CharClass::kOther;
}

uint32_t DecodeUtf8(std::string_view s, size_t i, size_t* len) {
  const uint8_t c = static_cast<uint8_t>(s[i]);
  *len = 1;
  if (c < 0x80) return c;
  size_t n;
  uint32_t cp, min;
  if ((c >> 5) == 6) {
    n = 2, cp = c & 0x1F, min = 0x80;
  } else if ((c >> 4) == 14) {
    n = 3, cp = c & 0x0F, min = 0x800;
  } else if ((c >> 3) == 30) {
    n = 4, cp = c & 0x07, min = 0x10000;
  } else {
    return kInvalidBase + c;
  }
  if (i + n > s.size()) return kInvalidBase + c;
  for (size_t j = 1; j < n; ++j) {
    uint8_t cc = static_cast<uint8_t>(s[i + j]);
    if ((cc & 0xC0) != 0x80) return kInvalidBase + c;
    cp = (cp << 6) | (cc & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return kInvalidBase + c;
  *len = n;
  return cp;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace kvstash::engine
