// Fuzz target: the SSD tier's index record, record key and name block decoders
// (storage/src/ssd_record.h), which read whatever the index and the object files hold.
//
// Input: byte 0 holds flags, the rest is the bytes under test.
//   bits 0-1: 0 = index record value, 1 = name block, 2 = record key, 3 = all three
//   bit 2: reseal: recompute the trailing crc32c (record: last 4 bytes; name block: the 4 bytes
//          after the namespace its length field announces), so mutations reach the field checks
// Invariants: no out-of-bounds reads; a record that decodes encodes again (as version 2) and
// decodes to the same fields; a name block that passes names the key it carries; a record key
// that parses is rebuilt byte for byte.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "kvstash/common/coding.h"
#include "kvstash/common/crc32c.h"
#include "ssd_record.h"

namespace {

using namespace kvstash;
using namespace kvstash::storage;

bool SameInfo(const ObjectInfo& a, const ObjectInfo& b) {
  return a == b;  // every field, lossy included
}

void FuzzRecord(std::string bytes, bool reseal) {
  if (reseal && bytes.size() >= 4) {
    const uint32_t crc = Crc32c(bytes.data(), bytes.size() - 4);
    EncodeFixed32(bytes.data() + bytes.size() - 4, crc);
  }
  TierRecord r;
  if (!DecodeRecord(bytes, r).ok()) return;
  auto again = EncodeRecord(r);
  if (!again.ok()) __builtin_trap();  // a decoded header always validates
  TierRecord back;
  if (!DecodeRecord(*again, back).ok()) __builtin_trap();
  if (!SameInfo(back.info, r.info) || !SameInfo(back.served, r.served) ||
      back.encoded != r.encoded || back.hits != r.hits || back.last_access_ns != r.last_access_ns ||
      back.pins != r.pins || back.name.model_fingerprint != r.name.model_fingerprint ||
      back.name.token_hash != r.name.token_hash || back.name.name_space != r.name.name_space) {
    __builtin_trap();
  }
}

void FuzzNameBlock(const std::string& bytes, bool reseal) {
  std::vector<uint8_t> block(kSsdBlockBytes - 64, 0);
  std::copy_n(bytes.begin(), std::min(bytes.size(), block.size()), block.begin());
  // "KVSN" | version u32 | storage key 16 | fingerprint 16 | token 16 | ns_len u32 | ns | crc
  constexpr size_t kNsLen = 4 + 4 + 3 * 16;
  const uint32_t ns_len = DecodeFixed32(block.data() + kNsLen);
  const size_t body = kNsLen + 4 + size_t{ns_len};
  if (reseal && body + 4 <= block.size()) {
    EncodeFixed32(block.data() + body, Crc32c(block.data(), body));
  }
  const Hash128 key{DecodeFixed64(block.data() + 8), DecodeFixed64(block.data() + 16)};
  if (CheckNameBlock(block.data(), key).ok()) {
    // The same block never names another key.
    const Hash128 other{key.lo ^ 1, key.hi};
    if (CheckNameBlock(block.data(), other).ok()) __builtin_trap();
  }
}

void FuzzRecordKey(const std::string& bytes) {
  Hash128 key;
  uint64_t seq = 0;
  if (!ParseRecordKey(bytes, key, seq)) return;
  if (RecordKey(key, seq) != bytes) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t flags = data[0];
  const std::string bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  const bool reseal = (flags & 4) != 0;
  switch (flags & 3) {
    case 0:
      FuzzRecord(bytes, reseal);
      break;
    case 1:
      FuzzNameBlock(bytes, reseal);
      break;
    case 2:
      FuzzRecordKey(bytes);
      break;
    default:
      FuzzRecord(bytes, reseal);
      FuzzNameBlock(bytes, reseal);
      FuzzRecordKey(bytes);
      break;
  }
  return 0;
}
