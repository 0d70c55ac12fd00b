// Object files: the 64-byte object header (common/object_header.h) followed by the payload. Used
// for KV dumps (raw payload) and encoded chunks (CacheGen container payload) by the CLI, the
// evaluation driver and tests.
#ifndef KVSTASH_CODEC_OBJECT_FILE_H_
#define KVSTASH_CODEC_OBJECT_FILE_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"

namespace kvstash::codec {

struct ObjectFile {
  ObjectInfo info;
  std::vector<uint8_t> payload;
};

// Reads and verifies a file: header checks, payload length == info.payload_bytes and payload
// crc32c. NotFound if the file does not exist, InvalidArgument/DataLoss for bad contents.
Result<ObjectFile> ReadObjectFile(const std::string& path);

// Writes header + payload; info.payload_bytes and payload_crc32c are filled in from `payload`.
Status WriteObjectFile(const std::string& path, ObjectInfo info, std::span<const uint8_t> payload);

}  // namespace kvstash::codec

#endif  // KVSTASH_CODEC_OBJECT_FILE_H_
