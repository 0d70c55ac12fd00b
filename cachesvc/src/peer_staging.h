// Encoded peer fetches over UCX (KvStashPeer.StageEncoded; docs/architecture.md "Data plane").
//
// Serving half, PeerStaging: a pool of host memory registered with the node's UCX transport once.
// A peer's StageEncoded call names objects; each is encoded as a KvStash.Get accepting CacheGen
// would be (the same codec and level decision, the call's kvstash-peer-codec metadata included),
// and the container (or, for an object the codec does not take, the stored bytes) is copied into
// the pool. The reply gives the reader each one's offset and size there; the reader pulls them
// over UCX from the pool's region (offered in Hello) and sends `done`. The space is freed when
// the call ends, whichever way: done, a refused request, the reader's death (its gRPC connection
// drops), or the deadline (the call's own, capped at twice peers.timeout_ms plus a second after
// staging, enforced by a watchdog). A Fetch of the pool is refused for any range no live call
// staged (RangeGuard). An object that does not fit the pool's free space is answered
// RESOURCE_EXHAUSTED, and its reader fetches it over a stream instead.
//
// Reading half, PullStaged: one StageEncoded call for a batch, one UCX transfer of everything it
// staged straight into the reader's reservations (a container is smaller than the object it
// encodes), crc32c of what arrived against the container's, then the container decoded in place
// of itself. The caller settles (commits) the results as it does for a stream.
//
// Threading: every method is thread-safe.
#ifndef KVSTASH_CACHESVC_PEER_STAGING_H_
#define KVSTASH_CACHESVC_PEER_STAGING_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "cachegen_tier_codec.h"
#include "kvstash/common/metrics.h"
#include "kvstash/common/mutex.h"
#include "kvstash/common/object_name.h"
#include "kvstash/storage/object_store.h"
#include "kvstash/storage/tier_codec.h"
#include "kvstash/transport/ucx_transport.h"
#include "kvstash/v1/peer.grpc.pb.h"
#include "stream_watchdog.h"

namespace kvstash::cachesvc {

// How the serving node encodes an object for a transfer: KvStashService::EncodeForTransfer.
using TransferEncoder = std::function<Result<std::optional<storage::TierCodec::Encoded>>(
    const grpc::ServerContext* ctx, const v1::GetRequest& req, const ObjectInfo& info,
    std::span<const uint8_t> payload)>;

class PeerStaging {
 public:
  using StageStream = grpc::ServerReaderWriter<v1::StageEncodedResponse, v1::StageEncodedRequest>;

  // Maps `bytes` of anonymous memory (touched only when used) and registers it with `transport`.
  // The staging must outlive the transport (it owns the memory the transport registered).
  // `hold_ms`: how long staged bytes wait for the reader's `done` at most.
  static Result<std::unique_ptr<PeerStaging>> Create(transport::UcxTransport* transport,
                                                     uint64_t bytes, storage::ObjectStore* store,
                                                     MetricsRegistry* metrics, uint32_t hold_ms);
  ~PeerStaging();
  PeerStaging(const PeerStaging&) = delete;
  PeerStaging& operator=(const PeerStaging&) = delete;

  // The region for Hello.
  const transport::RemoteRegion& region() const { return region_; }
  // Installs the encoder, once, before the node serves calls.
  void SetEncoder(TransferEncoder encoder) { encoder_ = std::move(encoder); }

  // One StageEncoded call (the caller checked the cluster secret).
  grpc::Status Serve(grpc::ServerContext* ctx, StageStream* stream);

  // Bytes of the pool held by calls now.
  uint64_t bytes_in_use() const;

 private:
  PeerStaging() = default;
  // First fit, 4 KiB aligned; nullopt when no gap is large enough.
  std::optional<uint64_t> Allocate(uint64_t bytes);
  void Free(uint64_t offset);
  bool Staged(uint64_t offset, uint64_t length) const;

  storage::ObjectStore* store_ = nullptr;
  uint8_t* base_ = nullptr;
  uint64_t bytes_ = 0;
  uint32_t hold_ms_ = 0;
  transport::RemoteRegion region_;
  TransferEncoder encoder_;
  StreamWatchdog watchdog_;
  mutable Mutex mu_;
  std::map<uint64_t, uint64_t> used_ ABSL_GUARDED_BY(mu_);  // offset -> bytes
  uint64_t in_use_ ABSL_GUARDED_BY(mu_) = 0;
  Gauge* in_use_gauge_ = nullptr;
  Counter* done_ = nullptr;
  Counter* ended_ = nullptr;  // the reader went away, or the deadline passed
  Counter* refused_ = nullptr;
  Counter* full_ = nullptr;  // objects answered RESOURCE_EXHAUSTED
};

// What the reader needs to pull a batch from one peer.
struct StagedPull {
  v1::KvStashPeer::Stub* stub = nullptr;
  // Sets the call's deadline and metadata (secret, scope, codec).
  std::function<void(grpc::ClientContext*)> prepare;
  storage::ObjectStore* store = nullptr;
  transport::UcxTransport* transport = nullptr;
  transport::PeerId staging_peer = 0;  // connected to the peer's staging region
  uint64_t staging_bytes = 0;          // that region's size
  bool fetch = false;                  // UcxTransport::Fetch, else Read (gets)
  CacheGenTierCodec* decoder = nullptr;
  uint32_t reservation_ms = 0;
  std::chrono::steady_clock::time_point deadline;
};

// One object of a pulled batch.
struct StagedArrival {
  size_t index = 0;  // into the caller's names
  // OK: `local` holds the object (decoded when `encoded`), for the caller to check and commit.
  // fallback: the peer could not stage it (its pool was full); fetch it another way. Otherwise
  // the object's outcome (NotFound, DataLoss for a corrupt or undecodable container,
  // ResourceExhausted for no room here, InvalidArgument for a grant outside the staging region;
  // OK without `local` when the object turned up here meanwhile).
  Status status;
  bool fallback = false;
  bool encoded = false;
  ObjectInfo info;
  uint64_t wire_bytes = 0;
  std::optional<storage::Reservation> local;
};

// Pulls names[which] through the peer's staging. A call-level error (the peer refused or lacks
// StageEncoded, or the UCX transfer failed: Unavailable/DeadlineExceeded) leaves nothing reserved.
Result<std::vector<StagedArrival>> PullStaged(const StagedPull& pull,
                                              const std::vector<ObjectName>& names,
                                              const std::vector<size_t>& which,
                                              const v1::GetRequest& encoding);

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_PEER_STAGING_H_
