#include "kvstash/common/object_name.h"

#include <utility>

namespace kvstash {

ObjectName MakeObjectName(std::string name_space, const Hash128& model_fingerprint,
                          const Hash128& token_hash) {
  ObjectName name;
  name.storage_key = ObjectKey(name_space, model_fingerprint, token_hash);
  name.name_space = std::move(name_space);
  name.model_fingerprint = model_fingerprint;
  name.token_hash = token_hash;
  return name;
}

}  // namespace kvstash
