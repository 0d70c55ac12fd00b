// Zipf trace simulator for chunk-cache eviction (algorithms.md 3.4.5): a catalog of RAG chunk
// caches of different sizes and different reuse value, requests of k distinct chunks drawn from
// a Zipf popularity law, one cache of fixed capacity run under an EvictionPolicy. Used by
// tests/storage/cost_policy_test.cc and bench/blend/eviction_sim.cc (benchmarks may use test
// helpers; tests never link benchmark code). Deterministic per seed.
#ifndef KVSTASH_TESTS_TESTING_EVICTION_TRACE_H_
#define KVSTASH_TESTS_TESTING_EVICTION_TRACE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <unordered_map>
#include <vector>

#include "kvstash/storage/eviction_policy.h"
#include "testing/rng.h"

namespace kvstash::testing {

struct TraceConfig {
  uint32_t num_chunks = 2000;
  uint32_t num_requests = 20000;
  uint32_t chunks_per_request = 5;
  double zipf_s = 1.0;
  uint32_t min_tokens = 128, max_tokens = 256;
  double max_cfo = 0.6;  // a variant's Cache Fix Overhead, uniform in [0, max_cfo]
  // SmolLM2-135M: f16 KV of 30 layers x 2 x 3 heads x 64 dims; ~135M parameters.
  uint64_t kv_bytes_per_token = 30 * 2 * 3 * 64 * 2;
  double params = 135e6, layers = 30, dim = 576;
  uint64_t seed = 1;
};

struct ChunkInfo {
  uint32_t tokens = 0;
  uint64_t bytes = 0;
  double prefill_flops = 0;  // computing the chunk from scratch
  double saved_flops = 0;    // what a hit saves: prefill_flops x (1 - CFO)
};

struct TraceResult {
  double saved_flops = 0, total_flops = 0;  // over all requested chunks
  uint64_t hits = 0, accesses = 0, evictions = 0;
  double saved_fraction() const { return total_flops > 0 ? saved_flops / total_flops : 0; }
  double hit_ratio() const { return accesses ? static_cast<double>(hits) / accesses : 0; }
};

struct Trace {
  std::vector<ChunkInfo> chunks;
  std::vector<uint32_t> accesses;  // chunk ids, request after request
  uint64_t catalog_bytes = 0;
};

inline Trace MakeTrace(const TraceConfig& c) {
  Trace t;
  Rng rng(c.seed);
  for (uint32_t i = 0; i < c.num_chunks; ++i) {
    ChunkInfo ch;
    ch.tokens =
        c.min_tokens + static_cast<uint32_t>(rng.Next() % (c.max_tokens - c.min_tokens + 1));
    ch.bytes = uint64_t{ch.tokens} * c.kv_bytes_per_token;
    const double n = ch.tokens;
    ch.prefill_flops = 2.0 * c.params * n + 2.0 * c.layers * c.dim * n * n;
    ch.saved_flops = ch.prefill_flops * (1.0 - c.max_cfo * rng.Uniform());
    t.catalog_bytes += ch.bytes;
    t.chunks.push_back(ch);
  }
  // Popularity rank -> chunk id: a random permutation, independent of size and value.
  std::vector<uint32_t> by_rank(c.num_chunks);
  std::iota(by_rank.begin(), by_rank.end(), 0u);
  for (uint32_t i = c.num_chunks; i > 1; --i) std::swap(by_rank[i - 1], by_rank[rng.Next() % i]);
  std::vector<double> cdf(c.num_chunks);
  double sum = 0;
  for (uint32_t r = 0; r < c.num_chunks; ++r) cdf[r] = (sum += 1.0 / std::pow(r + 1.0, c.zipf_s));
  for (double& x : cdf) x /= sum;
  for (uint32_t q = 0; q < c.num_requests; ++q) {
    std::vector<uint32_t> picked;
    while (picked.size() < c.chunks_per_request) {
      const double u = rng.Uniform();
      const uint32_t r =
          static_cast<uint32_t>(std::lower_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
      const uint32_t id = by_rank[std::min(r, c.num_chunks - 1)];
      if (std::find(picked.begin(), picked.end(), id) == picked.end()) picked.push_back(id);
    }
    t.accesses.insert(t.accesses.end(), picked.begin(), picked.end());
  }
  return t;
}

// Runs `trace` through a cache of `capacity` bytes managed by `policy`; value = saved FLOPs.
inline TraceResult Simulate(const Trace& trace, uint64_t capacity,
                            storage::EvictionPolicy& policy) {
  TraceResult res;
  struct Held {
    uint64_t hits = 0;
  };
  std::unordered_map<uint32_t, Held> held;
  uint64_t used = 0, now = 0;
  auto meta = [&](uint32_t id, uint64_t hits) {
    storage::EvictionMeta m;
    m.key = Hash128{id + 1ull, 0};
    m.bytes = trace.chunks[id].bytes;
    m.hits = hits;
    m.last_access_ns = now;
    m.num_tokens = trace.chunks[id].tokens;
    m.value = trace.chunks[id].saved_flops;
    return m;
  };
  for (uint32_t id : trace.accesses) {
    ++now;
    ++res.accesses;
    const ChunkInfo& ch = trace.chunks[id];
    res.total_flops += ch.prefill_flops;
    auto it = held.find(id);
    if (it != held.end()) {
      ++res.hits;
      res.saved_flops += ch.saved_flops;
      policy.OnAccess(meta(id, ++it->second.hits));
      continue;
    }
    if (ch.bytes > capacity) continue;
    while (used + ch.bytes > capacity) {
      auto victim = policy.Victim();
      if (!victim) break;
      const uint32_t vid = static_cast<uint32_t>(victim->lo - 1);
      policy.OnRemove(*victim);
      used -= trace.chunks[vid].bytes;
      held.erase(vid);
      ++res.evictions;
    }
    held.emplace(id, Held{});
    used += ch.bytes;
    policy.OnInsert(meta(id, 0));
  }
  return res;
}

}  // namespace kvstash::testing

#endif  // KVSTASH_TESTS_TESTING_EVICTION_TRACE_H_
