#include "kvstash/cluster/placement.h"

#include <xxhash.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <set>

namespace kvstash::cluster {

constexpr char kDomain[8] = {'K', 'V', 'S', '1', 'P', 'L', 'C', '\0'};

Placement::Placement(std::vector<NodeRecord> nodes) {
  std::set<std::string> seen;
  for (NodeRecord& n : nodes) {
    if (!seen.insert(n.id).second) continue;
    weights_.push_back(WeightOf(n));
    nodes_.push_back(std::move(n));
  }
}

double Placement::WeightOf(const NodeRecord& node) {
  return std::max(1e-6, static_cast<double>(node.capacity_bytes) / (1024.0 * 1024.0));
}

double Placement::Score(std::string_view node_id, double weight, const Hash128& key) {
  const std::array<uint8_t, 16> bytes = key.Bytes();
  // One buffer: domain || id || key (ids from etcd are at most kMaxNodeIdBytes).
  std::array<uint8_t, sizeof kDomain + kMaxNodeIdBytes + 16> stack;
  std::string heap;
  uint8_t* buf = stack.data();
  const size_t len = sizeof kDomain + node_id.size() + bytes.size();
  if (len > stack.size()) {
    heap.resize(len);
    buf = reinterpret_cast<uint8_t*>(heap.data());
  }
  std::memcpy(buf, kDomain, sizeof kDomain);
  std::memcpy(buf + sizeof kDomain, node_id.data(), node_id.size());
  std::memcpy(buf + sizeof kDomain + node_id.size(), bytes.data(), bytes.size());
  const uint64_t h = XXH3_64bits(buf, len);
  // u in (0, 1): the top 53 bits plus one half, so never 0 or 1 and ln(u) < 0.
  const double u = (static_cast<double>(h >> 11) + 0.5) / 9007199254740992.0;
  return weight / -std::log(u);
}

std::vector<size_t> Placement::Owners(const Hash128& key, size_t replicas) const {
  std::vector<std::pair<double, size_t>> scored;
  scored.reserve(nodes_.size());
  for (size_t i = 0; i < nodes_.size(); ++i) {
    scored.emplace_back(Score(nodes_[i].id, weights_[i], key), i);
  }
  const size_t n = std::min(replicas, scored.size());
  // Ties (equal scores) broken by id so every node agrees.
  auto better = [this](const auto& a, const auto& b) {
    if (a.first != b.first) return a.first > b.first;
    return nodes_[a.second].id < nodes_[b.second].id;
  };
  std::partial_sort(scored.begin(), scored.begin() + static_cast<std::ptrdiff_t>(n), scored.end(),
                    better);
  std::vector<size_t> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(scored[i].second);
  return out;
}

std::vector<std::string> Placement::OwnerIds(const Hash128& key, size_t replicas) const {
  std::vector<std::string> out;
  for (size_t i : Owners(key, replicas)) out.push_back(nodes_[i].id);
  return out;
}

}  // namespace kvstash::cluster
