// The storage tiers, one enum for every module: the store reports where an object lives, the
// service where a read was served from, the client what it was told, the blending loader where
// a chunk's KV came from. The wire enum kvstash.v1.Tier has the same values for kUnknown..kRemote
// (proto/convert.h converts); kProcess never crosses the wire.
#ifndef KVSTASH_COMMON_TIER_H_
#define KVSTASH_COMMON_TIER_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kvstash {

enum class Tier : uint8_t {
  kUnknown = 0,  // not said (absent object, an older peer)
  kGpu = 1,
  kCpu = 2,  // the shared-memory arena
  kSsd = 3,
  kRemote = 4,  // another cachesvc node (a peer)
  // The engine process's own memory (the blending module's in-process chunk store). Only
  // engine-side code uses it: no store or service reports it, and ToProtoTier sends it as
  // TIER_UNSPECIFIED.
  kProcess = 5,
};

// One past the largest value: the size of an array indexed by static_cast<size_t>(Tier).
inline constexpr size_t kTierCount = 6;

// "gpu", "cpu", "ssd", "remote", "process" or "unknown".
std::string_view TierName(Tier tier);

}  // namespace kvstash

#endif  // KVSTASH_COMMON_TIER_H_
