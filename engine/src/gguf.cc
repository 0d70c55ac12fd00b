#include "kvstash/engine/gguf.h"

#include <cstring>
#include <limits>

#include "mapped_file.h"

namespace kvstash::engine {
namespace {

constexpr uint64_t kMaxTensors = 1u << 20;
constexpr uint64_t kMaxKeyValues = 1u << 20;
constexpr uint32_t kMaxDims = 4;

// Bounds-checked little-endian reader over untrusted bytes.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> bytes) : bytes_(bytes) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return bytes_.size() - pos_; }

  template <typename T>
  Status Read(T* out) {
    if (remaining() < sizeof(T)) return Truncated();
    std::memcpy(out, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return OkStatus();
  }

  Status ReadString(std::string* out) {
    uint64_t len = 0;
    KVSTASH_RETURN_IF_ERROR(Read(&len));
    if (len > remaining()) return Truncated();
    out->assign(reinterpret_cast<const char*>(bytes_.data() + pos_), len);
    pos_ += len;
    return OkStatus();
  }

  Status Skip(uint64_t n) {
    if (n > remaining()) return Truncated();
    pos_ += n;
    return OkStatus();
  }

 private:
  Status Truncated() const {
    return absl::InvalidArgumentError("GGUF: truncated at byte " + std::to_string(pos_) + " of " +
                                      std::to_string(bytes_.size()));
  }
  std::span<const uint8_t> bytes_;
  size_t pos_ = 0;
};

size_t ScalarSize(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
      return 8;
    default:
      return 0;
  }
}

bool IsFloat(GgufValueType t) {
  return t == GgufValueType::kFloat32 || t == GgufValueType::kFloat64;
}

// Reads one numeric/bool scalar as int (integers, bools) or double (floats).
Status ReadNumber(Reader& r, GgufValueType t, int64_t* i, double* f) {
  switch (t) {
    case GgufValueType::kUint8: {
      uint8_t v = 0;
      KVSTASH_RETURN_IF_ERROR(r.Read(&v));
      *i = v;
      break;
    }
    case GgufValueType::kInt8: {
      int8_t v = 0;
      KVSTASH_RETURN_IF_ERROR(r.Read(&v));
      // GGUF's INT8 is a signed integer, not a character: sign extension is what is meant.
      *i = v;  // NOLINT(bugprone-signed-char-misuse)
      break;
    }
    case GgufValueType::kBool: {
      uint8_t v = 0;
      KVSTASH_RETURN_IF_ERROR(r.Read(&v));
      if (v > 1) return absl::InvalidArgumentError("GGUF: bool value not 0 or 1");
      *i = v;
      break;
    }
    case GgufValueType::kUint16: {
      uint16_t v = 0;
      KVSTASH_RETURN_IF_ERROR(r.Read(&v));
      *i = v;
      break;
    }
    case GgufValueType::kInt16: {
      int16_t v = 0;
      KVSTASH_RETURN_IF_ERROR(r.Read(&v));
      *i = v;
      break;
    }
    case GgufValueType::kUint32: {
      uint32_t v = 0;
      KVSTASH_RETURN_IF_ERROR(r.Read(&v));
      *i = v;
      break;
    }
    case GgufValueType::kInt32: {
      int32_t v = 0;
      KVSTASH_RETURN_IF_ERROR(r.Read(&v));
      *i = v;
      break;
    }
    case GgufValueType::kUint64: {
      uint64_t v = 0;
      KVSTASH_RETURN_IF_ERROR(r.Read(&v));
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return absl::InvalidArgumentError("GGUF: u64 value too large");
      }
      *i = static_cast<int64_t>(v);
      break;
    }
    case GgufValueType::kInt64: {
      int64_t v = 0;
      KVSTASH_RETURN_IF_ERROR(r.Read(&v));
      *i = v;
      break;
    }
    case GgufValueType::kFloat32: {
      float v = 0;
      KVSTASH_RETURN_IF_ERROR(r.Read(&v));
      *f = v;
      break;
    }
    case GgufValueType::kFloat64: {
      double v = 0;
      KVSTASH_RETURN_IF_ERROR(r.Read(&v));
      *f = v;
      break;
    }
    default:
      return absl::InvalidArgumentError("GGUF: not a numeric type: " +
                                        std::to_string(static_cast<uint32_t>(t)));
  }
  if (!IsFloat(t)) *f = static_cast<double>(*i);
  return OkStatus();
}

Status ReadValue(Reader& r, GgufValueType type, GgufValue* out) {
  out->type = type;
  if (type == GgufValueType::kString) return r.ReadString(&out->s);
  if (type != GgufValueType::kArray) return ReadNumber(r, type, &out->i, &out->f);
  uint32_t elem = 0;
  uint64_t n = 0;
  KVSTASH_RETURN_IF_ERROR(r.Read(&elem));
  KVSTASH_RETURN_IF_ERROR(r.Read(&n));
  out->elem_type = static_cast<GgufValueType>(elem);
  if (out->elem_type == GgufValueType::kString) {
    if (n > r.remaining() / 8) return absl::InvalidArgumentError("GGUF: array length too large");
    out->strings.resize(n);
    for (auto& s : out->strings) KVSTASH_RETURN_IF_ERROR(r.ReadString(&s));
    return OkStatus();
  }
  if (out->elem_type == GgufValueType::kArray) {
    return absl::InvalidArgumentError("GGUF: nested arrays are not supported");
  }
  size_t size = ScalarSize(out->elem_type);
  if (size == 0) {
    return absl::InvalidArgumentError("GGUF: unknown array element type " + std::to_string(elem));
  }
  if (n > r.remaining() / size) return absl::InvalidArgumentError("GGUF: array length too large");
  out->nums.resize(n);
  for (auto& v : out->nums) {
    int64_t i = 0;
    KVSTASH_RETURN_IF_ERROR(ReadNumber(r, out->elem_type, &i, &v));
  }
  return OkStatus();
}

}  // namespace

GgufFile::~GgufFile() = default;

Result<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  KVSTASH_ASSIGN_OR_RETURN(auto mapped, MappedFile::Open(path));
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->bytes_ = mapped->bytes();
  file->file_ = std::move(mapped);
  Status st = file->ParseAll();
  if (!st.ok()) return absl::InvalidArgumentError(path + ": " + std::string(st.message()));
  return file;
}

Result<std::unique_ptr<GgufFile>> GgufFile::Parse(std::span<const uint8_t> bytes) {
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->bytes_ = bytes;
  KVSTASH_RETURN_IF_ERROR(file->ParseAll());
  return file;
}

Status GgufFile::ParseAll() {
  Reader r(bytes_);
  uint32_t magic = 0;
  KVSTASH_RETURN_IF_ERROR(r.Read(&magic));
  if (magic != 0x46554747u) return absl::InvalidArgumentError("GGUF: bad magic");
  KVSTASH_RETURN_IF_ERROR(r.Read(&version_));
  if (version_ != 2 && version_ != 3) {
    return absl::InvalidArgumentError("GGUF: unsupported version " + std::to_string(version_));
  }
  uint64_t n_tensors = 0, n_kv = 0;
  KVSTASH_RETURN_IF_ERROR(r.Read(&n_tensors));
  KVSTASH_RETURN_IF_ERROR(r.Read(&n_kv));
  if (n_tensors > kMaxTensors || n_kv > kMaxKeyValues) {
    return absl::InvalidArgumentError("GGUF: too many tensors or metadata entries");
  }
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key;
    uint32_t type = 0;
    KVSTASH_RETURN_IF_ERROR(r.ReadString(&key));
    KVSTASH_RETURN_IF_ERROR(r.Read(&type));
    GgufValue value;
    KVSTASH_RETURN_IF_ERROR(ReadValue(r, static_cast<GgufValueType>(type), &value));
    if (!metadata_.emplace(std::move(key), std::move(value)).second) {
      return absl::InvalidArgumentError("GGUF: duplicate metadata key");
    }
  }
  uint64_t alignment = 32;
  if (const GgufValue* a = Find("general.alignment")) {
    if (a->type == GgufValueType::kArray || a->type == GgufValueType::kString || a->i <= 0 ||
        a->i > (1 << 20) || (a->i & (a->i - 1)) != 0) {
      return absl::InvalidArgumentError("GGUF: general.alignment must be a power of two");
    }
    alignment = static_cast<uint64_t>(a->i);
  }
  std::vector<uint64_t> offsets;
  tensors_.resize(n_tensors);
  offsets.resize(n_tensors);
  for (uint64_t t = 0; t < n_tensors; ++t) {
    GgufTensor& tensor = tensors_[t];
    KVSTASH_RETURN_IF_ERROR(r.ReadString(&tensor.name));
    uint32_t n_dims = 0;
    KVSTASH_RETURN_IF_ERROR(r.Read(&n_dims));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return absl::InvalidArgumentError("GGUF: tensor " + tensor.name + " has " +
                                        std::to_string(n_dims) + " dimensions");
    }
    tensor.dims.resize(n_dims);
    uint64_t elements = 1;
    for (auto& d : tensor.dims) {
      KVSTASH_RETURN_IF_ERROR(r.Read(&d));
      if (d == 0 || d > (uint64_t{1} << 40) || elements > (uint64_t{1} << 40) / d) {
        return absl::InvalidArgumentError("GGUF: tensor " + tensor.name + " has a bad shape");
      }
      elements *= d;
    }
    KVSTASH_RETURN_IF_ERROR(r.Read(&tensor.raw_type));
    KVSTASH_RETURN_IF_ERROR(r.Read(&offsets[t]));
    tensor.type = GgmlTypeFromId(tensor.raw_type);
    if (tensor.type != GgmlType::kUnsupported) {
      auto row = GgmlRowBytes(tensor.type, tensor.dims[0]);
      if (!row.ok()) {
        return absl::InvalidArgumentError("GGUF: tensor " + tensor.name + ": " +
                                          std::string(row.status().message()));
      }
      tensor.bytes = *row * (elements / tensor.dims[0]);
    }
    if (!tensor_index_.emplace(tensor.name, t).second) {
      return absl::InvalidArgumentError("GGUF: duplicate tensor " + tensor.name);
    }
  }
  uint64_t data_start = (r.pos() + alignment - 1) / alignment * alignment;
  for (uint64_t t = 0; t < n_tensors; ++t) {
    GgufTensor& tensor = tensors_[t];
    uint64_t off = offsets[t];
    if (off % alignment != 0 || data_start > bytes_.size() || off > bytes_.size() - data_start ||
        tensor.bytes > bytes_.size() - data_start - off) {
      return absl::InvalidArgumentError("GGUF: tensor " + tensor.name +
                                        " lies outside the file or is misaligned");
    }
    tensor.data = bytes_.data() + data_start + off;
  }
  return OkStatus();
}

const GgufValue* GgufFile::Find(const std::string& key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

const GgufTensor* GgufFile::FindTensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {
Status Missing(const std::string& key) { return absl::NotFoundError("GGUF: no key " + key); }
Status WrongType(const std::string& key, const char* want) {
  return absl::InvalidArgumentError("GGUF: key " + key + " is not " + want);
}
bool IsInteger(GgufValueType t) {
  return ScalarSize(t) != 0 && !IsFloat(t) && t != GgufValueType::kBool;
}
}  // namespace

Result<std::string> GgufFile::GetString(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(key);
  if (v->type != GgufValueType::kString) return WrongType(key, "a string");
  return v->s;
}

Result<uint32_t> GgufFile::GetU32(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(key);
  if (!IsInteger(v->type) || v->i < 0 || v->i > std::numeric_limits<uint32_t>::max()) {
    return WrongType(key, "an unsigned 32-bit integer");
  }
  return static_cast<uint32_t>(v->i);
}

Result<float> GgufFile::GetF32(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(key);
  if (ScalarSize(v->type) == 0 || v->type == GgufValueType::kBool) {
    return WrongType(key, "a number");
  }
  return static_cast<float>(v->f);
}

Result<bool> GgufFile::GetBool(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(key);
  if (v->type != GgufValueType::kBool) return WrongType(key, "a bool");
  return v->i != 0;
}

Result<const std::vector<std::string>*> GgufFile::GetStringArray(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(key);
  if (v->type != GgufValueType::kArray || v->elem_type != GgufValueType::kString) {
    return WrongType(key, "an array of strings");
  }
  return &v->strings;
}

Result<const std::vector<double>*> GgufFile::GetNumArray(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(key);
  if (v->type != GgufValueType::kArray || v->elem_type == GgufValueType::kString) {
    return WrongType(key, "a numeric array");
  }
  return &v->nums;
}

}  // namespace kvstash::engine
