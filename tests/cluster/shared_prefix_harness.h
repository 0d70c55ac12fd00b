// Test and benchmark helper: a shared-prefix workload from several real engine processes, each
// attached through the KV connector to its own cachesvc node on loopback, in one of three
// configurations:
//   kCluster   the nodes form one cluster (one etcd, default R, peer fetch over UCX), so a prefix
//              one engine computed is a remote hit for the others;
//   kIsolated  the same nodes without etcd or peers: each engine reuses only what it stored;
//   kNoCache   the engines without a connector (the tokens and TTFT of plain prefill).
// Requests come from a seeded mix: `docs` shared documents, each request one of them (uniform)
// plus a question unique to the request, spread round-robin over the engines. Requests run one
// at a time in a fixed global order, and in the cluster the next request waits until every
// node's replication queue is empty (bounded), so the hits depend on the workload, not on
// timing, and TTFT is not skewed by engines competing for the cores.
//
// Engines are `shared_prefix_engine` processes (tests/cluster/shared_prefix_engine.cc) driven
// over pipes; every process started here (etcd, cachesvc, engines) is killed when the run ends
// or the caller dies (PR_SET_PDEATHSIG for the engines). Every wait is bounded.
//
// Threading: one run at a time per process (it ignores SIGPIPE process-wide while it runs).
#ifndef KVSTASH_TESTS_CLUSTER_SHARED_PREFIX_HARNESS_H_
#define KVSTASH_TESTS_CLUSTER_SHARED_PREFIX_HARNESS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kvstash/common/status.h"

namespace kvstash::testing {

enum class PrefixConfig { kCluster, kIsolated, kNoCache };
const char* PrefixConfigName(PrefixConfig config);  // "cluster", "isolated", "nocache"

struct SharedPrefixOptions {
  std::string model;                   // GGUF (chat template) or llama2.c checkpoint
  std::string tokenizer;               // llama2.c tokenizer file; empty for GGUF
  std::vector<std::string> doc_files;  // documents are cut from these, in turn
  int engines = 3;                     // one node per engine
  int docs = 4;
  uint32_t doc_tokens = 512;
  size_t doc_offset = 3000;  // bytes skipped at the start of a file (licence headers)
  int requests = 24;
  int max_tokens = 8;
  uint32_t chunk_tokens = 256;
  uint64_t seed = 1;
  size_t threads = 0;  // engine compute threads (0 = all cores)
  std::string cpu_capacity = "256MiB";
  int ttl_s = 10;                    // cluster membership TTL (the service's default)
  int ready_timeout_ms = 300'000;    // engine start (model load)
  int request_timeout_ms = 180'000;  // one request
  bool verbose = false;              // a line per request on stderr
};

struct PrefixRequest {
  int id = 0;
  int engine = 0;
  int doc = 0;
  std::string question;
};

// The workload: deterministic for the options (seeded std::mt19937_64).
std::vector<PrefixRequest> MakeSharedPrefixWorkload(const SharedPrefixOptions& options);

struct PrefixRequestResult {
  PrefixRequest request;
  uint32_t prompt_tokens = 0;
  uint32_t hit_tokens = 0;         // positions whose KV came from the cache
  uint32_t remote_hit_tokens = 0;  // of those, served from another node
  uint32_t computed_tokens = 0;
  bool load_failed = false;         // a load failed after compute started (recomputed)
  double lookup_ms = 0;             // the connector's Lookup RPC
  double transfer_ms = 0;           // its Acquire / Get of the hit (the peer fetch included)
  double ttft_ms = 0;               // prefill through the connector (lookup, load, compute)
  double peer_fetched_objects = 0;  // kvstash_peer_fetched_objects_total on the engine's node
                                    // during the request
  std::vector<int32_t> tokens;      // generated (greedy)
};

struct PrefixRun {
  PrefixConfig config = PrefixConfig::kCluster;
  std::vector<PrefixRequestResult> results;  // in request order
  double replicated_objects = 0;  // cluster: kvstash_cluster_replicated_objects_total, all nodes
  std::string kernels;            // the engines' kernel set
  bool shared_memory = false;     // whether the engines' connectors map the arena
};

// Starts the nodes (and etcd) and engines of `config`, runs the workload, stops everything.
// FailedPrecondition when etcd or the engine binary is missing (callers may skip); other errors
// when a process fails to start or answer in time (with the tail of its log).
Result<PrefixRun> RunSharedPrefix(PrefixConfig config, const SharedPrefixOptions& options);

struct PrefixSummary {
  uint64_t requests = 0, prompt_tokens = 0, hit_tokens = 0, remote_hit_tokens = 0,
           computed_tokens = 0;
  double hit_rate = 0;         // hit_tokens / prompt_tokens
  double remote_hit_rate = 0;  // remote_hit_tokens / prompt_tokens
  uint64_t hit_requests = 0, remote_hit_requests = 0, load_failures = 0;
  // Load = lookup + transfer, over requests with a hit (the engine-visible Get of the prefix).
  double load_p50_ms = 0, load_p90_ms = 0;
  double remote_load_p50_ms = 0;  // over requests with a remote hit
  double local_load_p50_ms = 0;   // over requests whose hit was all on their own node
  double ttft_p50_ms = 0, ttft_p90_ms = 0, ttft_total_ms = 0;
  double peer_fetched_objects = 0;
};

PrefixSummary Summarize(const PrefixRun& run);

}  // namespace kvstash::testing

#endif  // KVSTASH_TESTS_CLUSTER_SHARED_PREFIX_HARNESS_H_
