// Read-only memory mapping of a whole file (private to the engine).
#ifndef KVSTASH_ENGINE_SRC_MAPPED_FILE_H_
#define KVSTASH_ENGINE_SRC_MAPPED_FILE_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "kvstash/common/status.h"

namespace kvstash::engine {

class MappedFile {
 public:
  // NotFound when the file is missing, InvalidArgument when empty, Internal for mmap failures.
  static Result<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const uint8_t> bytes() const { return {data_, size_}; }

 private:
  MappedFile(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  const uint8_t* data_;
  size_t size_;
};

// sha256 of the file's bytes as 64 lowercase hex digits.
std::string Sha256Hex(std::span<const uint8_t> bytes);

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_SRC_MAPPED_FILE_H_
