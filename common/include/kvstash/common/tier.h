// The storage tiers, one enum for every module: the store reports where an object lives, the
// service where a read was served from, the client what it was told. The wire enum
// kvstash.v1.Tier has the same values (proto/convert.h converts).
#ifndef KVSTASH_COMMON_TIER_H_
#define KVSTASH_COMMON_TIER_H_

#include <cstdint>
#include <string_view>

namespace kvstash {

enum class Tier : uint8_t {
  kUnknown = 0,  // not said (absent object, an older peer)
  kGpu = 1,
  kCpu = 2,  // the shared-memory arena
  kSsd = 3,
  kRemote = 4,  // another cachesvc node (a peer)
};

// "gpu", "cpu", "ssd", "remote" or "unknown".
std::string_view TierName(Tier tier);

}  // namespace kvstash

#endif  // KVSTASH_COMMON_TIER_H_
