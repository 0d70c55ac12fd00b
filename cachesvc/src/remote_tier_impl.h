// Private to cachesvc/src: RemoteTier::Impl, the state behind RemoteTier (remote_tier.h) and the
// declarations of its logic, which lives in three files by concern:
//   remote_tier_peers.cc    peer bookkeeping: the list, ranking, Hello and UCX connections, health
//                           (down/up), per-peer metrics, call contexts;
//   remote_tier_fetch.cc    the reader's fetch path: encoding choice, UCX reads and fetches,
//                           encoded fetches (staged over UCX, or gRPC streams), offered leases,
//                           landing, crc32c check and commit, releasing the peer's leases;
//   remote_tier_serving.cc  the serving side: Hello, StageEncoded and the peer-token check.
// remote_tier.cc holds RemoteTier's own methods (start-up, cluster peers, the public fetches).
//
// Locking: peers_mu guards the peer list and the ranker (each Peer, once made, is never removed:
// metrics point at it); Peer::mu guards a peer's connection state and is held across Hello and
// the UCX connects (Connect, Disconnect); the rest of a Peer is atomics and metrics. A fetch
// takes what it needs under Peer::mu into a Link and works without locks. The fields set at
// start-up (Create, RegisterGpuPool) are read-only afterwards.
#ifndef KVSTASH_CACHESVC_REMOTE_TIER_IMPL_H_
#define KVSTASH_CACHESVC_REMOTE_TIER_IMPL_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "cachegen_tier_codec.h"
#include "kvstash/codec/codec_choice.h"
#include "kvstash/common/mutex.h"
#include "kvstash/v1/kvstash.grpc.pb.h"
#include "remote_tier.h"
#ifdef KVSTASH_HAVE_UCX
#include "kvstash/transport/ucx_transport.h"
#include "peer_staging.h"
#endif

namespace kvstash::cachesvc {

#ifdef KVSTASH_HAVE_UCX
// Active-message id of "release these leases" notifications (PeerHelloResponse).
inline constexpr uint16_t kReleaseMessageId = 1;
#endif

struct RemoteTier::Impl {
  using Clock = std::chrono::steady_clock;

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

  // An object to read from a peer's arena: where it lies there and what it is.
  struct RemoteObject {
    size_t index;  // into the caller's names
    uint64_t peer_lease = 0;
    uint64_t remote_offset = 0;
    ObjectInfo info;
  };

  // An object reserved here for a fetch: what to read into it and how to settle it.
  struct Pending {
    size_t index;  // into the caller's names
    uint64_t peer_lease = 0;
    uint64_t remote_offset = 0;
    ObjectInfo info;
    storage::Reservation local;
  };

  // The serving side (remote_tier_serving.cc).
  class HelloService final : public v1::KvStashPeer::Service {
   public:
    explicit HelloService(Impl* impl) : impl_(impl) {}
    grpc::Status Hello(grpc::ServerContext* ctx, const v1::PeerHelloRequest* req,
                       v1::PeerHelloResponse* resp) override;
    grpc::Status StageEncoded(grpc::ServerContext* ctx,
                              grpc::ServerReaderWriter<v1::StageEncodedResponse,
                                                       v1::StageEncodedRequest>* stream) override;

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
  // config.ucx_fetch "inplace": every landing by FetchInPlace, not only those in the GPU pool.
  bool ucx_in_place = false;
  transport::RemoteRegion region;
  transport::RemoteRegion gpu_region;  // the GPU pool's registration, when gpu_registered
  // config.ucx_connect resolved at start (auto: UCX < 1.14): as a reader, send this node's
  // worker address in Hello; serving, connect to a reader's worker before answering its Hello.
  bool connect_first = false;
  // What one Hello connected back to: an endpoint per endpoint the reader opens (the arena's, and
  // the staging region's when offered). Kept while healthy: UCX may pair the reader's endpoints
  // with them, so closing one closes the reader's connection.
  struct ReaderLink {
    std::string worker_address;
    std::vector<transport::PeerId> endpoints;
  };
  Mutex readers_mu;  // never held across a transport call that waits
  std::vector<ReaderLink> reader_links ABSL_GUARDED_BY(readers_mu);  // in Hello order
  Counter* connect_backs_ok = nullptr;
  Counter* connect_backs_failed = nullptr;
  Gauge* reader_endpoints = nullptr;  // held now (ReaderLink::endpoints, all readers)
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

  // --- peer bookkeeping (remote_tier_peers.cc) ------------------------------

  // A peer call's deadline: peers.timeout_ms from now.
  Clock::time_point Deadline() const;
  // A peer call's context: that deadline, local scope only (the peer asks no peers in turn) and,
  // with a cluster secret, this node's peer token.
  void PrepareContext(grpc::ClientContext* ctx) const;

  // True while `peer` is skipped after a failed call (for peers.retry_ms).
  bool Down(const Peer& peer) const;
  // Skips `peer` for peers.retry_ms, counts the failure by its cause and drops its connection.
  void MarkDown(Peer& peer, const Status& why);
  // Drops the peer's connection (its UCX endpoints); the next Connect says Hello again.
  void Disconnect(Peer& peer);

  // Hello (and the UCX endpoint) once per connection; reconnects after a failure.
  Result<Link> Connect(Peer& peer);

  // The listed peer of that address, or null.
  std::shared_ptr<Peer> Find(const std::string& address) const;

  // The listed peers, those the ranker prefers for `first` first.
  std::vector<std::shared_ptr<Peer>> Snapshot(const ObjectName* first) const;

  // A peer of that address: its channel, stubs and per-peer metrics.
  std::shared_ptr<Peer> MakePeer(const std::string& address);

  // Counts a fetch's results as remote-tier hits and misses (Stats).
  void Count(const std::vector<Status>& out);

  // --- the serving side (remote_tier_serving.cc) ----------------------------

  // The cluster secret (and with TLS a verified certificate) of a caller: OK or UNAUTHENTICATED.
  grpc::Status CheckToken(const grpc::ServerContext* ctx) const;

#ifdef KVSTASH_HAVE_UCX
  // serving_first: connects this node's transport to the reader's worker `endpoints` times, each
  // wire-up flushed, before `deadline`, and keeps them (reader_links). First drops the links that
  // went unhealthy (readers that died or closed); past kMaxLinksPerReader links of one worker or
  // kMaxReaderLinks in all, the oldest. UNAVAILABLE, with nothing kept, when a connect fails.
  grpc::Status ConnectBack(const std::string& worker_address, int endpoints,
                           Clock::time_point deadline, const std::string& reader);
  static constexpr size_t kMaxLinksPerReader = 4;
  static constexpr size_t kMaxReaderLinks = 1024;
  // Sets kvstash_peer_reader_endpoints to the endpoints reader_links holds.
  void PublishReaderEndpointsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(readers_mu);
#endif

  // --- fetching (remote_tier_fetch.cc) ---------------------------------------

  // How the next batch from `peer` is to be asked for: nullopt for raw; kind kCacheGen (the
  // peer's level) or kKvq (level 0: the peer's level).
  std::optional<codec::CodecRates> EncodingFor(Peer& peer);

  // Folds one raw transfer into the peer's measured rate.
  static void MeasureRaw(Peer& peer, uint64_t bytes, Clock::duration took);

  // Fetches names[remaining] from one peer; settles entries of `out` and drops the settled ones
  // from `remaining`.
  // `land`: the local tier the objects land in (kCpu, or kGpu: UCX only, never encoded).
  void FetchFromPeer(Peer& peer, const std::vector<ObjectName>& names,
                     std::vector<size_t>& remaining, std::vector<Status>& out,
                     storage::Tier land = storage::Tier::kCpu);

  // Logs the plane encoded fetches from `peer` take when it changes (1 ucx, 2 grpc).
  static void NotePlane(Peer& peer, int plane, const char* reason);

  // An encoded batch through the peer's staging over UCX (peer_staging.h): settles what it
  // pulled into `out` and returns the objects left for streams (no staging at either end, a peer
  // too old to stage, its pool full, or a refused call).
  std::vector<size_t> FetchStaged(Peer& peer, const Link& link,
                                  const std::vector<ObjectName>& names,
                                  const std::vector<size_t>& remaining, std::vector<Status>& out,
                                  const codec::CodecRates& wanted);

  // Tells the peer to release `leases`: a UCX notification, or KvStash.Release when that fails.
  void ReleaseRemote(Peer& peer, const Link& link, const std::vector<uint64_t>& leases);

  // One batch over UCX: lease on the peer, reserve here, read, check, commit, release. `land`
  // kGpu: the reservations are GPU pool landings, read into straight as CUDA memory.
  void FetchOverUcx(Peer& peer, const Link& link, const std::vector<ObjectName>& names,
                    std::vector<size_t>& remaining, std::vector<Status>& out, storage::Tier land);

  // Reserves `objects` here, reads them from the peer's arena over UCX in one batch, checks and
  // commits each (their statuses into `out`). False when the read itself failed: the peer is
  // marked down and every object that was reserved is Unavailable.
  bool ReadFromArena(Peer& peer, const Link& link, const std::vector<ObjectName>& names,
                     const std::vector<RemoteObject>& objects, std::vector<Status>& out,
                     storage::Tier land, Clock::time_point start);

  // The objects of `remaining` whose lease the peer offered (FetchFrom with offers): read from
  // the offered regions with no Acquire or Release. Settled ones (committed here, or no room
  // here, or the read failed: the peer is marked down) leave `remaining` and get their flag in
  // `via_offer` when committed; the rest (no usable offer, or a read that came back corrupt or
  // out of bounds, e.g. from a lease that ended early) stay for the Acquire path.
  void FetchOffered(Peer& peer, const std::vector<ObjectName>& names,
                    const std::vector<OfferedLease>& offers, std::vector<size_t>& remaining,
                    std::vector<Status>& out, std::vector<bool>& via_offer);

  // Where a reservation's payload is written: the arena, or the GPU pool (device address).
  void* LandingOf(const storage::Reservation& r) const;

  // Checks a landed payload and commits it, or aborts it as corrupt.
  Status Settle(Peer& peer, const Pending& p);

  // One object over a KvStash.Get stream (no UCX at either end, data_plane grpc, or `wanted`).
  // `wanted`: asks the peer for a CacheGen or KVQ container (kPeerCodecHeader); a container that
  // arrives is checked against its own crc32c, decoded into the reservation, and settled (crc32c
  // of the reconstruction, which the peer computed when encoding) like raw bytes. The peer may
  // still send raw (an object it does not encode).
  Status FetchOverGrpc(Peer& peer, const ObjectName& name,
                       const codec::CodecRates* wanted = nullptr);
};

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_REMOTE_TIER_IMPL_H_
