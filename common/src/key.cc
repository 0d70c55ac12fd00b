#include "kvstash/common/key.h"

#include "absl/strings/str_cat.h"
#include "kvstash/common/coding.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kvstash {
namespace {

// Builds the byte string a hash is taken over, explicitly little-endian.
class HashInput {
 public:
  explicit HashInput(const char (&tag)[9]) { bytes_.append(tag, 8); }
  void U32(uint32_t v) { PutFixed32(&bytes_, v); }
  void U64(uint64_t v) { PutFixed64(&bytes_, v); }
  void Hash(const Hash128& h) {
    U64(h.lo);
    U64(h.hi);
  }
  void String(std::string_view s) {
    U32(static_cast<uint32_t>(s.size()));
    bytes_.append(s);
  }
  void Tokens(std::span<const uint32_t> tokens) {
    bytes_.reserve(bytes_.size() + tokens.size() * 4);
    for (uint32_t t : tokens) U32(t);
  }
  Hash128 Digest() const {
    XXH128_hash_t h = XXH3_128bits(bytes_.data(), bytes_.size());
    return Hash128{h.low64, h.high64};
  }

 private:
  std::string bytes_;
};

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::array<uint8_t, 16> Hash128::Bytes() const {
  std::array<uint8_t, 16> out{};
  EncodeFixed64(out.data(), lo);
  EncodeFixed64(out.data() + 8, hi);
  return out;
}

Result<Hash128> Hash128::FromBytes(std::string_view bytes) {
  if (bytes.size() != 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("a 128-bit hash is 16 bytes, got ", bytes.size()));
  }
  return Hash128{DecodeFixed64(bytes.data()), DecodeFixed64(bytes.data() + 8)};
}

std::string Hash128::ToHex() const {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(32);
  for (uint8_t b : Bytes()) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0xF]);
  }
  return out;
}

Result<Hash128> Hash128::FromHex(std::string_view hex) {
  if (hex.size() != 32) return absl::InvalidArgumentError("a 128-bit key is 32 hex digits");
  std::string bytes(16, '\0');
  for (size_t i = 0; i < 16; ++i) {
    int a = HexValue(hex[2 * i]);
    int b = HexValue(hex[2 * i + 1]);
    if (a < 0 || b < 0) return absl::InvalidArgumentError("key has a non-hex digit");
    bytes[i] = static_cast<char>((a << 4) | b);
  }
  return FromBytes(bytes);
}

Hash128 ChainTokenHash(const Hash128& parent, std::span<const uint32_t> tokens) {
  HashInput in("KVS1PFX\0");
  in.Hash(parent);
  in.Tokens(tokens);
  return in.Digest();
}

Hash128 IndependentTokenHash(std::span<const uint32_t> tokens) {
  HashInput in("KVS1IND\0");
  in.Tokens(tokens);
  return in.Digest();
}

Hash128 ChunkVariantHash(const Hash128& chunk_hash, uint32_t slot, uint32_t part) {
  HashInput in("KVS1VAR\0");
  in.Hash(chunk_hash);
  in.U32(slot);
  in.U32(part);
  return in.Digest();
}

std::vector<Hash128> ChunkTokenHashes(std::span<const uint32_t> tokens, size_t chunk_tokens,
                                      TokenHashMode mode, bool include_partial) {
  std::vector<Hash128> out;
  if (chunk_tokens == 0) return out;
  Hash128 parent;
  for (size_t begin = 0; begin < tokens.size(); begin += chunk_tokens) {
    size_t len = std::min(chunk_tokens, tokens.size() - begin);
    if (len < chunk_tokens && !include_partial) break;
    auto chunk = tokens.subspan(begin, len);
    Hash128 h = mode == TokenHashMode::kPrefixChained ? ChainTokenHash(parent, chunk)
                                                      : IndependentTokenHash(chunk);
    out.push_back(h);
    parent = h;
  }
  return out;
}

Hash128 ModelFingerprint(const ModelSpec& spec) {
  HashInput in("KVS1MDL\0");
  in.String(spec.model_id);
  in.String(spec.weights_revision);
  in.U32(static_cast<uint32_t>(spec.dtype));
  in.U32(spec.num_layers);
  in.U32(spec.layer_begin);
  in.U32(spec.layer_end);
  in.U32(spec.total_kv_heads);
  in.U32(spec.head_begin);
  in.U32(spec.head_end);
  in.U32(spec.head_dim);
  in.U32(static_cast<uint32_t>(spec.rope));
  in.U32(FloatToBits(spec.rope_theta));
  return in.Digest();
}

Hash128 ObjectKey(std::string_view name_space, const Hash128& model_fingerprint,
                  const Hash128& token_hash) {
  HashInput in("KVS1KEY\0");
  in.String(name_space);
  in.Hash(model_fingerprint);
  in.Hash(token_hash);
  return in.Digest();
}

}  // namespace kvstash
