// GGUF (v2/v3) container reader: metadata key/values and tensor descriptors.
//
// The file is memory-mapped read-only; tensor data pointers stay valid for the GgufFile's
// lifetime. Parsing treats every byte as untrusted: every length, count, offset and dimension is
// bounds-checked against the file, and anything malformed yields InvalidArgument (never a read
// past the mapping). Nested arrays are rejected (InvalidArgument). A GgufFile is immutable after
// Open/Parse and may be read from any number of threads.
#ifndef KVSTASH_ENGINE_GGUF_H_
#define KVSTASH_ENGINE_GGUF_H_

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvstash/common/status.h"
#include "kvstash/engine/weights.h"

namespace kvstash::engine {

enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// One metadata value. Scalars: integers in `i` (u64 values above INT64_MAX are rejected), floats
// in `f`, bools in `i` (0/1), strings in `s`. Arrays: `elem_type` and either `strings` or `nums`.
struct GgufValue {
  GgufValueType type = GgufValueType::kUint8;
  GgufValueType elem_type = GgufValueType::kUint8;
  int64_t i = 0;
  double f = 0;
  std::string s;
  std::vector<std::string> strings;
  std::vector<double> nums;  // numeric and bool arrays (exact for |v| < 2^53)
};

struct GgufTensor {
  std::string name;
  std::vector<uint64_t> dims;  // dims[0] is the innermost (contiguous) dimension
  GgmlType type = GgmlType::kF32;
  uint32_t raw_type = 0;  // the type id as stored (meaningful when type is kUnsupported)
  const uint8_t* data = nullptr;
  uint64_t bytes = 0;  // 0 for unsupported types
};

class GgufFile {
 public:
  // Maps and parses `path`. NotFound when the file does not exist, InvalidArgument when it is not
  // a well-formed GGUF file.
  static Result<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Parses bytes owned by the caller, who keeps them alive as long as the GgufFile.
  static Result<std::unique_ptr<GgufFile>> Parse(std::span<const uint8_t> bytes);

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  std::span<const uint8_t> bytes() const { return bytes_; }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const std::vector<GgufTensor>& tensors() const { return tensors_; }

  // nullptr when absent.
  const GgufValue* Find(const std::string& key) const;
  const GgufTensor* FindTensor(const std::string& name) const;

  // Typed getters: NotFound when absent, InvalidArgument when the stored type does not convert
  // (integers must fit the target; floats accept any numeric type).
  Result<std::string> GetString(const std::string& key) const;
  Result<uint32_t> GetU32(const std::string& key) const;
  Result<float> GetF32(const std::string& key) const;
  Result<bool> GetBool(const std::string& key) const;
  Result<const std::vector<std::string>*> GetStringArray(const std::string& key) const;
  Result<const std::vector<double>*> GetNumArray(const std::string& key) const;

 private:
  GgufFile() = default;
  Status ParseAll();

  std::unique_ptr<class MappedFile> file_;  // null when parsing caller-owned bytes
  std::span<const uint8_t> bytes_;
  uint32_t version_ = 0;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_GGUF_H_
