// KvConnector: construction, connection management, lookup, stores and statistics. The load
// path (StartLoad, the loader thread, KvLoad) is in load.cc.
#include "kvstash/connector/connector.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "connector_internal.h"
#include "kvstash/kernels/paged_kv.h"
#include "worker.h"

namespace kvstash::connector {

using internal::Clock;
using internal::SecondsSince;

internal::Metrics::Metrics(MetricsRegistry& r) {
  lookups = r.GetCounter("kvstash_connector_lookups_total", "prefix lookups");
  lookup_failures = r.GetCounter("kvstash_connector_lookup_failures_total",
                                 "lookups that failed (service unreachable, deadline)");
  prompt_tokens =
      r.GetCounter("kvstash_connector_prompt_tokens_total", "tokens of prompts looked up");
  const char* hit_help = "prompt tokens loaded from the cache instead of computed";
  hit_cpu = r.GetCounter("kvstash_connector_hit_tokens_total", hit_help, {{"tier", "cpu"}});
  hit_ssd = r.GetCounter("kvstash_connector_hit_tokens_total", hit_help, {{"tier", "ssd"}});
  hit_other = r.GetCounter("kvstash_connector_hit_tokens_total", hit_help, {{"tier", "other"}});
  const char* chunk_help = "hit chunks dropped before use";
  missing =
      r.GetCounter("kvstash_connector_chunk_errors_total", chunk_help, {{"reason", "missing"}});
  corrupt =
      r.GetCounter("kvstash_connector_chunk_errors_total", chunk_help, {{"reason", "corrupt"}});
  mismatched =
      r.GetCounter("kvstash_connector_chunk_errors_total", chunk_help, {{"reason", "layout"}});
  acquire_failed =
      r.GetCounter("kvstash_connector_chunk_errors_total", chunk_help, {{"reason", "acquire"}});
  const char* load_help = "loads that failed after compute started (tokens recomputed)";
  load_timeouts =
      r.GetCounter("kvstash_connector_load_failures_total", load_help, {{"reason", "timeout"}});
  leases_lost =
      r.GetCounter("kvstash_connector_load_failures_total", load_help, {{"reason", "lease_lost"}});
  loads_failed =
      r.GetCounter("kvstash_connector_load_failures_total", load_help, {{"reason", "other"}});
  const char* store_help = "chunks handed to the store path, by outcome";
  stored = r.GetCounter("kvstash_connector_store_chunks_total", store_help, {{"result", "stored"}});
  present =
      r.GetCounter("kvstash_connector_store_chunks_total", store_help, {{"result", "present"}});
  store_failed =
      r.GetCounter("kvstash_connector_store_chunks_total", store_help, {{"result", "failed"}});
  store_dropped =
      r.GetCounter("kvstash_connector_store_chunks_total", store_help, {{"result", "dropped"}});
  const char* time_help = "time spent in the connector, by stage";
  lookup_s = r.GetHistogram("kvstash_connector_seconds", time_help, {{"stage", "lookup"}});
  transfer_s = r.GetHistogram("kvstash_connector_seconds", time_help, {{"stage", "transfer"}});
  verify_s = r.GetHistogram("kvstash_connector_seconds", time_help, {{"stage", "verify"}});
  scatter_s = r.GetHistogram("kvstash_connector_seconds", time_help, {{"stage", "scatter"}});
  wait_s = r.GetHistogram("kvstash_connector_seconds", time_help, {{"stage", "wait"}});
  gather_s = r.GetHistogram("kvstash_connector_seconds", time_help, {{"stage", "gather"}});
}

// ---- StoreHandle ----------------------------------------------------------------------------

StoreHandle::StoreHandle(std::shared_ptr<internal::StoreState> state) : state_(std::move(state)) {}

bool StoreHandle::done() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->done;
}

void StoreHandle::Wait() const {
  std::unique_lock<std::mutex> lock(state_->mu);
  state_->cv.wait(lock, [&] { return state_->done; });
}

bool StoreHandle::WaitFor(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(state_->mu);
  return state_->cv.wait_for(lock, timeout, [&] { return state_->done; });
}

uint32_t StoreHandle::chunks_requested() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->requested;
}
uint32_t StoreHandle::chunks_stored() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->stored;
}
uint32_t StoreHandle::chunks_already_present() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->present;
}
uint32_t StoreHandle::chunks_failed() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->failed;
}
Status StoreHandle::status() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->status;
}

// ---- construction and connection -------------------------------------------------------------

KvConnector::KvConnector(Chunker chunker, const ConnectorOptions& options)
    : chunker_(std::move(chunker)), options_(options) {
  MetricsRegistry* registry = options_.metrics;
  if (registry == nullptr) {
    own_metrics_ = std::make_unique<MetricsRegistry>();
    registry = own_metrics_.get();
  }
  metrics_ = std::make_unique<internal::Metrics>(*registry);
  background_ = std::make_unique<internal::Worker>();
  loader_ = std::make_unique<internal::Worker>();
}

KvConnector::~KvConnector() {
  // Loader first (it posts lease releases to the background worker), then the background worker.
  loader_.reset();
  background_.reset();
}

static Status CheckOptions(const ConnectorOptions& options) {
  if (options.layer_timeout.count() < 0 || options.lease_margin.count() < 0 ||
      options.reconnect_interval.count() < 0) {
    return absl::InvalidArgumentError("connector options: negative duration");
  }
  return OkStatus();
}

Result<std::unique_ptr<KvConnector>> KvConnector::Create(const std::string& target,
                                                         const ModelSpec& spec,
                                                         const ConnectorOptions& options) {
  KVSTASH_RETURN_IF_ERROR(CheckOptions(options));
  KVSTASH_ASSIGN_OR_RETURN(Chunker chunker,
                           Chunker::Create(spec, options.name_space, options.chunk_tokens));
  if (target.empty()) return absl::InvalidArgumentError("connector: empty cache target");
  std::unique_ptr<KvConnector> c(new KvConnector(std::move(chunker), options));
  c->target_ = target;
  c->last_connect_attempt_ = Clock::now();
  auto client = client::KvClient::Connect(target, options.client);
  if (client.ok()) {
    c->client_ = std::move(*client);
  } else {
    c->client_status_ = client.status();
  }
  return c;
}

Result<std::unique_ptr<KvConnector>> KvConnector::Create(std::shared_ptr<client::KvClient> client,
                                                         const ModelSpec& spec,
                                                         const ConnectorOptions& options) {
  KVSTASH_RETURN_IF_ERROR(CheckOptions(options));
  if (client == nullptr) return absl::InvalidArgumentError("connector: null client");
  KVSTASH_ASSIGN_OR_RETURN(Chunker chunker,
                           Chunker::Create(spec, options.name_space, options.chunk_tokens));
  std::unique_ptr<KvConnector> c(new KvConnector(std::move(chunker), options));
  c->client_ = std::move(client);
  return c;
}

Status KvConnector::client_status() const {
  std::lock_guard<std::mutex> lock(client_mu_);
  if (client_ != nullptr && Clock::now() >= paused_until_) return OkStatus();
  return client_status_.ok() ? absl::UnavailableError("not connected") : client_status_;
}

bool KvConnector::shared_memory() const {
  std::lock_guard<std::mutex> lock(client_mu_);
  return client_ != nullptr && client_->shared_memory_attached();
}

std::shared_ptr<client::KvClient> KvConnector::Client() {
  std::lock_guard<std::mutex> lock(client_mu_);
  const auto now = Clock::now();
  if (now < paused_until_) return nullptr;
  if (client_ != nullptr || target_.empty() || reconnecting_) return client_;
  if (now - last_connect_attempt_ < options_.reconnect_interval) return nullptr;
  // Connecting waits up to connect_timeout: never on the caller's (the engine's) thread.
  reconnecting_ = true;
  last_connect_attempt_ = now;
  background_->Post([this](bool cancelled) {
    Result<std::unique_ptr<client::KvClient>> client =
        cancelled ? Result<std::unique_ptr<client::KvClient>>(absl::CancelledError("stopping"))
                  : client::KvClient::Connect(target_, options_.client);
    std::lock_guard<std::mutex> lock(client_mu_);
    reconnecting_ = false;
    last_connect_attempt_ = Clock::now();
    if (client.ok()) {
      client_ = std::move(*client);
      client_status_ = OkStatus();
    } else {
      client_status_ = client.status();
    }
  });
  return nullptr;
}

void KvConnector::NoteClientError(const Status& status) {
  const bool unavailable = absl::IsUnavailable(status);
  if (!unavailable && !absl::IsDeadlineExceeded(status)) return;
  std::lock_guard<std::mutex> lock(client_mu_);
  client_status_ = status;
  if (unavailable && !target_.empty()) {
    // A fresh channel, connected in the background, recovers faster than gRPC's reconnect
    // backoff on the old one. Only a client this connector created is dropped.
    client_.reset();
    last_connect_attempt_ = Clock::now() - options_.reconnect_interval;  // at the next use
  } else {
    // A service that lets RPCs run into their deadline (stalled, overloaded) would cost every
    // prefill a full deadline: leave it alone for a while.
    paused_until_ = Clock::now() + options_.reconnect_interval;
  }
}

Status KvConnector::CheckPaged(const kernels::PagedKvView& paged) const {
  const ModelSpec& spec = chunker_.spec();
  const kernels::PagedKvShape& s = paged.shape;
  if (s.num_layers != spec.num_layers || s.num_kv_heads != spec.total_kv_heads ||
      s.head_dim != spec.head_dim || s.dtype != spec.dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat("paged KV shape (layers ", s.num_layers, ", kv heads ", s.num_kv_heads,
                     ", head dim ", s.head_dim, ", ", std::string(DTypeName(s.dtype)),
                     ") differs from the model spec (", spec.num_layers, ", ", spec.total_kv_heads,
                     ", ", spec.head_dim, ", ", std::string(DTypeName(spec.dtype)), ")"));
  }
  if (paged.k_pools.size() != s.num_layers || paged.v_pools.size() != s.num_layers ||
      s.block_size == 0) {
    return absl::InvalidArgumentError("paged KV view: pools do not match its shape");
  }
  return OkStatus();
}

static Status CheckBlockTable(const kernels::PagedKvShape& shape,
                              std::span<const int32_t> block_table, uint64_t positions) {
  const uint64_t blocks = (positions + shape.block_size - 1) / shape.block_size;
  if (block_table.size() < blocks) {
    return absl::InvalidArgumentError(absl::StrCat("block table has ", block_table.size(),
                                                   " blocks; ", positions, " positions need ",
                                                   blocks));
  }
  return OkStatus();
}

// ---- lookup ----------------------------------------------------------------------------------

PrefixLookup KvConnector::Lookup(std::span<const int32_t> tokens) {
  PrefixLookup out;
  out.plan = chunker_.Plan(tokens);
  const uint32_t n = out.plan.full_chunks();
  out.present.assign(n, false);
  out.tiers.assign(n, client::Tier::kUnknown);
  metrics_->prompt_tokens->Increment(tokens.size());
  if (!options_.load && !options_.store) {
    out.status = absl::FailedPreconditionError("loading and storing are disabled");
    return out;
  }
  if (n == 0) return out;
  metrics_->lookups->Increment();
  std::shared_ptr<client::KvClient> client = Client();
  if (client == nullptr) {
    out.status = client_status();
    metrics_->lookup_failures->Increment();
    return out;
  }
  // The service takes at most 4096 keys per request; a longer prompt's hit stops there.
  const size_t asked = std::min<size_t>(n, 4096);
  const auto t0 = Clock::now();
  Result<client::LookupReply> reply =
      client->Lookup(std::span<const ObjectName>(out.plan.names.data(), asked));
  out.seconds = SecondsSince(t0);
  metrics_->lookup_s->Observe(out.seconds);
  if (!reply.ok() || reply->results.size() != asked) {
    out.status =
        reply.ok() ? absl::InternalError("Lookup answered a wrong number of keys") : reply.status();
    NoteClientError(out.status);
    metrics_->lookup_failures->Increment();
    return out;
  }
  for (size_t i = 0; i < asked; ++i) {
    out.present[i] = reply->results[i].present;
    out.tiers[i] = reply->results[i].tier;
  }
  if (options_.load) {
    while (out.hit_chunks < asked && out.present[out.hit_chunks]) ++out.hit_chunks;
  }
  return out;
}

// ---- store -----------------------------------------------------------------------------------

std::shared_ptr<StoreHandle> KvConnector::StoreAsync(const PrefixLookup& lookup,
                                                     uint32_t first_chunk,
                                                     const kernels::PagedKvView& paged,
                                                     std::span<const int32_t> block_table) {
  auto state = std::make_shared<internal::StoreState>();
  auto handle = std::make_shared<StoreHandle>(state);
  const uint32_t n = lookup.plan.full_chunks();
  if (!options_.store || first_chunk >= n) {
    state->Finish();
    return handle;
  }
  for (uint32_t c = first_chunk; c < n; ++c) {
    if (c < lookup.present.size() && lookup.present[c]) {
      ++state->present;
      continue;
    }
    state->chunk_indices.push_back(c);
    state->names.push_back(lookup.plan.names[c]);
  }
  state->requested = static_cast<uint32_t>(state->chunk_indices.size()) + state->present;
  metrics_->present->Increment(state->present);
  const uint32_t k = static_cast<uint32_t>(state->chunk_indices.size());
  Status bad = CheckPaged(paged);
  if (bad.ok() && k > 0) {
    bad = CheckBlockTable(paged.shape, block_table,
                          uint64_t{state->chunk_indices.back() + 1} * chunker_.chunk_tokens());
  }
  if (!bad.ok() || k == 0) {
    state->failed = bad.ok() ? 0 : k;
    state->status = bad;
    metrics_->store_failed->Increment(state->failed);
    state->Finish();
    return handle;
  }
  // Never block the engine: beyond the queue bound, new chunks are dropped.
  uint32_t queued = queued_store_chunks_.load();
  do {
    if (queued + k > options_.max_queued_store_chunks) {
      state->failed = k;
      state->status = absl::ResourceExhaustedError(
          absl::StrCat("store queue full (", queued, " chunks queued)"));
      metrics_->store_dropped->Increment(k);
      state->Finish();
      return handle;
    }
  } while (!queued_store_chunks_.compare_exchange_weak(queued, queued + k));
  state->paged = paged;
  state->block_table.assign(block_table.begin(), block_table.end());
  background_->Post([this, state, k](bool cancelled) {
    if (cancelled) {
      std::lock_guard<std::mutex> lock(state->mu);
      state->failed += k;
      state->status = absl::CancelledError("connector destroyed before the store ran");
    } else {
      RunStore(state);
    }
    queued_store_chunks_.fetch_sub(k);
    state->Finish();
  });
  return handle;
}

void KvConnector::RunStore(std::shared_ptr<internal::StoreState> state) {
  auto fail = [&](uint32_t count, const Status& status) {
    std::lock_guard<std::mutex> lock(state->mu);
    state->failed += count;
    if (state->status.ok()) state->status = status;
    metrics_->store_failed->Increment(count);
  };
  std::shared_ptr<client::KvClient> client = Client();
  const uint32_t k = static_cast<uint32_t>(state->chunk_indices.size());
  if (client == nullptr) {
    fail(k, client_status());
    return;
  }
  const bool shared = client->shared_memory_attached();
  std::vector<uint8_t> staging;
  for (uint32_t i = 0; i < k; ++i) {
    const uint32_t c = state->chunk_indices[i];
    const ObjectInfo info = chunker_.ChunkInfo(c);
    const kernels::TokenSpan span{state->block_table, c * chunker_.chunk_tokens()};
    Status st;
    if (shared) {
      Result<client::WriteReservation> r = client->Reserve(state->names[i], info);
      if (r.ok()) {
        const auto t0 = Clock::now();
        st = kernels::GatherChunk(state->paged, span, info.layout, r->data().data());
        metrics_->gather_s->Observe(SecondsSince(t0));
        st = st.ok() ? r->Commit() : st;  // a failed gather aborts in the destructor
      } else {
        st = r.status();
      }
    } else {
      staging.resize(info.payload_bytes);
      const auto t0 = Clock::now();
      st = kernels::GatherChunk(state->paged, span, info.layout, staging.data());
      metrics_->gather_s->Observe(SecondsSince(t0));
      if (st.ok()) st = client->Put(state->names[i], info, staging);
    }
    if (st.ok()) {
      std::lock_guard<std::mutex> lock(state->mu);
      ++state->stored;
      metrics_->stored->Increment();
    } else if (absl::IsAlreadyExists(st)) {  // stored meanwhile by another engine
      std::lock_guard<std::mutex> lock(state->mu);
      ++state->present;
      metrics_->present->Increment();
    } else if (absl::IsUnavailable(st) || absl::IsDeadlineExceeded(st)) {
      NoteClientError(st);
      fail(k - i, st);  // the service is gone: do not spend a deadline per chunk
      return;
    } else {
      fail(1, st);
    }
  }
}

void KvConnector::Flush() { background_->Flush(); }

void KvConnector::DeleteCorrupt(std::vector<ObjectName> names) {
  if (names.empty()) return;
  background_->Post([this, names = std::move(names)](bool cancelled) {
    if (cancelled) return;
    if (std::shared_ptr<client::KvClient> client = Client()) (void)client->Delete(names);
  });
}

ConnectorStats KvConnector::Stats() const {
  const internal::Metrics& m = *metrics_;
  ConnectorStats s;
  s.lookups = m.lookups->Value();
  s.lookup_failures = m.lookup_failures->Value();
  s.prompt_tokens = m.prompt_tokens->Value();
  s.hit_tokens_cpu = m.hit_cpu->Value();
  s.hit_tokens_ssd = m.hit_ssd->Value();
  s.hit_tokens_other = m.hit_other->Value();
  s.missing_chunks = m.missing->Value();
  s.corrupt_chunks = m.corrupt->Value();
  s.mismatched_chunks = m.mismatched->Value();
  s.acquire_failures = m.acquire_failed->Value();
  s.load_timeouts = m.load_timeouts->Value();
  s.leases_lost = m.leases_lost->Value();
  s.loads_failed = m.loads_failed->Value();
  s.chunks_stored = m.stored->Value();
  s.store_already_present = m.present->Value();
  s.store_failures = m.store_failed->Value();
  s.store_dropped = m.store_dropped->Value();
  s.lookup_seconds = m.lookup_s->Sum();
  s.transfer_seconds = m.transfer_s->Sum();
  s.verify_seconds = m.verify_s->Sum();
  s.scatter_seconds = m.scatter_s->Sum();
  s.wait_seconds = m.wait_s->Sum();
  s.gather_seconds = m.gather_s->Sum();
  return s;
}

}  // namespace kvstash::connector
