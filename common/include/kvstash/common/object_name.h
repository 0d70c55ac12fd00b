// The name of a stored object: the three parts a client gives (namespace, model fingerprint,
// token hash) and the 128-bit storage key derived from them (common/key.h's ObjectKey). The wire
// message kvstash.v1.ObjectKey carries the same three parts; proto/convert.h converts and
// validates. Plain value type; thread-safe to read.
#ifndef KVSTASH_COMMON_OBJECT_NAME_H_
#define KVSTASH_COMMON_OBJECT_NAME_H_

#include <cstddef>
#include <string>

#include "kvstash/common/key.h"

namespace kvstash {

struct ObjectName {
  std::string name_space;
  Hash128 model_fingerprint;
  Hash128 token_hash;
  Hash128 storage_key;  // ObjectKey(name_space, model_fingerprint, token_hash)
};

// Longest namespace the service accepts (longer ones are InvalidArgument on the wire).
inline constexpr size_t kMaxNamespaceBytes = 256;

// Fills every field, deriving storage_key. Does not check the namespace's length.
ObjectName MakeObjectName(std::string name_space, const Hash128& model_fingerprint,
                          const Hash128& token_hash);

}  // namespace kvstash

#endif  // KVSTASH_COMMON_OBJECT_NAME_H_
