// Private to cachesvc/src: RemoteTier::Impl's peer bookkeeping (remote_tier_impl.h): the peer
// list and its ranking, the connection to each peer (Hello, and its UCX endpoints), health (a
// peer marked down is skipped for peers.retry_ms), per-peer metrics, and the context of a peer
// call.
//
// Locking: Find and Snapshot take peers_mu for the list; Connect and Disconnect hold the peer's
// mu across Hello and the UCX connects, so one thread connects a peer while the others wait;
// down_until_ns and the metrics are atomics.
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kvstash/proto/status_mapping.h"
#include "remote_tier_impl.h"

namespace kvstash::cachesvc {
namespace {

using Clock = std::chrono::steady_clock;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

}  // namespace

RemoteTier::Impl::Clock::time_point RemoteTier::Impl::Deadline() const {
  return Clock::now() + std::chrono::milliseconds(config.timeout_ms);
}

void RemoteTier::Impl::PrepareContext(grpc::ClientContext* ctx) const {
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(config.timeout_ms));
  ctx->AddMetadata(kScopeHeader, kScopeLocal);
  // Identifies this node as a peer to a multi-tenant node (auth.h), whose tenants' objects a
  // peer may fetch.
  if (!secret.empty()) ctx->AddMetadata(kPeerTokenHeader, secret);
}

bool RemoteTier::Impl::Down(const Peer& peer) const { return peer.down_until_ns.load() > NowNs(); }

void RemoteTier::Impl::MarkDown(Peer& peer, const Status& why) {
  const bool was_up = !Down(peer);
  peer.down_until_ns = NowNs() + static_cast<int64_t>(config.retry_ms) * 1'000'000;
  peer.up->Set(0);
  if (why.code() == absl::StatusCode::kDeadlineExceeded) {
    peer.failures_timeout->Increment();
  } else {
    peer.failures_unreachable->Increment();
  }
  Disconnect(peer);
  if (was_up) {
    spdlog::warn("event=peer_down peer={} retry_ms={} error=\"{}\"", peer.address, config.retry_ms,
                 std::string(why.message()));
  }
}

void RemoteTier::Impl::Disconnect(Peer& peer) {
  MutexLock lock(&peer.mu);
#ifdef KVSTASH_HAVE_UCX
  if (peer.connected && peer.ucx && transport != nullptr) transport->Disconnect(peer.ucx_peer);
  if (peer.connected && peer.staging_peer != 0 && transport != nullptr) {
    transport->Disconnect(peer.staging_peer);
  }
  peer.staging_peer = 0;
#endif
  peer.connected = false;
}

Result<RemoteTier::Impl::Link> RemoteTier::Impl::Connect(Peer& peer) {
  MutexLock lock(&peer.mu);
#ifdef KVSTASH_HAVE_UCX
  if (peer.connected && peer.ucx && transport != nullptr &&
      (!transport->Healthy(peer.ucx_peer) ||
       (peer.staging_peer != 0 && !transport->Healthy(peer.staging_peer)))) {
    transport->Disconnect(peer.ucx_peer);
    if (peer.staging_peer != 0) transport->Disconnect(peer.staging_peer);
    peer.staging_peer = 0;
    peer.connected = false;
  }
#endif
  if (!peer.connected) {
    grpc::ClientContext ctx;
    PrepareContext(&ctx);
    v1::PeerHelloRequest req;
    req.set_node_id(node_id);
#ifdef KVSTASH_HAVE_UCX
    // serving_first: the peer connects to this worker before it answers, and this node's
    // Connects below then find that connection (docs/deploy.md "Which UCX").
    if (connect_first && transport != nullptr) {
      req.set_ucx_worker_address(transport->worker_address());
    }
#endif
    v1::PeerHelloResponse resp;
    Status s = FromGrpcStatus(peer.hello->Hello(&ctx, req, &resp));
    if (!s.ok()) {
      return Status(s.code(), absl::StrCat("Hello to peer ", peer.address, ": ", s.message()));
    }
    // Arena generations are random per arena: the same one means this very process.
    peer.is_self = resp.arena_generation() == store->arena_generation();
    peer.generation = resp.arena_generation();
    peer.arena_bytes = resp.arena_bytes();
    peer.release_id = resp.release_message_id();
    peer.ucx = false;
#ifdef KVSTASH_HAVE_UCX
    if (transport != nullptr && !resp.ucx_worker_address().empty()) {
      transport::RemoteRegion remote;
      remote.address = resp.arena_address();
      remote.bytes = resp.arena_bytes();
      remote.packed_rkey = resp.arena_rkey();
      KVSTASH_ASSIGN_OR_RETURN(peer.ucx_peer,
                               transport->Connect(resp.ucx_worker_address(), remote, Deadline()));
      peer.ucx = true;
      peer.staging_peer = 0;
      peer.staging_bytes = 0;
      if (resp.staging_bytes() > 0) {
        // A second endpoint, bound to the staging region (encoded fetches); without it they
        // go over streams.
        transport::RemoteRegion staged{resp.staging_address(), resp.staging_bytes(),
                                       resp.staging_rkey()};
        Result<transport::PeerId> id =
            transport->Connect(resp.ucx_worker_address(), staged, Deadline());
        if (id.ok()) {
          peer.staging_peer = *id;
          peer.staging_bytes = resp.staging_bytes();
        } else {
          spdlog::warn("event=peer_staging_unreachable peer={} error=\"{}\"", peer.address,
                       std::string(id.status().message()));
        }
      }
    }
#endif
    peer.connected = true;
    peer.up->Set(1);
    spdlog::info(
        "event=peer_connected peer={} node={} data_plane={} arena_bytes={} gpu_pool_bytes={}",
        peer.address, resp.node_id().substr(0, 256), peer.ucx ? "ucx" : "grpc", peer.arena_bytes,
        resp.gpu_pool_bytes());
  }
  if (peer.is_self) return absl::NotFoundError("the peer is this node");
  return Link{peer.ucx,        peer.ucx_peer,     peer.generation,   peer.arena_bytes,
              peer.release_id, peer.staging_peer, peer.staging_bytes};
}

std::shared_ptr<RemoteTier::Impl::Peer> RemoteTier::Impl::Find(const std::string& address) const {
  MutexLock lock(&peers_mu);
  for (auto& peer : peers) {
    if (peer->address == address && peer->listed.load()) return peer;
  }
  return nullptr;
}

std::vector<std::shared_ptr<RemoteTier::Impl::Peer>> RemoteTier::Impl::Snapshot(
    const ObjectName* first) const {
  std::vector<std::shared_ptr<Peer>> out;
  Ranker rank;
  {
    MutexLock lock(&peers_mu);
    for (auto& peer : peers) {
      if (peer->listed.load()) out.push_back(peer);
    }
    rank = ranker;
  }
  if (rank && first != nullptr && out.size() > 1) {
    const std::vector<std::string> preferred = rank(*first);
    std::vector<std::shared_ptr<Peer>> ordered;
    for (const std::string& address : preferred) {
      for (auto& peer : out) {
        if (peer != nullptr && peer->address == address) {
          ordered.push_back(std::move(peer));
          peer = nullptr;
        }
      }
    }
    for (auto& peer : out) {
      if (peer != nullptr) ordered.push_back(std::move(peer));
    }
    out.swap(ordered);
  }
  return out;
}

std::shared_ptr<RemoteTier::Impl::Peer> RemoteTier::Impl::MakePeer(const std::string& address) {
  auto peer = std::make_shared<Peer>();
  peer->address = address;
  auto channel = grpc::CreateCustomChannel(address, credentials, channel_args);
  peer->kv = v1::KvStash::NewStub(channel);
  peer->hello = v1::KvStashPeer::NewStub(channel);
  const MetricLabels labels = {{"peer", address}};
  auto with = [&](const char* reason) {
    return MetricLabels{{"peer", address}, {"reason", reason}};
  };
  const char* failures_help = "failed peer calls and rejected objects, by reason";
  peer->fetched_objects = metrics->GetCounter("kvstash_peer_fetched_objects_total",
                                              "objects fetched from the peer", labels);
  peer->fetched_bytes = metrics->GetCounter("kvstash_peer_fetched_bytes_total",
                                            "payload bytes fetched from the peer", labels);
  peer->failures_unreachable =
      metrics->GetCounter("kvstash_peer_failures_total", failures_help, with("unreachable"));
  peer->failures_timeout =
      metrics->GetCounter("kvstash_peer_failures_total", failures_help, with("timeout"));
  peer->failures_corrupt =
      metrics->GetCounter("kvstash_peer_failures_total", failures_help, with("corrupt"));
  peer->failures_bounds =
      metrics->GetCounter("kvstash_peer_failures_total", failures_help, with("bounds"));
  peer->fetch_seconds = metrics->GetHistogram("kvstash_peer_fetch_seconds",
                                              "time of one batch fetched from the peer", labels);
  peer->up = metrics->GetGauge("kvstash_peer_up", "1 while the peer answers", labels);
  peer->encoded_objects = metrics->GetCounter("kvstash_peer_encoded_objects_total",
                                              "objects fetched from the peer as CacheGen", labels);
  peer->wire_bytes = metrics->GetCounter("kvstash_peer_encoded_wire_bytes_total",
                                         "bytes of the CacheGen containers fetched", labels);
  const char* planes_help = "encoded fetches from the peer, by the plane that carried them";
  peer->encoded_over_ucx = metrics->GetCounter("kvstash_peer_encoded_fetches_total", planes_help,
                                               {{"peer", address}, {"plane", "ucx"}});
  peer->encoded_over_grpc = metrics->GetCounter("kvstash_peer_encoded_fetches_total", planes_help,
                                                {{"peer", address}, {"plane", "grpc"}});
  return peer;
}

void RemoteTier::Impl::Count(const std::vector<Status>& out) {
  for (const Status& s : out) {
    if (s.ok()) {
      hits.fetch_add(1, std::memory_order_relaxed);
    } else {
      misses.fetch_add(1, std::memory_order_relaxed);
    }
  }
}

}  // namespace kvstash::cachesvc
