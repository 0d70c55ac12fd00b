// KvConnector: moves a prompt's KV between an engine's paged memory and cachesvc.
//
// Engine-agnostic: it works on a kernels::PagedKvView, a block table, token ids and a model
// identity (ModelSpec). engine_adapter.h plugs it into the reference engine; a vLLM / SGLang
// binding would wrap the same calls (docs/connector.md maps them).
//
//   load:  Lookup(tokens)            one Lookup RPC over the prompt's full-chunk keys
//          StartLoad(lookup, ...)    one AcquireMany RPC (leases in the shared arena; Get streams
//                                    into staging buffers for TCP targets), crc32c of every chunk,
//                                    then a loader thread scatters layer by layer into the blocks
//          KvLoad::WaitLayer(l)      the engine's compute waits (with a deadline) for layer l
//   store: StoreAsync(...)           after prefill, a background thread gathers each new full
//                                    chunk into an arena reservation and commits it
//
// Failure model: the cache never changes what the engine computes. A chunk that is missing,
// corrupt (crc32c), of an unexpected layout or unreachable before compute starts shrinks the
// hit to the chunks before it; a load that fails or runs late after compute started makes
// WaitLayer return an error, and the caller recomputes (engine_adapter.h does). Every wait and
// RPC has a deadline, so nothing here can hang an engine. cachesvc being down is a miss.
//
// Threading: KvConnector is thread-safe (several engines may share one). A KvLoad is used by one
// thread at a time. A StoreHandle may be waited on from any thread.
#ifndef KVSTASH_CONNECTOR_CONNECTOR_H_
#define KVSTASH_CONNECTOR_CONNECTOR_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "kvstash/client/kv_client.h"
#include "kvstash/common/key.h"
#include "kvstash/common/metrics.h"
#include "kvstash/common/status.h"
#include "kvstash/connector/chunker.h"
#include "kvstash/kernels/paged_kv.h"

namespace kvstash::connector {

struct ConnectorOptions {
  std::string name_space;  // tenant / cache salt: part of every key
  uint32_t chunk_tokens = kDefaultChunkTokens;
  bool load = true;   // look up and load cached prefixes
  bool store = true;  // store new full chunks after prefill
  // crc32c of every leased chunk before its bytes are used (the service verifies SSD reads and
  // commits; this also catches bytes changed in the shared arena).
  bool verify_checksums = true;
  // Longest time KvLoad::WaitLayer blocks for one layer before giving up (the caller then
  // recomputes).
  std::chrono::milliseconds layer_timeout{2000};
  // A lease closer than this to its expiry is treated as lost before each scatter: the service
  // may reuse the bytes once it expires.
  std::chrono::milliseconds lease_margin{250};
  // Chunks waiting to be stored; chunks beyond it are dropped (counted), never waited for.
  uint32_t max_queued_store_chunks = 256;
  // While the service is unreachable, a background reconnect is tried at most this often; after
  // an RPC ran into its deadline the cache is skipped (a miss) for this long.
  std::chrono::milliseconds reconnect_interval{2000};
  // Deadlines of the connector's own client: every RPC on the load path is bounded by these.
  client::ClientOptions client = {.rpc_timeout = std::chrono::milliseconds(2000),
                                  .stream_timeout = std::chrono::milliseconds(10'000),
                                  .connect_timeout = std::chrono::milliseconds(1000)};
  // Called on the loader thread before it scatters each layer (diagnostics and fault-injection
  // tests: e.g. block to make a load late). Must return; may be empty.
  std::function<void(uint32_t layer)> before_scatter_layer;
  // Where kvstash_connector_* metrics go; null = a registry owned by the connector.
  MetricsRegistry* metrics = nullptr;
};

// Result of KvConnector::Lookup.
struct PrefixLookup {
  ChunkPlan plan;                   // every full chunk of the prompt
  std::vector<bool> present;        // per full chunk
  std::vector<client::Tier> tiers;  // per full chunk: fastest tier holding it (kUnknown if absent)
  uint32_t hit_chunks = 0;          // leading present chunks
  Status status;                    // non-OK: why nothing was looked up (hit_chunks is 0)
  double seconds = 0;               // time spent in Lookup

  uint32_t hit_tokens() const { return hit_chunks * plan.chunk_tokens; }
};

// What one load did; complete once the load finished or was cancelled.
struct LoadReport {
  uint32_t looked_up_chunks = 0;  // the lookup's hit
  uint32_t hit_chunks = 0;        // after acquire and verification: what compute may skip
  uint32_t hit_tokens = 0;
  uint32_t cpu_chunks = 0, ssd_chunks = 0, other_chunks = 0;  // where hit chunks came from
  uint32_t missing_chunks = 0;                                // gone between Lookup and Acquire
  uint32_t corrupt_chunks = 0;     // crc32c mismatch (the object is deleted)
  uint32_t mismatched_chunks = 0;  // stored with another layout or encoding
  uint32_t layers_loaded = 0;
  Status failure;               // set when the load failed after it started
  double transfer_seconds = 0;  // Acquire RPC (SSD promotion included) or Get streams
  double verify_seconds = 0;    // crc32c of leased bytes
  double scatter_seconds = 0;   // layout conversion into paged blocks (loader thread)
  double wait_seconds = 0;      // compute blocked in WaitLayer
};

// Cumulative counters of a connector (also exported as kvstash_connector_* metrics).
struct ConnectorStats {
  uint64_t lookups = 0, lookup_failures = 0;
  uint64_t prompt_tokens = 0;  // tokens of prompts looked up
  uint64_t hit_tokens_cpu = 0, hit_tokens_ssd = 0, hit_tokens_other = 0;
  uint64_t missing_chunks = 0, corrupt_chunks = 0, mismatched_chunks = 0, acquire_failures = 0;
  uint64_t load_timeouts = 0, leases_lost = 0, loads_failed = 0;
  uint64_t chunks_stored = 0, store_already_present = 0, store_failures = 0, store_dropped = 0;
  double lookup_seconds = 0, transfer_seconds = 0, verify_seconds = 0, scatter_seconds = 0,
         wait_seconds = 0, gather_seconds = 0;

  uint64_t hit_tokens() const { return hit_tokens_cpu + hit_tokens_ssd + hit_tokens_other; }
};

namespace internal {
struct LoadState;
struct StoreState;
struct Metrics;
class Worker;
}  // namespace internal

// One prefix load in progress. Destroying it cancels it.
class KvLoad {
 public:
  ~KvLoad();
  KvLoad(const KvLoad&) = delete;
  KvLoad& operator=(const KvLoad&) = delete;

  // Chunks / tokens [0, hit_tokens) that will be in paged memory layer by layer; final when
  // StartLoad returns. Compute must cover the rest of the prompt.
  uint32_t hit_chunks() const;
  uint32_t hit_tokens() const;

  // Returns OK once `layer`'s KV of every hit position is in paged memory. DeadlineExceeded
  // when it is not there within options.layer_timeout; Aborted when the load failed (a lease
  // was lost); Cancelled after Cancel(). After any error the load is cancelled and no loader
  // write to paged memory happens once this returns: the caller recomputes the hit positions.
  // A layer outside the spec's layer range returns OK at once.
  Status WaitLayer(uint32_t layer);

  // Stops the loader. On return it writes nothing more into paged memory (waits at most for
  // one chunk-layer copy in progress). Idempotent.
  void Cancel();

  LoadReport Report() const;

 private:
  friend class KvConnector;
  explicit KvLoad(std::shared_ptr<internal::LoadState> state);
  std::shared_ptr<internal::LoadState> state_;
};

// A background store of a prompt's new chunks. The blocks it reads must stay allocated and
// unmodified until done() (decode may keep appending to the sequence: it writes other slots).
class StoreHandle {
 public:
  explicit StoreHandle(std::shared_ptr<internal::StoreState> state);
  bool done() const;
  void Wait() const;
  // false if not done within `timeout`.
  bool WaitFor(std::chrono::milliseconds timeout) const;
  // Valid once done().
  uint32_t chunks_requested() const;
  uint32_t chunks_stored() const;
  uint32_t chunks_already_present() const;
  uint32_t chunks_failed() const;  // failed or dropped
  Status status() const;           // first error; OK when every chunk was stored or present

 private:
  std::shared_ptr<internal::StoreState> state_;
};

class KvConnector {
 public:
  // Connects to cachesvc at `target` ("unix:///path" or "host:port"). An unreachable service
  // is not an error: the connector starts offline (client_status() says why), every lookup is
  // a miss, and a reconnect is tried in the background. InvalidArgument for a bad spec or
  // options (chunk_tokens 0, namespace too long).
  static Result<std::unique_ptr<KvConnector>> Create(const std::string& target,
                                                     const ModelSpec& spec,
                                                     const ConnectorOptions& options = {});
  // Uses an existing client (shared with other users); never reconnects.
  static Result<std::unique_ptr<KvConnector>> Create(std::shared_ptr<client::KvClient> client,
                                                     const ModelSpec& spec,
                                                     const ConnectorOptions& options = {});
  // Cancels stores not started yet (their handles complete with Cancelled) and waits for the
  // one running (bounded by RPC deadlines).
  ~KvConnector();
  KvConnector(const KvConnector&) = delete;
  KvConnector& operator=(const KvConnector&) = delete;

  const Chunker& chunker() const { return chunker_; }
  const ConnectorOptions& options() const { return options_; }
  // OK while a client is attached and in use; otherwise the last connect or RPC error.
  Status client_status() const;
  // Whether chunk data moves through the shared arena (false: gRPC streams).
  bool shared_memory() const;

  // Names the full chunks of `tokens` and asks the service, in one RPC, which are present.
  // Never fails: a service error gives hit_chunks 0 with the error in `status`.
  PrefixLookup Lookup(std::span<const int32_t> tokens);

  // Acquires chunks [0, min(lookup.hit_chunks, max_chunks)), verifies them, and starts the
  // loader that scatters them into `block_table` (which must cover every hit position; it is
  // copied) of `paged` (copied; the pools must outlive the load). The hit shrinks to the chunks
  // before the first one that cannot be acquired or verified. InvalidArgument when the paged
  // shape disagrees with the spec or the block table is too short.
  Result<std::unique_ptr<KvLoad>> StartLoad(const PrefixLookup& lookup,
                                            const kernels::PagedKvView& paged,
                                            std::span<const int32_t> block_table,
                                            uint32_t max_chunks = UINT32_MAX);

  // Queues the store of full chunks [first_chunk, lookup.plan.full_chunks()) not marked
  // present in `lookup`, read from `block_table` of `paged` (both copied). Returns at once; the
  // caller keeps the blocks until the handle is done(). A chunk already stored by someone else
  // is skipped. Never blocks on the service.
  std::shared_ptr<StoreHandle> StoreAsync(const PrefixLookup& lookup, uint32_t first_chunk,
                                          const kernels::PagedKvView& paged,
                                          std::span<const int32_t> block_table);
  // Waits until every store queued so far is done.
  void Flush();

  ConnectorStats Stats() const;

 private:
  KvConnector(Chunker chunker, const ConnectorOptions& options);
  std::shared_ptr<client::KvClient> Client();  // null while offline; may trigger a reconnect
  void NoteClientError(const Status& status);
  Status CheckPaged(const kernels::PagedKvView& paged) const;
  void AcquireShared(client::KvClient& client, const PrefixLookup& lookup, uint32_t chunks,
                     internal::LoadState& state);
  void FetchStreamed(client::KvClient& client, const PrefixLookup& lookup, uint32_t chunks,
                     internal::LoadState& state);
  // `s` is kept alive by the loader task that calls this (it holds the shared_ptr).
  void RunLoader(internal::LoadState& s);
  void RunStore(std::shared_ptr<internal::StoreState> state);
  void DeleteCorrupt(std::vector<ObjectName> names);

  Chunker chunker_;
  ConnectorOptions options_;
  std::string target_;  // empty when a client was given
  std::unique_ptr<MetricsRegistry> own_metrics_;
  std::unique_ptr<internal::Metrics> metrics_;

  mutable std::mutex client_mu_;
  std::shared_ptr<client::KvClient> client_;
  Status client_status_;
  bool reconnecting_ = false;
  std::chrono::steady_clock::time_point last_connect_attempt_;
  std::chrono::steady_clock::time_point paused_until_;

  std::atomic<uint32_t> queued_store_chunks_{0};
  // Declared last: destroyed first, so their threads stop before the members they use go away.
  std::unique_ptr<internal::Worker> background_;  // stores, lease releases, deletes, reconnects
  std::unique_ptr<internal::Worker> loader_;      // scatters
};

}  // namespace kvstash::connector

#endif  // KVSTASH_CONNECTOR_CONNECTOR_H_
