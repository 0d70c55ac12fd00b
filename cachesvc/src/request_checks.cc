#include "request_checks.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kvstash/proto/convert.h"

namespace kvstash::cachesvc {

Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

Status Annotate(const Status& s, const std::string& where) {
  if (s.ok()) return s;
  return Status(s.code(), absl::StrCat(where, ": ", std::string(s.message())));
}

Result<ObjectName> ParseKey(const v1::ObjectKey& key, const std::string& where) {
  auto name = FromProto(key);
  if (!name.ok()) return Annotate(name.status(), where);
  return name;
}

Result<std::vector<ObjectName>> ParseKeys(
    const google::protobuf::RepeatedPtrField<v1::ObjectKey>& keys) {
  std::vector<ObjectName> names;
  names.reserve(keys.size());
  for (int i = 0; i < keys.size(); ++i) {
    KVSTASH_ASSIGN_OR_RETURN(ObjectName name, ParseKey(keys[i], absl::StrCat("keys[", i, "]")));
    names.push_back(std::move(name));
  }
  return names;
}

Result<ObjectInfo> ParseInfo(const v1::ObjectInfo& info, bool present, const std::string& where) {
  if (!present) return Invalid(absl::StrCat(where, ": missing"));
  auto parsed = FromProto(info);
  if (!parsed.ok()) return Annotate(parsed.status(), where);
  return parsed;
}

storage::StoredName ToStoredName(const ObjectName& name) {
  storage::StoredName stored;
  stored.storage_key = name.storage_key;
  stored.name_space = name.name_space;
  stored.model_fingerprint = name.model_fingerprint;
  stored.token_hash = name.token_hash;
  return stored;
}

Status CheckArenaRange(const storage::ObjectStore& store, uint64_t offset, uint64_t bytes) {
  if (offset > store.arena_bytes() || bytes > store.arena_bytes() - offset) {
    return absl::InternalError(absl::StrCat("store returned arena range [", offset, ", +", bytes,
                                            ") outside the ", store.arena_bytes(), "-byte arena"));
  }
  return OkStatus();
}

std::chrono::steady_clock::time_point StreamDeadline(std::chrono::steady_clock::time_point start,
                                                     uint32_t timeout_ms) {
  uint32_t margin = std::min<uint32_t>(1000, timeout_ms / 10);
  return start + std::chrono::milliseconds(timeout_ms - margin);
}

}  // namespace kvstash::cachesvc
