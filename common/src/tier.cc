#include "kvstash/common/tier.h"

namespace kvstash {

std::string_view TierName(Tier tier) {
  switch (tier) {
    case Tier::kGpu:
      return "gpu";
    case Tier::kCpu:
      return "cpu";
    case Tier::kSsd:
      return "ssd";
    case Tier::kRemote:
      return "remote";
    case Tier::kProcess:
      return "process";
    case Tier::kUnknown:
      break;
  }
  return "unknown";
}

}  // namespace kvstash
