// Conversions between wire messages and the common value types. Every FromProto validates what it
// converts (InvalidArgument naming the field), because wire input is untrusted.
#ifndef KVSTASH_PROTO_CONVERT_H_
#define KVSTASH_PROTO_CONVERT_H_

#include "kvstash/common/key.h"
#include "kvstash/common/layout.h"
#include "kvstash/common/object_name.h"
#include "kvstash/common/status.h"
#include "kvstash/common/tier.h"
#include "kvstash/v1/kvstash.pb.h"

namespace kvstash {

// ObjectName (common/object_name.h) <-> v1::ObjectKey; FromProto refuses a namespace longer than
// kMaxNamespaceBytes and fingerprints or token hashes that are not 16 bytes.
void ToProto(const ObjectName& name, v1::ObjectKey* out);
Result<ObjectName> FromProto(const v1::ObjectKey& key);

void ToProto(const KvLayout& layout, v1::KvLayout* out);
// Converts without validating; ObjectInfo FromProto validates the whole.
KvLayout FromProto(const v1::KvLayout& layout);

void ToProto(const ObjectInfo& info, v1::ObjectInfo* out);

// Tier::kProcess (engine-side only) goes out as TIER_UNSPECIFIED.
v1::Tier ToProtoTier(Tier tier);
// Values this build does not know (a newer peer's) become Tier::kUnknown.
Tier FromProtoTier(int tier);
Result<ObjectInfo> FromProto(const v1::ObjectInfo& info);

}  // namespace kvstash

#endif  // KVSTASH_PROTO_CONVERT_H_
