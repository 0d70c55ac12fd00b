#include "ssd_record.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "kvstash/common/coding.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/common/object_header.h"

namespace kvstash::storage {
namespace {

constexpr uint8_t kRecordVersionV1 = 1;  // read only
constexpr uint8_t kRecordVersion = 2;    // adds the served-object fields
constexpr uint8_t kRecordEncoded = 1;    // flag bits of a v2 record
constexpr uint8_t kRecordLossy = 2;
constexpr char kNameMagic[4] = {'K', 'V', 'S', 'N'};
constexpr uint32_t kNameVersion = 1;
constexpr uint64_t kBlock = kSsdBlockBytes;

void PutHash(std::string& out, const Hash128& h) {
  auto b = h.Bytes();
  out.append(reinterpret_cast<const char*>(b.data()), b.size());
}

// A bounds-checked cursor: each read consumes its field or fails and leaves the input alone.
class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in), size_(in.size()) {}
  bool U8(uint8_t& v) { return GetFixed8(&in_, &v); }
  bool U32(uint32_t& v) { return GetFixed32(&in_, &v); }
  bool U64(uint64_t& v) { return GetFixed64(&in_, &v); }
  bool Hash(Hash128& h) {
    std::string_view bytes;
    if (!GetBytes(&in_, 16, &bytes)) return false;
    h = Hash128{DecodeFixed64(bytes.data()), DecodeFixed64(bytes.data() + 8)};
    return true;
  }
  bool Str(std::string& s, size_t n) {
    std::string_view bytes;
    if (!GetBytes(&in_, n, &bytes)) return false;
    s.assign(bytes);
    return true;
  }
  bool Raw(void* dst, size_t n) {
    std::string_view bytes;
    if (!GetBytes(&in_, n, &bytes)) return false;
    std::memcpy(dst, bytes.data(), n);
    return true;
  }
  size_t pos() const { return size_ - in_.size(); }

 private:
  std::string_view in_;
  size_t size_;
};

}  // namespace

std::string RecordKey(const Hash128& storage_key, uint64_t seq) {
  std::string key(1, kRecordPrefix);
  PutHash(key, storage_key);
  PutBigEndian64(&key, seq);  // big-endian: a storage key's records sort by sequence
  return key;
}

bool ParseRecordKey(std::string_view key, Hash128& storage_key, uint64_t& seq) {
  if (key.size() != 25 || key[0] != kRecordPrefix) return false;
  auto h = Hash128::FromBytes(key.substr(1, 16));
  if (!h.ok()) return false;
  storage_key = *h;
  seq = DecodeBigEndian64(reinterpret_cast<const uint8_t*>(key.data()) + 17);
  return true;
}

// value: version u8 | object header (64) | [v2: flags u8 | served crc32c u32] | hits u64 |
//        last_access u64 | pins u32 | fingerprint 16 | token hash 16 | ns_len u32 | ns |
//        crc32c u32 of everything before
// flags: kRecordEncoded (the file is a TierCodec encoding; the served object is the raw layout
// with the served crc32c), kRecordLossy (the served object is lossy). v1 records serve the file.
Result<std::string> EncodeRecord(const TierRecord& r) {
  KVSTASH_ASSIGN_OR_RETURN(auto header, EncodeObjectHeader(r.info));
  std::string out;
  out.push_back(static_cast<char>(kRecordVersion));
  out.append(reinterpret_cast<const char*>(header.data()), header.size());
  out.push_back(
      static_cast<char>((r.encoded ? kRecordEncoded : 0) | (r.served.lossy ? kRecordLossy : 0)));
  PutFixed32(&out, r.encoded ? r.served.payload_crc32c : r.info.payload_crc32c);
  PutFixed64(&out, r.hits);
  PutFixed64(&out, r.last_access_ns);
  PutFixed32(&out, r.pins);
  PutHash(out, r.name.model_fingerprint);
  PutHash(out, r.name.token_hash);
  PutFixed32(&out, static_cast<uint32_t>(r.name.name_space.size()));
  out += r.name.name_space;
  PutFixed32(&out, Crc32c(out.data(), out.size()));
  return out;
}

Status DecodeRecord(std::string_view value, TierRecord& r) {
  if (value.size() < 4) return absl::DataLossError("short index record");
  Reader crc_reader(value.substr(value.size() - 4));
  uint32_t crc;
  crc_reader.U32(crc);
  if (crc != Crc32c(value.data(), value.size() - 4)) {
    return absl::DataLossError("index record checksum mismatch");
  }
  Reader in(value.substr(0, value.size() - 4));
  uint8_t version;
  uint8_t header[kObjectHeaderBytes];
  uint32_t ns_len;
  if (!in.U8(version) || (version != kRecordVersion && version != kRecordVersionV1)) {
    return absl::DataLossError("unknown index record version");
  }
  if (!in.Raw(header, sizeof(header))) return absl::DataLossError("short index record");
  KVSTASH_ASSIGN_OR_RETURN(r.info, DecodeObjectHeader(std::span<const uint8_t>(header)));
  uint8_t flags = 0;
  uint32_t served_crc = r.info.payload_crc32c;
  if (version == kRecordVersion && (!in.U8(flags) || !in.U32(served_crc))) {
    return absl::DataLossError("short index record");
  }
  r.encoded = (flags & kRecordEncoded) != 0;
  r.served = r.info;
  if (r.encoded) {
    r.served.encoding = Encoding::kRaw;
    r.served.encoding_level = 0;
    r.served.payload_bytes = r.info.layout.RawBytes();
    r.served.payload_crc32c = served_crc;
  }
  r.served.lossy = (flags & kRecordLossy) != 0;
  if (!in.U64(r.hits) || !in.U64(r.last_access_ns) || !in.U32(r.pins) ||
      !in.Hash(r.name.model_fingerprint) || !in.Hash(r.name.token_hash) || !in.U32(ns_len) ||
      !in.Str(r.name.name_space, ns_len)) {
    return absl::DataLossError("short index record");
  }
  return OkStatus();
}

// Bytes [64, 4096) of a file: the object's name, so a read can prove it got the right file.
std::string EncodeNameBlock(const StoredName& name) {
  std::string out(kNameMagic, 4);
  PutFixed32(&out, kNameVersion);
  PutHash(out, name.storage_key);
  PutHash(out, name.model_fingerprint);
  PutHash(out, name.token_hash);
  PutFixed32(&out, static_cast<uint32_t>(name.name_space.size()));
  out += name.name_space;
  PutFixed32(&out, Crc32c(out.data(), out.size()));
  return out;
}

Status CheckNameBlock(const uint8_t* block, const Hash128& storage_key) {
  std::string_view in(reinterpret_cast<const char*>(block), kBlock - kObjectHeaderBytes);
  if (std::memcmp(in.data(), kNameMagic, 4) != 0) return absl::DataLossError("bad name block");
  Reader r(in.substr(4));
  uint32_t version, ns_len;
  Hash128 key, fingerprint, token;
  if (!r.U32(version) || version != kNameVersion || !r.Hash(key) || !r.Hash(fingerprint) ||
      !r.Hash(token) || !r.U32(ns_len) || ns_len > in.size() - 4 - r.pos() - 4) {
    return absl::DataLossError("bad name block");
  }
  size_t body = 4 + r.pos() + ns_len;
  Reader crc_reader(in.substr(body));
  uint32_t crc;
  crc_reader.U32(crc);
  if (crc != Crc32c(in.data(), body)) return absl::DataLossError("name block checksum mismatch");
  if (key != storage_key) return absl::DataLossError("file holds another object");
  return OkStatus();
}

}  // namespace kvstash::storage
