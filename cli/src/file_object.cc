#include "file_object.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "kvstash/common/coding.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/common/key.h"
#include "kvstash/common/object_header.h"

namespace kvstash::cli {
namespace {

constexpr char kTrailerMagic[8] = {'K', 'V', 'S', 'C', 'L', 'I', 'F', '1'};
constexpr uint32_t kWrapHeadDim = 64;
constexpr uint64_t kWrapBytesPerToken = 2 * kWrapHeadDim * 2;  // K and V, f16

}  // namespace

Result<ObjectName> ParseUserKey(const std::string& key, const std::string& name_space,
                                const std::string& model) {
  if (key.empty()) return absl::InvalidArgumentError("empty key");
  if (name_space.size() > kMaxNamespaceBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("namespace longer than ", kMaxNamespaceBytes, " bytes"));
  }
  size_t slash = key.find('/');
  if (key.size() == 65 && slash == 32) {
    auto fp = Hash128::FromHex(key.substr(0, 32));
    auto th = Hash128::FromHex(key.substr(33));
    if (!fp.ok() || !th.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("key '", key, "' looks like FP/TH but is not 32+32 hex digits"));
    }
    return MakeObjectName(name_space, *fp, *th);
  }
  std::vector<uint32_t> tokens(key.begin(), key.end());
  for (uint32_t& t : tokens) t &= 0xFF;  // bytes, whatever the signedness of char
  ModelSpec spec;
  spec.model_id = model;
  return MakeObjectName(name_space, ModelFingerprint(spec), IndependentTokenHash(tokens));
}

std::string FormatUserKey(const ObjectName& name) {
  return absl::StrCat(name.model_fingerprint.ToHex(), "/", name.token_hash.ToHex());
}

Result<ObjectInfo> WrappedInfo(uint64_t file_bytes) {
  if (file_bytes > kMaxObjectBytes - kFileTrailerBytes - kWrapBytesPerToken) {
    return absl::InvalidArgumentError(
        absl::StrCat("file of ", file_bytes, " bytes is larger than an object can be"));
  }
  uint64_t units = (file_bytes + kFileTrailerBytes + kWrapBytesPerToken - 1) / kWrapBytesPerToken;
  uint64_t layers = (units + kMaxTokensPerObject - 1) / kMaxTokensPerObject;
  uint64_t tokens = (units + layers - 1) / layers;
  ObjectInfo info;
  info.layout.num_layers = static_cast<uint32_t>(layers);
  info.layout.total_kv_heads = 1;
  info.layout.head_begin = 0;
  info.layout.head_end = 1;
  info.layout.head_dim = kWrapHeadDim;
  info.layout.dtype = DType::kF16;
  info.layout.num_tokens = static_cast<uint32_t>(tokens);
  info.encoding = Encoding::kRaw;
  info.payload_bytes = info.layout.RawBytes();
  KVSTASH_RETURN_IF_ERROR(info.Validate());
  return info;
}

bool IsWrappedFile(const ObjectInfo& info, std::span<const uint8_t> payload, uint64_t* file_bytes) {
  if (info.encoding != Encoding::kRaw || info.layout.total_kv_heads != 1 ||
      info.layout.head_begin != 0 || info.layout.head_end != 1 ||
      info.layout.head_dim != kWrapHeadDim || info.layout.dtype != DType::kF16 ||
      payload.size() != info.payload_bytes || payload.size() < kFileTrailerBytes) {
    return false;
  }
  const uint8_t* trailer = payload.data() + payload.size() - kFileTrailerBytes;
  if (std::memcmp(trailer, kTrailerMagic, sizeof(kTrailerMagic)) != 0) return false;
  const uint64_t n = DecodeFixed64(trailer + 8);
  if (n > payload.size() - kFileTrailerBytes) return false;
  auto expected = WrappedInfo(n);
  if (!expected.ok() || expected->layout != info.layout) return false;
  *file_bytes = n;
  return true;
}

Result<FileObject> FileToObject(std::vector<uint8_t> bytes, bool force_wrap) {
  FileObject out;
  if (!force_wrap && bytes.size() >= kObjectHeaderBytes) {
    auto header = DecodeObjectHeader(std::span<const uint8_t>(bytes.data(), kObjectHeaderBytes));
    if (header.ok()) {
      uint64_t body = bytes.size() - kObjectHeaderBytes;
      if (body != header->payload_bytes) {
        return absl::InvalidArgumentError(
            absl::StrCat("file has an object header announcing ", header->payload_bytes,
                         " payload bytes but carries ", body, " (use --wrap to store it as is)"));
      }
      uint32_t crc = Crc32c(bytes.data() + kObjectHeaderBytes, body);
      if (crc != header->payload_crc32c) {
        return absl::InvalidArgumentError(
            "file has an object header but its payload fails the crc32c (use --wrap to store it "
            "as is)");
      }
      out.info = *header;
      out.payload.assign(bytes.begin() + kObjectHeaderBytes, bytes.end());
      out.wrapped = false;
      return out;
    }
  }
  KVSTASH_ASSIGN_OR_RETURN(out.info, WrappedInfo(bytes.size()));
  uint64_t n = bytes.size();
  out.payload = std::move(bytes);
  out.payload.resize(out.info.payload_bytes, 0);
  uint8_t* trailer = out.payload.data() + out.payload.size() - kFileTrailerBytes;
  std::memcpy(trailer, kTrailerMagic, sizeof(kTrailerMagic));
  EncodeFixed64(trailer + 8, n);
  out.info.payload_crc32c = Crc32c(out.payload.data(), out.payload.size());
  out.wrapped = true;
  return out;
}

Result<std::vector<uint8_t>> ObjectToFile(const ObjectInfo& info, std::span<const uint8_t> payload,
                                          bool raw) {
  uint64_t file_bytes = 0;
  if (!raw && IsWrappedFile(info, payload, &file_bytes)) {
    return std::vector<uint8_t>(payload.begin(), payload.begin() + file_bytes);
  }
  KVSTASH_ASSIGN_OR_RETURN(auto header, EncodeObjectHeader(info));
  std::vector<uint8_t> out;
  out.reserve(header.size() + payload.size());
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

}  // namespace kvstash::cli
