// The little Unicode the tokenizers need: UTF-8 decoding and the character classes of the
// GPT-2 pre-tokenizer split (letters L*, numbers N*, White_Space).
#ifndef KVSTASH_ENGINE_SRC_UNICODE_H_
#define KVSTASH_ENGINE_SRC_UNICODE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvstash::engine {

enum class CharClass { kLetter, kNumber, kSpace, kOther };

// Code points at and above this mark a malformed UTF-8 byte (kInvalidBase + byte).
inline constexpr uint32_t kInvalidBase = 0x110000;

CharClass Classify(uint32_t cp);

// Decodes the character at s[i] (i < s.size()); *len gets its byte length. A malformed or
// overlong sequence, a surrogate or a stray continuation byte decodes as one byte,
// kInvalidBase + byte.
uint32_t DecodeUtf8(std::string_view s, size_t i, size_t* len);

// Appends the UTF-8 encoding of a valid code point.
void AppendUtf8(uint32_t cp, std::string* out);

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_SRC_UNICODE_H_
