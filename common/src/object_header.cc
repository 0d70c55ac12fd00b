#include "kvstash/common/object_header.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "kvstash/common/coding.h"
#include "kvstash/common/crc32c.h"

namespace kvstash {
namespace {

constexpr uint8_t kMagic[4] = {'K', 'V', 'S', 'O'};
constexpr size_t kHeaderCrcOffset = 60;

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
  EncodeFixed16(p + 4, kObjectFormatVersion);
  EncodeFixed16(p + 6, kObjectHeaderBytes);
  EncodeFixed32(p + 8, l.num_layers);
  EncodeFixed32(p + 12, l.layer_begin);
  EncodeFixed16(p + 16, static_cast<uint16_t>(l.head_begin));
  EncodeFixed16(p + 18, static_cast<uint16_t>(l.head_end));
  EncodeFixed16(p + 20, static_cast<uint16_t>(l.total_kv_heads));
  EncodeFixed16(p + 22, static_cast<uint16_t>(l.head_dim));
  p[24] = static_cast<uint8_t>(l.dtype);
  p[25] = static_cast<uint8_t>(l.rope);
  p[26] = static_cast<uint8_t>(info.encoding);
  p[27] = info.encoding_level;
  EncodeFixed32(p + 28, l.num_tokens);
  EncodeFixed64(p + 32, static_cast<uint64_t>(l.position_start));
  EncodeFixed32(p + 40, FloatToBits(l.rope_theta));
  EncodeFixed32(p + 44, l.rotary_dim);
  EncodeFixed64(p + 48, info.payload_bytes);
  EncodeFixed32(p + 56, info.payload_crc32c);
  EncodeFixed32(p + kHeaderCrcOffset, Crc32c(p, kHeaderCrcOffset));
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
  uint16_t version = DecodeFixed16(p + 4);
  if (version != kObjectFormatVersion) {
    return absl::InvalidArgumentError(absl::StrCat("unsupported object format version ", version));
  }
  if (DecodeFixed16(p + 6) != kObjectHeaderBytes)
    return absl::InvalidArgumentError("bad header length");
  if (DecodeFixed32(p + kHeaderCrcOffset) != Crc32c(p, kHeaderCrcOffset)) {
    return absl::DataLossError("object header checksum mismatch");
  }
  ObjectInfo info;
  KvLayout& l = info.layout;
  l.num_layers = DecodeFixed32(p + 8);
  l.layer_begin = DecodeFixed32(p + 12);
  l.head_begin = DecodeFixed16(p + 16);
  l.head_end = DecodeFixed16(p + 18);
  l.total_kv_heads = DecodeFixed16(p + 20);
  l.head_dim = DecodeFixed16(p + 22);
  l.dtype = static_cast<DType>(p[24]);
  l.rope = static_cast<RopeConvention>(p[25]);
  info.encoding = static_cast<Encoding>(p[26]);
  info.encoding_level = p[27];
  l.num_tokens = DecodeFixed32(p + 28);
  l.position_start = static_cast<int64_t>(DecodeFixed64(p + 32));
  l.rope_theta = FloatFromBits(DecodeFixed32(p + 40));
  l.rotary_dim = DecodeFixed32(p + 44);
  info.payload_bytes = DecodeFixed64(p + 48);
  info.payload_crc32c = DecodeFixed32(p + 56);
  KVSTASH_RETURN_IF_ERROR(info.Validate());
  return info;
}

}  // namespace kvstash
