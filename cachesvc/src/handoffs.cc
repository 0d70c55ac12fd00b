#include "handoffs.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace kvstash::cachesvc {

HandoffRegistry::HandoffRegistry(storage::ObjectStore* store, MetricsRegistry* metrics,
                                 uint32_t default_ms, uint32_t max_ms)
    : store_(store),
      default_ms_(default_ms),
      max_ms_(max_ms),
      active_gauge_(
          metrics->GetGauge("kvstash_handoffs_active", "prefill/decode handoffs pinning objects")),
      expired_(metrics->GetCounter("kvstash_handoffs_expired_total",
                                   "handoffs whose lease ran out before the decode side ended "
                                   "them")),
      offered_(metrics->GetCounter("kvstash_handoffs_offered_total", "handoffs offered")),
      ids_(std::random_device{}()) {
  reaper_ = std::thread([this] { ReaperLoop(); });
}

HandoffRegistry::~HandoffRegistry() {
  std::map<uint64_t, Handoff> left;
  {
    MutexLock lock(&mu_);
    stop_ = true;
    left.swap(handoffs_);
  }
  cv_.SignalAll();
  reaper_.join();
  for (const auto& [id, h] : left) Unpin(h);
}

uint32_t HandoffRegistry::Clamp(uint32_t ms) const {
  return std::min(ms == 0 ? default_ms_ : ms, max_ms_);
}

void HandoffRegistry::Unpin(const Handoff& h) {
  for (const Hash128& key : h.keys) (void)store_->Unpin(key);
}

Status HandoffRegistry::CheckOwner(const Handoff& h, const std::string& tenant) {
  if (tenant.empty() || h.tenant.empty() || h.tenant == tenant) return OkStatus();
  return absl::PermissionDeniedError("the handoff was offered by another tenant");
}

Result<HandoffRegistry::Offered> HandoffRegistry::Offer(const std::vector<ObjectName>& names,
                                                        uint32_t handoff_ms,
                                                        const std::string& tenant) {
  Offered out;
  Handoff h;
  h.tenant = tenant;
  for (size_t i = 0; i < names.size(); ++i) {
    storage::LookupEntry entry = store_->Lookup(names[i].storage_key);
    Status s = entry.present ? store_->Pin(names[i].storage_key)
                             : absl::NotFoundError("not stored on this node");
    out.results.push_back(s);
    if (!s.ok()) continue;
    h.keys.push_back(names[i].storage_key);
    out.pinned.push_back(i);
    out.payload_bytes.push_back(entry.info.payload_bytes);
  }
  if (h.keys.empty()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("none of the ", names.size(), " objects offered is stored on this node"));
  }
  const uint32_t ms = Clamp(handoff_ms);
  h.deadline = Clock::now() + std::chrono::milliseconds(ms);
  out.expires_in_ms = ms;
  {
    MutexLock lock(&mu_);
    do {
      out.id = ids_();
    } while (out.id == 0 || handoffs_.count(out.id) != 0);
    handoffs_.emplace(out.id, std::move(h));
    active_gauge_->Set(static_cast<double>(handoffs_.size()));
  }
  offered_->Increment();
  cv_.SignalAll();
  return out;
}

Result<uint64_t> HandoffRegistry::Extend(uint64_t id, uint32_t handoff_ms,
                                         const std::string& tenant) {
  const uint32_t ms = Clamp(handoff_ms);
  MutexLock lock(&mu_);
  auto it = handoffs_.find(id);
  if (it == handoffs_.end()) return absl::NotFoundError("unknown or expired handoff");
  KVSTASH_RETURN_IF_ERROR(CheckOwner(it->second, tenant));
  it->second.deadline = Clock::now() + std::chrono::milliseconds(ms);
  return ms;
}

Status HandoffRegistry::Check(uint64_t id, const std::string& tenant) const {
  MutexLock lock(&mu_);
  auto it = handoffs_.find(id);
  if (it == handoffs_.end()) return absl::NotFoundError("unknown or expired handoff");
  return CheckOwner(it->second, tenant);
}

Status HandoffRegistry::Release(uint64_t id, const std::string& tenant) {
  Handoff h;
  {
    MutexLock lock(&mu_);
    auto it = handoffs_.find(id);
    if (it == handoffs_.end()) return absl::NotFoundError("unknown or expired handoff");
    KVSTASH_RETURN_IF_ERROR(CheckOwner(it->second, tenant));
    h = std::move(it->second);
    handoffs_.erase(it);
    active_gauge_->Set(static_cast<double>(handoffs_.size()));
  }
  Unpin(h);
  return OkStatus();
}

size_t HandoffRegistry::active() const {
  MutexLock lock(&mu_);
  return handoffs_.size();
}

void HandoffRegistry::ReaperLoop() {
  mu_.Lock();
  while (!stop_) {
    Clock::time_point next = Clock::now() + std::chrono::seconds(10);
    std::vector<Handoff> expired;
    const Clock::time_point now = Clock::now();
    for (auto it = handoffs_.begin(); it != handoffs_.end();) {
      if (it->second.deadline <= now) {
        spdlog::info("event=handoff_expired id={:016x} objects={}", it->first,
                     it->second.keys.size());
        expired.push_back(std::move(it->second));
        it = handoffs_.erase(it);
      } else {
        next = std::min(next, it->second.deadline);
        ++it;
      }
    }
    if (!expired.empty()) {
      active_gauge_->Set(static_cast<double>(handoffs_.size()));
      expired_->Increment(expired.size());
      mu_.Unlock();
      for (const Handoff& h : expired) Unpin(h);
      mu_.Lock();
      continue;
    }
    cv_.WaitUntil(&mu_, next);
  }
  mu_.Unlock();
}

}  // namespace kvstash::cachesvc
