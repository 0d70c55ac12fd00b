// RemoteTier: the objects of other cachesvc nodes (peers), found and fetched on a local miss.
//
// Fetch pulls objects into this node's own arena: it asks a peer to lease them (KvStash.Acquire
// with `kvstash-scope: local`, so the peer does not ask its peers in turn), reserves the space
// locally, reads the bytes with one batch of one-sided UCX reads straight from the peer's arena
// into the reservations (or, with data_plane grpc or a peer without UCX, over KvStash.Get
// streams), checks each payload's crc32c on arrival, commits what matches, and tells the peer to
// release its leases (a UCX active message; KvStash.Release over gRPC when that fails). A payload
// that arrives corrupt is aborted, counted and never served. Peers are asked in the configured
// order; a peer whose call failed is skipped for peers.retry_ms, so a dead or stopped node costs
// one timeout, not one per request.
//
// The serving half: a node with a cluster secret answers kvstash.v1.KvStashPeer.Hello (worker
// address, arena rkey) only to callers presenting that secret, and releases the leases its
// peers' notifications name.
//
// Threading: every method is thread-safe; Fetch and Lookup block for at most about
// peers.timeout_ms per peer asked. Errors per object are Status codes: NotFound (no peer has
// it), DataLoss (arrived corrupt), ResourceExhausted (no local room), Unavailable or
// DeadlineExceeded (the peers that might have it failed).
#ifndef KVSTASH_CACHESVC_REMOTE_TIER_H_
#define KVSTASH_CACHESVC_REMOTE_TIER_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kvstash/cachesvc/config.h"
#include "kvstash/common/metrics.h"
#include "kvstash/proto/convert.h"
#include "kvstash/storage/gpu_pool.h"
#include "kvstash/storage/object_store.h"
#include "kvstash/storage/tier_codec.h"
#include "kvstash/v1/kvstash.pb.h"
#include "kvstash/v1/peer.grpc.pb.h"

namespace kvstash::cachesvc {

class TlsMaterial;  // tls.h

// Metadata keys of peer calls.
inline constexpr char kPeerTokenHeader[] = "kvstash-peer-token";
inline constexpr char kScopeHeader[] = "kvstash-scope";
inline constexpr char kScopeLocal[] = "local";
// On an encoded Get (accept_encoding CACHEGEN) from a peer that decodes KVQ: "kvq" (the serving
// node's transfer level) or "kvq-N" (level 1..4) asks for a KVQ container instead of CacheGen.
inline constexpr char kPeerCodecHeader[] = "kvstash-peer-codec";
// The tenant a peer acts for when it forwards a handoff heartbeat or release; honoured only from
// callers authenticated as peers (the cluster secret), so a tenant cannot claim another's name.
inline constexpr char kForTenantHeader[] = "kvstash-for-tenant";

// True when the call asked for this node's own objects only (a peer's call).
bool LocalScopeOnly(const grpc::ServerContext* ctx);

// True on a thread while it commits an object fetched from a peer (the store's commit observer
// runs on the committing thread): such copies came from a replica and are not forwarded again.
bool CommittingFetchedObject();

// A lease a peer holds on one of its objects and offers for this node to read directly
// (kvstash.v1.ReplicateOffer): the region [arena_offset, arena_offset + info.payload_bytes) of
// the peer's arena while its generation is arena_generation, until `expires`.
struct OfferedLease {
  uint64_t lease_id = 0;  // 0: none
  uint64_t arena_offset = 0;
  uint64_t arena_generation = 0;
  ObjectInfo info;
  std::chrono::steady_clock::time_point expires{};
};

class RemoteTier {
 public:
  // Reads the secret file; with data_plane ucx, starts the UCX transport and registers the
  // arena. `store` and `metrics` must outlive the tier. `listen_target` names this node by
  // default. `tls` (optional, outlives the tier): peers are dialled with mutual TLS, and Hello
  // answers only callers whose connection is TLS-authenticated. InvalidArgument for an
  // unreadable or empty secret file; transport errors as is.
  static Result<std::unique_ptr<RemoteTier>> Create(const ServiceConfig& config,
                                                    storage::ObjectStore* store,
                                                    MetricsRegistry* metrics,
                                                    const std::string& listen_target,
                                                    const TlsMaterial* tls = nullptr);
  ~RemoteTier();
  RemoteTier(const RemoteTier&) = delete;
  RemoteTier& operator=(const RemoteTier&) = delete;

  bool has_peers() const;
  // Whether `address` is one of the configured peers (as given to --peer) or a live cluster
  // member (SetClusterPeers).
  bool IsPeer(const std::string& address) const;

  // The cluster's live members other than this node (gRPC addresses), from membership: peers
  // not yet known are added, cluster peers no longer listed are no longer asked. Static peers
  // (--peer) are kept either way.
  void SetClusterPeers(const std::vector<std::string>& addresses);
  // Preferred peers for a batch of names (the owners of its first object, nearest first); Fetch
  // and Lookup ask those before the others. Null: configuration order.
  using Ranker = std::function<std::vector<std::string>(const ObjectName&)>;
  void SetRanker(Ranker ranker);

  // The cluster secret, for calls to peers (metadata kPeerTokenHeader), and the check of a
  // caller's: OK, or UNAUTHENTICATED.
  void AddPeerToken(grpc::ClientContext* ctx) const;
  grpc::Status CheckPeerToken(const grpc::ServerContext* ctx) const;
  // A channel to another node with the peers' credentials (mutual TLS when configured).
  std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address) const;
  // This node's UCX worker address (empty without UCX).
  std::string ucx_worker_address() const;

  // Registers the store's GPU pool (kvstash/storage/gpu_pool.h) with this node's UCX transport
  // as CUDA memory, once, at start-up before any fetch, after checking that UCX supports CUDA
  // memory (the context's memory types): true when registered; false, with a log line saying
  // why, without a UCX transport or with a UCX built without CUDA. Errors only when UCX refuses a
  // registration it claims to support. Once registered, Hello advertises the pool's region and
  // rkey to authenticated peers next to the arena's, and FetchFrom can land in the pool
  // (docs/storage.md "GPU pool tier").
  Result<bool> RegisterGpuPool(const storage::GpuPoolRegion& pool);
  // OK when fetches can land in this node's GPU pool (FetchFrom with Tier::kGpu); otherwise
  // FailedPrecondition saying why: no pool (--gpu-pool-capacity), or a pool UCX could not
  // register (no UCX data plane, or a UCX without CUDA memory support).
  Status CanLandInGpu() const;

  // How this node encodes an object for a transfer (KvStashService::EncodeForTransfer), for the
  // encoded fetches peers pull from its staging over UCX (KvStashPeer.StageEncoded,
  // peer_staging.h). Set once at start-up, before the node serves calls; until then, and on a
  // node without staging, StageEncoded is refused and peers fetch over streams.
  using TransferEncoder = std::function<Result<std::optional<storage::TierCodec::Encoded>>(
      const grpc::ServerContext* ctx, const v1::GetRequest& req, const ObjectInfo& info,
      std::span<const uint8_t> payload)>;
  void SetTransferEncoder(TransferEncoder encoder);
  // Bytes of this node's staging pool held by peers' encoded fetches now (0 without staging).
  uint64_t staging_bytes_in_use() const;

  // What each missing object is on the peers: its info when one holds it.
  std::vector<std::optional<ObjectInfo>> Lookup(const std::vector<ObjectName>& names);

  // Fetches the objects into the local store (committed, visible like any other). One status per
  // name, in order; OK also when the object turned up locally meanwhile.
  std::vector<Status> Fetch(const std::vector<ObjectName>& names);

  // Fetches the objects from the one peer at `address` (a handoff's prefill node), even if it
  // failed recently. FailedPrecondition for every object when `address` is not a configured peer.
  // `land`: where they land here; kCpu (the arena, as Fetch) or kGpu (the GPU pool, through
  // ObjectStore::ReserveInTier and UCX reads into CUDA memory; FailedPrecondition per object when
  // CanLandInGpu() is not OK or the peer has no UCX data plane). The store checks each landed
  // payload's crc32c on commit (a mismatch is DataLoss, counted as corrupt, never served).
  std::vector<Status> FetchFrom(const std::string& address, const std::vector<ObjectName>& names,
                                storage::Tier land = storage::Tier::kCpu);
  // FetchFrom into the arena with leases the peer offers (one per name, or empty): an object
  // whose offer is usable (a lease, the peer reached over UCX at that arena generation, and at
  // least peers.timeout_ms of the lease left) is read straight from the offered region, checked
  // and committed, with no Acquire or Release call (the peer releases its own lease). The others,
  // and offered ones whose read failed for a reason worth another try, go through FetchFrom's
  // Acquire path. `via_offer` (optional): one flag per name, set for those settled through
  // their offer.
  std::vector<Status> FetchFrom(const std::string& address, const std::vector<ObjectName>& names,
                                const std::vector<OfferedLease>& offers,
                                std::vector<bool>* via_offer);

  // Sends a handoff heartbeat (extend_ms, release false) or release to the peer at `address`;
  // the handoff's new lifetime in ms. FailedPrecondition when `address` is not a peer.
  // `tenant` (non-empty): the call is made for that tenant (kForTenantHeader), and the peer
  // refuses it (PermissionDenied) for a handoff another tenant offered.
  Result<uint64_t> ForwardHandoff(const std::string& address, uint64_t handoff_id,
                                  uint32_t extend_ms, bool release, const std::string& tenant = "");

  // The remote tier's counters (Stats, TIER_REMOTE): hits = objects fetched, misses = objects
  // no peer had, bytes_read = their payload bytes.
  storage::TierStats Stats() const;

  // The Hello service peers call (nullptr when this node has no secret and serves no peers).
  grpc::Service* peer_service();

 private:
  struct Impl;
  explicit RemoteTier(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_REMOTE_TIER_H_
