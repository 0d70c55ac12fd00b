#include "kvstash/cluster/membership.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"

namespace kvstash::cluster {
namespace {

using Clock = std::chrono::steady_clock;

uint64_t UnixMs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

}  // namespace

std::string NodesPrefix(const std::string& cluster) {
  return absl::StrCat("/kvstash/", cluster, "/nodes/");
}

struct Membership::Impl {
  EtcdClient* etcd = nullptr;
  MembershipOptions options;
  std::string prefix;
  std::string key;
  ChangeFn on_change;

  mutable std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  int64_t lease = 0;
  bool registered = false;
  Clock::time_point last_ack;
  bool reported_fenced = true;
  std::map<std::string, NodeRecord> others;  // by id, from the watch
  uint64_t version = 0;
  uint64_t registrations = 0;
  NodeRecord self;

  std::mutex notify_mu;              // one on_change at a time
  std::unique_ptr<Watcher> watcher;  // created and destroyed on the renewal thread
  std::thread renewer;

  bool FencedLocked(Clock::time_point now) const {
    return !registered || now - last_ack > std::chrono::seconds(options.ttl_s);
  }

  MemberView ViewLocked() const {
    MemberView v;
    v.fenced = FencedLocked(Clock::now());
    for (const auto& [id, rec] : others) {
      if (id != self.id) v.nodes.push_back(rec);
    }
    if (!v.fenced) v.nodes.push_back(self);
    std::sort(v.nodes.begin(), v.nodes.end(),
              [](const NodeRecord& a, const NodeRecord& b) { return a.id < b.id; });
    v.version = version;
    v.registrations = registrations;
    return v;
  }

  void Notify() {
    std::lock_guard<std::mutex> n(notify_mu);
    MemberView v;
    {
      std::lock_guard<std::mutex> lock(mu);
      v = ViewLocked();
    }
    if (on_change) on_change(v);
  }

  void Apply(const KeyValue& kv, bool deleted) {
    if (kv.key.size() <= prefix.size()) return;
    const std::string id = kv.key.substr(prefix.size());
    std::lock_guard<std::mutex> lock(mu);
    if (deleted) {
      if (others.erase(id) > 0) ++version;
      return;
    }
    Result<NodeRecord> rec = DecodeNodeRecord(kv.value);
    if (!rec.ok() || rec->id != id) {
      spdlog::warn("event=cluster_bad_record key={} error=\"{}\"", kv.key.substr(0, 256),
                   rec.ok() ? "id does not match the key" : std::string(rec.status().message()));
      if (others.erase(id) > 0) ++version;
      return;
    }
    others[id] = *rec;
    ++version;
  }

  // Re-reads the whole prefix; the revision read at (0 when etcd did not answer).
  int64_t Resync() {
    Result<RangeResult> r = etcd->GetPrefix(prefix);
    if (!r.ok()) return 0;
    {
      std::lock_guard<std::mutex> lock(mu);
      others.clear();
      ++version;
    }
    for (const KeyValue& kv : r->kvs) Apply(kv, false);
    return r->revision;
  }

  Status Register() {
    KVSTASH_ASSIGN_OR_RETURN(int64_t id, etcd->LeaseGrant(options.ttl_s));
    NodeRecord rec;
    {
      std::lock_guard<std::mutex> lock(mu);
      rec = self;
    }
    rec.epoch = UnixMs();
    Result<int64_t> put = etcd->Put(key, EncodeNodeRecord(rec), id);
    if (!put.ok()) {
      (void)etcd->LeaseRevoke(id);
      return put.status();
    }
    std::lock_guard<std::mutex> lock(mu);
    self = rec;
    lease = id;
    registered = true;
    last_ack = Clock::now();
    ++registrations;
    ++version;
    spdlog::info("event=cluster_registered node={} key={} lease={:x} epoch={} ttl_s={}", rec.id,
                 key, id, rec.epoch, options.ttl_s);
    return OkStatus();
  }

  // Logs and counts a change of the fence since it was last noticed; whether it changed.
  bool NoteFenceLocked() {
    const bool f = FencedLocked(Clock::now());
    if (f == reported_fenced) return false;
    if (f) {
      spdlog::warn("event=cluster_fenced node={} reason=\"no renewal acknowledged within {} s\"",
                   self.id, options.ttl_s);
    } else {
      spdlog::info("event=cluster_unfenced node={}", self.id);
    }
    reported_fenced = f;
    ++version;
    return true;
  }

  // One step of the renewal thread: register, renew, or notice a fence. The fence is noticed
  // before the etcd call (a process resumed after SIGSTOP) and after it (a call that failed
  // while the TTL ran out: etcd unreachable, the link cut).
  void Step() {
    int64_t current;
    bool changed = false;
    {
      std::lock_guard<std::mutex> lock(mu);
      current = registered ? lease : 0;
      changed = NoteFenceLocked();
    }
    if (current == 0) {
      Status s = Register();
      if (!s.ok()) {
        spdlog::warn("event=cluster_register_failed node={} error=\"{}\"", options.self.id,
                     std::string(s.message()));
      }
      changed = changed || s.ok();
    } else {
      Result<int64_t> ttl = etcd->LeaseKeepAliveOnce(current);
      std::lock_guard<std::mutex> lock(mu);
      if (ttl.ok()) {
        last_ack = Clock::now();
      } else if (ttl.status().code() == absl::StatusCode::kNotFound) {
        // The lease expired (etcd saw no renewal for ttl_s): register again at once.
        spdlog::warn("event=cluster_lease_lost node={} lease={:x}", self.id, current);
        registered = false;
        lease = 0;
        ++version;
        changed = true;
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      if (NoteFenceLocked()) changed = true;
    }
    if (changed) Notify();
  }

  void Run() {
    const auto period =
        std::chrono::milliseconds(std::max<uint32_t>(100, options.ttl_s * 1000 / 3));
    while (true) {
      if (watcher == nullptr) {
        const int64_t rev = Resync();
        if (rev > 0) {
          Result<std::unique_ptr<Watcher>> w = etcd->WatchPrefix(
              prefix, rev + 1,
              [this](const std::vector<WatchEvent>& events, int64_t) {
                for (const WatchEvent& e : events) Apply(e.kv, e.type == WatchEvent::Type::kDelete);
                Notify();
              },
              [this] {
                const int64_t r = Resync();
                Notify();
                return r;
              });
          if (w.ok()) watcher = std::move(*w);
          Notify();
        }
      }
      Step();
      std::unique_lock<std::mutex> lock(mu);
      const bool retry_soon = !registered || watcher == nullptr;
      cv.wait_for(lock, retry_soon ? std::chrono::milliseconds(200) : period,
                  [this] { return stop; });
      if (stop) break;
    }
    watcher.reset();
  }
};

Membership::Membership(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Membership::~Membership() { Stop(); }

Result<std::unique_ptr<Membership>> Membership::Start(EtcdClient* etcd, MembershipOptions options,
                                                      ChangeFn on_change) {
  if (etcd == nullptr) return absl::InvalidArgumentError("membership without an etcd client");
  if (!ValidNodeId(options.cluster)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cluster name '", options.cluster, "' is not [A-Za-z0-9._:-]{1,128}"));
  }
  if (!ValidNodeId(options.self.id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("node id '", options.self.id, "' is not [A-Za-z0-9._:-]{1,128}"));
  }
  if (options.ttl_s < 1 || options.ttl_s > 3600) {
    return absl::InvalidArgumentError("cluster TTL must be 1..3600 s");
  }
  if (options.self.grpc_address.empty()) {
    return absl::InvalidArgumentError("node record without a gRPC address");
  }
  auto impl = std::make_unique<Impl>();
  impl->etcd = etcd;
  impl->options = options;
  impl->self = options.self;
  impl->on_change = std::move(on_change);
  impl->prefix = NodesPrefix(options.cluster);
  impl->key = impl->prefix + options.self.id;
  Status first = impl->Register();
  if (!first.ok()) {
    spdlog::warn("event=cluster_register_failed node={} error=\"{}\" (fenced; retrying)",
                 options.self.id, std::string(first.message()));
  } else {
    impl->reported_fenced = false;
  }
  Impl* raw = impl.get();
  impl->renewer = std::thread([raw] { raw->Run(); });
  return std::unique_ptr<Membership>(new Membership(std::move(impl)));
}

void Membership::Stop() {
  if (impl_ == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->stop) return;
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  if (impl_->renewer.joinable()) impl_->renewer.join();
  int64_t lease;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    lease = impl_->registered ? impl_->lease : 0;
    impl_->registered = false;
  }
  if (lease != 0) {
    Status s = impl_->etcd->LeaseRevoke(lease);
    spdlog::info("event=cluster_left node={} revoked={}", impl_->self.id, s.ok());
  }
}

MemberView Membership::view() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->ViewLocked();
}

bool Membership::fenced() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->FencedLocked(Clock::now());
}

const NodeRecord& Membership::self() const { return impl_->options.self; }

std::string Membership::prefix() const { return impl_->prefix; }

}  // namespace kvstash::cluster
