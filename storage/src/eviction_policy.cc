#include "kvstash/storage/eviction_policy.h"

#include <set>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"

namespace kvstash::storage {
namespace {

// Ordered by last access time rather than by call order, so an object that re-enters the policy
// (a lease ended, a demotion finished) keeps its true age. O(log n) per call.
class LruPolicy final : public EvictionPolicy {
 public:
  std::string_view name() const override { return "lru"; }

  void OnInsert(const EvictionMeta& meta) override {
    auto it = last_access_.find(meta.key);
    if (it != last_access_.end()) {
      order_.erase({it->second, meta.key});
      it->second = meta.last_access_ns;
    } else {
      last_access_.emplace(meta.key, meta.last_access_ns);
    }
    order_.emplace(meta.last_access_ns, meta.key);
  }

  void OnAccess(const EvictionMeta& meta) override {
    if (last_access_.count(meta.key) > 0) OnInsert(meta);
  }

  void OnRemove(const Hash128& key) override {
    auto it = last_access_.find(key);
    if (it == last_access_.end()) return;
    order_.erase({it->second, key});
    last_access_.erase(it);
  }

  std::optional<Hash128> Victim() override {
    if (order_.empty()) return std::nullopt;
    return order_.begin()->second;
  }

  size_t size() const override { return last_access_.size(); }

 private:
  std::set<std::pair<uint64_t, Hash128>> order_;  // (last access, key): begin() is the victim
  std::unordered_map<Hash128, uint64_t, Hash128Hasher> last_access_;
};

}  // namespace

std::unique_ptr<EvictionPolicy> NewLruPolicy() { return std::make_unique<LruPolicy>(); }

Result<std::unique_ptr<EvictionPolicy>> MakeEvictionPolicy(std::string_view name) {
  if (name == "lru") return NewLruPolicy();
  if (name == "cost") return NewCostAwarePolicy();
  return absl::InvalidArgumentError(
      absl::StrCat("unknown eviction policy '", std::string(name), "' (known: lru, cost)"));
}

}  // namespace kvstash::storage
