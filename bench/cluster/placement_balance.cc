// Balance of weighted rendezvous placement (cluster/placement.h): 100,000 keys over 3, 8 and 64
// simulated nodes of equal capacity, and over 8 nodes of capacities 1:2:...:8; for each, the
// first owner's and the R = 2 owners' per-node counts as max/mean and min/mean (for unequal
// capacities, count / expected share), and the time of one Owners() call.
//
// Then the same keys placed with bounded loads (consistent hashing with bounded loads, Mirrokni,
// Thorup and Zadimoghaddam, SODA 2018), a simulation only (the service does not place this way;
// docs/benchmarks-cluster.md says why): keys arrive one by one, and each of a key's R copies goes
// to the next node in the key's rendezvous order whose count is below
// ceil((1 + eps) * m * w / W), m the copies placed so far including this one, w / W the node's
// weight share. Reported besides max/mean: how deep into the rendezvous order a reader must
// look to find a key's copies (plain rendezvous: R), and, at 64 nodes, the share of keys whose
// owners change when one node is removed (both placements built from the same key sequence).
//
//   placement_balance [--keys N] [--eps E]... [--out FILE]   (JSON on stdout, and to FILE)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "kvstash/cluster/placement.h"

namespace {

using kvstash::Hash128;
using kvstash::cluster::NodeRecord;
using kvstash::cluster::Placement;

// Keys as the service sees them: 128-bit XXH3 outputs; a fixed xorshift sequence stands in.
std::vector<Hash128> Keys(size_t n) {
  std::vector<Hash128> keys(n);
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (auto& k : keys) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    k.lo = x;
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    k.hi = x;
  }
  return keys;
}

std::string Run(const char* label, const std::vector<NodeRecord>& nodes,
                const std::vector<Hash128>& keys, size_t replicas) {
  Placement p(nodes);
  std::vector<double> count(nodes.size(), 0);
  const auto start = std::chrono::steady_clock::now();
  for (const Hash128& k : keys) {
    for (size_t i : p.Owners(k, replicas)) count[i] += 1;
  }
  const double ns =
      std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count() /
      static_cast<double>(keys.size());
  double total_weight = 0;
  for (const auto& n : nodes) total_weight += Placement::WeightOf(n);
  double max_ratio = 0, min_ratio = 1e9;
  for (size_t i = 0; i < nodes.size(); ++i) {
    // Expected share of a node: its weight's share (exact for R = 1; for R > 1 with unequal
    // weights the second choice flattens shares, so only equal weights are reported for R = 2).
    const double expected =
        static_cast<double>(keys.size() * replicas) * Placement::WeightOf(nodes[i]) / total_weight;
    max_ratio = std::max(max_ratio, count[i] / expected);
    min_ratio = std::min(min_ratio, count[i] / expected);
  }
  char line[512];
  std::snprintf(line, sizeof line,
                "{\"case\":\"%s\",\"nodes\":%zu,\"replicas\":%zu,\"keys\":%zu,"
                "\"max_over_mean\":%.4f,\"min_over_mean\":%.4f,\"ns_per_owners_call\":%.1f}",
                label, nodes.size(), replicas, keys.size(), max_ratio, min_ratio, ns);
  std::fprintf(stderr, "%-10s nodes %3zu  R %zu  max/mean %.4f  min/mean %.4f  %.0f ns/call\n",
               label, nodes.size(), replicas, max_ratio, min_ratio, ns);
  return line;
}

// Bounded loads: owners of every key, in arrival order (see the top of this file).
std::vector<std::vector<size_t>> BoundedOwners(const std::vector<NodeRecord>& nodes,
                                               const std::vector<Hash128>& keys, size_t replicas,
                                               double eps, std::vector<size_t>* depth) {
  const size_t n = nodes.size();
  std::vector<double> w(n);
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += w[i] = Placement::WeightOf(nodes[i]);
  std::vector<uint64_t> load(n, 0);
  std::vector<std::vector<size_t>> owners(keys.size());
  std::vector<std::pair<double, size_t>> order(n);
  uint64_t placed = 0;
  for (size_t k = 0; k < keys.size(); ++k) {
    for (size_t i = 0; i < n; ++i) order[i] = {Placement::Score(nodes[i].id, w[i], keys[k]), i};
    std::sort(order.begin(), order.end(), [&](const auto& a, const auto& b) {
      if (a.first != b.first) return a.first > b.first;
      return nodes[a.second].id < nodes[b.second].id;
    });
    size_t last = 0;
    for (size_t pos = 0; pos < n && owners[k].size() < std::min(replicas, n); ++pos) {
      const size_t i = order[pos].second;
      const double cap = std::ceil((1.0 + eps) * static_cast<double>(placed + 1) * w[i] / total);
      if (static_cast<double>(load[i]) + 1 > cap) continue;
      owners[k].push_back(i);
      ++load[i];
      ++placed;
      last = pos;
    }
    // Every node below R's share of slack is taken (rare): the next nodes in order, over the cap.
    for (size_t pos = 0; pos < n && owners[k].size() < std::min(replicas, n); ++pos) {
      const size_t i = order[pos].second;
      if (std::find(owners[k].begin(), owners[k].end(), i) != owners[k].end()) continue;
      owners[k].push_back(i);
      ++load[i];
      ++placed;
      last = std::max(last, pos);
    }
    if (depth != nullptr) depth->push_back(last + 1);
  }
  return owners;
}

std::string RunBounded(const std::vector<NodeRecord>& nodes, const std::vector<Hash128>& keys,
                       size_t replicas, double eps) {
  std::vector<size_t> depth;
  const auto start = std::chrono::steady_clock::now();
  const auto owners = BoundedOwners(nodes, keys, replicas, eps, &depth);
  const double ns =
      std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count() /
      static_cast<double>(keys.size());
  std::vector<double> count(nodes.size(), 0);
  for (const auto& o : owners) {
    for (size_t i : o) count[i] += 1;
  }
  const double mean = static_cast<double>(keys.size() * replicas) / nodes.size();
  const double max_ratio = *std::max_element(count.begin(), count.end()) / mean;
  const double min_ratio = *std::min_element(count.begin(), count.end()) / mean;
  // Keys whose copies are not all on their R top rendezvous nodes, and the reader's depth.
  size_t moved = 0;
  double depth_sum = 0;
  for (size_t d : depth) {
    moved += d > replicas;
    depth_sum += static_cast<double>(d);
  }
  std::vector<size_t> sorted = depth;
  std::sort(sorted.begin(), sorted.end());
  const size_t p99 = sorted[std::min(sorted.size() - 1, sorted.size() * 99 / 100)];
  const size_t max_depth = sorted.back();
  // Churn at 64 nodes (R = 1): one node removed, the same keys placed again.
  double churn = -1, churn_plain = -1;
  if (nodes.size() == 64 && replicas == 1) {
    std::vector<NodeRecord> fewer(nodes.begin() + 1, nodes.end());
    const auto after = BoundedOwners(fewer, keys, 1, eps, nullptr);
    Placement before_p(nodes), after_p(fewer);
    size_t changed = 0, changed_plain = 0;
    for (size_t k = 0; k < keys.size(); ++k) {
      changed += nodes[owners[k][0]].id != fewer[after[k][0]].id;
      changed_plain += before_p.OwnerIds(keys[k], 1) != after_p.OwnerIds(keys[k], 1);
    }
    churn = static_cast<double>(changed) / static_cast<double>(keys.size());
    churn_plain = static_cast<double>(changed_plain) / static_cast<double>(keys.size());
  }
  char line[640];
  std::snprintf(line, sizeof line,
                "{\"case\":\"bounded\",\"eps\":%.3f,\"nodes\":%zu,\"replicas\":%zu,\"keys\":%zu,"
                "\"max_over_mean\":%.4f,\"min_over_mean\":%.4f,\"keys_off_top_r\":%.4f,"
                "\"mean_read_depth\":%.3f,\"p99_read_depth\":%zu,\"max_read_depth\":%zu,"
                "\"churn_one_removed\":%.4f,\"churn_one_removed_plain\":%.4f,"
                "\"ns_per_key\":%.1f}",
                eps, nodes.size(), replicas, keys.size(), max_ratio, min_ratio,
                static_cast<double>(moved) / static_cast<double>(keys.size()),
                depth_sum / static_cast<double>(keys.size()), p99, max_depth, churn, churn_plain,
                ns);
  std::fprintf(stderr,
               "bounded eps %.2f nodes %3zu  R %zu  max/mean %.4f  min/mean %.4f  off top-R "
               "%.3f  depth mean %.2f p99 %zu max %zu  churn %.4f (plain %.4f)\n",
               eps, nodes.size(), replicas, max_ratio, min_ratio,
               static_cast<double>(moved) / static_cast<double>(keys.size()),
               depth_sum / static_cast<double>(keys.size()), p99, max_depth, churn, churn_plain);
  return line;
}

std::vector<NodeRecord> Equal(int n) {
  std::vector<NodeRecord> out;
  for (int i = 0; i < n; ++i) {
    NodeRecord r;
    r.id = "node-" + std::to_string(i);
    r.grpc_address = "10.0.0." + std::to_string(i) + ":7100";
    r.capacity_bytes = 64ull << 30;
    out.push_back(r);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  size_t n_keys = 100'000;
  std::string out_path;
  std::vector<double> eps;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--keys") && i + 1 < argc) n_keys = std::stoul(argv[++i]);
    if (!std::strcmp(argv[i], "--eps") && i + 1 < argc) eps.push_back(std::stod(argv[++i]));
    if (!std::strcmp(argv[i], "--out") && i + 1 < argc) out_path = argv[++i];
  }
  if (eps.empty()) eps = {0.02, 0.04};
  const std::vector<Hash128> keys = Keys(n_keys);
  std::vector<std::string> rows;
  for (int n : {3, 8, 64}) {
    rows.push_back(Run("equal", Equal(n), keys, 1));
    rows.push_back(Run("equal", Equal(n), keys, 2));
  }
  std::vector<NodeRecord> weighted = Equal(8);
  for (size_t i = 0; i < weighted.size(); ++i) weighted[i].capacity_bytes = (i + 1) << 34;
  rows.push_back(Run("weighted", weighted, keys, 1));
  for (double e : eps) {
    for (int n : {3, 8, 64}) {
      rows.push_back(RunBounded(Equal(n), keys, 1, e));
      rows.push_back(RunBounded(Equal(n), keys, 2, e));
    }
  }
  std::string json = "{\"benchmark\":\"placement_balance\",\"results\":[";
  for (size_t i = 0; i < rows.size(); ++i) json += (i ? "," : "") + rows[i];
  json += "]}\n";
  std::fputs(json.c_str(), stdout);
  if (!out_path.empty()) std::ofstream(out_path) << json;
  return 0;
}
