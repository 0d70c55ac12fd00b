// Configuration of the cachesvc daemon: an embedded default, an optional YAML file (--config) and
// command-line flags, applied in that order (flags override the file, the file overrides the
// embedded default). docs/architecture-service.md lists every key.
//
// Errors are InvalidArgument with a message naming the flag or YAML key at fault. Nothing here
// throws; CLI11 and yaml-cpp exceptions are caught at this boundary. Pure functions, thread-safe.
#ifndef KVSTASH_CACHESVC_CONFIG_H_
#define KVSTASH_CACHESVC_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvstash/common/status.h"
#include "kvstash/storage/object_store.h"

namespace kvstash::cachesvc {

// How a storage tier encodes the objects it keeps (docs/storage.md "Per-tier encoding").
struct TierEncoding {
  Encoding encoding = Encoding::kRaw;  // raw: stored as written; cachegen: a codec container, lossy
  int level = 2;                       // level 1..3 (codec/levels.h, codec/kvq.h)
  // With encoding cachegen: write KVQ containers (codec/kvq.h) instead of CacheGen ones. Objects
  // keep encoding cachegen ("a codec container"); decoders (the SSD tier's, KvClient's, a peer's)
  // tell the two apart by the container's magic.
  bool kvq = false;
  // tiers.ssd only ("auto"): the service chooses encoding, kvq and level at start-up by
  // measurement (cachesvc/src/ssd_encoding_choice.h): raw, CacheGen at `level` (the quality floor)
  // or a KVQ level 1..3 at least as exact on the calibration sample, whichever codec_choice's
  // kStored cost model says loads fastest at the SSD tier's read rate. Parsed as encoding raw until
  // then.
  bool choose = false;
};

// What fetches from peers carry (PeerConfig::transfer_encoding, --peer-transfer-encoding).
enum class PeerTransferEncoding : uint8_t {
  kRaw = 0,       // the stored bytes as they are
  kCacheGen = 1,  // always CacheGen, over KvStash.Get streams
  kAuto = 2,      // raw, CacheGen or KVQ per peer: whichever is measured fastest on its link
  kKvq = 3,       // always KVQ (the peer's transfer level), over KvStash.Get streams
};

// "raw", "cachegen", "auto" or "kvq" ("invalid" for a value outside the enum).
std::string_view PeerTransferEncodingName(PeerTransferEncoding encoding);
// The inverse of PeerTransferEncodingName; InvalidArgument naming the accepted values otherwise.
Result<PeerTransferEncoding> ParsePeerTransferEncoding(std::string_view text);

// When a client's commit is acknowledged in a cluster (ClusterConfig::replication_mode,
// --replication-mode).
enum class ReplicationMode : uint8_t {
  kAsync = 0,  // once held here; forwarded to the other owners after
  kSync = 1,   // once the object's R owners hold it
};

// "async" or "sync" ("invalid" for a value outside the enum).
std::string_view ReplicationModeName(ReplicationMode mode);
// The inverse of ReplicationModeName; InvalidArgument naming the accepted values otherwise.
Result<ReplicationMode> ParseReplicationMode(std::string_view text);

// Other cachesvc nodes this one reads from on a local miss (docs/deploy.md "Peers").
struct PeerConfig {
  // Peers' gRPC addresses (host:port). Empty: a single node.
  std::vector<std::string> addresses;
  // This node's name in peers' logs and metrics; empty: <hostname>/<listen address>.
  std::string node_id;
  // File with the cluster secret, which peers present to each other (metadata
  // kvstash-peer-token) before this node hands out its UCX worker address and arena rkey.
  // Required for peers; empty and no addresses: this node serves no peers either.
  std::string secret_file;
  uint32_t timeout_ms = 2000;  // one peer call (Lookup, Acquire, the transfer, Release)
  uint32_t retry_ms = 2000;    // a peer that failed is left alone this long
  // Keep fetched objects in the local CPU tier (and write them through to SSD like any other);
  // false: serve them once, under the reader's lease, and drop them.
  bool promote = true;
  bool lookup = true;              // Lookup asks peers about local misses (reported TIER_REMOTE)
  std::string data_plane = "ucx";  // ucx: one-sided UCX reads; grpc: KvStash.Get streams
  // With the UCX data plane: true: the peer sends the objects (UcxTransport::Fetch: active
  // messages sent zero-copy from its arena, one copy here; faster on the quiet VM,
  // docs/benchmarks-transfer.md); false: this node reads them (UcxTransport::Read: gets that UCX
  // emulates over TCP with a copy at each end); auto (default): true on UCX >= 1.14 or with
  // ucx_connect serving_first, false on older UCX with reader_first (the default). The choice
  // is also the serving peer's safety: on UCX 1.22 a reader dying mid-get aborted the serving
  // process inside UCX and one dying mid-Fetch never did; on 1.13 both can (docs/deploy.md "Which
  // UCX"). With true, landings in the GPU pool (which Fetch's memcpy cannot reach) use
  // UcxTransport::FetchInPlace (the peer sends, UCX receives into device memory); with false they
  // are gets. inplace: every landing, CPU arena too, uses FetchInPlace (the GPU path's read,
  // exercised with host memory).
  std::string ucx_fetch = "auto";
  // With the UCX data plane: who initiates the UCX wire-up between a reader and the node it reads.
  // serving_first: this node sends its worker address in Hello, and as a serving node connects
  // to a reader's worker (wire-up flushed) before it answers the reader's Hello, refusing it
  // (UNAVAILABLE) when that fails; it needs the serving node to reach its readers' UCX addresses.
  // reader_first: the reader connects (the protocol before serving_first; a node that sends no
  // address gets that from any node). auto (default): reader_first. On UCX < 1.14 a reader
  // dying during a wire-up it initiated can abort the serving node, and with serving_first a
  // serving node dying can abort its reader the same way (docs/deploy.md "Which UCX").
  std::string ucx_connect = "auto";
  // With the UCX data plane: the host memory (MiB, registered with UCX once, pages touched only
  // when used) in which this node stages the codec containers of encoded fetches peers ask for
  // (KvStashPeer.StageEncoded), so that they pull them over UCX instead of a KvStash.Get stream.
  // A batch that does not fit goes over streams. 0: no staging; peers' encoded fetches from this
  // node use streams.
  uint32_t staging_mib = 256;
  // Encoded fetches on slow links (docs/benchmarks-transfer.md "Slow links"). raw (default): the
  // stored bytes move as they are. cachegen: every fetch asks the peer for CacheGen (the peer's
  // transfer_encoding level) over a KvStash.Get stream; this node checks the container's crc32c on
  // arrival, decodes it into its reservation and commits the reconstruction (lossy) only if its
  // crc32c matches the one the peer computed when encoding. kvq: the same with KVQ containers
  // (metadata kvstash-peer-codec). auto: per peer and batch, the fastest of raw, CacheGen at the
  // transfer level and the KVQ levels at least as exact on the calibration sample, from their
  // ratio and encode/decode speeds measured at start (codec/codec_choice.h) and the link's rate.
  PeerTransferEncoding transfer_encoding = PeerTransferEncoding::kRaw;
  // For auto: the links' rate to peers in Mbit/s; 0: measured per peer from raw fetches of at
  // least 256 KiB (until a measurement exists, fetches are raw; while encoding, every 16th batch
  // goes raw to keep the measurement fresh).
  uint32_t link_mbps = 0;
  // This node's address in handoff descriptors, as its peers list it (their --peer); empty: the
  // bound gRPC address (host:port of --listen, loopback for a wildcard host).
  std::string advertise;
  uint32_t handoff_ms = 30'000;  // default lifetime of a handoff's pins (Offer, heartbeats)
  uint32_t max_handoff_ms = 600'000;
};

// Mutual TLS on the gRPC listener and the channels to peers (docs/deploy.md "TLS"). All three
// files or none. A unix-socket listener never uses TLS: file permissions guard it.
struct TlsConfig {
  std::string cert_file;  // PEM certificate chain of this node (server and peer-client)
  std::string key_file;   // PEM private key of cert_file
  std::string ca_file;    // PEM CA bundle that clients' and peers' certificates must chain to
  // The name a peer's certificate must carry when this node dials it; empty: the peer address's
  // host (as given to --peer).
  std::string server_name;
  bool enabled() const { return !cert_file.empty(); }
};

// Membership through etcd, placement and replication (docs/deploy.md "A cluster through etcd").
// Needs peers.secret_file (members read each other's arenas) and a TCP listener (same-node engines
// then connect to local_listen, a unix socket with the arena beside it).
struct ClusterConfig {
  std::vector<std::string> etcd;  // etcd endpoints; empty: no cluster (static peers only)
  std::string name = "default";   // nodes register under /kvstash/<name>/nodes/<node id>
  uint32_t replicas = 1;          // R: owners per object (weighted rendezvous hashing)
  std::string zone;               // reads prefer owners in this node's zone
  uint32_t ttl_s = 10;            // lease TTL; a node not renewed this long is dropped / fences
  uint32_t etcd_timeout_ms = 0;   // one etcd call; 0: min(2000, ttl_s * 1000 / 3)
  // Commits forwarded to other owners wait in a queue of at most this many objects; beyond it
  // they are dropped (counted) and left to the repair pass after the next membership change.
  uint32_t replication_queue = 65536;
  // Hot and pinned objects: kept on hot_replicas owners instead of R (0: off, as R). An object
  // is hot while its reads here, decayed with a half-life of hot_half_life_s, reach
  // hot_threshold; pinned objects always are. Checked every hot_scan_ms from the store's
  // listing (its per-object hit counts), so a key turns hot within one scan of its reads.
  uint32_t hot_replicas = 0;
  uint32_t hot_threshold = 32;
  uint32_t hot_half_life_s = 60;
  uint32_t hot_scan_ms = 5000;
  // async: a client's commit is acknowledged once it is held here, and forwarded to the other
  // owners after (a crash of this node can lose what is still queued). sync: the commit returns
  // only once the object's R owners hold it (this node counts when it is one of them); it fails
  // with UNAVAILABLE when fewer than R nodes are live or this node is fenced, DEADLINE_EXCEEDED
  // when an owner did not confirm within sync_timeout_ms, or the owner's error. A failed commit
  // still leaves the object here, queued for the asynchronous forward. Parsed once, when the
  // config is read.
  ReplicationMode replication_mode = ReplicationMode::kAsync;
  uint32_t sync_timeout_ms = 5000;
  // sync: the writer leases each object in its own arena and offers the leases in its Replicate
  // requests, so the owners read the bytes directly (no Acquire and Release calls back to the
  // writer); an owner without a usable offer (expired, another arena generation, no UCX, encoded
  // peer transfers) fetches as before. false: never offer (the previous protocol).
  bool replicate_offers = true;
};

struct ServiceConfig {
  // gRPC listen address: "unix:///abs/path", "unix:rel/path" or "host:port" (TCP; port 0 picks
  // a free port, reported in the ready file and the log).
  std::string listen = "unix:///tmp/kvstash.sock";
  // A second listener on the same gRPC server for same-node engines when `listen` is TCP (a
  // cluster member, a node serving peers): "unix:///abs/path" or "unix:rel/path", never TCP and
  // never beside a unix `listen`. It is served like a unix `listen`: no TLS (file permissions
  // guard it), the same tenant token rules, and the arena socket next to it. Empty: none.
  std::string local_listen;
  // Unix socket on which the arena memfd is handed out. Empty: "<local_listen path>.arena" when
  // local_listen is set, else "<listen path>.arena" for a unix listener, "<data_dir>/arena.sock"
  // for TCP.
  std::string arena_socket;
  // Prometheus /metrics and /healthz; port 0 disables the HTTP listener.
  std::string metrics_address = "0.0.0.0";
  int metrics_port = 9464;
  std::string log_level = "info";  // trace, debug, info, warn, error, off
  // When set, written (atomically) once the service accepts requests: a JSON object with the
  // bound addresses. Removed on shutdown.
  std::string ready_file;

  // Limits on untrusted requests. gRPC itself refuses messages above max_message_bytes with
  // RESOURCE_EXHAUSTED; the service answers INVALID_ARGUMENT for the finer limits below.
  uint64_t max_message_bytes = 16ull << 20;
  uint32_t max_keys_per_request = 4096;
  uint64_t max_chunk_bytes = 4ull << 20;     // data in one PutChunk
  uint64_t stream_chunk_bytes = 1ull << 20;  // data in one GetChunk
  uint32_t max_list_limit = 10000;
  // Upper bound on the time a streaming Put or Get may take; the reservation or lease it holds
  // lasts this long, so a stalled stream can never write into or read from reclaimed bytes.
  uint32_t stream_timeout_ms = 120'000;
  int rpc_threads = 64;  // gRPC sync server thread cap
  // Arena-socket connections kept open for local control calls (a thread each); 0 turns the
  // local control channel off and same-node clients send every call over gRPC.
  int local_control_connections = 256;
  // After answering a local control call, the connection's thread polls for the next one this
  // long before it blocks. A same-node put is Reserve, a copy, Commit: polling through the copy
  // answers the Commit without a thread wake-up (on a 2-vCPU VM: 15 us instead of 50-110 us per
  // call). The price is up to this much CPU per call on the service side; 0: never poll.
  uint32_t local_control_poll_us = 1000;
  // Attach tickets (multi-tenant nodes; docs/deploy.md "Attach tickets"): how many a tenant may
  // hold outstanding at a time, and how long one stays valid (at most 10 s).
  int attach_tickets = 64;
  uint32_t attach_ticket_ttl_ms = 10'000;
  // Threads (each with its gRPC completion queue) that answer streaming Puts and Gets, and how
  // long each polls its queue after an event before it blocks: the next message of a call comes
  // within microseconds, sooner than a blocked thread wakes up. 0: never poll.
  int stream_threads = 2;
  uint32_t stream_poll_us = 1000;
  uint32_t shutdown_grace_ms = 10'000;  // in-flight RPCs get this long on SIGTERM

  // metrics is set by the service; prefault_arena defaults to true here (the embedded default):
  // no put or get pays a page fault in the daemon, at the price of committing cpu_capacity.
  // tenant_arena_reserve_bytes (storage.tenant_arena_reserve, 64GiB of address space by
  // default) is used only with tokens_file: arenas for tenants a SIGHUP reload gives a cpu quota
  // (docs/deploy.md "Shared memory"); a single-tenant service reserves nothing.
  storage::StoreOptions store = [] {
    storage::StoreOptions o;
    o.prefault_arena = true;
    o.tenant_arena_reserve_bytes = 64ull << 30;
    return o;
  }();
  // tiers.ssd: encoding of the SSD tier. The service installs a CacheGen TierCodec either way,
  // so SSD copies that an earlier run wrote encoded stay readable under `raw`.
  TierEncoding ssd_encoding;
  // tiers.ssd.read_mbps: the SSD tier's read rate in Mbit/s for tiers.ssd.encoding auto (0: the
  // service measures it at start-up with a short O_DIRECT read in storage.data_dir/ssd). Only
  // meaningful with auto; ValidateConfig refuses it otherwise.
  uint32_t ssd_read_mbps = 0;
  // GPU pool tier (docs/storage.md "GPU pool tier"): this many bytes of CUDA device gpu_device's
  // memory as the store's last lower tier, registered with UCX when UCX supports CUDA memory.
  // 0: none. Without a CUDA driver or that device, start-up fails with FailedPrecondition.
  uint64_t gpu_pool_bytes = 0;
  int gpu_device = 0;
  // tiers.transfer: what a streaming Get may send to a client that accepts CacheGen
  // (GetRequest.accept_encoding; the client's accept_level, when set, overrides `level`). raw:
  // never encode. Clients that do not ask always get the stored bytes.
  TierEncoding transfer_encoding{Encoding::kCacheGen, 2};
  PeerConfig peers;
  TlsConfig tls;
  // Listening on a TCP address other than loopback without TLS needs this explicit opt-in.
  bool insecure_tcp = false;
  // Tenants (docs/deploy.md "Tenants"): credentials -> tenant, role, and per-tenant quotas. Empty:
  // single-tenant mode (every caller may name any namespace, as before).
  std::string tokens_file;
  ClusterConfig cluster;
};

// The embedded default (single node, CPU + SSD tiers in ./data) as YAML text.
std::string_view EmbeddedDefaultConfigYaml();

// Overlays YAML text on `base`. Unknown keys, wrong types and bad values are InvalidArgument.
Result<ServiceConfig> ApplyYaml(std::string_view yaml_text, ServiceConfig base);

// Checks cross-field rules (watermarks ordered, capacities, sizes within limits, paths).
Status ValidateConfig(const ServiceConfig& config);

// Result of parsing a command line: either a config to run with, or a message to print and an
// exit code (help, version, usage errors).
struct ParsedCommandLine {
  std::optional<ServiceConfig> config;
  int exit_code = 0;
  std::string output;  // help / version text (stdout) or error text (stderr) when !config
};

// Embedded default <- --config FILE <- flags. A usage error gives exit_code 2. With
// --check-config the configuration is only checked (parsed and ValidateConfig; no file it names
// is opened): no config, output "cachesvc: configuration OK" and exit_code 0, or the message
// and exit_code 1 when the file or flags make it invalid (usage errors stay 2).
ParsedCommandLine ParseCommandLine(int argc, const char* const* argv);

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_CONFIG_H_
