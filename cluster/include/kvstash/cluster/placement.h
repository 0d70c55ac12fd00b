// Placement: which nodes own an object, by weighted rendezvous (highest random weight) hashing.
//
// For each node n with weight w_n (its capacity) and an object key k, the score is
//   s(n, k) = w_n / -ln(u(n, k)),   u = (XXH3-64("KVS1PLC\0" || node id || key bytes) + 0.5) / 2^64
// (53 significant bits). The owners of k are the `replicas` nodes with the highest scores, best
// first. Each node is chosen with probability proportional to its weight, and a join or a loss
// only moves the keys whose owner set gains or loses that node. XXH3 without a process seed, so
// every node computes the same owners from the same view (docs/hashing.md: never a seeded hash).
//
// Immutable once built; thread-safe. Nodes are copied in.
#ifndef KVSTASH_CLUSTER_PLACEMENT_H_
#define KVSTASH_CLUSTER_PLACEMENT_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kvstash/cluster/node_record.h"
#include "kvstash/common/key.h"

namespace kvstash::cluster {

class Placement {
 public:
  Placement() = default;
  // Nodes with duplicate ids keep the first. Weight: capacity in MiB (at least 1e-6).
  explicit Placement(std::vector<NodeRecord> nodes);

  // Indices into nodes() of the owners of `key`: min(replicas, size) of them, best first.
  std::vector<size_t> Owners(const Hash128& key, size_t replicas) const;
  // The same, as node ids.
  std::vector<std::string> OwnerIds(const Hash128& key, size_t replicas) const;

  const std::vector<NodeRecord>& nodes() const { return nodes_; }
  bool empty() const { return nodes_.empty(); }

  // s(n, k) as above.
  static double Score(std::string_view node_id, double weight, const Hash128& key);
  static double WeightOf(const NodeRecord& node);

 private:
  std::vector<NodeRecord> nodes_;
  std::vector<double> weights_;
};

}  // namespace kvstash::cluster

#endif  // KVSTASH_CLUSTER_PLACEMENT_H_
