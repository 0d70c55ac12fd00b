// The kvstash.v1.KvStash gRPC service over an ObjectStore. The unary RPCs run on threads of gRPC's
// sync server pool; the streaming Put and Get are served asynchronously by AsyncStreamServer
// (async_streams.h), through StartPut/StartGet. Every
// request is validated before it reaches the store; statuses reach the wire only through
// proto/status_mapping.h. docs/api.md lists the codes.
#ifndef KVSTASH_CACHESVC_KV_SERVICE_H_
#define KVSTASH_CACHESVC_KV_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <array>
#include <chrono>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "attach_tickets.h"
#include "authz.h"
#include "handoffs.h"
#include "kvstash/cachesvc/config.h"
#include "kvstash/common/mutex.h"
#include "kvstash/proto/raw_message.h"
#include "kvstash/storage/object_store.h"
#include "kvstash/storage/tier_codec.h"
#include "kvstash/v1/kvstash.grpc.pb.h"
#include "remote_tier.h"
#include "rpc_metrics.h"
#include "stream_watchdog.h"

namespace kvstash::cachesvc {

// Allocation alignment the client may assume for arena offsets (ArenaInfo / handshake): the
// store allocates the arena in 4 KiB pages.
inline constexpr uint32_t kArenaAlignment = 4096;

class HeldObject;  // kv_service_streams.cc

class KvStashService final : public v1::KvStash::Service {
 public:
  using Clock = std::chrono::steady_clock;
  using RawAsyncWriter = grpc::ServerAsyncWriter<grpc::ByteBuffer>;
  using RawAsyncReader = grpc::ServerAsyncReader<grpc::ByteBuffer, grpc::ByteBuffer>;

  // One streaming Put being received: its reservation and the bytes copied in so far (with
  // their crc32c, taken while copying). Aborts the reservation when destroyed uncommitted, and
  // keeps the call under the stream watchdog. Used by one thread at a time.
  class IncomingPut {
   public:
    ~IncomingPut();
    IncomingPut(const IncomingPut&) = delete;
    IncomingPut& operator=(const IncomingPut&) = delete;

    // The next PutChunk (`message` is consumed): checked, and its data copied into the
    // reservation. InvalidArgument for a malformed or oversized chunk or a repeated header;
    // DeadlineExceeded past the service's stream limit.
    Status Accept(grpc::ByteBuffer* message, RpcScope& scope);
    // The client's stream ended: commits when every byte arrived with the declared crc32c;
    // InvalidArgument for a short stream or a checksum mismatch, the store's errors otherwise.
    Status Complete();

   private:
    friend class KvStashService;
    IncomingPut() = default;
    Status Receive(grpc::ByteBuffer* message, RpcScope& scope);
    Status CopyChunk();
    Status CheckDeadline() const;  // DeadlineExceeded past the service's stream limit

    KvStashService* service_ = nullptr;
    ReceivedMessage received_;
    v1::PutChunk chunk_;  // the fields of the last message other than data
    BytesFieldView data_;
    ObjectInfo info_;
    bool durable_ = false;
    uint64_t reservation_ = 0;  // 0: none yet
    bool committed_ = false;
    uint8_t* dest_ = nullptr;
    uint64_t written_ = 0;
    uint64_t index_ = 0;  // of the next PutChunk
    uint32_t crc_ = 0;    // Crc32c of nothing
    Clock::time_point deadline_;
    std::unique_ptr<StreamWatchdog::Registration> watched_;
  };

  // One streaming Get being answered: the leased object (or its encoded copy) and what is left
  // to send. Holds the lease until it is destroyed and gRPC has dropped every slice it sent, and
  // keeps the call under the stream watchdog meanwhile. Used by one thread at a time.
  class OutgoingGet {
   public:
    ~OutgoingGet();
    OutgoingGet(const OutgoingGet&) = delete;
    OutgoingGet& operator=(const OutgoingGet&) = delete;

    bool done() const { return sent_ == total_; }
    // OK while the stream may go on; DeadlineExceeded once it has run past the service's limit.
    Status CheckDeadline() const;
    // Why a Write failed: past the deadline (the watchdog cancelled it) or the client left.
    Status WriteFailed() const;
    // The next reply: the first carries the object's info, each at most `stream_chunk_bytes` of
    // data as a slice over the held bytes. Call only while !done().
    grpc::ByteBuffer NextMessage(RpcScope& scope);

   private:
    friend class KvStashService;
    OutgoingGet() = default;

    const KvStashService* service_ = nullptr;
    HeldObject* held_ = nullptr;  // the reference of this object
    const uint8_t* src_ = nullptr;
    uint64_t total_ = 0;
    uint64_t sent_ = 0;
    v1::GetChunk first_;
    Clock::time_point deadline_;
    std::unique_ptr<StreamWatchdog::Registration> watched_;
  };

  // Begins a streaming Put with its first message, which must carry the header: reserves the
  // object's arena space and copies the message's data in.
  Result<std::unique_ptr<IncomingPut>> StartPut(grpc::ServerContext* ctx, grpc::ByteBuffer* first,
                                                RpcScope& scope);
  // Asks gRPC for the next Put call on `cq` (grpc::Service::RequestAsyncClientStreaming).
  void RequestPutCall(grpc::ServerContext* ctx, RawAsyncReader* reader,
                      grpc::ServerCompletionQueue* cq, void* tag);

  // Parses a Get call's request and leases its object. The errors the call ends with:
  // InvalidArgument for a malformed request, NotFound, and the store's others.
  Result<std::unique_ptr<OutgoingGet>> StartGet(grpc::ServerContext* ctx,
                                                grpc::ByteBuffer* request_bytes);
  // Asks gRPC for the next Get call on `cq`, its request's bytes into `request`
  // (grpc::Service::RequestAsyncServerStreaming).
  void RequestGetCall(grpc::ServerContext* ctx, grpc::ByteBuffer* request, RawAsyncWriter* writer,
                      grpc::ServerCompletionQueue* cq, void* tag);

  // `store`, `metrics` and `remote` (optional: null on a node without peers) must outlive the
  // service. With peers, a local miss in Lookup, Acquire or Get is looked up on and fetched from
  // them (remote_tier.h), unless the call carries `kvstash-scope: local` (a peer's own call).
  // `handoffs` (optional) serves Offer and the handoff heartbeats and releases aimed at this node.
  // `auth` (optional; null: single tenant) authenticates every call and scopes its keys
  // (authz.h). `tickets` (optional; multi-tenant nodes) issues the attach tickets ArenaInfo hands
  // to callers identified by a client certificate (attach_tickets.h).
  KvStashService(storage::ObjectStore* store, const ServiceConfig& config,
                 std::string arena_socket_path, RpcMetrics* metrics, RemoteTier* remote = nullptr,
                 HandoffRegistry* handoffs = nullptr, Authorizer* auth = nullptr,
                 AttachTickets* tickets = nullptr);

  // While it lives, calls this thread makes into the service's handlers with a null
  // ServerContext are `caller`'s (which must outlive the scope): a tenant's local control
  // connection, authenticated by the bearer token of its attach request, runs each call in one.
  // Without a scope such calls are in-process ones, unrestricted in single-tenant mode and
  // refused (UNAUTHENTICATED) in multi-tenant mode. Scopes nest; not copyable.
  class CallerScope {
   public:
    explicit CallerScope(const Caller& caller);
    ~CallerScope();
    CallerScope(const CallerScope&) = delete;
    CallerScope& operator=(const CallerScope&) = delete;

   private:
    const Caller* previous_;
  };

  // The address this node names itself by in handoff descriptors (peers.advertise, else the
  // bound address); set once the server is bound, before requests need it.
  void SetAdvertisedAddress(std::string address);

  grpc::Status Lookup(grpc::ServerContext*, const v1::LookupRequest*, v1::LookupResponse*) override;
  grpc::Status Reserve(grpc::ServerContext*, const v1::ReserveRequest*,
                       v1::ReserveResponse*) override;
  grpc::Status Commit(grpc::ServerContext*, const v1::CommitRequest*, v1::CommitResponse*) override;
  grpc::Status Abort(grpc::ServerContext*, const v1::AbortRequest*, v1::AbortResponse*) override;
  grpc::Status ReserveMany(grpc::ServerContext*, const v1::ReserveManyRequest*,
                           v1::ReserveManyResponse*) override;
  grpc::Status CommitMany(grpc::ServerContext*, const v1::CommitManyRequest*,
                          v1::CommitManyResponse*) override;
  grpc::Status Acquire(grpc::ServerContext*, const v1::AcquireRequest*,
                       v1::AcquireResponse*) override;
  grpc::Status Release(grpc::ServerContext*, const v1::ReleaseRequest*,
                       v1::ReleaseResponse*) override;
  grpc::Status Delete(grpc::ServerContext*, const v1::KeysRequest*, v1::KeysResponse*) override;
  grpc::Status Pin(grpc::ServerContext*, const v1::KeysRequest*, v1::KeysResponse*) override;
  grpc::Status Unpin(grpc::ServerContext*, const v1::KeysRequest*, v1::KeysResponse*) override;
  grpc::Status List(grpc::ServerContext*, const v1::ListRequest*, v1::ListResponse*) override;
  grpc::Status Stats(grpc::ServerContext*, const v1::StatsRequest*, v1::StatsResponse*) override;
  grpc::Status ArenaInfo(grpc::ServerContext*, const v1::ArenaInfoRequest*,
                         v1::ArenaInfoResponse*) override;
  grpc::Status Offer(grpc::ServerContext*, const v1::OfferRequest*, v1::OfferResponse*) override;
  grpc::Status FetchHandoff(grpc::ServerContext*, const v1::FetchHandoffRequest*,
                            v1::FetchHandoffResponse*) override;
  grpc::Status HeartbeatHandoff(grpc::ServerContext*, const v1::HandoffRequest*,
                                v1::HandoffResponse*) override;
  grpc::Status ReleaseHandoff(grpc::ServerContext*, const v1::HandoffRequest*,
                              v1::HandoffResponse*) override;

  // The codec container a streaming Get sends instead of `payload`, or nullopt to send the
  // payload as it is (the client did not ask, the policy is raw, or the codec does not take it).
  // CacheGen, or KVQ under a kvq policy, when the request's accept_codec asks for it, or when the
  // call's metadata kPeerCodecHeader does; INVALID_ARGUMENT for an unknown codec or a level out
  // of its range. Also what a peer's StageEncoded stages (RemoteTier::SetTransferEncoder).
  Result<std::optional<storage::TierCodec::Encoded>> EncodeForTransfer(
      const grpc::ServerContext* ctx, const v1::GetRequest& req, const ObjectInfo& info,
      std::span<const uint8_t> payload);

 private:
  enum class KeysOp { kDelete, kPin, kUnpin };
  // The caller of a call (authz.h); unrestricted without an Authorizer.
  Result<Caller> Who(const grpc::ServerContext* ctx) const;
  // Parses and scopes keys to the caller's namespace.
  Result<std::vector<ObjectName>> CallerKeys(
      const Caller& caller, const google::protobuf::RepeatedPtrField<v1::ObjectKey>& keys) const;
  Result<ObjectName> CallerKey(const Caller& caller, const v1::ObjectKey& key,
                               const std::string& where) const;
  // Whether the caller (authenticated from ctx unless `known`) may use reservation or lease `id`;
  // forgets the id (the call ends it).
  Status CheckOwner(const grpc::ServerContext* ctx, const Caller* known, bool lease, uint64_t id);
  // ResourceExhausted past the caller's quota (authz.h).
  Status CheckQuota(const Caller& caller, uint64_t bytes);
  // PermissionDenied when a read-only caller makes call `what`, which writes (authz.h).
  Status CheckWrite(const Caller& caller, const char* what) const;
  Status DoLookup(const grpc::ServerContext* ctx, const v1::LookupRequest& req,
                  v1::LookupResponse* resp);
  // Whether a local miss of this call may be served from peers.
  bool UsesPeers(const grpc::ServerContext* ctx) const;
  // Fetches a missed object from the peers and leases it here (served_from kRemote); drops the
  // local copy again under the lease when peers.promote is off. `own_arena`: lease it in the
  // arena of its namespace (ObjectStore::AcquireInOwnArena), for a client that maps only that.
  Result<storage::Lease> AcquireFromPeers(const ObjectName& name, uint32_t lease_ms,
                                          const Status& fetched, bool own_arena = false);
  Status DoReserve(const Caller& caller, const v1::ReserveRequest& req, v1::ReserveResponse* resp);
  // Put and Get are registered in place of their generated handlers (the constructor) as raw
  // asynchronous methods, served by AsyncStreamServer: they read and write ByteBuffers, so the
  // service copies no payload bytes beyond the one copy into the arena (Put) and none at all (Get:
  // each reply is a small serialized GetChunk head, then a slice over the bytes where they lie).
  // Clients see ordinary kvstash.v1 calls.
  void UseRawStreamHandlers();  // kv_service_streams.cc, as is EncodeForTransfer
  Status DoAcquire(const grpc::ServerContext* ctx, const v1::AcquireRequest& req,
                   v1::AcquireResponse* resp);
  Status DoKeys(const grpc::ServerContext* ctx, KeysOp op, const v1::KeysRequest& req,
                v1::KeysResponse* resp);
  Status DoList(const grpc::ServerContext* ctx, const v1::ListRequest& req, v1::ListResponse* resp);
  Status DoStats(const grpc::ServerContext* ctx, v1::StatsResponse* resp);
  Status DoArenaInfo(const grpc::ServerContext* ctx, const v1::ArenaInfoRequest& req,
                     v1::ArenaInfoResponse* resp);
  Status CheckKeyCount(int count, const char* method) const;
  // kv_service_handoff.cc
  Status DoOffer(const grpc::ServerContext* ctx, const v1::OfferRequest& req,
                 v1::OfferResponse* resp);
  Status DoFetchHandoff(const grpc::ServerContext* ctx, const v1::FetchHandoffRequest& req,
                        v1::FetchHandoffResponse* resp);
  Status DoHandoff(const grpc::ServerContext* ctx, const v1::HandoffRequest& req, bool release,
                   v1::HandoffResponse* resp);
  std::string AdvertisedAddress() const;

  storage::ObjectStore* store_;
  ServiceConfig config_;
  std::string arena_socket_path_;
  RpcMetrics* metrics_;
  RemoteTier* remote_;
  HandoffRegistry* handoffs_;
  Authorizer* auth_;
  AttachTickets* tickets_;
  mutable Mutex advertised_mu_;
  std::string advertised_ ABSL_GUARDED_BY(advertised_mu_);
  Clock::time_point started_;
  // Encoders of streamed Gets, empty when config_.transfer_encoding is raw: CacheGen levels 1..3
  // and KVQ levels 1..4. The policy's codec (KVQ when config_.transfer_encoding.kvq) serves
  // requests that name none; a request's accept_codec or a peer's kPeerCodecHeader names one.
  std::array<std::unique_ptr<storage::TierCodec>, 3> cachegen_transfer_codecs_;
  std::array<std::unique_ptr<storage::TierCodec>, 4> kvq_transfer_codecs_;
  StreamWatchdog watchdog_;
};

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_KV_SERVICE_H_
