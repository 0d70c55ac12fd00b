// LayerLoader: cached chunk KV -> RoPE correction -> paged memory, one layer at a time.
#include <chrono>
#include <cstring>
#include <map>

#include "absl/strings/str_cat.h"
#include "executor.h"
#include "kvstash/kernels/paged_kv.h"
#include "kvstash/kernels/rope.h"

namespace kvstash::blend::internal {
namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

LayerLoader::LayerLoader(engine::Engine& engine, engine::Sequence& seq, ChunkKvStore& store,
                         std::vector<CachedSpan> spans, std::vector<bool> layers)
    : engine_(engine),
      seq_(seq),
      store_(store),
      spans_(std::move(spans)),
      layers_(std::move(layers)),
      layer_seconds_(layers_.size(), 0.0),
      span_bytes_(spans_.size(), 0),
      span_seconds_(spans_.size(), 0.0),
      ready_(layers_.size(), false) {
  if (spans_.empty()) layers_.assign(layers_.size(), false);
}

LayerLoader::~LayerLoader() { Cancel(); }

void LayerLoader::Start(bool pipelined) {
  if (pipelined) {
    thread_ = std::thread([this] { Run(); });
  } else {
    Run();
  }
}

Status LayerLoader::Fetch() {
  std::vector<ChunkRecord> records;
  for (const CachedSpan& s : spans_) records.push_back(s.record);
  Result<std::vector<std::unique_ptr<ChunkKv>>> kv = store_.Fetch(records);
  if (!kv.ok()) {
    return Status(kv.status().code(), absl::StrCat("fetch: ", kv.status().message()));
  }
  if (kv->size() != spans_.size()) {
    return absl::InternalError("fetch: the store answered with a wrong number of chunks");
  }
  for (size_t i = 0; i < spans_.size(); ++i) {
    // The plan placed the chunk by the looked-up layout; a slot rewritten since (a Cache-Craft
    // variant replaced) would land at the wrong positions.
    if (!((*kv)[i]->layout() == spans_[i].record.layout)) {
      return absl::NotFoundError("fetch: a chunk changed between lookup and fetch");
    }
  }
  kv_ = std::move(*kv);
  return OkStatus();
}

void LayerLoader::Run() {
  if (!spans_.empty()) {
    Status fetched = Fetch();
    if (!fetched.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      error_ = fetched;
      finished_ = true;
      cv_.notify_all();
      return;
    }
  }
  for (uint32_t l = 0; l < layers_.size(); ++l) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cancel_ || !error_.ok()) break;
    }
    Status st = layers_[l] ? LoadLayer(l) : OkStatus();
    std::lock_guard<std::mutex> lock(mu_);
    if (!st.ok()) {
      error_ = st;
    } else {
      ready_[l] = true;
    }
    cv_.notify_all();
  }
  std::lock_guard<std::mutex> lock(mu_);
  finished_ = true;
  cv_.notify_all();
}

Status LayerLoader::LoadLayer(uint32_t layer) {
  const auto t_layer = Clock::now();
  kernels::PagedKvView view = engine_.kv_cache().View();
  for (size_t i = 0; i < spans_.size(); ++i) {
    const auto t0 = Clock::now();
    const CachedSpan& s = spans_[i];
    const KvLayout& layout = kv_[i]->layout();
    KVSTASH_ASSIGN_OR_RETURN(std::span<const uint8_t> slab, kv_[i]->Layer(layer));
    const void* src = slab.data();
    if (s.delta != 0) {
      // K is the first half of the slab; V needs no correction.
      scratch_.assign(slab.begin(), slab.end());
      kernels::RopeParams rope{layout.rope, layout.rope_theta, layout.rotary_dim};
      KVSTASH_RETURN_IF_ERROR(kernels::ShiftKeys(scratch_.data(), layout.dtype, layout.num_tokens,
                                                 layout.heads(), layout.head_dim, rope, s.delta));
      src = scratch_.data();
    }
    KVSTASH_RETURN_IF_ERROR(
        kernels::ScatterLayer(layout, layer, src, seq_.Span(s.dest_begin), view));
    span_bytes_[i] += slab.size();
    span_seconds_[i] += std::chrono::duration<double>(Clock::now() - t0).count();
  }
  layer_seconds_[layer] = std::chrono::duration<double>(Clock::now() - t_layer).count();
  return OkStatus();
}

Status LayerLoader::WaitLayer(uint32_t layer) {
  if (layer >= layers_.size() || !layers_[layer]) return OkStatus();
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return ready_[layer] || !error_.ok() || finished_; });
  if (!error_.ok()) return error_;
  if (!ready_[layer]) return absl::CancelledError("blend loader stopped before the layer");
  return OkStatus();
}

void LayerLoader::Cancel() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancel_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

Status LayerLoader::Finish() {
  if (thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

std::vector<LayerLoader::TierLoad> LayerLoader::tier_loads() const {
  std::map<Tier, TierLoad> by;
  for (size_t i = 0; i < kv_.size(); ++i) {
    TierLoad& t = by[kv_[i]->tier()];
    t.tier = kv_[i]->tier();
    t.bytes += span_bytes_[i];
    t.seconds += span_seconds_[i];
  }
  std::vector<TierLoad> out;
  out.reserve(by.size());
  for (auto& [tier, load] : by) out.push_back(load);
  return out;
}

}  // namespace kvstash::blend::internal
