#include "kvstash/codec/object_file.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/common/object_header.h"

namespace kvstash::codec {
namespace {

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};
using FilePtr = std::unique_ptr<FILE, FileCloser>;

}  // namespace

Result<ObjectFile> ReadObjectFile(const std::string& path) {
  FilePtr f(std::fopen(path.c_str(), "rb"));
  if (!f) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", std::strerror(errno)));
  }
  uint8_t header[kObjectHeaderBytes];
  if (std::fread(header, 1, sizeof(header), f.get()) != sizeof(header)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": shorter than an object header"));
  }
  auto info = DecodeObjectHeader(header);
  if (!info.ok()) {
    return absl::Status(info.status().code(),
                        absl::StrCat(path, ": ", std::string(info.status().message())));
  }
  // Check the size before allocating what an untrusted header claims.
  if (fseeko(f.get(), 0, SEEK_END) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not seekable"));
  }
  const off_t file_size = ftello(f.get());
  if (file_size < 0 ||
      static_cast<uint64_t>(file_size) != kObjectHeaderBytes + info->payload_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": file has ", file_size,
                                                   " bytes, header announces ",
                                                   kObjectHeaderBytes + info->payload_bytes));
  }
  if (fseeko(f.get(), kObjectHeaderBytes, SEEK_SET) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not seekable"));
  }
  ObjectFile out;
  out.info = *info;
  out.payload.resize(info->payload_bytes);
  if (std::fread(out.payload.data(), 1, out.payload.size(), f.get()) != out.payload.size()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": payload truncated"));
  }
  if (Crc32c(out.payload.data(), out.payload.size()) != info->payload_crc32c) {
    return absl::DataLossError(absl::StrCat(path, ": payload checksum mismatch"));
  }
  return out;
}

Status WriteObjectFile(const std::string& path, ObjectInfo info, std::span<const uint8_t> payload) {
  info.payload_bytes = payload.size();
  info.payload_crc32c = Crc32c(payload.data(), payload.size());
  KVSTASH_ASSIGN_OR_RETURN(auto header, EncodeObjectHeader(info));
  FilePtr f(std::fopen(path.c_str(), "wb"));
  if (!f) return absl::InvalidArgumentError(absl::StrCat(path, ": ", std::strerror(errno)));
  if (std::fwrite(header.data(), 1, header.size(), f.get()) != header.size() ||
      std::fwrite(payload.data(), 1, payload.size(), f.get()) != payload.size()) {
    return absl::ResourceExhaustedError(absl::StrCat(path, ": write failed"));
  }
  if (std::fflush(f.get()) != 0) {
    return absl::ResourceExhaustedError(absl::StrCat(path, ": write failed"));
  }
  return OkStatus();
}

}  // namespace kvstash::codec
