#include "kvstash/common/object_header.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "kvstash/common/crc32c.h"

namespace kvstash {
namespace {

constexpr uint8_t kMagic[4] = {'K', 'V', 'S', 'O'};
constexpr size_t kHeaderCrcOffset = 60;

template <typename T>
void Put(uint8_t* out, size_t offset, T value) {
  for (size_t i = 0; i < sizeof(T); ++i) {
    out[offset + i] = static_cast<uint8_t>((static_cast<uint64_t>(value) >> (8 * i)) & 0xFF);
  }
}

template <typename T>
T Get(const uint8_t* in, size_t offset) {
  uint64_t v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<uint64_t>(in[offset + i]) << (8 * i);
  return static_cast<T>(v);
}

}  // namespace

Result<std::array<uint8_t, kObjectHeaderBytes>> EncodeObjectHeader(const ObjectInfo& info) {
  KVSTASH_RETURN_IF_ERROR(info.Validate());
  const KvLayout& l = info.layout;
  if (l.head_end > 0xFFFF || l.total_kv_heads > 0xFFFF || l.head_dim > 0xFFFF) {
    return absl::InvalidArgumentError("head fields exceed 16 bits");
  }
  std::array<uint8_t, kObjectHeaderBytes> out{};
  uint8_t* p = out.data();
  std::memcpy(p, kMagic, 4);
  Put<uint16_t>(p, 4, kObjectFormatVersion);
  Put<uint16_t>(p, 6, kObjectHeaderBytes);
  Put<uint32_t>(p, 8, l.num_layers);
  Put<uint32_t>(p, 12, l.layer_begin);
  Put<uint16_t>(p, 16, static_cast<uint16_t>(l.head_begin));
  Put<uint16_t>(p, 18, static_cast<uint16_t>(l.head_end));
  Put<uint16_t>(p, 20, static_cast<uint16_t>(l.total_kv_heads));
  Put<uint16_t>(p, 22, static_cast<uint16_t>(l.head_dim));
  p[24] = static_cast<uint8_t>(l.dtype);
  p[25] = static_cast<uint8_t>(l.rope);
  p[26] = static_cast<uint8_t>(info.encoding);
  p[27] = info.encoding_level;
  Put<uint32_t>(p, 28, l.num_tokens);
  Put<uint64_t>(p, 32, static_cast<uint64_t>(l.position_start));
  uint32_t theta_bits;
  std::memcpy(&theta_bits, &l.rope_theta, 4);
  Put<uint32_t>(p, 40, theta_bits);
  Put<uint32_t>(p, 44, l.rotary_dim);
  Put<uint64_t>(p, 48, info.payload_bytes);
  Put<uint32_t>(p, 56, info.payload_crc32c);
  Put<uint32_t>(p, kHeaderCrcOffset, Crc32c(p, kHeaderCrcOffset));
  return out;
}

Result<ObjectInfo> DecodeObjectHeader(std::span<const uint8_t> bytes) {
  if (bytes.size() < kObjectHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("object header needs ", kObjectHeaderBytes, " bytes, got ", bytes.size()));
  }
  const uint8_t* p = bytes.data();
  if (std::memcmp(p, kMagic, 4) != 0)
    return absl::InvalidArgumentError("not a KVStash object (bad magic)");
  uint16_t version = Get<uint16_t>(p, 4);
  if (version != kObjectFormatVersion) {
    return absl::InvalidArgumentError(absl::StrCat("unsupported object format version ", version));
  }
  if (Get<uint16_t>(p, 6) != kObjectHeaderBytes)
    return absl::InvalidArgumentError("bad header length");
  if (Get<uint32_t>(p, kHeaderCrcOffset) != Crc32c(p, kHeaderCrcOffset)) {
    return absl::DataLossError("object header checksum mismatch");
  }
  ObjectInfo info;
  KvLayout& l = info.layout;
  l.num_layers = Get<uint32_t>(p, 8);
  l.layer_begin = Get<uint32_t>(p, 12);
  l.head_begin = Get<uint16_t>(p, 16);
  l.head_end = Get<uint16_t>(p, 18);
  l.total_kv_heads = Get<uint16_t>(p, 20);
  l.head_dim = Get<uint16_t>(p, 22);
  l.dtype = static_cast<DType>(p[24]);
  l.rope = static_cast<RopeConvention>(p[25]);
  info.encoding = static_cast<Encoding>(p[26]);
  info.encoding_level = p[27];
  l.num_tokens = Get<uint32_t>(p, 28);
  l.position_start = static_cast<int64_t>(Get<uint64_t>(p, 32));
  uint32_t theta_bits = Get<uint32_t>(p, 40);
  std::memcpy(&l.rope_theta, &theta_bits, 4);
  l.rotary_dim = Get<uint32_t>(p, 44);
  info.payload_bytes = Get<uint64_t>(p, 48);
  info.payload_crc32c = Get<uint32_t>(p, 56);
  KVSTASH_RETURN_IF_ERROR(info.Validate());
  return info;
}

}  // namespace kvstash
