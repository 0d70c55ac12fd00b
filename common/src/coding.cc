#include "kvstash/common/coding.h"

namespace kvstash {
namespace {

template <typename Buffer>
void AppendFixed(Buffer* dst, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) {
    dst->push_back(static_cast<typename Buffer::value_type>(value >> (8 * i)));
  }
}

const uint8_t* Begin(std::string_view s) { return reinterpret_cast<const uint8_t*>(s.data()); }

}  // namespace

void PutFixed16(std::string* dst, uint16_t value) { AppendFixed(dst, value, 2); }
void PutFixed32(std::string* dst, uint32_t value) { AppendFixed(dst, value, 4); }
void PutFixed64(std::string* dst, uint64_t value) { AppendFixed(dst, value, 8); }
void PutFixed16(std::vector<uint8_t>* dst, uint16_t value) { AppendFixed(dst, value, 2); }
void PutFixed32(std::vector<uint8_t>* dst, uint32_t value) { AppendFixed(dst, value, 4); }
void PutFixed64(std::vector<uint8_t>* dst, uint64_t value) { AppendFixed(dst, value, 8); }

void PutBigEndian64(std::string* dst, uint64_t value) {
  uint8_t buf[8];
  EncodeBigEndian64(buf, value);
  dst->append(reinterpret_cast<const char*>(buf), sizeof(buf));
}

int VarintLength(uint64_t value) {
  int len = 1;
  while (value >= 0x80) {
    value >>= 7;
    ++len;
  }
  return len;
}

uint8_t* EncodeVarint64(uint8_t* dst, uint64_t value) {
  while (value >= 0x80) {
    *dst++ = static_cast<uint8_t>(value | 0x80);
    value >>= 7;
  }
  *dst++ = static_cast<uint8_t>(value);
  return dst;
}

uint8_t* EncodeVarint32(uint8_t* dst, uint32_t value) { return EncodeVarint64(dst, value); }

void PutVarint32(std::string* dst, uint32_t value) { PutVarint64(dst, value); }

void PutVarint64(std::string* dst, uint64_t value) {
  uint8_t buf[kMaxVarint64Bytes];
  uint8_t* end = EncodeVarint64(buf, value);
  dst->append(reinterpret_cast<const char*>(buf), static_cast<size_t>(end - buf));
}

const uint8_t* GetVarint64Ptr(const uint8_t* p, const uint8_t* limit, uint64_t* value) {
  uint64_t result = 0;
  for (int shift = 0; shift <= 63 && p < limit; shift += 7) {
    const uint64_t byte = *p++;
    // The 10th byte holds bit 63 only; anything more would not fit.
    if (shift == 63 && byte > 1) return nullptr;
    result |= (byte & 0x7F) << shift;
    if ((byte & 0x80) == 0) {
      *value = result;
      return p;
    }
  }
  return nullptr;
}

const uint8_t* GetVarint32Ptr(const uint8_t* p, const uint8_t* limit, uint32_t* value) {
  uint32_t result = 0;
  for (int shift = 0; shift <= 28 && p < limit; shift += 7) {
    const uint32_t byte = *p++;
    // The 5th byte holds bits 28..31 only.
    if (shift == 28 && byte > 0x0F) return nullptr;
    result |= (byte & 0x7F) << shift;
    if ((byte & 0x80) == 0) {
      *value = result;
      return p;
    }
  }
  return nullptr;
}

bool GetFixed8(std::string_view* input, uint8_t* value) {
  if (input->empty()) return false;
  *value = Begin(*input)[0];
  input->remove_prefix(1);
  return true;
}

bool GetFixed16(std::string_view* input, uint16_t* value) {
  if (input->size() < 2) return false;
  *value = DecodeFixed16(Begin(*input));
  input->remove_prefix(2);
  return true;
}

bool GetFixed32(std::string_view* input, uint32_t* value) {
  if (input->size() < 4) return false;
  *value = DecodeFixed32(Begin(*input));
  input->remove_prefix(4);
  return true;
}

bool GetFixed64(std::string_view* input, uint64_t* value) {
  if (input->size() < 8) return false;
  *value = DecodeFixed64(Begin(*input));
  input->remove_prefix(8);
  return true;
}

bool GetVarint32(std::string_view* input, uint32_t* value) {
  const uint8_t* p = Begin(*input);
  const uint8_t* q = GetVarint32Ptr(p, p + input->size(), value);
  if (q == nullptr) return false;
  input->remove_prefix(static_cast<size_t>(q - p));
  return true;
}

bool GetVarint64(std::string_view* input, uint64_t* value) {
  const uint8_t* p = Begin(*input);
  const uint8_t* q = GetVarint64Ptr(p, p + input->size(), value);
  if (q == nullptr) return false;
  input->remove_prefix(static_cast<size_t>(q - p));
  return true;
}

bool GetBytes(std::string_view* input, size_t n, std::string_view* bytes) {
  if (input->size() < n) return false;
  *bytes = input->substr(0, n);
  input->remove_prefix(n);
  return true;
}

}  // namespace kvstash
