// Conversions between wire messages and the common value types. Every FromProto validates what it
// converts (InvalidArgument naming the field), because wire input is untrusted.
#ifndef KVSTASH_PROTO_CONVERT_H_
#define KVSTASH_PROTO_CONVERT_H_

#include "kvstash/common/key.h"
#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"
#include "kvstash/common/tier.h"
#include "kvstash/v1/kvstash.pb.h"

namespace kvstash {

// A parsed ObjectKey plus its derived 128-bit storage key.
struct ObjectName {
  std::string name_space;
  Hash128 model_fingerprint;
  Hash128 token_hash;
  Hash128 storage_key;  // ObjectKey(name_space, model_fingerprint, token_hash)
};

inline constexpr size_t kMaxNamespaceBytes = 256;

ObjectName MakeObjectName(std::string name_space, const Hash128& model_fingerprint,
                          const Hash128& token_hash);

void ToProto(const ObjectName& name, v1::ObjectKey* out);
Result<ObjectName> FromProto(const v1::ObjectKey& key);

void ToProto(const KvLayout& layout, v1::KvLayout* out);
// Converts without validating; ObjectInfo FromProto validates the whole.
KvLayout FromProto(const v1::KvLayout& layout);

void ToProto(const ObjectInfo& info, v1::ObjectInfo* out);

v1::Tier ToProtoTier(Tier tier);
// Values this build does not know (a newer peer's) become Tier::kUnknown.
Tier FromProtoTier(int tier);
Result<ObjectInfo> FromProto(const v1::ObjectInfo& info);

}  // namespace kvstash

#endif  // KVSTASH_PROTO_CONVERT_H_
