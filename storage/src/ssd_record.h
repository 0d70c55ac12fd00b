// The bytes of SsdTier's index and files (ssd_tier.h has the layout): the RocksDB index record of
// one object version, its key, and the name block at [64, 4096) of its file. Private to storage;
// tests and the fuzz target (tests/fuzz/ssd_record_fuzz.cc) reach it through storage/src.
//
// Decoders take untrusted bytes (a damaged or foreign index, a file overwritten behind our back):
// they read nothing outside their input and return DataLoss (or false) for anything malformed.
// All functions are pure and thread-safe.
#ifndef KVSTASH_STORAGE_SSD_RECORD_H_
#define KVSTASH_STORAGE_SSD_RECORD_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "kvstash/common/key.h"
#include "kvstash/common/status.h"
#include "kvstash/storage/object_store.h"
#include "kvstash/storage/storage_tier.h"

namespace kvstash::storage {

// Payload offset in a file, and the O_DIRECT alignment.
inline constexpr uint64_t kSsdBlockBytes = 4096;
// First byte of every object record key; other prefixes are free for other record kinds.
inline constexpr char kRecordPrefix = 'o';

// 'o' || storage key (Hash128::Bytes) || seq big-endian (a key's versions sort by seq): 25 bytes.
std::string RecordKey(const Hash128& storage_key, uint64_t seq);
// False unless `key` is a well-formed record key.
bool ParseRecordKey(std::string_view key, Hash128& storage_key, uint64_t& seq);

// The index value of one version (format in ssd_record.cc). Writes version 2; InvalidArgument
// when r.info does not validate (EncodeObjectHeader).
Result<std::string> EncodeRecord(const TierRecord& r);
// Reads versions 1 and 2. DataLoss on a bad checksum, an unknown version, a short record or an
// object header that does not decode. Sets every field of `r` but name.storage_key and seq,
// which are in the record's key.
Status DecodeRecord(std::string_view value, TierRecord& r);

// Bytes [64, 4096) of a file: "KVSN", version, storage key, fingerprint, token hash, namespace,
// crc32c. At most kSsdBlockBytes - 64 bytes for namespaces up to the API's limit.
std::string EncodeNameBlock(const StoredName& name);
// `block` holds kSsdBlockBytes - 64 bytes. OK when it is a valid name block naming storage_key;
// DataLoss otherwise.
Status CheckNameBlock(const uint8_t* block, const Hash128& storage_key);

}  // namespace kvstash::storage

#endif  // KVSTASH_STORAGE_SSD_RECORD_H_
