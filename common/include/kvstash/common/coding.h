// Byte coding of integers, as LevelDB's util/coding.h: the one place that turns integers into the
// bytes of KVStash's formats (object header, SSD index records and name blocks, CacheGen container
// and profile, socket protocols, key hashing) and back.
//
// - Fixed-width integers are little-endian, whatever the host's byte order. Encode* write into a
//   buffer the caller has sized; Decode* read from a buffer the caller has bounds-checked; Put*
//   append to a std::string or byte vector.
// - Varints are LevelDB's: 7 bits a byte, least significant group first, high bit set on every
//   byte but the last; at most 5 bytes for 32 bits, 10 for 64.
// - Get* consume from the front of a std::string_view cursor. They check bounds: on truncated or
//   malformed input they return false and leave the cursor and the output unchanged, so a
//   decoder of untrusted bytes never reads past its input.
// - Big-endian 64-bit is only for keys that must sort by value under bytewise comparison.
//
// All functions are pure (no shared state) and safe to call from any thread.
#ifndef KVSTASH_COMMON_CODING_H_
#define KVSTASH_COMMON_CODING_H_

#include <bit>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvstash {

// --- fixed width into / out of a buffer ----------------------------------------------------------
// The shifts compile to single loads and stores on little-endian hosts (gcc and clang at -O2).

inline void EncodeFixed16(uint8_t* dst, uint16_t value) {
  dst[0] = static_cast<uint8_t>(value);
  dst[1] = static_cast<uint8_t>(value >> 8);
}

inline void EncodeFixed32(uint8_t* dst, uint32_t value) {
  dst[0] = static_cast<uint8_t>(value);
  dst[1] = static_cast<uint8_t>(value >> 8);
  dst[2] = static_cast<uint8_t>(value >> 16);
  dst[3] = static_cast<uint8_t>(value >> 24);
}

inline void EncodeFixed64(uint8_t* dst, uint64_t value) {
  for (int i = 0; i < 8; ++i) dst[i] = static_cast<uint8_t>(value >> (8 * i));
}

inline uint16_t DecodeFixed16(const uint8_t* src) {
  return static_cast<uint16_t>(uint16_t{src[0]} | (uint16_t{src[1]} << 8));
}

inline uint32_t DecodeFixed32(const uint8_t* src) {
  return uint32_t{src[0]} | (uint32_t{src[1]} << 8) | (uint32_t{src[2]} << 16) |
         (uint32_t{src[3]} << 24);
}

inline uint64_t DecodeFixed64(const uint8_t* src) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{src[i]} << (8 * i);
  return v;
}

// char overloads for std::string-backed buffers.
inline void EncodeFixed16(char* dst, uint16_t v) {
  EncodeFixed16(reinterpret_cast<uint8_t*>(dst), v);
}
inline void EncodeFixed32(char* dst, uint32_t v) {
  EncodeFixed32(reinterpret_cast<uint8_t*>(dst), v);
}
inline void EncodeFixed64(char* dst, uint64_t v) {
  EncodeFixed64(reinterpret_cast<uint8_t*>(dst), v);
}
inline uint16_t DecodeFixed16(const char* src) {
  return DecodeFixed16(reinterpret_cast<const uint8_t*>(src));
}
inline uint32_t DecodeFixed32(const char* src) {
  return DecodeFixed32(reinterpret_cast<const uint8_t*>(src));
}
inline uint64_t DecodeFixed64(const char* src) {
  return DecodeFixed64(reinterpret_cast<const uint8_t*>(src));
}

// Big-endian, so that bytewise order is numeric order (SSD index keys).
inline void EncodeBigEndian64(uint8_t* dst, uint64_t value) {
  for (int i = 0; i < 8; ++i) dst[i] = static_cast<uint8_t>(value >> (8 * (7 - i)));
}
inline uint64_t DecodeBigEndian64(const uint8_t* src) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | src[i];
  return v;
}

// --- floating point as its IEEE-754 bits ---------------------------------------------------------
inline uint32_t FloatToBits(float f) { return std::bit_cast<uint32_t>(f); }
inline float FloatFromBits(uint32_t bits) { return std::bit_cast<float>(bits); }
inline uint64_t DoubleToBits(double d) { return std::bit_cast<uint64_t>(d); }
inline double DoubleFromBits(uint64_t bits) { return std::bit_cast<double>(bits); }

// --- appending -----------------------------------------------------------------------------------
void PutFixed16(std::string* dst, uint16_t value);
void PutFixed32(std::string* dst, uint32_t value);
void PutFixed64(std::string* dst, uint64_t value);
void PutFixed16(std::vector<uint8_t>* dst, uint16_t value);
void PutFixed32(std::vector<uint8_t>* dst, uint32_t value);
void PutFixed64(std::vector<uint8_t>* dst, uint64_t value);
void PutBigEndian64(std::string* dst, uint64_t value);

// --- varints -------------------------------------------------------------------------------------
inline constexpr int kMaxVarint32Bytes = 5;
inline constexpr int kMaxVarint64Bytes = 10;

// Bytes the varint encoding of `value` takes (1..10).
int VarintLength(uint64_t value);

// Write the varint of `value` at `dst`, which has room for kMaxVarint{32,64}Bytes; return the
// byte after the last one written.
uint8_t* EncodeVarint32(uint8_t* dst, uint32_t value);
uint8_t* EncodeVarint64(uint8_t* dst, uint64_t value);

void PutVarint32(std::string* dst, uint32_t value);
void PutVarint64(std::string* dst, uint64_t value);

// Parse a varint from [p, limit). Return the byte after it, or nullptr when the input ends inside
// the varint or the varint is longer than its type allows (a 32-bit varint of more than 5 bytes or
// over 32 bits, a 64-bit one of more than 10 bytes or over 64 bits).
const uint8_t* GetVarint32Ptr(const uint8_t* p, const uint8_t* limit, uint32_t* value);
const uint8_t* GetVarint64Ptr(const uint8_t* p, const uint8_t* limit, uint64_t* value);

// --- bounds-checked cursor over a string_view ----------------------------------------------------
// Each consumes its field from the front of *input and returns true, or returns false and changes
// nothing when *input is too short (or, for varints, malformed).
bool GetFixed8(std::string_view* input, uint8_t* value);
bool GetFixed16(std::string_view* input, uint16_t* value);
bool GetFixed32(std::string_view* input, uint32_t* value);
bool GetFixed64(std::string_view* input, uint64_t* value);
bool GetVarint32(std::string_view* input, uint32_t* value);
bool GetVarint64(std::string_view* input, uint64_t* value);
// The next n bytes, as a view into the same storage as *input.
bool GetBytes(std::string_view* input, size_t n, std::string_view* bytes);

}  // namespace kvstash

#endif  // KVSTASH_COMMON_CODING_H_
