#include "cluster_node.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <map>
#include <set>
#include <thread>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "kvstash/cluster/etcd_client.h"
#include "kvstash/cluster/membership.h"
#include "kvstash/cluster/placement.h"
#include "kvstash/common/mutex.h"
#include "kvstash/proto/convert.h"
#include "kvstash/proto/status_mapping.h"
#include "kvstash/v1/cluster.grpc.pb.h"
#include "kvstash/v1/kvstash.grpc.pb.h"
#include "request_checks.h"

namespace kvstash::cachesvc {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kBatch = 512;
constexpr int kMaxAttempts = 3;

// The CommitBatch open on this thread (cluster_node.h), if any.
thread_local CommitBatch* tls_batch = nullptr;

// A node id from a free-form name: characters outside [A-Za-z0-9._:-] become '_'.
std::string SanitizedId(const std::string& name) {
  std::string out = name.substr(0, cluster::kMaxNodeIdBytes);
  for (char& c : out) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == ':' || c == '-';
    if (!ok) c = '_';
  }
  return out;
}

struct Pending {
  storage::StoredName name;
  int attempts = 0;
};

// One object of a synchronous replication and one of its other owners.
struct SyncWant {
  size_t key = 0;     // index of the object
  size_t target = 0;  // index of the owner
  Status result = absl::UnknownError("not asked");
  bool timed_out = false;  // a call for it ran into the deadline, or the deadline stopped retries
};

// The leases a synchronous replication offers its owners (ReplicateRequest.offered): one per
// object (id 0: none), taken at `taken`.
struct Offers {
  std::vector<storage::Lease> leases;
  uint64_t generation = 0;
  Clock::time_point taken{};
};

ObjectName ToObjectName(const storage::StoredName& n) {
  ObjectName o;
  o.name_space = n.name_space;
  o.model_fingerprint = n.model_fingerprint;
  o.token_hash = n.token_hash;
  o.storage_key = n.storage_key;
  return o;
}

}  // namespace

struct ClusterNode::Impl {
  class Service final : public v1::KvStashCluster::Service {
   public:
    explicit Service(Impl* impl) : impl_(impl) {}
    grpc::Status Replicate(grpc::ServerContext* ctx, const v1::ReplicateRequest* req,
                           v1::ReplicateResponse* resp) override {
      return impl_->HandleReplicate(ctx, *req, resp);
    }
    grpc::Status Status(grpc::ServerContext* ctx, const v1::ClusterStatusRequest* req,
                        v1::ClusterStatusResponse* resp) override {
      return impl_->HandleStatus(*req, resp);
    }

   private:
    Impl* impl_;
  };

  struct Stubs {
    std::unique_ptr<v1::KvStash::Stub> kv;
    std::unique_ptr<v1::KvStashCluster::Stub> cluster;
  };

  ServiceConfig config;
  storage::ObjectStore* store = nullptr;
  RemoteTier* remote = nullptr;
  MetricsRegistry* metrics = nullptr;
  std::string node_id;
  std::string self_address;
  std::unique_ptr<cluster::EtcdClient> etcd;
  std::unique_ptr<cluster::Membership> membership;
  Service service{this};

  mutable Mutex mu;  // view state and the queue
  CondVar cv;        // queue, lost or stop changed
  bool stop ABSL_GUARDED_BY(mu) = false;
  bool fenced ABSL_GUARDED_BY(mu) = true;
  // Live nodes (self unless fenced).
  std::shared_ptr<const cluster::Placement> placement ABSL_GUARDED_BY(mu);
  // Node id -> gRPC address, live ones.
  std::map<std::string, std::string> address_of ABSL_GUARDED_BY(mu);
  std::deque<Pending> queue ABSL_GUARDED_BY(mu);
  std::set<std::string> lost ABSL_GUARDED_BY(mu);          // ids lost since the last repair pass
  std::map<std::string, Stubs> stubs ABSL_GUARDED_BY(mu);  // by address
  std::thread worker;

  // Hot and pinned objects (config.cluster.hot_replicas > replicas). `hot`: keys this node found
  // hot or pinned at its last scan. `hinted`: keys a sender asked this node to keep on more than
  // R owners (ReplicateRequest.replicas), remembered while the object is held here.
  struct Heat {
    uint64_t hits = 0;  // the store's hit count at the last scan
    double score = 0;   // decayed reads
  };
  std::unordered_map<Hash128, Heat, Hash128Hasher> heat;  // worker thread only
  Clock::time_point last_scan{};                          // worker thread only
  std::set<Hash128> hot ABSL_GUARDED_BY(mu);
  std::map<Hash128, uint32_t> hinted ABSL_GUARDED_BY(mu);

  Gauge* nodes_gauge = nullptr;
  Gauge* fenced_gauge = nullptr;
  Gauge* pending_gauge = nullptr;
  Counter* replicated = nullptr;
  Counter* replicate_failures = nullptr;
  Counter* dropped = nullptr;
  Counter* repaired = nullptr;
  Counter* view_changes = nullptr;
  Gauge* hot_gauge = nullptr;
  Counter* hot_promotions = nullptr;
  Counter* sync_commits = nullptr;
  Counter* sync_failures = nullptr;
  Counter* sync_calls = nullptr;
  Counter* sync_offered = nullptr;
  Counter* offer_reads = nullptr;
  Counter* acquire_reads = nullptr;

  std::chrono::system_clock::time_point Deadline(uint32_t factor = 1) const {
    return std::chrono::system_clock::now() +
           std::chrono::milliseconds(config.peers.timeout_ms * factor + 1000);
  }

  Stubs& StubsFor(const std::string& address) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto it = stubs.find(address);
    if (it != stubs.end()) return it->second;
    auto channel = remote->MakeChannel(address);
    Stubs s{v1::KvStash::NewStub(channel), v1::KvStashCluster::NewStub(channel)};
    return stubs.emplace(address, std::move(s)).first->second;
  }

  // ---- membership --------------------------------------------------------------------------

  void OnView(const cluster::MemberView& view) {
    std::vector<std::string> peers;
    {
      MutexLock lock(&mu);
      std::set<std::string> was;
      for (const auto& [id, address] : address_of) was.insert(id);
      std::map<std::string, std::string> now;
      for (const cluster::NodeRecord& n : view.nodes) now[n.id] = n.grpc_address;
      // Fenced, this node keeps reading from the peers it knew (etcd may be what is gone), but
      // its placement is only itself: it forwards nothing and takes on nothing.
      fenced = view.fenced;
      if (view.fenced) {
        // Fenced, this node has no confirmed view (its own registration lapsed; etcd may be
        // what is gone): it reports no live members, not the count from before the fence.
        nodes_gauge->Set(0);
        fenced_gauge->Set(1);
        return;
      }
      bool lost_some = false;
      for (const std::string& id : was) {
        if (id != node_id && now.count(id) == 0) {
          lost.insert(id);
          lost_some = true;
        }
      }
      address_of = now;
      placement = std::make_shared<const cluster::Placement>(view.nodes);
      nodes_gauge->Set(static_cast<double>(view.nodes.size()));
      fenced_gauge->Set(0);
      view_changes->Increment();
      for (const auto& [id, address] : now) {
        if (id != node_id) peers.push_back(address);
      }
      if (lost_some) {
        spdlog::warn("event=cluster_members_lost lost={} live={}", lost.size(), now.size());
      }
    }
    remote->SetClusterPeers(peers);
    cv.SignalAll();
  }

  bool HotEnabled() const { return config.cluster.hot_replicas > config.cluster.replicas; }

  // Owners `key` should have: R, or the hot R for a hot, pinned or hinted key.
  uint32_t ReplicasForLocked(const Hash128& key) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    uint32_t r = config.cluster.replicas;
    if (hot.count(key) != 0) r = std::max(r, config.cluster.hot_replicas);
    auto it = hinted.find(key);
    if (it != hinted.end()) r = std::max(r, it->second);
    return r;
  }

  // Owners of `key` other than this node, as addresses, those in this node's zone first.
  std::vector<std::string> OtherOwners(const Hash128& key, bool zone_first) const {
    std::shared_ptr<const cluster::Placement> p;
    uint32_t replicas;
    {
      MutexLock lock(&mu);
      p = placement;
      replicas = ReplicasForLocked(key);
    }
    std::vector<std::string> out;
    if (p == nullptr) return out;
    std::vector<const cluster::NodeRecord*> owners;
    for (size_t i : p->Owners(key, replicas)) {
      if (p->nodes()[i].id != node_id) owners.push_back(&p->nodes()[i]);
    }
    if (zone_first) {
      std::stable_partition(owners.begin(), owners.end(), [this](const cluster::NodeRecord* n) {
        return n->zone == config.cluster.zone;
      });
    }
    for (const auto* n : owners) out.push_back(n->grpc_address);
    return out;
  }

  // ---- replication ---------------------------------------------------------------------------

  void Enqueue(Pending p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (queue.size() >= config.cluster.replication_queue) {
      dropped->Increment();
      return;
    }
    queue.push_back(std::move(p));
    pending_gauge->Set(static_cast<double>(queue.size()));
  }

  // Forwards one batch: groups names by owner and asks each owner to pull them.
  void Forward(std::vector<Pending> batch) {
    std::map<std::string, std::vector<size_t>> by_owner;
    for (size_t i = 0; i < batch.size(); ++i) {
      for (const std::string& address : OtherOwners(batch[i].name.storage_key, false)) {
        by_owner[address].push_back(i);
      }
    }
    std::vector<Pending> retry;
    for (const auto& [address, indices] : by_owner) {
      v1::ReplicateRequest req;
      req.set_source(self_address);
      bool any_hot = false;
      {
        MutexLock lock(&mu);
        for (size_t i : indices) {
          const uint32_t r = ReplicasForLocked(batch[i].name.storage_key);
          req.add_replicas(r);
          any_hot = any_hot || r > config.cluster.replicas;
        }
      }
      if (!any_hot) req.clear_replicas();
      for (size_t i : indices) ToProto(ToObjectName(batch[i].name), req.add_keys());
      v1::ReplicateResponse resp;
      grpc::ClientContext ctx;
      ctx.set_deadline(Deadline(3));
      remote->AddPeerToken(&ctx);
      v1::KvStashCluster::Stub* stub;
      {
        MutexLock lock(&mu);
        stub = StubsFor(address).cluster.get();
      }
      Status s = FromGrpcStatus(stub->Replicate(&ctx, req, &resp));
      if (s.ok() && resp.results_size() != static_cast<int>(indices.size())) {
        s = absl::InternalError("Replicate answered with the wrong number of results");
      }
      for (size_t r = 0; r < indices.size(); ++r) {
        const bool ok = s.ok() && resp.results(static_cast<int>(r)).code() == 0;
        if (ok) {
          replicated->Increment();
          continue;
        }
        replicate_failures->Increment();
        if (batch[indices[r]].attempts + 1 < kMaxAttempts) {
          Pending again = batch[indices[r]];
          ++again.attempts;
          retry.push_back(std::move(again));
        }
      }
      if (!s.ok()) {
        spdlog::warn("event=cluster_replicate_failed owner={} objects={} error=\"{}\"", address,
                     indices.size(), std::string(s.message()));
      }
    }
    if (!retry.empty()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      MutexLock lock(&mu);
      for (Pending& p : retry) Enqueue(std::move(p));
    }
  }

  bool SyncMode() const { return config.cluster.replication_mode == ReplicationMode::kSync; }

  // Synchronous replication of client commits (replication_mode sync), on the committing thread:
  // asks every owner of the objects other than this node to pull them, one Replicate per owner
  // carrying all the keys it owns, the owners in parallel, and waits for all of them until
  // sync_timeout_ms, asking again after transient failures. Per name: OK once its R owners (this
  // node included when it is one) hold the object; otherwise the error, and the object is queued
  // for the asynchronous forward as well.
  std::vector<Status> ReplicateMany(const std::vector<storage::StoredName>& names) {
    std::vector<Status> out(names.size(), OkStatus());
    if (names.empty()) return out;
    std::shared_ptr<const cluster::Placement> p;
    {
      MutexLock lock(&mu);
      if (stop) {
        out.assign(names.size(),
                   absl::UnavailableError("sync replication: this node is shutting down"));
        return out;
      }
      if (fenced) {
        for (const storage::StoredName& name : names) Enqueue({name, 0});
        out.assign(names.size(),
                   absl::UnavailableError(
                       "sync replication: this node is fenced (no membership renewal within the "
                       "TTL); the object is held here only"));
        return out;
      }
      p = placement;
    }
    const uint32_t replicas = config.cluster.replicas;
    const size_t live = p == nullptr ? 0 : p->nodes().size();
    if (live < replicas) {
      out.assign(names.size(),
                 absl::UnavailableError(absl::StrCat(
                     "sync replication: ", replicas, " owners wanted, ", live,
                     " live node(s) in this node's view; the object is held here only")));
      MutexLock lock(&mu);
      for (const storage::StoredName& name : names) Enqueue({name, 0});
      return out;
    }
    // One want per (object, other owner); a key named twice (overwrites in one batch) is asked
    // for once and both names get its outcome.
    std::vector<std::string> targets;
    std::map<std::string, size_t> target_of;
    std::vector<SyncWant> wants;
    std::vector<size_t> first_of(names.size());  // index of the first name with the same key
    std::map<Hash128, size_t> seen;
    for (size_t k = 0; k < names.size(); ++k) {
      auto [it, fresh] = seen.emplace(names[k].storage_key, k);
      first_of[k] = it->second;
      if (!fresh) continue;
      for (size_t i : p->Owners(names[k].storage_key, replicas)) {
        const cluster::NodeRecord& n = p->nodes()[i];
        if (n.id == node_id) continue;
        auto [t, added] = target_of.emplace(n.grpc_address, targets.size());
        if (added) targets.push_back(n.grpc_address);
        wants.push_back({k, t->second});
      }
    }
    if (wants.empty()) return out;  // R = 1 and this node owns every object

    const auto deadline = std::chrono::system_clock::now() +
                          std::chrono::milliseconds(config.cluster.sync_timeout_ms);
    // Offers (cluster.replicate_offers): a lease here on each object, sent in the Replicate
    // requests, so the owners read the bytes without calling back for a lease and its release.
    // Long enough for every round and an owner's read after the last one; released once the
    // calls returned, or left to expire when one ran out of time (its owner may still read).
    Offers offers;
    if (config.cluster.replicate_offers) {
      offers.leases.resize(names.size());
      const uint32_t lease_ms = config.cluster.sync_timeout_ms + config.peers.timeout_ms + 1000;
      offers.taken = Clock::now();
      for (size_t k = 0; k < names.size(); ++k) {
        if (first_of[k] != k) continue;
        // In the arena under the lease (Acquire promotes an object found in a lower tier).
        Result<storage::Lease> lease = store->Acquire(names[k].storage_key, lease_ms);
        if (!lease.ok()) continue;  // its owners fetch it as before
        offers.leases[k] = *lease;
        sync_offered->Increment();
      }
      offers.generation = store->arena_generation();
    }
    std::vector<size_t> ask(wants.size());
    for (size_t w = 0; w < ask.size(); ++w) ask[w] = w;
    // Rounds: the wants not yet confirmed are asked again after a transient failure (an owner
    // that could not reach this node yet, e.g. its first Hello timed out), until the deadline.
    for (int round = 0; !ask.empty(); ++round) {
      SyncRound(names, targets, ask, deadline, offers, wants);
      std::vector<size_t> again;
      for (size_t w : ask) {
        if (wants[w].result.code() == absl::StatusCode::kDeadlineExceeded) {
          wants[w].timed_out = true;
        }
        if (!wants[w].result.ok() && Transient(wants[w].result.code())) again.push_back(w);
      }
      if (again.empty()) break;
      const auto pause = std::chrono::milliseconds(std::min(50 * (round + 1), 500));
      if (std::chrono::system_clock::now() + pause >= deadline) {
        for (size_t w : again) wants[w].timed_out = true;
        break;
      }
      std::this_thread::sleep_for(pause);
      ask.swap(again);
    }
    bool cut_short = false;
    for (const SyncWant& w : wants) cut_short = cut_short || w.timed_out;
    if (!cut_short) {
      for (const storage::Lease& lease : offers.leases) {
        if (lease.id != 0) (void)store->Release(lease.id);
      }
    }
    // Outcomes per object, in the order of its owners.
    std::vector<size_t> asked(names.size(), 0), confirmed(names.size(), 0);
    std::vector<bool> timed_out(names.size(), false);
    std::vector<Status> first(names.size(), OkStatus());
    for (const SyncWant& w : wants) {
      ++asked[w.key];
      timed_out[w.key] = timed_out[w.key] || w.timed_out;
      if (w.result.ok()) {
        ++confirmed[w.key];
      } else if (first[w.key].ok()) {
        first[w.key] =
            Status(w.result.code(), absl::StrCat("sync replication to owner ", targets[w.target],
                                                 ": ", std::string(w.result.message())));
      }
    }
    uint64_t confirmed_total = 0, failed_wants = 0, ok_objects = 0, failed_objects = 0;
    std::vector<size_t> failed;
    for (size_t k = 0; k < names.size(); ++k) {
      if (first_of[k] != k || asked[k] == 0) continue;  // a repeat, or no other owner
      confirmed_total += confirmed[k];
      if (first[k].ok()) {
        ++ok_objects;
        continue;
      }
      ++failed_objects;
      failed_wants += asked[k] - confirmed[k];
      failed.push_back(k);
      if (timed_out[k]) {
        out[k] = absl::DeadlineExceededError(
            absl::StrCat("sync replication: ", confirmed[k], " of ", asked[k],
                         " other owner(s) confirmed within ", config.cluster.sync_timeout_ms,
                         " ms; the object is held here and queued for forwarding (",
                         std::string(first[k].message()), ")"));
      } else {
        out[k] = first[k];
      }
    }
    for (size_t k = 0; k < names.size(); ++k) {
      if (first_of[k] != k) out[k] = out[first_of[k]];
    }
    replicated->Increment(confirmed_total);
    if (ok_objects != 0) sync_commits->Increment(ok_objects);
    if (failed_objects != 0) {
      sync_failures->Increment(failed_objects);
      replicate_failures->Increment(failed_wants);
      {
        MutexLock lock(&mu);
        for (size_t k : failed) Enqueue({names[k], 0});
      }
      cv.Signal();
    }
    return out;
  }

  // Failures worth asking the same owner again within the sync deadline.
  static bool Transient(absl::StatusCode code) {
    return code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kAborted ||
           code == absl::StatusCode::kResourceExhausted || code == absl::StatusCode::kNotFound;
  }

  // One round of ReplicateMany: for every want in `ask`, grouped by owner, one Replicate per
  // owner (split at max_keys_per_request keys) carrying its keys; the calls in parallel, each
  // with `deadline` (so the round ends by then). Stores each want's outcome in wants[w].result.
  void SyncRound(const std::vector<storage::StoredName>& names,
                 const std::vector<std::string>& targets, const std::vector<size_t>& ask,
                 std::chrono::system_clock::time_point deadline, const Offers& offers,
                 std::vector<SyncWant>& wants) {
    struct Call {
      std::vector<size_t> wants;
      v1::KvStashCluster::Stub* stub = nullptr;
      v1::ReplicateRequest req;
      v1::ReplicateResponse resp;
      grpc::ClientContext ctx;
      grpc::Status status;
    };
    std::map<size_t, std::vector<size_t>> by_target;
    for (size_t w : ask) by_target[wants[w].target].push_back(w);
    const size_t per_call = std::max<size_t>(1, config.max_keys_per_request);
    std::vector<std::unique_ptr<Call>> calls;
    for (const auto& [target, ws] : by_target) {
      for (size_t start = 0; start < ws.size(); start += per_call) {
        auto call = std::make_unique<Call>();
        call->req.set_source(self_address);
        for (size_t j = start; j < std::min(ws.size(), start + per_call); ++j) {
          call->wants.push_back(ws[j]);
          ToProto(ToObjectName(names[wants[ws[j]].key]), call->req.add_keys());
        }
        if (!offers.leases.empty()) {
          const auto held =
              std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - offers.taken);
          for (size_t w : call->wants) {
            const storage::Lease& lease = offers.leases[wants[w].key];
            v1::ReplicateOffer* offer = call->req.add_offered();
            if (lease.id == 0) continue;
            offer->set_lease_id(lease.id);
            offer->set_arena_offset(lease.arena_offset);
            offer->set_arena_generation(offers.generation);
            ToProto(lease.info, offer->mutable_info());
            const int64_t left = static_cast<int64_t>(lease.expires_in_ms) - held.count();
            offer->set_expires_in_ms(static_cast<uint32_t>(std::max<int64_t>(0, left)));
          }
        }
        call->ctx.set_deadline(deadline);
        remote->AddPeerToken(&call->ctx);
        {
          MutexLock lock(&mu);
          call->stub = StubsFor(targets[target]).cluster.get();
        }
        calls.push_back(std::move(call));
      }
    }
    // Blocking calls, each on a thread of its own: the committing thread may be one that gRPC
    // or the caller's session drives, and must not be the one that completes these calls.
    std::vector<std::thread> threads;
    threads.reserve(calls.size());
    sync_calls->Increment(calls.size());
    for (auto& call : calls) {
      Call* raw = call.get();
      threads.emplace_back(
          [raw] { raw->status = raw->stub->Replicate(&raw->ctx, raw->req, &raw->resp); });
    }
    for (std::thread& t : threads) t.join();
    for (const auto& call : calls) {
      Status s = FromGrpcStatus(call->status);
      if (s.ok() && call->resp.results_size() != static_cast<int>(call->wants.size())) {
        s = absl::InternalError("Replicate answered with the wrong number of results");
      }
      for (size_t j = 0; j < call->wants.size(); ++j) {
        Status item = s;
        if (s.ok()) {
          const v1::ItemStatus& r = call->resp.results(static_cast<int>(j));
          if (r.code() != 0) item = Status(static_cast<absl::StatusCode>(r.code()), r.message());
        }
        wants[call->wants[j]].result = item;
      }
    }
  }

  // After a loss: queue every object this node holds. The lost node's objects need their next
  // owners, and objects the lost node was still forwarding (it wrote them, owners elsewhere) may
  // sit on fewer than R owners; only their holders know them. Owners that already hold an object
  // answer Replicate from a Lookup, so the pass costs little beyond the listing.
  void Repair(const std::set<std::string>& gone) {
    std::string token;
    uint64_t queued = 0;
    for (int page = 0; page < 100'000; ++page) {
      Result<storage::ListPage> listed = store->List("", /*all_namespaces=*/true, 1000, token);
      if (!listed.ok()) {
        spdlog::warn("event=cluster_repair_list_failed error=\"{}\"",
                     std::string(listed.status().message()));
        break;
      }
      MutexLock lock(&mu);
      for (const storage::ListedObject& o : listed->objects) {
        Enqueue({o.name, 0});
        ++queued;
      }
      token = listed->next_page_token;
      if (token.empty()) break;
    }
    repaired->Increment(queued);
    spdlog::info("event=cluster_repair lost={} queued={}", gone.size(), queued);
    cv.SignalAll();
  }

  void Run() {
    while (true) {
      std::vector<Pending> batch;
      std::set<std::string> gone;
      {
        MutexLock lock(&mu);
        const auto until = Clock::now() + std::chrono::milliseconds(500);
        while (!stop && (fenced || (queue.empty() && lost.empty()))) {
          if (!cv.WaitUntil(&mu, until)) break;
        }
        if (stop) return;
        if (fenced) continue;
        if (!lost.empty()) gone.swap(lost);
        while (!queue.empty() && batch.size() < kBatch) {
          batch.push_back(std::move(queue.front()));
          queue.pop_front();
        }
        pending_gauge->Set(static_cast<double>(queue.size()));
      }
      if (!gone.empty()) Repair(gone);
      if (!batch.empty()) Forward(std::move(batch));
      if (HotEnabled() &&
          Clock::now() - last_scan >= std::chrono::milliseconds(config.cluster.hot_scan_ms)) {
        HotScan();
      }
    }
  }

  // One pass over the store's listing: decays each object's read score, adds the reads since the
  // last pass, and queues a forward for every object that turned hot (or was pinned), so that it
  // reaches the hot R owners. Objects that cooled down keep their extra copies (the owners evict
  // them like any other object). Forgets the heat and hints of objects no longer held.
  void HotScan() {
    const auto now = Clock::now();
    const double dt_s = last_scan == Clock::time_point{}
                            ? 0.0
                            : std::chrono::duration<double>(now - last_scan).count();
    last_scan = now;
    const double decay = std::exp2(-dt_s / config.cluster.hot_half_life_s);
    std::unordered_map<Hash128, Heat, Hash128Hasher> next;
    std::set<Hash128> hot_now;
    std::vector<storage::StoredName> promoted;
    std::string token;
    for (int page = 0; page < 100'000; ++page) {
      Result<storage::ListPage> listed = store->List("", /*all_namespaces=*/true, 1000, token);
      if (!listed.ok()) return;  // keep the last state; try again next pass
      for (const storage::ListedObject& o : listed->objects) {
        Heat h;
        auto it = heat.find(o.name.storage_key);
        if (it != heat.end()) h = it->second;
        const uint64_t reads = o.hits >= h.hits ? o.hits - h.hits : o.hits;
        h.hits = o.hits;
        h.score = h.score * decay + static_cast<double>(reads);
        next[o.name.storage_key] = h;
        if (o.pinned || h.score >= config.cluster.hot_threshold) {
          hot_now.insert(o.name.storage_key);
          promoted.push_back(o.name);
        }
      }
      token = listed->next_page_token;
      if (token.empty()) break;
    }
    heat.swap(next);
    uint64_t turned_hot = 0;
    const size_t hot_count = hot_now.size();
    {
      MutexLock lock(&mu);
      for (const storage::StoredName& name : promoted) {
        if (hot.count(name.storage_key) != 0) continue;
        ++turned_hot;
        Enqueue({name, 0});
      }
      hot.swap(hot_now);
      for (auto it = hinted.begin(); it != hinted.end();) {
        it = heat.count(it->first) != 0 ? std::next(it) : hinted.erase(it);
      }
      hot_gauge->Set(static_cast<double>(hot.size()));
    }
    if (turned_hot != 0) {
      hot_promotions->Increment(turned_hot);
      spdlog::info("event=cluster_hot objects={} turned_hot={}", hot_count, turned_hot);
    }
  }

  // ---- serving -------------------------------------------------------------------------------

  grpc::Status HandleReplicate(grpc::ServerContext* ctx, const v1::ReplicateRequest& req,
                               v1::ReplicateResponse* resp) {
    grpc::Status auth = remote->CheckPeerToken(ctx);
    if (!auth.ok()) return auth;
    {
      MutexLock lock(&mu);
      if (fenced) {
        return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                            "this node is fenced (no membership renewal within the TTL)");
      }
    }
    if (req.keys_size() > static_cast<int>(config.max_keys_per_request)) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "too many keys");
    }
    Result<std::vector<ObjectName>> names = ParseKeys(req.keys());
    if (!names.ok()) return ToGrpcStatus(names.status());
    if (req.replicas_size() != 0 && req.replicas_size() != req.keys_size()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "replicas: one per key, or none");
    }
    if (req.offered_size() != 0 && req.offered_size() != req.keys_size()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "offered: one per key, or none");
    }
    if (req.replicas_size() != 0) {
      MutexLock lock(&mu);
      for (int i = 0; i < req.replicas_size(); ++i) {
        const uint32_t r = std::min<uint32_t>(req.replicas(i), 16);
        if (r <= config.cluster.replicas) continue;
        uint32_t& held = hinted[(*names)[static_cast<size_t>(i)].storage_key];
        held = std::max(held, r);
      }
    }
    std::vector<ObjectName> missing;
    std::vector<size_t> where;
    for (size_t i = 0; i < names->size(); ++i) {
      resp->add_results();
      if (!store->Lookup((*names)[i].storage_key).present) {
        missing.push_back((*names)[i]);
        where.push_back(i);
      }
    }
    if (!missing.empty()) {
      // The sender's offered leases (synchronous replication): read without calling it back.
      std::vector<OfferedLease> offers;
      if (req.offered_size() != 0) {
        const auto received = Clock::now();
        for (size_t i : where) {
          const v1::ReplicateOffer& o = req.offered(static_cast<int>(i));
          OfferedLease lease;
          Result<ObjectInfo> info = FromProto(o.info());
          if (o.lease_id() == 0 || !info.ok()) {
            offers.push_back(lease);  // none: fetched through Acquire
            continue;
          }
          lease.lease_id = o.lease_id();
          lease.arena_offset = o.arena_offset();
          lease.arena_generation = o.arena_generation();
          lease.info = *info;
          lease.expires = received + std::chrono::milliseconds(o.expires_in_ms());
          offers.push_back(lease);
        }
      }
      std::vector<bool> via_offer;
      std::vector<Status> fetched = remote->FetchFrom(req.source(), missing, offers, &via_offer);
      for (size_t j = 0; j < fetched.size(); ++j) {
        if (!fetched[j].ok()) continue;
        (j < via_offer.size() && via_offer[j] ? offer_reads : acquire_reads)->Increment();
      }
      for (size_t j = 0; j < fetched.size(); ++j) {
        v1::ItemStatus* item = resp->mutable_results(static_cast<int>(where[j]));
        item->set_code(static_cast<int>(fetched[j].code()));
        item->set_message(std::string(fetched[j].message()));
      }
    }
    return grpc::Status::OK;
  }

  // This node's line: object count, and how many of its objects have fewer than min(R, live)
  // copies on live nodes (asked of the owners with local-scope Lookups).
  v1::ClusterNodeStatus LocalStatus() {
    v1::ClusterNodeStatus line;
    line.set_id(node_id);
    line.set_grpc_address(self_address);
    line.set_zone(config.cluster.zone);
    line.set_capacity_bytes(config.store.cpu_capacity_bytes + config.store.ssd_capacity_bytes);
    std::shared_ptr<const cluster::Placement> p;
    {
      MutexLock lock(&mu);
      line.set_state(fenced ? "fenced" : "live");
      line.set_replication_pending(queue.size());
      p = placement;
    }
    const size_t live = p == nullptr ? 1 : std::max<size_t>(1, p->nodes().size());
    std::vector<storage::StoredName> names;
    std::string token;
    for (int page = 0; page < 100'000; ++page) {
      Result<storage::ListPage> listed = store->List("", true, 1000, token);
      if (!listed.ok()) break;
      for (auto& o : listed->objects) names.push_back(std::move(o.name));
      token = listed->next_page_token;
      if (token.empty()) break;
    }
    line.set_objects(names.size());
    std::vector<uint32_t> copies(names.size(), 1);
    std::map<std::string, std::vector<size_t>> ask;
    for (size_t i = 0; i < names.size(); ++i) {
      for (const std::string& a : OtherOwners(names[i].storage_key, false)) ask[a].push_back(i);
    }
    for (const auto& [address, indices] : ask) {
      for (size_t start = 0; start < indices.size(); start += 1024) {
        const size_t end = std::min(indices.size(), start + 1024);
        v1::LookupRequest req;
        for (size_t k = start; k < end; ++k)
          ToProto(ToObjectName(names[indices[k]]), req.add_keys());
        v1::LookupResponse resp;
        grpc::ClientContext ctx;
        ctx.set_deadline(Deadline());
        ctx.AddMetadata(kScopeHeader, kScopeLocal);
        remote->AddPeerToken(&ctx);  // a multi-tenant node admits peers by the secret
        v1::KvStash::Stub* stub;
        {
          MutexLock lock(&mu);
          stub = StubsFor(address).kv.get();
        }
        if (!stub->Lookup(&ctx, req, &resp).ok()) break;
        for (int r = 0; r < resp.results_size() && start + r < end; ++r) {
          if (resp.results(r).present()) ++copies[indices[start + static_cast<size_t>(r)]];
        }
      }
    }
    uint64_t under = 0;
    {
      MutexLock lock(&mu);
      for (size_t i = 0; i < names.size(); ++i) {
        under += copies[i] < std::min<size_t>(ReplicasForLocked(names[i].storage_key), live);
      }
    }
    line.set_under_replicated(under);
    return line;
  }

  grpc::Status HandleStatus(const v1::ClusterStatusRequest& req, v1::ClusterStatusResponse* resp) {
    resp->set_cluster(config.cluster.name);
    resp->set_replicas(config.cluster.replicas);
    resp->set_node_id(node_id);
    cluster::MemberView view;
    if (membership != nullptr) view = membership->view();
    resp->set_fenced(view.fenced);
    v1::ClusterNodeStatus self = LocalStatus();
    for (const auto& n : view.nodes) {
      if (n.id == node_id) self.set_epoch(n.epoch);
    }
    if (req.local_only()) {
      *resp->add_nodes() = self;
      return grpc::Status::OK;
    }
    bool self_listed = false;
    for (const cluster::NodeRecord& n : view.nodes) {
      if (n.id == node_id) {
        *resp->add_nodes() = self;
        self_listed = true;
        continue;
      }
      v1::ClusterNodeStatus* line = resp->add_nodes();
      line->set_id(n.id);
      line->set_grpc_address(n.grpc_address);
      line->set_zone(n.zone);
      line->set_capacity_bytes(n.capacity_bytes);
      line->set_epoch(n.epoch);
      v1::ClusterStatusRequest one;
      one.set_local_only(true);
      v1::ClusterStatusResponse theirs;
      grpc::ClientContext ctx;
      ctx.set_deadline(Deadline(2));
      remote->AddPeerToken(&ctx);
      v1::KvStashCluster::Stub* stub;
      {
        MutexLock lock(&mu);
        stub = StubsFor(n.grpc_address).cluster.get();
      }
      if (stub->Status(&ctx, one, &theirs).ok() && theirs.nodes_size() == 1) {
        line->set_state(theirs.nodes(0).state());
        line->set_objects(theirs.nodes(0).objects());
        line->set_under_replicated(theirs.nodes(0).under_replicated());
        line->set_replication_pending(theirs.nodes(0).replication_pending());
      } else {
        line->set_state("unreachable");
      }
    }
    if (!self_listed) *resp->add_nodes() = self;  // fenced: not in its own view
    return grpc::Status::OK;
  }
};

ClusterNode::ClusterNode(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ClusterNode::~ClusterNode() { Stop(); }

Result<std::unique_ptr<ClusterNode>> ClusterNode::Create(const ServiceConfig& config,
                                                         storage::ObjectStore* store,
                                                         RemoteTier* remote,
                                                         MetricsRegistry* metrics) {
  if (remote == nullptr) return absl::InvalidArgumentError("a cluster member needs peers");
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->store = store;
  impl->remote = remote;
  impl->metrics = metrics;
  std::string name = config.peers.node_id;
  if (name.empty()) {
    char host[256] = {0};
    ::gethostname(host, sizeof host - 1);
    name = host;
  }
  impl->node_id = SanitizedId(name);
  if (!cluster::ValidNodeId(config.cluster.name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cluster.name: '", config.cluster.name, "' is not [A-Za-z0-9._:-]{1,128}"));
  }
  KVSTASH_ASSIGN_OR_RETURN(
      impl->etcd,
      cluster::EtcdClient::Create(
          {.endpoints = config.cluster.etcd,
           .timeout_ms = config.cluster.etcd_timeout_ms != 0
                             ? config.cluster.etcd_timeout_ms
                             : std::min<uint32_t>(2000, config.cluster.ttl_s * 1000 / 3)}));
  impl->nodes_gauge = metrics->GetGauge("kvstash_cluster_nodes",
                                        "live members in this node's view, itself included; 0 "
                                        "while it is fenced (no confirmed view)");
  impl->fenced_gauge = metrics->GetGauge("kvstash_cluster_fenced", "1 while this node is fenced");
  impl->fenced_gauge->Set(1);
  impl->pending_gauge = metrics->GetGauge("kvstash_cluster_replication_pending",
                                          "objects queued for forwarding to other owners");
  impl->replicated = metrics->GetCounter("kvstash_cluster_replicated_objects_total",
                                         "objects an owner confirmed holding after a forward");
  impl->replicate_failures = metrics->GetCounter("kvstash_cluster_replication_failures_total",
                                                 "forwards an owner did not confirm");
  impl->dropped = metrics->GetCounter("kvstash_cluster_replication_dropped_total",
                                      "commits not forwarded because the queue was full");
  impl->repaired = metrics->GetCounter("kvstash_cluster_repair_queued_total",
                                       "objects re-forwarded after a member was lost");
  impl->view_changes =
      metrics->GetCounter("kvstash_cluster_view_changes_total", "membership views applied");
  impl->hot_gauge = metrics->GetGauge("kvstash_cluster_hot_objects",
                                      "objects held here kept on --hot-replicas owners");
  impl->hot_promotions = metrics->GetCounter("kvstash_cluster_hot_promotions_total",
                                             "objects that turned hot or pinned here");
  impl->sync_commits = metrics->GetCounter(
      "kvstash_cluster_sync_commits_total",
      "client commits acknowledged after their R owners confirmed (replication_mode sync)");
  impl->sync_failures = metrics->GetCounter(
      "kvstash_cluster_sync_failures_total",
      "client commits failed because their owners did not all confirm (replication_mode sync)");
  impl->sync_calls = metrics->GetCounter(
      "kvstash_cluster_sync_replicate_calls_total",
      "Replicate calls sent for synchronous replication (one per owner and batch, retries too)");
  impl->sync_offered = metrics->GetCounter(
      "kvstash_cluster_sync_offered_objects_total",
      "objects whose lease this writer offered its owners in Replicate (replication_mode sync)");
  impl->offer_reads = metrics->GetCounter(
      "kvstash_cluster_replicate_offer_reads_total",
      "objects this owner read for Replicate straight from the sender's offered lease");
  impl->acquire_reads = metrics->GetCounter(
      "kvstash_cluster_replicate_acquire_reads_total",
      "objects this owner pulled for Replicate through Acquire (no usable offer)");
  return std::unique_ptr<ClusterNode>(new ClusterNode(std::move(impl)));
}

Status ClusterNode::Join(const std::string& grpc_address) {
  impl_->self_address = grpc_address;
  cluster::MembershipOptions options;
  options.cluster = impl_->config.cluster.name;
  options.ttl_s = impl_->config.cluster.ttl_s;
  options.self.id = impl_->node_id;
  options.self.grpc_address = grpc_address;
  options.self.ucx_address = impl_->remote->ucx_worker_address().empty() ? "" : "ucx";
  options.self.capacity_bytes =
      impl_->config.store.cpu_capacity_bytes + impl_->config.store.ssd_capacity_bytes;
  options.self.zone = impl_->config.cluster.zone;
  Impl* raw = impl_.get();
  impl_->remote->SetRanker(
      [raw](const ObjectName& name) { return raw->OtherOwners(name.storage_key, true); });
  impl_->worker = std::thread([raw] { raw->Run(); });
  KVSTASH_ASSIGN_OR_RETURN(
      impl_->membership,
      cluster::Membership::Start(impl_->etcd.get(), options,
                                 [raw](const cluster::MemberView& v) { raw->OnView(v); }));
  raw->OnView(impl_->membership->view());
  spdlog::info("event=cluster_join cluster={} node={} address={} replicas={} zone={} ttl_s={}",
               options.cluster, options.self.id, grpc_address, impl_->config.cluster.replicas,
               options.self.zone, options.ttl_s);
  return OkStatus();
}

void ClusterNode::Stop() {
  if (impl_ == nullptr) return;
  if (impl_->membership != nullptr) impl_->membership->Stop();
  {
    MutexLock lock(&impl_->mu);
    impl_->stop = true;
  }
  impl_->cv.SignalAll();
  if (impl_->worker.joinable()) impl_->worker.join();
}

Status ClusterNode::OnCommit(const storage::StoredName& name) {
  if (CommittingFetchedObject()) return OkStatus();
  if (impl_->SyncMode()) {
    if (tls_batch != nullptr) {
      tls_batch->node_ = this;
      tls_batch->names_.push_back(name);
      return OkStatus();
    }
    return impl_->ReplicateMany({name})[0];
  }
  {
    MutexLock lock(&impl_->mu);
    if (impl_->stop) return OkStatus();
    impl_->Enqueue({name, 0});
  }
  impl_->cv.Signal();
  return OkStatus();
}

grpc::Service* ClusterNode::service() { return &impl_->service; }

CommitBatch::CommitBatch() {
  if (tls_batch == nullptr) {
    tls_batch = this;
    open_ = true;
  }
}

CommitBatch::~CommitBatch() {
  if (!names_.empty()) (void)Finish();
  if (open_) tls_batch = nullptr;
}

std::vector<Status> CommitBatch::Finish() {
  std::vector<storage::StoredName> names;
  names.swap(names_);
  if (node_ == nullptr || names.empty()) return {};
  return node_->impl_->ReplicateMany(names);
}

}  // namespace kvstash::cachesvc
