// KvClient: the C++ client of cachesvc (kvstash.v1 over gRPC, docs/api.md).
//
// Control goes over gRPC. Data takes one of two paths:
//  - shared memory (same node): when the target is a local unix socket (or, for a client
//    identified by its certificate alone, a TCP target on the same host; Connect) and shared
//    memory is enabled, Connect() receives the service's arena memfd (SCM_RIGHTS) and maps it
//    MAP_SHARED.
//    Writes go straight into a reservation in the arena, reads are served in place under a lease;
//    no payload byte crosses gRPC.
//  - byte streams: Put and Get stream the payload in ~1 MiB gRPC messages. Works over TCP.
//
// Every RPC carries a deadline (ClientOptions), so no call can wedge on a stuck service. Errors
// are the service's status codes (docs/api.md) mapped back by proto/status_mapping.h; a missing
// deadline-bound answer is DeadlineExceeded, an unreachable service Unavailable.
//
// Threading: KvClient is thread-safe; share one per process. WriteReservation and ReadLease are
// move-only handles, each used by one thread at a time. Handles keep what they need alive (the
// channel and the arena mapping), so they may outlive the KvClient that made them.
//
// If cachesvc restarts, its arena is new (another generation). The client notices on the next
// Reserve/Acquire and re-attaches; spans of handles made before the restart keep pointing at the
// old, now orphaned mapping (their Commit/Release then fail with NotFound or Unavailable).
#ifndef KVSTASH_CLIENT_KV_CLIENT_H_
#define KVSTASH_CLIENT_KV_CLIENT_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kvstash/common/key.h"
#include "kvstash/common/layout.h"
#include "kvstash/common/object_name.h"
#include "kvstash/common/status.h"
#include "kvstash/common/tier.h"

namespace kvstash::client {

struct ClientOptions {
  std::chrono::milliseconds rpc_timeout{10'000};     // every unary RPC
  std::chrono::milliseconds stream_timeout{60'000};  // a whole streaming Put or Get
  std::chrono::milliseconds connect_timeout{5'000};  // Connect(), arena attach included
  // Attach the arena when the target is a unix socket (or with attach tickets, Connect). A failed
  // attach is not an error: the client falls back to byte streams and shared_memory_status()
  // says why.
  bool use_shared_memory = true;
  // Map the arena for reading only (a multi-tenant cachesvc then sends no writable fd; a
  // single-tenant one maps read-write regardless). Needed with a read-only token, whose writable
  // attach is refused (PERMISSION_DENIED, docs/deploy.md "Read-only tokens"). Reads (Acquire,
  // Get) use the mapping; Put and PutMany with DataPath::kAuto use the byte stream, and
  // Reserve or DataPath::kSharedMemory puts are FailedPrecondition.
  bool attach_read_only = false;
  // Acquire() verifies the crc32c of leased bytes before returning them (costs one pass).
  bool verify_reads = false;
  uint32_t stream_chunk_bytes = 1u << 20;  // data per PutChunk
  uint32_t lease_ms = 0;                   // reservations and leases; 0 = service default
  // Fault the whole arena mapping in at attach (MADV_POPULATE_WRITE), so the first writes and
  // reads of each page do not pay a page fault on the data path. Commits the arena's memory.
  bool prefault_arena = true;
  // With the arena attached, send the shared-memory path's control calls (Lookup, Reserve,
  // Commit, Abort, Acquire, Release and their batched forms) over the arena socket's local
  // control channel instead of gRPC, when the service offers it: a plain unix-socket round trip
  // instead of an HTTP/2 one (docs/api.md "Local control channel"). Same calls, same statuses.
  bool local_control = true;
  // Waiting for a local control reply, poll for it this long before blocking: a reply usually
  // comes within tens of microseconds, sooner than a blocked thread wakes up on a busy or virtual
  // machine. Costs this thread's CPU while it waits (it yields to other runnable threads); 0:
  // block at once.
  std::chrono::microseconds local_control_poll{200};
  // Waiting on a streaming Put or Get (the byte-stream path), or on PutMany's gRPC calls, poll
  // gRPC for the next event this long before blocking: saves the thread's wake-up on every message,
  // which on a virtual machine costs tens of microseconds. Costs this thread's CPU while it waits;
  // 0: block at once.
  std::chrono::microseconds stream_poll{200};
  uint64_t max_message_bytes = 16ull << 20;
  // Mutual TLS to a TCP target (docs/deploy.md "TLS"); ignored for a unix socket, which file
  // permissions guard. tls_ca_file turns TLS on; the certificate and key are this client's
  // identity (a cachesvc with TLS requires one). Read once, at Connect.
  std::string tls_ca_file{};
  std::string tls_cert_file{};
  std::string tls_key_file{};
  std::string tls_server_name{};  // name the service's certificate must carry; empty: the host
  // Sent on every call as `authorization: Bearer <token>`: the tenant's credential for a
  // multi-tenant cachesvc (docs/deploy.md "Tenants"). Empty: none.
  std::string bearer_token{};
};

// Tier and TierName: kvstash/common/tier.h.
using ::kvstash::Tier;

enum class DataPath {
  kAuto,          // shared memory when attached, else stream
  kSharedMemory,  // FailedPrecondition when not attached
  kStream,
};

struct PutOptions {
  bool durable = false;    // return only once the object is synced to SSD
  bool overwrite = false;  // replace a committed object with the same key
  DataPath path = DataPath::kAuto;
  // PutMany over shared memory: objects per ReserveMany/CommitMany round trip, and the payload
  // bytes one such batch may reserve (a batch always takes at least one object). At most three
  // batches are open at a time (one being copied, the next one's reservations and the previous
  // one's commit in flight), so one PutMany holds at most 3 * max_batch_bytes of the arena in
  // reservations (or three objects, when an object is larger).
  uint32_t max_batch = 8;
  uint64_t max_batch_bytes = 64ull << 20;
};

// One object of a PutMany. The payload must stay valid and unchanged until PutMany returns.
struct PutItem {
  ObjectName name;
  ObjectInfo info;  // payload_crc32c as in Put
  std::span<const uint8_t> payload;
  // Gather list: when not empty, the payload is the concatenation of these byte ranges (and
  // `payload` must be empty), copied from each straight into the arena. For callers whose object
  // is several separate regions, e.g. an engine page held as a K region and a V region, so they
  // need not stage it first. The stream path gathers them into one buffer before sending.
  std::vector<std::span<const uint8_t>> segments = {};

  // Payload bytes: payload.size(), or the segments' total.
  size_t PayloadSize() const;
};

struct KeyPresence {
  bool present = false;
  Tier tier = Tier::kUnknown;
  uint64_t payload_bytes = 0;
  ObjectInfo info;  // set when present
};

struct LookupReply {
  std::vector<KeyPresence> results;  // one per key, same order
  size_t longest_prefix = 0;         // leading keys present
};

// What a streamed Get carries on the wire: the stored bytes, or a codec container.
enum class TransferCodec : uint8_t { kRaw = 0, kCacheGen = 1, kKvq = 2 };
// "raw", "cachegen-l2", "kvq-l3": codec::CodecName (codec/codec_choice.h), as the candidates.
std::string TransferCodecName(TransferCodec codec, int level);

// Streaming Get over the network: what the client accepts on the wire.
struct GetOptions {
  // kCacheGen: the service may send a codec container (about 3-6x fewer bytes for KV), which
  // the client decodes; the result is then lossy (info.lossy) and equals, bit for bit, what an
  // SSD tier encoded at the same level would serve. The service sends raw bytes when its
  // transfer policy is raw or the object is not KV the codec takes. kRaw: always the stored
  // bytes.
  Encoding accept_encoding = Encoding::kRaw;
  int level = 0;  // CacheGen level 1..3 (KVQ 1..4 with codec kKvq); 0: the service's level
  // Which codec, when set (it then stands for accept_encoding, which must be left kRaw): kRaw the
  // stored bytes, kCacheGen or kKvq a container of that codec at `level` (the service's transfer
  // policy otherwise decides the codec). A raw-policy service, or an object the codec does not
  // take, still gets raw bytes; a service older than GetRequest.accept_codec sends its policy's
  // codec. The reply's wire_codec says what came.
  std::optional<TransferCodec> codec;
};

struct GetReply {
  ObjectInfo info;
  Tier served_from = Tier::kUnknown;
  std::vector<uint8_t> payload;  // crc32c verified
  uint64_t wire_bytes = 0;       // payload bytes that crossed the wire (encoded or not)
  TransferCodec wire_codec = TransferCodec::kRaw;  // what crossed it (by the container's magic)
  int wire_level = 0;                              // the container's level; 0 for raw
  // Seconds the service spent encoding this object for this Get, as it reports them (its steady
  // clock around the encode). 0 for raw bytes, or from a service that does not report them.
  double encode_s = 0;
};

struct GetIntoReply {
  ObjectInfo info;  // the payload is out[0, info.payload_bytes)
  Tier served_from = Tier::kUnknown;
  uint64_t wire_bytes = 0;
  TransferCodec wire_codec = TransferCodec::kRaw;
  int wire_level = 0;
  // From the call's start to the last byte received (the service's encode included), and the
  // client's decode of a container after it.
  double stream_s = 0;
  double decode_s = 0;
  // The service's encode, within stream_s: as in GetReply (0 for raw or an older service).
  double encode_s = 0;
};

struct ListedObject {
  Hash128 storage_key;
  ObjectName name;
  ObjectInfo info;
  Tier tier = Tier::kUnknown;
  bool pinned = false;
  uint64_t hits = 0;
};

struct ListReply {
  std::vector<ListedObject> objects;
  std::string next_page_token;  // empty at the end
};

struct TierStats {
  Tier tier = Tier::kUnknown;
  uint64_t capacity_bytes = 0, used_bytes = 0, objects = 0, hits = 0, misses = 0, evictions = 0,
           bytes_read = 0, bytes_written = 0;
  // Payload bytes readers get back from the tier's objects (> used_bytes when it compresses).
  uint64_t logical_bytes = 0;
};

struct ServiceStats {
  std::vector<TierStats> tiers;
  uint64_t checksum_failures = 0, reservations_active = 0, reservations_expired = 0,
           leases_active = 0, pinned_objects = 0, uptime_ms = 0;
  std::string version;
};

// `kvstash cluster status`: the answering node's view of a cluster through etcd (cachesvc
// --etcd), each member's line as that member reported it (state "unreachable" when it did not).
struct ClusterNodeLine {
  std::string id, grpc_address, zone;
  std::string state;  // live, fenced, unreachable
  uint64_t capacity_bytes = 0, epoch = 0, objects = 0, under_replicated = 0,
           replication_pending = 0;
};
struct ClusterStatusReply {
  std::string cluster, node_id;
  uint32_t replicas = 0;
  bool fenced = false;
  std::vector<ClusterNodeLine> nodes;
};

// A prefill/decode handoff (docs/api.md "Handoff"): objects a prefill node pinned for a decode
// node to pull. The prefill engine gets it from Offer and passes Serialize()'s bytes to the
// decode engine (through its router), which gives Parse()'s result to FetchHandoff on its own
// node. Opaque otherwise.
struct Handoff {
  std::string node;  // the prefill node's gRPC address, as its peers know it
  uint64_t id = 0;
  std::vector<ObjectName> names;        // offered objects, in prefix order
  std::vector<uint64_t> payload_bytes;  // one per name
  uint64_t expires_in_ms = 0;           // from Offer; not carried by Serialize

  std::string Serialize() const;
  // InvalidArgument for bytes that are not a handoff (untrusted input).
  static Result<Handoff> Parse(std::string_view bytes);
};

struct HandoffFetch {
  std::vector<Status> results;  // one per handoff name
  uint32_t fetched = 0;         // pulled from the prefill node
  uint32_t already_local = 0;   // held by this node already
  uint32_t longest_prefix = 0;  // leading names now held here
  uint64_t fetched_bytes = 0;
};

namespace internal {
struct ClientCore;
struct ArenaMapping;
}  // namespace internal

// Space reserved in the arena for one object. Write payload_bytes into data(), then Commit() or
// Abort(); destroying an uncommitted reservation aborts it. The object becomes visible at a
// successful Commit. The service checks the arena bytes against the committed crc32c after a
// non-durable Commit returns and before anyone reads them: bytes that fail are never served (the
// object is removed as if evicted). So never write to data() after Commit.
class WriteReservation {
 public:
  WriteReservation(WriteReservation&&) noexcept;
  WriteReservation& operator=(WriteReservation&&) noexcept;
  ~WriteReservation();

  std::span<uint8_t> data() const { return data_; }
  const ObjectName& name() const { return name_; }
  const ObjectInfo& info() const { return info_; }
  uint64_t reservation_id() const { return id_; }

  // Computes the crc32c of data() and commits. FailedPrecondition once committed or aborted or
  // expired; with durable, InvalidArgument when the bytes changed under a concurrent writer.
  Status Commit(bool durable = false);
  // Commits with a crc32c the caller computed while writing (saves a pass over the bytes).
  Status CommitWithCrc(uint32_t payload_crc32c, bool durable = false);
  Status Abort();

 private:
  friend class KvClient;
  WriteReservation() = default;
  void Reset();

  std::shared_ptr<internal::ClientCore> core_;
  std::shared_ptr<internal::ArenaMapping> mapping_;
  ObjectName name_;
  ObjectInfo info_;
  uint64_t id_ = 0;
  std::span<uint8_t> data_;
  bool done_ = true;
};

// A read lease: data() points into the arena and stays valid and unchanged until Release() (or
// the destructor, which sends the Release without waiting for its answer, so dropping a lease
// costs no round trip; a release that gets lost ends at lease expiry). Holding a lease past its
// expiry lets the service reclaim the bytes; keep leases short or ask for a longer lease_ms.
// When the service cannot lease an object inside this client's mapping (FAILED_PRECONDITION for
// the item: a tenant's object left in the shared arena that could not be moved into the
// tenant's own, docs/deploy.md), Acquire reads it over the byte stream instead: the lease then
// holds its own copy (lease_id() 0, expires_at() never, Release() sends nothing).
class ReadLease {
 public:
  ReadLease(ReadLease&&) noexcept;
  ReadLease& operator=(ReadLease&&) noexcept;
  ~ReadLease();

  std::span<const uint8_t> data() const { return data_; }
  const ObjectInfo& info() const { return info_; }
  Tier served_from() const { return served_from_; }
  uint64_t lease_id() const { return id_; }
  std::chrono::steady_clock::time_point expires_at() const { return expires_at_; }

  Status Release();

 private:
  friend class KvClient;
  ReadLease() = default;
  void Reset();

  std::shared_ptr<internal::ClientCore> core_;
  std::shared_ptr<internal::ArenaMapping> mapping_;
  ObjectInfo info_;
  Tier served_from_ = Tier::kUnknown;
  uint64_t id_ = 0;
  std::span<const uint8_t> data_;
  std::chrono::steady_clock::time_point expires_at_;
  bool done_ = true;
  std::vector<uint8_t> copy_;  // the streamed bytes data() points to, for a lease with id_ 0
};

class KvClient {
 public:
  // target: "unix:///path", "unix:path" or "host:port". Waits for the channel (connect_timeout)
  // and, for unix targets with use_shared_memory, attaches the arena. So does a client identified
  // by its client certificate alone (TCP with tls_ca_file and tls_cert_file, no bearer_token)
  // when the service runs on its host: it asks ArenaInfo for a single-use attach ticket over the
  // TLS channel and presents it on the arena socket (docs/deploy.md "Attach tickets"); from
  // another host, or a single-tenant node, it uses the byte streams and shared_memory_status()
  // says why. Unavailable when the service cannot be reached in time.
  static Result<std::unique_ptr<KvClient>> Connect(const std::string& target,
                                                   const ClientOptions& options = {});
  ~KvClient();
  KvClient(const KvClient&) = delete;
  KvClient& operator=(const KvClient&) = delete;

  const std::string& target() const;
  bool shared_memory_attached() const;
  // Attached with a writable mapping (not ClientOptions::attach_read_only).
  bool shared_memory_writable() const;
  // Why shared memory is not attached (OK when it is, or when it was not asked for).
  Status shared_memory_status() const;
  // Whether control calls currently go over the local control channel (ClientOptions).
  bool local_control_active() const;

  // Presence of each key plus the longest present prefix, in one RPC.
  Result<LookupReply> Lookup(std::span<const ObjectName> keys);

  // Stores `payload` under `name`. info.payload_crc32c == 0 means "compute it"; a non-zero value
  // must match the payload (InvalidArgument otherwise; checked while copying, by this client on
  // the shared-memory path and by the service on the stream path).
  Status Put(const ObjectName& name, const ObjectInfo& info, std::span<const uint8_t> payload,
             const PutOptions& options = {});

  // Stores many objects; one status per item, in order, each with Put's contract (an item's
  // failure does not stop the others; every crc32c is checked as for Put).
  // Over shared memory the objects go in batches (options.max_batch, max_batch_bytes), one
  // ReserveMany and one CommitMany round trip per batch, pipelined: the next batch's Reserve and
  // the previous batch's Commit run in the service while this thread copies. The calling
  // thread does all copying; gRPC threads only complete the calls. Items
  // naming the same key race like concurrent Puts (last commit wins, or AlreadyExists without
  // overwrite). On the stream path the items are Put one by one.
  std::vector<Status> PutMany(std::span<const PutItem> items, const PutOptions& options = {});

  // Zero-copy write: reserves info.payload_bytes in the arena. FailedPrecondition when shared
  // memory is not attached; the service's Reserve errors otherwise (docs/api.md).
  Result<WriteReservation> Reserve(const ObjectName& name, const ObjectInfo& info,
                                   bool overwrite = false);

  // Zero-copy read: leases the object and returns its bytes in the arena. NotFound when absent;
  // FailedPrecondition when shared memory is not attached; DataLoss when verify_reads is on and
  // the bytes fail their crc32c. An object the service cannot lease inside this client's mapping
  // (its item status FAILED_PRECONDITION) is read with Get into a lease that owns the copy
  // (ReadLease); that Get's errors are the item's.
  Result<ReadLease> Acquire(const ObjectName& name);
  // Leases many objects in one RPC; per-key results in order.
  Result<std::vector<Result<ReadLease>>> AcquireMany(std::span<const ObjectName> names);

  // Streaming copy over gRPC (any target). NotFound when absent; DataLoss when the received
  // bytes (or, for an encoded transfer, the container or its decoded bytes) fail their crc32c;
  // InvalidArgument for a GetOptions::level out of its codec's range, or a codec together with
  // accept_encoding kCacheGen.
  Result<GetReply> Get(const ObjectName& name, const GetOptions& options = {});
  // The same into a caller's buffer (reusable, no allocation per call). InvalidArgument when
  // `out` is smaller than the object; `out` may be partly written on any error.
  Result<GetIntoReply> GetInto(const ObjectName& name, std::span<uint8_t> out,
                               const GetOptions& options = {});

  // Per-key statuses (NotFound for an unknown key); the call fails only as a whole RPC.
  Result<std::vector<Status>> Delete(std::span<const ObjectName> names);
  Result<std::vector<Status>> Pin(std::span<const ObjectName> names);
  Result<std::vector<Status>> Unpin(std::span<const ObjectName> names);

  Result<ListReply> List(const std::string& name_space, uint32_t limit = 0,
                         const std::string& page_token = "", bool all_namespaces = false);
  Result<ServiceStats> Stats();
  // The cluster as the node sees it; Unimplemented when the node is not a cluster member.
  Result<ClusterStatusReply> ClusterStatus();

  // ---- prefill/decode handoff ----
  // Prefill side: pins `names` (those stored on this node; the rest are left out) for
  // `handoff_ms` (0: the service default). ResourceExhausted when none is stored.
  Result<Handoff> Offer(std::span<const ObjectName> names, uint32_t handoff_ms = 0);
  // Decode side, on the decode node: pulls the handoff's objects into it (skipping what it
  // holds) and ends the handoff. all_or_nothing: any object not fetched fails the call; else
  // the per-object results say what to recompute. land_tier: where fetched objects land on the
  // decode node: Tier::kCpu (its arena, the default) or Tier::kGpu (its GPU pool, over UCX into
  // CUDA memory); kGpu is FailedPrecondition when that node has no GPU pool or cannot land in
  // it, and any other tier InvalidArgument (docs/api.md "Handoff").
  Result<HandoffFetch> FetchHandoff(const Handoff& handoff, bool all_or_nothing = false,
                                    Tier land_tier = Tier::kCpu);
  // Keeps the prefill node's pins alive while a request waits (forwarded by this node); the
  // new lifetime in ms. NotFound once the handoff expired or ended.
  Result<uint64_t> HeartbeatHandoff(const Handoff& handoff, uint32_t extend_ms = 0);
  Status ReleaseHandoff(const Handoff& handoff);

 private:
  explicit KvClient(std::shared_ptr<internal::ClientCore> core);
  Status PutShared(const ObjectName& name, const ObjectInfo& info, std::span<const uint8_t> payload,
                   const PutOptions& options);
  std::vector<Status> PutManyShared(std::span<const PutItem> items, const PutOptions& options);
  Status PutStream(const ObjectName& name, const ObjectInfo& info, std::span<const uint8_t> payload,
                   const PutOptions& options);
  // Streams `name`; `dest(info)` returns where the payload goes (payload_bytes writable bytes).
  Result<GetIntoReply> StreamGet(const ObjectName& name, const GetOptions& options,
                                 const std::function<Result<uint8_t*>(const ObjectInfo&)>& dest);

  std::shared_ptr<internal::ClientCore> core_;
};

}  // namespace kvstash::client

#endif  // KVSTASH_CLIENT_KV_CLIENT_H_
