// Request validation and conversions shared by KvStashService's source files. Internal to
// cachesvc; every function is thread-safe.
#ifndef KVSTASH_CACHESVC_REQUEST_CHECKS_H_
#define KVSTASH_CACHESVC_REQUEST_CHECKS_H_

#include <google/protobuf/repeated_ptr_field.h>

#include <chrono>
#include <string>
#include <vector>

#include "kvstash/common/status.h"
#include "kvstash/proto/convert.h"
#include "kvstash/storage/object_store.h"
#include "kvstash/v1/kvstash.pb.h"

namespace kvstash::cachesvc {

Status Invalid(const std::string& message);  // InvalidArgument

// Prefixes a conversion error with the field it came from ("keys[3]: token_hash must be ...").
Status Annotate(const Status& s, const std::string& where);

Result<ObjectName> ParseKey(const v1::ObjectKey& key, const std::string& where);
Result<std::vector<ObjectName>> ParseKeys(
    const google::protobuf::RepeatedPtrField<v1::ObjectKey>& keys);
// InvalidArgument "<where>: missing" when `present` is false.
Result<ObjectInfo> ParseInfo(const v1::ObjectInfo& info, bool present, const std::string& where);

storage::StoredName ToStoredName(const ObjectName& name);

// Rejects offsets the store hands out that would leave the arena: a bug, never a client's fault.
Status CheckArenaRange(const storage::ObjectStore& store, uint64_t offset, uint64_t bytes);

// When a stream that started at `start` must stop: before `timeout_ms` by a margin (a tenth, at
// most 1 s), so the last copy into or out of the arena always finishes before the store could
// reclaim a reservation or lease taken for `timeout_ms`.
std::chrono::steady_clock::time_point StreamDeadline(std::chrono::steady_clock::time_point start,
                                                     uint32_t timeout_ms);

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_REQUEST_CHECKS_H_
