// Balance of weighted rendezvous placement (cluster/placement.h): 100,000 keys over 3, 8 and 64
// simulated nodes of equal capacity, and over 8 nodes of capacities 1:2:...:8; for each, the
// first owner's and the R = 2 owners' per-node counts as max/mean and min/mean (for unequal
// capacities, count / expected share), and the time of one Owners() call.
//
//   placement_balance [--keys N] [--out FILE]   (JSON on stdout, and to FILE when given)
#include <algorithm>
#include <chrono>
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
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--keys") && i + 1 < argc) n_keys = std::stoul(argv[++i]);
    if (!std::strcmp(argv[i], "--out") && i + 1 < argc) out_path = argv[++i];
  }
  const std::vector<Hash128> keys = Keys(n_keys);
  std::vector<std::string> rows;
  for (int n : {3, 8, 64}) {
    rows.push_back(Run("equal", Equal(n), keys, 1));
    rows.push_back(Run("equal", Equal(n), keys, 2));
  }
  std::vector<NodeRecord> weighted = Equal(8);
  for (size_t i = 0; i < weighted.size(); ++i) weighted[i].capacity_bytes = (i + 1) << 34;
  rows.push_back(Run("weighted", weighted, keys, 1));
  std::string json = "{\"benchmark\":\"placement_balance\",\"results\":[";
  for (size_t i = 0; i < rows.size(); ++i) json += (i ? "," : "") + rows[i];
  json += "]}\n";
  std::fputs(json.c_str(), stdout);
  if (!out_path.empty()) std::ofstream(out_path) << json;
  return 0;
}
