// How `kvstash put/get` turn user-facing keys and arbitrary files into stored objects
// (docs/cli.md is the user-facing description of the same rules).
//
// Keys. "FP/TH" (two 32-digit hex Hash128s) names an object exactly: model fingerprint and token
// hash, as `kvstash ls` prints them. Any other KEY is a name: the token hash is the
// position-independent token hash (common/key.h) of the name's UTF-8 bytes taken as u32 tokens,
// under the model fingerprint of ModelSpec{model_id = --model} (default "kvstash-cli").
//
// Files. A file that is already an object (64-byte header per common/object_header.h, then exactly
// payload_bytes of payload whose crc32c matches) is stored with its own layout. Anything else is
// wrapped in a "file layout": raw f16, 1 KV head of dim 64 (256 bytes per token and layer), as
// many tokens (and layers, past 2^20 tokens) as it takes to hold
//   file bytes || zero padding || "KVSCLIF1" || u64 LE file length
// Unwrap reverses it; an object that is not a valid wrapping is written as header + payload.
#ifndef KVSTASH_CLI_FILE_OBJECT_H_
#define KVSTASH_CLI_FILE_OBJECT_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvstash/common/layout.h"
#include "kvstash/common/object_name.h"
#include "kvstash/common/status.h"

namespace kvstash::cli {

inline constexpr char kDefaultCliModel[] = "kvstash-cli";
inline constexpr size_t kFileTrailerBytes = 16;

// InvalidArgument for a malformed "FP/TH" key or an empty key.
Result<ObjectName> ParseUserKey(const std::string& key, const std::string& name_space,
                                const std::string& model);
// "FP/TH" text of a stored name.
std::string FormatUserKey(const ObjectName& name);

struct FileObject {
  ObjectInfo info;  // payload_crc32c filled in
  std::vector<uint8_t> payload;
  bool wrapped = false;  // false: the file was an object and keeps its own layout
};

// Turns file bytes into an object. `force_wrap` wraps even a file that is an object.
// InvalidArgument when a file looks like an object (valid header) but its size or payload
// checksum disagree with the header, or when it is too large to wrap (kMaxObjectBytes).
Result<FileObject> FileToObject(std::vector<uint8_t> bytes, bool force_wrap);

// The layout of the file wrapping of `file_bytes` bytes (payload size included).
Result<ObjectInfo> WrappedInfo(uint64_t file_bytes);

// True when (info, payload) is a valid file wrapping; then `*file_bytes` is the original length.
bool IsWrappedFile(const ObjectInfo& info, std::span<const uint8_t> payload, uint64_t* file_bytes);

// The bytes `kvstash get` writes: the original file for a wrapping (unless `raw`), else the
// object file format (64-byte header + payload).
Result<std::vector<uint8_t>> ObjectToFile(const ObjectInfo& info, std::span<const uint8_t> payload,
                                          bool raw);

}  // namespace kvstash::cli

#endif  // KVSTASH_CLI_FILE_OBJECT_H_
