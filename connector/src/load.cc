// The load path: StartLoad (acquire + verify on the caller's thread), the loader thread that
// scatters hit chunks into paged memory layer by layer, and KvLoad (what compute waits on).
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "connector_internal.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/connector/connector.h"
#include "worker.h"

namespace kvstash::connector {

using internal::ChunkSource;
using internal::Clock;
using internal::LoadState;
using internal::SecondsSince;

namespace {

// Same layout, raw, and exactly the bytes the layout needs: anything else (another encoding,
// another model slice stored under a colliding name) is not ours to scatter.
bool IsExpected(const ObjectInfo& got, const ObjectInfo& want, size_t bytes) {
  return got.layout == want.layout && got.encoding == Encoding::kRaw &&
         got.payload_bytes == want.payload_bytes && bytes == want.payload_bytes;
}

}  // namespace

// ---- KvLoad ----------------------------------------------------------------------------------

KvLoad::KvLoad(std::shared_ptr<LoadState> state) : state_(std::move(state)) {}

KvLoad::~KvLoad() { Cancel(); }

uint32_t KvLoad::hit_chunks() const { return static_cast<uint32_t>(state_->chunks.size()); }

uint32_t KvLoad::hit_tokens() const { return hit_chunks() * state_->chunk_tokens; }

void KvLoad::Cancel() {
  {
    std::lock_guard<std::mutex> lock(state_->scatter_mu);
    state_->cancelled.store(true);
  }
  { std::lock_guard<std::mutex> lock(state_->mu); }  // no waiter between its check and its wait
  state_->cv.notify_all();
}

Status KvLoad::WaitLayer(uint32_t layer) {
  LoadState& s = *state_;
  if (s.chunks.empty() || layer < s.layer_begin || layer >= s.layer_end) return OkStatus();
  const uint32_t need = layer - s.layer_begin + 1;
  const auto t0 = Clock::now();
  std::unique_lock<std::mutex> lock(s.mu);
  const bool ready = s.cv.wait_for(lock, s.layer_timeout, [&] {
    return s.layers_done >= need || !s.failure.ok() || s.loader_exited || s.cancelled.load();
  });
  const double waited = SecondsSince(t0);
  s.report.wait_seconds += waited;
  s.metrics->wait_s->Observe(waited);
  if (s.layers_done >= need) return OkStatus();
  Status out;
  if (!s.failure.ok()) {
    out = s.failure;
  } else if (!ready) {
    out =
        absl::DeadlineExceededError(absl::StrCat("layer ", layer, " of the cached prefix not ",
                                                 "loaded within ", s.layer_timeout.count(), " ms"));
    s.metrics->load_timeouts->Increment();
  } else {
    out = absl::CancelledError("load cancelled");
  }
  if (s.report.failure.ok()) s.report.failure = out;
  lock.unlock();
  Cancel();
  return out;
}

LoadReport KvLoad::Report() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  LoadReport report = state_->report;
  report.layers_loaded = state_->layers_done;
  return report;
}

// ---- StartLoad -------------------------------------------------------------------------------

void KvConnector::AcquireShared(client::KvClient& client, const PrefixLookup& lookup,
                                uint32_t chunks, LoadState& state) {
  LoadReport& report = state.report;
  const auto t0 = Clock::now();
  auto leases = client.AcquireMany(std::span<const ObjectName>(lookup.plan.names.data(), chunks));
  report.transfer_seconds = SecondsSince(t0);
  metrics_->transfer_s->Observe(report.transfer_seconds);
  if (!leases.ok()) {
    NoteClientError(leases.status());
    metrics_->acquire_failed->Increment();
    return;
  }
  auto unused = std::make_shared<std::vector<client::ReadLease>>();
  std::vector<ObjectName> corrupt;
  bool stopped = false;
  for (uint32_t i = 0; i < chunks; ++i) {
    Result<client::ReadLease>& item = (*leases)[i];
    if (stopped) {
      if (item.ok()) unused->push_back(std::move(*item));
      continue;
    }
    stopped = true;  // until this chunk proves usable
    if (!item.ok()) {
      if (absl::IsNotFound(item.status())) {
        ++report.missing_chunks;
        metrics_->missing->Increment();
      } else if (absl::IsDataLoss(item.status())) {  // the client's own verify_reads
        ++report.corrupt_chunks;
        metrics_->corrupt->Increment();
        corrupt.push_back(lookup.plan.names[i]);
      } else {
        metrics_->acquire_failed->Increment();
      }
      continue;
    }
    client::ReadLease lease = std::move(*item);
    const ObjectInfo want = chunker_.ChunkInfo(i);
    if (!IsExpected(lease.info(), want, lease.data().size())) {
      ++report.mismatched_chunks;
      metrics_->mismatched->Increment();
      unused->push_back(std::move(lease));
      continue;
    }
    if (options_.verify_checksums) {
      const auto tv = Clock::now();
      const uint32_t crc = Crc32c(lease.data().data(), lease.data().size());
      const double secs = SecondsSince(tv);
      report.verify_seconds += secs;
      metrics_->verify_s->Observe(secs);
      if (crc != lease.info().payload_crc32c) {
        ++report.corrupt_chunks;
        metrics_->corrupt->Increment();
        corrupt.push_back(lookup.plan.names[i]);
        unused->push_back(std::move(lease));
        continue;
      }
    }
    switch (lease.served_from()) {
      case client::Tier::kCpu:
        ++report.cpu_chunks;
        break;
      case client::Tier::kSsd:
        ++report.ssd_chunks;
        break;
      default:
        ++report.other_chunks;
    }
    ChunkSource src;
    src.layout = want.layout;
    src.bytes = lease.data().data();
    src.expires = lease.expires_at();
    src.lease = std::move(lease);
    state.chunks.push_back(std::move(src));
    stopped = false;
  }
  if (!unused->empty()) {
    background_->Post([unused](bool) {
      for (client::ReadLease& lease : *unused) (void)lease.Release();
    });
  }
  DeleteCorrupt(std::move(corrupt));
}

void KvConnector::FetchStreamed(client::KvClient& client, const PrefixLookup& lookup,
                                uint32_t chunks, LoadState& state) {
  LoadReport& report = state.report;
  std::vector<ObjectName> corrupt;
  for (uint32_t i = 0; i < chunks; ++i) {
    const auto t0 = Clock::now();
    Result<client::GetReply> got = client.Get(lookup.plan.names[i]);  // crc32c verified
    const double secs = SecondsSince(t0);
    report.transfer_seconds += secs;
    metrics_->transfer_s->Observe(secs);
    if (!got.ok()) {
      if (absl::IsNotFound(got.status())) {
        ++report.missing_chunks;
        metrics_->missing->Increment();
      } else if (absl::IsDataLoss(got.status())) {
        ++report.corrupt_chunks;
        metrics_->corrupt->Increment();
        corrupt.push_back(lookup.plan.names[i]);
      } else {
        NoteClientError(got.status());
        metrics_->acquire_failed->Increment();
      }
      break;
    }
    const ObjectInfo want = chunker_.ChunkInfo(i);
    if (!IsExpected(got->info, want, got->payload.size())) {
      ++report.mismatched_chunks;
      metrics_->mismatched->Increment();
      break;
    }
    got->served_from == client::Tier::kCpu   ? ++report.cpu_chunks
    : got->served_from == client::Tier::kSsd ? ++report.ssd_chunks
                                             : ++report.other_chunks;
    ChunkSource src;
    src.layout = want.layout;
    src.staging = std::move(got->payload);
    state.chunks.push_back(std::move(src));
  }
  for (ChunkSource& src : state.chunks) src.bytes = src.staging.data();
  DeleteCorrupt(std::move(corrupt));
}

Result<std::unique_ptr<KvLoad>> KvConnector::StartLoad(const PrefixLookup& lookup,
                                                       const kernels::PagedKvView& paged,
                                                       std::span<const int32_t> block_table,
                                                       uint32_t max_chunks) {
  KVSTASH_RETURN_IF_ERROR(CheckPaged(paged));
  const uint32_t want = std::min({lookup.hit_chunks, max_chunks, lookup.plan.full_chunks()});
  const uint64_t positions = uint64_t{want} * chunker_.chunk_tokens();
  const uint64_t blocks = (positions + paged.shape.block_size - 1) / paged.shape.block_size;
  if (block_table.size() < blocks) {
    return absl::InvalidArgumentError(
        absl::StrCat("block table has ", block_table.size(), " blocks; the hit needs ", blocks));
  }
  auto state = std::make_shared<LoadState>();
  state->layer_begin = chunker_.spec().layer_begin;
  state->layer_end = chunker_.spec().layer_end;
  state->chunk_tokens = chunker_.chunk_tokens();
  state->layer_timeout = options_.layer_timeout;
  state->lease_margin = options_.lease_margin;
  state->before_scatter_layer = options_.before_scatter_layer;
  state->metrics = metrics_.get();
  state->report.looked_up_chunks = want;
  if (want > 0 && options_.load) {
    if (std::shared_ptr<client::KvClient> client = Client()) {
      if (client->shared_memory_attached()) {
        AcquireShared(*client, lookup, want, *state);
      } else {
        FetchStreamed(*client, lookup, want, *state);
      }
    }
  }
  LoadReport& report = state->report;
  report.hit_chunks = static_cast<uint32_t>(state->chunks.size());
  report.hit_tokens = report.hit_chunks * chunker_.chunk_tokens();
  const uint32_t ct = chunker_.chunk_tokens();
  metrics_->hit_cpu->Increment(uint64_t{report.cpu_chunks} * ct);
  metrics_->hit_ssd->Increment(uint64_t{report.ssd_chunks} * ct);
  metrics_->hit_other->Increment(uint64_t{report.other_chunks} * ct);
  if (state->chunks.empty()) {
    state->loader_exited = true;
  } else {
    state->paged = paged;
    state->block_table.assign(block_table.begin(), block_table.end());
    loader_->Post([this, state](bool cancelled) {
      if (cancelled) state->cancelled.store(true);
      RunLoader(*state);
    });
  }
  return std::unique_ptr<KvLoad>(new KvLoad(std::move(state)));
}

// ---- the loader thread -----------------------------------------------------------------------

void KvConnector::RunLoader(LoadState& s) {
  const uint32_t layers = s.layer_end - s.layer_begin;
  const size_t layer_bytes = kernels::ChunkLayerBytes(s.chunks.front().layout);
  Status failure;
  double scatter = 0;
  for (uint32_t i = 0; i < layers && failure.ok() && !s.cancelled.load(); ++i) {
    const uint32_t layer = s.layer_begin + i;
    if (s.before_scatter_layer) s.before_scatter_layer(layer);
    for (uint32_t c = 0; c < s.chunks.size(); ++c) {
      std::lock_guard<std::mutex> lock(s.scatter_mu);
      if (s.cancelled.load()) break;
      const ChunkSource& src = s.chunks[c];
      if (src.lease.has_value() && Clock::now() + s.lease_margin >= src.expires) {
        failure = absl::AbortedError(absl::StrCat("lease of cached chunk ", c,
                                                  " expired before layer ", layer, " was loaded"));
        metrics_->leases_lost->Increment();
        break;
      }
      const kernels::TokenSpan span{s.block_table, c * s.chunk_tokens};
      const auto t0 = Clock::now();
      Status st =
          kernels::ScatterLayer(src.layout, layer, src.bytes + i * layer_bytes, span, s.paged);
      scatter += SecondsSince(t0);
      if (!st.ok()) {
        failure =
            absl::InternalError(absl::StrCat("scatter of cached chunk ", c, ": ", st.message()));
        metrics_->loads_failed->Increment();
        break;
      }
    }
    if (!failure.ok() || s.cancelled.load()) break;
    std::lock_guard<std::mutex> lock(s.mu);
    s.layers_done = i + 1;
    s.cv.notify_all();
  }
  metrics_->scatter_s->Observe(scatter);
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.loader_exited = true;
    s.failure = failure;
    s.report.scatter_seconds = scatter;
    if (!failure.ok() && s.report.failure.ok()) s.report.failure = failure;
  }
  s.cv.notify_all();
  // Release the leases promptly, off the engine's path.
  auto leases = std::make_shared<std::vector<client::ReadLease>>();
  for (ChunkSource& src : s.chunks) {
    if (src.lease.has_value()) leases->push_back(std::move(*src.lease));
  }
  if (!leases->empty()) {
    background_->Post([leases](bool) {
      for (client::ReadLease& lease : *leases) (void)lease.Release();
    });
  }
}

}  // namespace kvstash::connector
