// Private to cachesvc/src: RemoteTier::Impl, the state and the fetching and serving logic behind
// RemoteTier (remote_tier.h), and the helpers it uses. Included only by remote_tier.cc; kept
// apart so that each file stays a readable size.
#ifndef KVSTASH_CACHESVC_REMOTE_TIER_IMPL_H_
#define KVSTASH_CACHESVC_REMOTE_TIER_IMPL_H_

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "cachegen_tier_codec.h"
#include "kvstash/codec/codec_choice.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/common/mutex.h"
#include "kvstash/proto/status_mapping.h"
#include "kvstash/v1/kvstash.grpc.pb.h"
#include "remote_tier.h"
#include "request_checks.h"
#include "ssd_encoding_choice.h"
#include "tls.h"
#ifdef KVSTASH_HAVE_UCX
#include "kvstash/transport/ucx_transport.h"
#include "peer_staging.h"
#endif

namespace kvstash::cachesvc {
namespace {

using Clock = std::chrono::steady_clock;

#ifdef KVSTASH_HAVE_UCX
// Active-message id of "release these leases" notifications (PeerHelloResponse).
constexpr uint16_t kReleaseMessageId = 1;
#endif

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

bool SameSecret(const std::string& a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// "Release these leases": the payload of a UCX notification, and the gRPC fallback's request.
v1::ReleaseRequest ReleaseMessage(const std::vector<uint64_t>& leases) {
  v1::ReleaseRequest req;
  for (uint64_t id : leases) req.add_lease_ids(id);
  return req;
}

Result<std::string> ReadSecret(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read peers.secret_file ", path));
  std::stringstream text;
  text << in.rdbuf();
  std::string secret = text.str();
  while (!secret.empty() && (secret.back() == '\n' || secret.back() == '\r')) secret.pop_back();
  if (secret.size() < 16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "peers.secret_file ", path, " holds ", secret.size(),
        " bytes; a cluster secret needs at least 16 (e.g. head -c 32 /dev/urandom | base64)"));
  }
  return secret;
}

// To the engine, a peer that cannot be used is unavailable, whatever the reason (timeout, reset,
// refused secret); the message keeps the cause.
Status PeerUnavailable(const std::string& address, const Status& cause) {
  return absl::UnavailableError(absl::StrCat("peer ", address, " unavailable: ", cause.message()));
}

// Raw fetches at least this large measure a link's rate (smaller ones measure latency).
constexpr uint64_t kMeasureMinBytes = 256 << 10;
// While a measured link carries CacheGen, one batch in this many goes raw to re-measure it.
constexpr uint32_t kRawProbeEvery = 16;

// The encodings "auto" chooses between (codec/codec_choice.h): CacheGen at the transfer level
// (the quality floor) and the KVQ levels at least as exact on the calibration sample, with their
// ratio and encode/decode speeds measured here at start; the peer encodes per request, so a
// fetch costs 1/(r L) + 1/E + 1/D per byte against 1/L raw (E is measured here and assumed for
// the peer too). Decode runs on as many threads as the decoder's pool.
Result<std::vector<codec::CodecRates>> CalibrateTransferCodecs(int level) {
  codec::CalibrationOptions o;
  o.cachegen_level = level;
  o.decode_threads = std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 8);
  return codec::CalibrateCodecs(o);
}

bool IsDefinitive(const Status& s) {
  // The object is settled for this fetch: fetched, or the local store cannot take it.
  return s.ok() || s.code() == absl::StatusCode::kResourceExhausted ||
         s.code() == absl::StatusCode::kInvalidArgument;
}

}  // namespace

namespace {
thread_local bool tls_committing_fetched = false;
}  // namespace

struct RemoteTier::Impl {
  struct Peer {
    std::string address;
    std::unique_ptr<v1::KvStash::Stub> kv;
    std::unique_ptr<v1::KvStashPeer::Stub> hello;
    std::atomic<int64_t> down_until_ns{0};

    Mutex mu;  // connection state; held across Hello and UCX connect
    bool connected ABSL_GUARDED_BY(mu) = false;
    bool is_self ABSL_GUARDED_BY(mu) = false;
    bool ucx ABSL_GUARDED_BY(mu) = false;  // reads over UCX (else gRPC streams)
    uint64_t ucx_peer ABSL_GUARDED_BY(mu) = 0;
    uint64_t generation ABSL_GUARDED_BY(mu) = 0;
    uint64_t arena_bytes ABSL_GUARDED_BY(mu) = 0;
    uint32_t release_id ABSL_GUARDED_BY(mu) = 0;
    uint64_t staging_peer ABSL_GUARDED_BY(mu) = 0;  // its staging region over UCX; 0: none
    uint64_t staging_bytes ABSL_GUARDED_BY(mu) = 0;

    bool from_cluster = false;       // added by SetClusterPeers
    std::atomic<bool> listed{true};  // static, or in the cluster's current view
    Counter* fetched_objects = nullptr;
    Counter* fetched_bytes = nullptr;
    Counter* failures_unreachable = nullptr;
    Counter* failures_timeout = nullptr;
    Counter* failures_corrupt = nullptr;
    Counter* failures_bounds = nullptr;
    Histogram* fetch_seconds = nullptr;
    Gauge* up = nullptr;
    Counter* encoded_objects = nullptr;    // fetched as CacheGen
    Counter* wire_bytes = nullptr;         // bytes the link carried for those
    Counter* encoded_over_ucx = nullptr;   // encoded fetches pulled from its staging over UCX
    Counter* encoded_over_grpc = nullptr;  // ... and those that went over KvStash.Get streams
    std::atomic<int> last_plane{0};        // 1 ucx, 2 grpc: logged when it changes
    // The link's rate (bytes/s) as raw fetches of >= kMeasureMinBytes saw it; 0 until one did.
    std::atomic<double> raw_bytes_per_s{0};
    std::atomic<uint32_t> encoded_batches{0};
  };

  // What one fetch from one peer works with, taken under Peer::mu.
  struct Link {
    bool ucx = false;
    uint64_t ucx_peer = 0;
    uint64_t generation = 0;
    uint64_t arena_bytes = 0;
    uint32_t release_id = 0;
    uint64_t staging_peer = 0;
    uint64_t staging_bytes = 0;
  };

  class HelloService final : public v1::KvStashPeer::Service {
   public:
    explicit HelloService(Impl* impl) : impl_(impl) {}
    grpc::Status Hello(grpc::ServerContext* ctx, const v1::PeerHelloRequest* req,
                       v1::PeerHelloResponse* resp) override {
      auto it = ctx->client_metadata().find(kPeerTokenHeader);
      if (it == ctx->client_metadata().end()) {
        impl_->hello_refused->Increment();
        return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                            "peer Hello without the kvstash-peer-token metadata");
      }
      if (it->second.size() > 4096 ||
          !SameSecret(impl_->secret, std::string_view(it->second.data(), it->second.size()))) {
        impl_->hello_refused->Increment();
        return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "wrong cluster secret");
      }
      // With TLS, the rkey goes only over a connection whose peer proved a certificate of the
      // cluster's CA (the listener requires one; this keeps Hello honest if that ever changes).
      if (impl_->tls_required &&
          (ctx->auth_context() == nullptr || !ctx->auth_context()->IsPeerAuthenticated())) {
        impl_->hello_refused->Increment();
        return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                            "peer Hello needs a mutually authenticated TLS connection");
      }
      spdlog::info("event=peer_hello from={} peer={}", req->node_id().substr(0, 256), ctx->peer());
      resp->set_node_id(impl_->node_id);
      resp->set_arena_generation(impl_->store->arena_generation());
      resp->set_arena_bytes(impl_->store->arena_bytes());
#ifdef KVSTASH_HAVE_UCX
      if (impl_->transport != nullptr) {
        // What peers may read: the registered range, which covers arenas added after start-up.
        resp->set_arena_bytes(impl_->region.bytes);
        resp->set_ucx_worker_address(impl_->transport->worker_address());
        resp->set_arena_address(impl_->region.address);
        resp->set_arena_rkey(impl_->region.packed_rkey);
        resp->set_release_message_id(kReleaseMessageId);
        if (impl_->gpu_registered) {
          resp->set_gpu_pool_address(impl_->gpu_region.address);
          resp->set_gpu_pool_bytes(impl_->gpu_region.bytes);
          resp->set_gpu_pool_rkey(impl_->gpu_region.packed_rkey);
        }
        if (impl_->staging != nullptr) {
          resp->set_staging_address(impl_->staging->region().address);
          resp->set_staging_bytes(impl_->staging->region().bytes);
          resp->set_staging_rkey(impl_->staging->region().packed_rkey);
        }
      }
#endif
      return grpc::Status::OK;
    }

    grpc::Status StageEncoded(grpc::ServerContext* ctx,
                              grpc::ServerReaderWriter<v1::StageEncodedResponse,
                                                       v1::StageEncodedRequest>* stream) override {
      grpc::Status allowed = impl_->CheckToken(ctx);
      if (!allowed.ok()) return allowed;
#ifdef KVSTASH_HAVE_UCX
      if (impl_->staging != nullptr) return impl_->staging->Serve(ctx, stream);
#endif
      (void)stream;
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "this node stages no encoded fetches (UCX data plane and "
                          "peers.staging_mib > 0 are needed)");
    }

   private:
    Impl* impl_;
  };

  PeerConfig config;
  storage::ObjectStore* store = nullptr;
  MetricsRegistry* metrics = nullptr;
  std::string node_id;
  std::string secret;
  bool tls_required = false;  // Hello only over mutually authenticated TLS
  mutable Mutex peers_mu;     // the list; each Peer is never removed (metrics point at it)
  std::vector<std::shared_ptr<Peer>> peers ABSL_GUARDED_BY(peers_mu);
  Ranker ranker ABSL_GUARDED_BY(peers_mu);
  grpc::ChannelArguments channel_args;
  std::shared_ptr<grpc::ChannelCredentials> credentials;  // mutual TLS, or insecure
  std::unique_ptr<HelloService> hello_service;
  Counter* hello_refused = nullptr;
#ifdef KVSTASH_HAVE_UCX
  // Before the transport, so that the memory it registered outlives it.
  std::unique_ptr<PeerStaging> staging;
  std::unique_ptr<transport::UcxTransport> transport;
  bool ucx_fetch = false;  // config.ucx_fetch resolved at start (auto: UCX >= 1.14)
  transport::RemoteRegion region;
  transport::RemoteRegion gpu_region;  // the GPU pool's registration, when gpu_registered
#endif
  // The GPU pool (RegisterGpuPool, at start-up, before any fetch or Hello; read-only after).
  bool gpu_offered = false;        // the store has a pool
  bool gpu_registered = false;     // ... registered with UCX as CUDA memory: fetches can land in it
  uint64_t gpu_base = 0;           // its device address (CUdeviceptr)
  std::string gpu_not_registered;  // why not, when offered but not registered
  std::atomic<uint64_t> hits{0}, misses{0}, bytes_read{0};
  // Encoded fetches (PeerConfig::transfer_encoding): the decoder of what peers send (CacheGen or
  // KVQ, told apart by the container's magic), and for "auto" the measured candidates.
  std::unique_ptr<CacheGenTierCodec> decoder;
  std::vector<codec::CodecRates> candidates;

  // How the next batch from `peer` is to be asked for: nullopt for raw; kind kCacheGen (the
  // peer's level) or kKvq (level 0: the peer's level).
  std::optional<codec::CodecRates> EncodingFor(Peer& peer) {
    if (decoder == nullptr) return std::nullopt;  // raw
    codec::CodecRates fixed;
    if (config.transfer_encoding == PeerTransferEncoding::kCacheGen) {
      fixed.kind = codec::CodecKind::kCacheGen;
      return fixed;
    }
    if (config.transfer_encoding == PeerTransferEncoding::kKvq) {
      fixed.kind = codec::CodecKind::kKvq;
      return fixed;
    }
    const bool measured = config.link_mbps == 0;
    const double rate =
        measured ? peer.raw_bytes_per_s.load() : static_cast<double>(config.link_mbps) * 1e6 / 8;
    const codec::CodecRates chosen =
        codec::ChooseEncoding(candidates, rate, codec::CostModel::kTransfer);
    if (chosen.kind == codec::CodecKind::kRaw) return std::nullopt;
    if (measured && peer.encoded_batches.fetch_add(1) % kRawProbeEvery == kRawProbeEvery - 1) {
      return std::nullopt;  // a raw batch keeps the link's measurement fresh
    }
    return chosen;
  }

  // Folds one raw transfer into the peer's measured rate.
  static void MeasureRaw(Peer& peer, uint64_t bytes, Clock::duration took) {
    const double s = std::chrono::duration<double>(took).count();
    if (bytes < kMeasureMinBytes || s <= 0) return;
    const double rate = static_cast<double>(bytes) / s;
    const double old = peer.raw_bytes_per_s.load();
    peer.raw_bytes_per_s.store(old == 0 ? rate : (old + rate) / 2);
  }

  // The cluster secret (and with TLS a verified certificate) of a caller: OK or UNAUTHENTICATED.
  grpc::Status CheckToken(const grpc::ServerContext* ctx) const {
    auto it = ctx->client_metadata().find(kPeerTokenHeader);
    if (secret.empty() || it == ctx->client_metadata().end() || it->second.size() > 4096 ||
        !SameSecret(secret, std::string_view(it->second.data(), it->second.size()))) {
      hello_refused->Increment();
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "peer call without the right kvstash-peer-token");
    }
    if (tls_required &&
        (ctx->auth_context() == nullptr || !ctx->auth_context()->IsPeerAuthenticated())) {
      hello_refused->Increment();
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "peer call needs a mutually authenticated TLS connection");
    }
    return grpc::Status::OK;
  }

  Clock::time_point Deadline() const {
    return Clock::now() + std::chrono::milliseconds(config.timeout_ms);
  }

  void PrepareContext(grpc::ClientContext* ctx) const {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(config.timeout_ms));
    ctx->AddMetadata(kScopeHeader, kScopeLocal);
    // Identifies this node as a peer to a multi-tenant node (auth.h), whose tenants' objects a
    // peer may fetch.
    if (!secret.empty()) ctx->AddMetadata(kPeerTokenHeader, secret);
  }

  bool Down(const Peer& peer) const { return peer.down_until_ns.load() > NowNs(); }

  void MarkDown(Peer& peer, const Status& why) {
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
      spdlog::warn("event=peer_down peer={} retry_ms={} error=\"{}\"", peer.address,
                   config.retry_ms, std::string(why.message()));
    }
  }

  void Disconnect(Peer& peer) {
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

  // Hello (and the UCX endpoint) once per connection; reconnects after a failure.
  Result<Link> Connect(Peer& peer) {
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

  std::shared_ptr<Peer> Find(const std::string& address) const {
    MutexLock lock(&peers_mu);
    for (auto& peer : peers) {
      if (peer->address == address && peer->listed.load()) return peer;
    }
    return nullptr;
  }

  // The listed peers, those the ranker prefers for `first` first.
  std::vector<std::shared_ptr<Peer>> Snapshot(const ObjectName* first) const {
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

  std::shared_ptr<Peer> MakePeer(const std::string& address) {
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
    peer->encoded_objects = metrics->GetCounter(
        "kvstash_peer_encoded_objects_total", "objects fetched from the peer as CacheGen", labels);
    peer->wire_bytes = metrics->GetCounter("kvstash_peer_encoded_wire_bytes_total",
                                           "bytes of the CacheGen containers fetched", labels);
    const char* planes_help = "encoded fetches from the peer, by the plane that carried them";
    peer->encoded_over_ucx = metrics->GetCounter("kvstash_peer_encoded_fetches_total", planes_help,
                                                 {{"peer", address}, {"plane", "ucx"}});
    peer->encoded_over_grpc = metrics->GetCounter("kvstash_peer_encoded_fetches_total", planes_help,
                                                  {{"peer", address}, {"plane", "grpc"}});
    return peer;
  }

  void Count(const std::vector<Status>& out) {
    for (const Status& s : out) {
      if (s.ok()) {
        hits.fetch_add(1, std::memory_order_relaxed);
      } else {
        misses.fetch_add(1, std::memory_order_relaxed);
      }
    }
  }

  // Fetches names[remaining] from one peer; settles entries of `out` and drops the settled ones
  // from `remaining`.
  // `land`: the local tier the objects land in (kCpu, or kGpu: UCX only, never encoded).
  void FetchFromPeer(Peer& peer, const std::vector<ObjectName>& names,
                     std::vector<size_t>& remaining, std::vector<Status>& out,
                     storage::Tier land = storage::Tier::kCpu) {
    Result<Link> link = Connect(peer);
    if (!link.ok()) {
      if (link.status().code() != absl::StatusCode::kNotFound) {
        MarkDown(peer, link.status());
        Status unavailable = PeerUnavailable(peer.address, link.status());
        for (size_t i : remaining) {
          if (out[i].code() == absl::StatusCode::kNotFound) out[i] = unavailable;
        }
      }
      return;
    }
    if (land == storage::Tier::kGpu && !link->ucx) {
      Status refused = absl::FailedPreconditionError(
          absl::StrCat("cannot land in the GPU tier: peer ", peer.address,
                       " has no UCX data plane (its objects would come over gRPC streams)"));
      for (size_t i : remaining) out[i] = refused;
      remaining.clear();
      return;
    }
    const std::optional<codec::CodecRates> encoded =
        land == storage::Tier::kCpu ? EncodingFor(peer) : std::nullopt;
    if (link->ucx && !encoded) {
      FetchOverUcx(peer, *link, names, remaining, out, land);
    } else {
      // Encoded: pulled from the peer's staging over UCX where it can; the rest over streams.
      const std::vector<size_t> streamed =
          encoded ? FetchStaged(peer, *link, names, remaining, out, *encoded) : remaining;
      for (size_t i : streamed) {
        if (Down(peer)) break;
        Status s = FetchOverGrpc(peer, names[i], encoded ? &*encoded : nullptr);
        if (s.code() == absl::StatusCode::kUnavailable ||
            s.code() == absl::StatusCode::kDeadlineExceeded) {
          MarkDown(peer, s);
          s = PeerUnavailable(peer.address, s);
        }
        if (s.code() != absl::StatusCode::kNotFound ||
            out[i].code() == absl::StatusCode::kNotFound) {
          out[i] = s;
        }
      }
    }
    std::vector<size_t> still;
    for (size_t i : remaining) {
      if (!IsDefinitive(out[i])) still.push_back(i);
    }
    remaining.swap(still);
  }

  // --- fetching --------------------------------------------------------------

  // Logs the plane encoded fetches from `peer` take when it changes (1 ucx, 2 grpc).
  static void NotePlane(Peer& peer, int plane, const char* reason) {
    if (peer.last_plane.exchange(plane) == plane) return;
    spdlog::info("event=peer_encoded_plane peer={} plane={} reason=\"{}\"", peer.address,
                 plane == 1 ? "ucx" : "grpc", reason);
  }

  // An encoded batch through the peer's staging over UCX (peer_staging.h): settles what it
  // pulled into `out` and returns the objects left for streams (no staging at either end, a peer
  // too old to stage, its pool full, or a refused call).
  std::vector<size_t> FetchStaged(Peer& peer, const Link& link,
                                  const std::vector<ObjectName>& names,
                                  const std::vector<size_t>& remaining, std::vector<Status>& out,
                                  const codec::CodecRates& wanted) {
#ifdef KVSTASH_HAVE_UCX
    if (!link.ucx || link.staging_peer == 0) {
      NotePlane(peer, 2, link.ucx ? "the peer offers no staging" : "no UCX data plane");
      return remaining;
    }
    const Clock::time_point start = Clock::now();
    StagedPull pull;
    pull.stub = peer.hello.get();
    pull.prepare = [this, &wanted](grpc::ClientContext* ctx) {
      PrepareContext(ctx);
      if (wanted.kind == codec::CodecKind::kKvq) {
        ctx->AddMetadata(kPeerCodecHeader,
                         wanted.level == 0 ? "kvq" : absl::StrCat("kvq-", wanted.level));
      }
    };
    pull.store = store;
    pull.transport = transport.get();
    pull.staging_peer = link.staging_peer;
    pull.staging_bytes = link.staging_bytes;
    pull.fetch = ucx_fetch;
    pull.decoder = decoder.get();
    pull.reservation_ms = config.timeout_ms * 2 + 1000;
    pull.deadline = Deadline();
    v1::GetRequest encoding;
    encoding.set_accept_encoding(v1::ENCODING_CACHEGEN);
    Result<std::vector<StagedArrival>> pulled = PullStaged(pull, names, remaining, encoding);
    if (!pulled.ok()) {
      const absl::StatusCode code = pulled.status().code();
      if (code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kDeadlineExceeded) {
        MarkDown(peer, pulled.status());
        for (size_t i : remaining) out[i] = PeerUnavailable(peer.address, pulled.status());
        return {};
      }
      NotePlane(peer, 2, "the peer refused StageEncoded");
      spdlog::debug("event=peer_staged_refused peer={} error=\"{}\"", peer.address,
                    std::string(pulled.status().message()));
      return remaining;
    }
    std::vector<size_t> streamed;
    for (StagedArrival& a : *pulled) {
      if (a.fallback) {
        NotePlane(peer, 2, "the peer's staging pool is full");
        streamed.push_back(a.index);
        continue;
      }
      if (!a.local) {
        if (a.status.code() == absl::StatusCode::kDataLoss) peer.failures_corrupt->Increment();
        if (a.status.code() == absl::StatusCode::kInvalidArgument) {
          peer.failures_bounds->Increment();
        }
        if (a.status.code() != absl::StatusCode::kNotFound ||
            out[a.index].code() == absl::StatusCode::kNotFound) {
          out[a.index] = a.status;
        }
        continue;
      }
      Status s = Settle(peer, Pending{a.index, 0, 0, a.info, *a.local});
      out[a.index] = s;
      if (s.ok() && a.encoded) {
        peer.encoded_objects->Increment();
        peer.wire_bytes->Increment(a.wire_bytes);
        peer.encoded_over_ucx->Increment();
        NotePlane(peer, 1, "staged");
      }
    }
    peer.fetch_seconds->Observe(std::chrono::duration<double>(Clock::now() - start).count());
    return streamed;
#else
    (void)link, (void)names, (void)out, (void)wanted;
    NotePlane(peer, 2, "built without UCX");
    return remaining;
#endif
  }

  struct Pending {
    size_t index;  // into the caller's names
    uint64_t peer_lease = 0;
    uint64_t remote_offset = 0;
    ObjectInfo info;
    storage::Reservation local;
  };

  void ReleaseRemote(Peer& peer, const Link& link, const std::vector<uint64_t>& leases) {
    if (leases.empty()) return;
#ifdef KVSTASH_HAVE_UCX
    if (link.ucx && transport != nullptr &&
        transport
            ->Notify(link.ucx_peer, static_cast<uint16_t>(link.release_id),
                     ReleaseMessage(leases).SerializeAsString(), Deadline())
            .ok()) {
      return;
    }
#endif
    grpc::ClientContext ctx;
    PrepareContext(&ctx);
    v1::ReleaseResponse resp;
    Status s = FromGrpcStatus(peer.kv->Release(&ctx, ReleaseMessage(leases), &resp));
    if (!s.ok()) {
      spdlog::warn("event=peer_release_failed peer={} leases={} error=\"{}\"", peer.address,
                   leases.size(), std::string(s.message()));
    }
  }

  // An object to read from a peer's arena: where it lies there and what it is.
  struct RemoteObject {
    size_t index;  // into the caller's names
    uint64_t peer_lease = 0;
    uint64_t remote_offset = 0;
    ObjectInfo info;
  };

  // One batch over UCX: lease on the peer, reserve here, read, check, commit, release. `land`
  // kGpu: the reservations are GPU pool landings, read into straight as CUDA memory.
  void FetchOverUcx(Peer& peer, const Link& link, const std::vector<ObjectName>& names,
                    std::vector<size_t>& remaining, std::vector<Status>& out, storage::Tier land) {
    const Clock::time_point start = Clock::now();
    grpc::ClientContext ctx;
    PrepareContext(&ctx);
    v1::AcquireRequest req;
    req.set_lease_ms(config.timeout_ms * 2 + 1000);
    for (size_t i : remaining) ToProto(names[i], req.add_keys());
    v1::AcquireResponse resp;
    Status s = FromGrpcStatus(peer.kv->Acquire(&ctx, req, &resp));
    if (s.ok() && resp.results_size() != static_cast<int>(remaining.size())) {
      s = absl::InternalError("peer answered Acquire with the wrong number of results");
    }
    if (!s.ok()) {
      MarkDown(peer, s);
      for (size_t i : remaining) out[i] = PeerUnavailable(peer.address, s);
      return;
    }
    std::vector<RemoteObject> objects;
    std::vector<uint64_t> to_release;
    bool stale = false;
    for (int r = 0; r < resp.results_size(); ++r) {
      const v1::AcquireResult& result = resp.results(r);
      const size_t i = remaining[r];
      if (result.status().code() != 0) {
        Status item(static_cast<absl::StatusCode>(result.status().code()),
                    result.status().message());
        if (out[i].code() != absl::StatusCode::kDataLoss) out[i] = item;
        continue;
      }
      to_release.push_back(result.lease_id());
      if (result.arena_generation() != link.generation) {
        stale = true;  // the peer restarted since Hello: its offsets mean something else
        out[i] = absl::UnavailableError("peer restarted; reconnecting");
        continue;
      }
      Result<ObjectInfo> info = FromProto(result.info());
      if (!info.ok()) {
        peer.failures_bounds->Increment();
        out[i] = absl::InvalidArgumentError(absl::StrCat(
            "peer ", peer.address,
            " offered an object outside its arena or with a bad info: ", info.status().message()));
        continue;
      }
      objects.push_back({i, result.lease_id(), result.arena_offset(), *info});
    }
    if (stale) Disconnect(peer);
    if (!ReadFromArena(peer, link, names, objects, out, land, start)) {
      return;  // the peer's leases expire on their own
    }
    ReleaseRemote(peer, link, to_release);
  }

  // Reserves `objects` here, reads them from the peer's arena over UCX in one batch, checks and
  // commits each (their statuses into `out`). False when the read itself failed: the peer is
  // marked down and every object that was reserved is Unavailable.
  bool ReadFromArena(Peer& peer, const Link& link, const std::vector<ObjectName>& names,
                     const std::vector<RemoteObject>& objects, std::vector<Status>& out,
                     storage::Tier land, Clock::time_point start) {
#ifdef KVSTASH_HAVE_UCX
    std::vector<Pending> pending;
    for (const RemoteObject& o : objects) {
      if (o.remote_offset > link.arena_bytes ||
          o.info.payload_bytes > link.arena_bytes - o.remote_offset) {
        peer.failures_bounds->Increment();
        out[o.index] = absl::InvalidArgumentError(
            absl::StrCat("peer ", peer.address, " offered an object outside its arena"));
        continue;
      }
      const uint32_t reservation_ms = config.timeout_ms * 2 + 1000;
      const size_t i = o.index;
      Result<storage::Reservation> local =
          land == storage::Tier::kCpu
              ? store->Reserve(ToStoredName(names[i]), o.info, reservation_ms, /*overwrite=*/false)
              : store->ReserveInTier(land, ToStoredName(names[i]), o.info, reservation_ms,
                                     /*overwrite=*/false);
      if (!local.ok()) {
        out[i] =
            local.status().code() == absl::StatusCode::kAlreadyExists ? OkStatus() : local.status();
        continue;
      }
      pending.push_back({i, o.peer_lease, o.remote_offset, o.info, *local});
    }
    if (pending.empty()) return true;
    std::vector<transport::ReadOp> ops;
    ops.reserve(pending.size());
    for (const Pending& p : pending) {
      ops.push_back({p.remote_offset, LandingOf(p.local), p.info.payload_bytes});
    }
    const Clock::time_point read_start = Clock::now();
    // Fetch: the peer sends the bytes, zero-copy from its arena, copied once into place here.
    // Landings in the GPU pool are read (ucp_get into CUDA memory, as transport_gpu_test
    // covers); the peer-sends path into device memory is untested.
    Status read = ucx_fetch && land == storage::Tier::kCpu
                      ? transport->Fetch(link.ucx_peer, ops, Deadline())
                      : transport->Read(link.ucx_peer, ops, Deadline());
    if (!read.ok()) {
      for (const Pending& p : pending) {
        (void)store->Abort(p.local.id);
        out[p.index] = PeerUnavailable(peer.address, read);
      }
      MarkDown(peer, read);
      return false;
    }
    uint64_t bytes = 0;
    for (const transport::ReadOp& op : ops) bytes += op.length;
    MeasureRaw(peer, bytes, Clock::now() - read_start);
    for (const Pending& p : pending) out[p.index] = Settle(peer, p);
    peer.fetch_seconds->Observe(std::chrono::duration<double>(Clock::now() - start).count());
    return true;
#else
    (void)peer, (void)link, (void)names, (void)objects, (void)out, (void)land, (void)start;
    return true;
#endif
  }

  // The objects of `remaining` whose lease the peer offered (FetchFrom with offers): read from
  // the offered regions with no Acquire or Release. Settled ones (committed here, or no room
  // here, or the read failed: the peer is marked down) leave `remaining` and get their flag in
  // `via_offer` when committed; the rest (no usable offer, or a read that came back corrupt or
  // out of bounds, e.g. from a lease that ended early) stay for the Acquire path.
  void FetchOffered(Peer& peer, const std::vector<ObjectName>& names,
                    const std::vector<OfferedLease>& offers, std::vector<size_t>& remaining,
                    std::vector<Status>& out, std::vector<bool>& via_offer) {
#ifdef KVSTASH_HAVE_UCX
    const bool ucx = transport != nullptr;
#else
    const bool ucx = false;
#endif
    // Encoded transfers (peers.transfer_encoding) are asked of the peer per request: no offers.
    if (!ucx || config.transfer_encoding != PeerTransferEncoding::kRaw) return;
    const Clock::time_point start = Clock::now();
    Result<Link> link = Connect(peer);
    if (!link.ok() || !link->ucx) return;  // the Acquire path reconnects or marks it down
    std::vector<RemoteObject> objects;
    std::vector<size_t> rest;
    for (size_t i : remaining) {
      const OfferedLease& o = offers[i];
      if (o.lease_id == 0 || o.arena_generation != link->generation ||
          o.expires - start < std::chrono::milliseconds(config.timeout_ms)) {
        rest.push_back(i);
        continue;
      }
      objects.push_back({i, o.lease_id, o.arena_offset, o.info});
    }
    if (objects.empty()) return;
    const bool read = ReadFromArena(peer, *link, names, objects, out, storage::Tier::kCpu, start);
    for (const RemoteObject& o : objects) {
      const Status& s = out[o.index];
      if (s.ok()) {
        via_offer[o.index] = true;
      } else if (read && s.code() != absl::StatusCode::kResourceExhausted) {
        rest.push_back(o.index);
        out[o.index] = absl::NotFoundError("the peer does not hold the object");
      }
    }
    remaining.swap(rest);
  }

  // Where a reservation's payload is written: the arena, or the GPU pool (device address).
  void* LandingOf(const storage::Reservation& r) const {
    if (r.tier == storage::Tier::kGpu) {
      return reinterpret_cast<void*>(static_cast<uintptr_t>(gpu_base + r.tier_offset));
    }
    return store->arena_base() + r.arena_offset;
  }

  // Checks a landed payload and commits it, or aborts it as corrupt.
  Status Settle(Peer& peer, const Pending& p) {
    if (p.local.tier != storage::Tier::kCpu) {
      // Device memory: the store reads the landing back and checks its crc32c in Commit.
      tls_committing_fetched = true;
      Status s = store->Commit(p.local.id, p.info.payload_crc32c, /*durable=*/false);
      tls_committing_fetched = false;
      if (s.code() == absl::StatusCode::kInvalidArgument) {
        peer.failures_corrupt->Increment();
        spdlog::warn("event=peer_payload_corrupt peer={} bytes={} tier={} error=\"{}\"",
                     peer.address, p.info.payload_bytes, TierName(p.local.tier),
                     std::string(s.message()));
        return absl::DataLossError(absl::StrCat("object from peer ", peer.address,
                                                " failed its crc32c on arrival; not served"));
      }
      if (s.ok()) {
        peer.fetched_objects->Increment();
        peer.fetched_bytes->Increment(p.info.payload_bytes);
      }
      return s;
    }
    const uint8_t* data = store->arena_base() + p.local.arena_offset;
    const uint32_t crc = Crc32c(data, p.info.payload_bytes);
    if (crc != p.info.payload_crc32c) {
      (void)store->Abort(p.local.id);
      peer.failures_corrupt->Increment();
      spdlog::warn("event=peer_payload_corrupt peer={} bytes={} crc32c={:08x} expected={:08x}",
                   peer.address, p.info.payload_bytes, crc, p.info.payload_crc32c);
      return absl::DataLossError(absl::StrCat("object from peer ", peer.address,
                                              " failed its crc32c on arrival; not served"));
    }
    tls_committing_fetched = true;
    Status s = store->CommitChecked(p.local.id, crc, /*durable=*/false);
    tls_committing_fetched = false;
    if (s.ok()) {
      peer.fetched_objects->Increment();
      peer.fetched_bytes->Increment(p.info.payload_bytes);
    }
    return s;
  }

  // One object over a KvStash.Get stream (no UCX at either end, data_plane grpc, or `wanted`).
  // `wanted`: asks the peer for a CacheGen or KVQ container (kPeerCodecHeader); a container that
  // arrives is checked against its own crc32c, decoded into the reservation, and settled (crc32c
  // of the reconstruction, which the peer computed when encoding) like raw bytes. The peer may
  // still send raw (an object it does not encode).
  Status FetchOverGrpc(Peer& peer, const ObjectName& name,
                       const codec::CodecRates* wanted = nullptr) {
    const Clock::time_point start = Clock::now();
    const bool encoded = wanted != nullptr;
    grpc::ClientContext ctx;
    PrepareContext(&ctx);
    v1::GetRequest req;
    ToProto(name, req.mutable_key());
    if (encoded) req.set_accept_encoding(v1::ENCODING_CACHEGEN);
    if (encoded && wanted->kind == codec::CodecKind::kKvq) {
      ctx.AddMetadata(kPeerCodecHeader,
                      wanted->level == 0 ? "kvq" : absl::StrCat("kvq-", wanted->level));
    }
    std::unique_ptr<grpc::ClientReader<v1::GetChunk>> reader = peer.kv->Get(&ctx, req);
    v1::GetChunk chunk;
    std::optional<storage::Reservation> local;
    ObjectInfo info;
    std::optional<ObjectInfo> wire;  // an encoded transfer: what the container is
    std::vector<uint8_t> container;
    uint8_t* landing = nullptr;  // the reservation, or `container`
    uint64_t received = 0, wire_total = 0;
    Status failed;
    while (failed.ok() && reader->Read(&chunk)) {
      if (!local) {
        Result<ObjectInfo> parsed = FromProto(chunk.info());
        if (!parsed.ok()) {
          failed = parsed.status();
          break;
        }
        info = *parsed;
        if (chunk.has_wire_info()) {
          Result<ObjectInfo> w = FromProto(chunk.wire_info());
          if (!w.ok()) {
            failed = w.status();
          } else if (!encoded || w->encoding != Encoding::kCacheGen) {
            failed = absl::InvalidArgumentError("peer sent an encoding this fetch did not ask for");
          } else if (w->payload_bytes >= info.payload_bytes) {
            failed = absl::InvalidArgumentError(absl::StrCat("peer announced a ", w->payload_bytes,
                                                             "-byte container for a ",
                                                             info.payload_bytes, "-byte object"));
          }
          if (!failed.ok()) break;
          wire = *w;
        }
        Result<storage::Reservation> r = store->Reserve(
            ToStoredName(name), info, config.timeout_ms * 2 + 1000, /*overwrite=*/false);
        if (!r.ok()) {
          failed = r.status().code() == absl::StatusCode::kAlreadyExists ? OkStatus() : r.status();
          ctx.TryCancel();
          return failed;
        }
        local = *r;
        if (wire) {
          container.resize(wire->payload_bytes);
          landing = container.data();
          wire_total = wire->payload_bytes;
        } else {
          landing = store->arena_base() + local->arena_offset;
          wire_total = info.payload_bytes;
        }
      }
      if (chunk.data().size() > wire_total - received) {
        failed = absl::InvalidArgumentError("peer sent more bytes than the object holds");
        break;
      }
      // Payload bytes, not a string: bugprone-not-null-terminated-result is wrong here.
      // NOLINTNEXTLINE(bugprone-not-null-terminated-result)
      std::memcpy(landing + received, chunk.data().data(), chunk.data().size());
      received += chunk.data().size();
    }
    if (!failed.ok()) ctx.TryCancel();
    Status finished = FromGrpcStatus(reader->Finish());
    if (failed.ok()) failed = finished;
    if (failed.ok() && received != wire_total) {
      failed = absl::DataLossError("peer's Get stream ended early");
    }
    if (failed.ok() && wire) {
      if (Crc32c(container.data(), container.size()) != wire->payload_crc32c) {
        peer.failures_corrupt->Increment();
        failed = absl::DataLossError(absl::StrCat("CacheGen container from peer ", peer.address,
                                                  " failed its crc32c on arrival; not served"));
      } else {
        Status decoded = decoder->Decode(
            *wire, container, {store->arena_base() + local->arena_offset, info.payload_bytes});
        if (!decoded.ok()) {
          peer.failures_corrupt->Increment();
          failed = absl::DataLossError(absl::StrCat("CacheGen container from peer ", peer.address,
                                                    " does not decode: ", decoded.message()));
        }
      }
    }
    if (!failed.ok()) {
      if (local) (void)store->Abort(local->id);
      return failed;
    }
    if (!wire) MeasureRaw(peer, info.payload_bytes, Clock::now() - start);
    Status s = Settle(peer, Pending{0, 0, 0, info, *local});
    if (s.ok() && wire) {
      peer.encoded_objects->Increment();
      peer.wire_bytes->Increment(wire->payload_bytes);
      peer.encoded_over_grpc->Increment();
    }
    peer.fetch_seconds->Observe(std::chrono::duration<double>(Clock::now() - start).count());
    return s;
  }
};

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_REMOTE_TIER_IMPL_H_
