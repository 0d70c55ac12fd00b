// Cost-aware eviction (Cache-Craft's retention rule, algorithms.md 3.1 item 10, as a
// Greedy-Dual-Size-Frequency policy): keep what saves the most compute per byte.
#include <algorithm>
#include <optional>
#include <set>
#include <tuple>
#include <unordered_map>

#include "kvstash/storage/eviction_policy.h"

namespace kvstash::storage {
namespace {

class CostAwarePolicy final : public EvictionPolicy {
 public:
  std::string_view name() const override { return "cost"; }

  void OnInsert(const EvictionMeta& meta) override {
    Erase(meta.key);
    const Entry e{clock_ + Benefit(meta), meta.last_access_ns};
    entries_.emplace(meta.key, e);
    order_.emplace(e.priority, e.last_access, meta.key);
  }

  void OnAccess(const EvictionMeta& meta) override {
    if (entries_.count(meta.key) > 0) OnInsert(meta);
  }

  void OnRemove(const Hash128& key) override {
    auto it = entries_.find(key);
    if (it == entries_.end()) return;
    // Aging: the clock rises to the priority of each object given up, so an object that was
    // valuable once but is no longer read falls behind newly inserted ones. Removing the object
    // Victim() named is how the store reports an eviction.
    if (last_victim_ && *last_victim_ == key) clock_ = std::max(clock_, it->second.priority);
    Erase(key);
  }

  std::optional<Hash128> Victim() override {
    if (order_.empty()) return std::nullopt;
    last_victim_ = std::get<2>(*order_.begin());
    return last_victim_;
  }

  size_t size() const override { return entries_.size(); }

 private:
  struct Entry {
    double priority = 0.0;
    uint64_t last_access = 0;
  };

  // Expected compute a hit saves, times expected frequency, per byte held.
  static double Benefit(const EvictionMeta& m) {
    const double saved =
        m.value > 0.0 ? m.value : static_cast<double>(m.num_tokens > 0 ? m.num_tokens : 1);
    const double bytes = static_cast<double>(m.bytes > 0 ? m.bytes : 1);
    return saved * static_cast<double>(m.hits + 1) / bytes;
  }

  void Erase(const Hash128& key) {
    auto it = entries_.find(key);
    if (it == entries_.end()) return;
    order_.erase({it->second.priority, it->second.last_access, key});
    entries_.erase(it);
  }

  double clock_ = 0.0;
  std::optional<Hash128> last_victim_;
  // (priority, last access, key): begin() is the victim; ties go to the older, then the key.
  std::set<std::tuple<double, uint64_t, Hash128>> order_;
  std::unordered_map<Hash128, Entry, Hash128Hasher> entries_;
};

}  // namespace

std::unique_ptr<EvictionPolicy> NewCostAwarePolicy() { return std::make_unique<CostAwarePolicy>(); }

}  // namespace kvstash::storage
