#include "kvstash/cachesvc/config.h"

#include <yaml-cpp/yaml.h>

#include <CLI/CLI.hpp>
#include <cctype>
#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "kvstash/common/byte_size.h"

namespace kvstash::cachesvc {
namespace {

constexpr std::string_view kEmbeddedDefault =
    R"(# cachesvc embedded default: one node, CPU + SSD tiers in ./data
listen: unix:///tmp/kvstash.sock
local_listen: ""          # with a TCP listen: a unix socket for same-node engines (arena beside it)
arena_socket: ""          # empty: <local_listen or unix listen path>.arena, else <data_dir>/arena.sock
ready_file: ""
log_level: info
metrics:
  address: 0.0.0.0
  port: 9464              # 0 disables /metrics and /healthz
limits:
  max_message_bytes: 16MiB
  max_keys_per_request: 4096
  max_chunk_bytes: 4MiB
  stream_chunk_bytes: 1MiB
  max_list_limit: 10000
  stream_timeout_ms: 120000
  rpc_threads: 64
  local_control_connections: 256  # same-node control calls on the arena socket; 0: gRPC only
  local_control_poll_us: 1000     # poll for a local client's next call this long before blocking
  attach_tickets: 64              # outstanding arena attach tickets per tenant (certificate clients)
  attach_ticket_ttl_ms: 10000     # an attach ticket's validity, at most 10000
  stream_threads: 2               # threads answering streaming Puts and Gets
  stream_poll_us: 1000            # each polls for the next event this long before blocking
  shutdown_grace_ms: 10000
storage:
  data_dir: ./data
  cpu_capacity: 1GiB
  prefault_arena: true    # commit the CPU arena's memory at start
  tenant_arena_reserve: 64GiB  # address space for arenas of tenants a reload adds (tokens_file)
  background_commit_checks: true  # check put bytes right after Commit (false: on first read)
  ssd_capacity: 8GiB      # 0 disables the SSD tier
  high_watermark: 0.90
  low_watermark: 0.80
  reservation_ms: 30000
  lease_ms: 30000
  max_lease_ms: 600000
  ssd_admission_hits: 0
  ssd_io_threads: 4
  cpu_eviction_policy: lru
  ssd_eviction_policy: lru
  gpu_pool_capacity: 0    # GPU pool tier in CUDA device memory (needs a driver); 0: none
  gpu_device: 0           # CUDA device of the GPU pool
tiers:
  ssd:
    encoding: raw         # raw | cachegen | kvq (lossy; decoded on promotion) | auto
    level: 2              # CacheGen level 1..3 when encoding is cachegen (auto: the floor)
    read_mbps: 0          # auto: SSD read rate in Mbit/s; 0 measures it at start-up
  transfer:
    encoding: cachegen    # raw | cachegen: offered to streaming Gets that accept it (lossy)
    level: 2              # used when the client asks for no level
peers:
  addresses: []           # other nodes' gRPC host:port; also --peer (repeatable)
  node_id: ""             # empty: <hostname>/<listen>
  secret_file: ""         # cluster secret, required for peers (serving and fetching)
  timeout_ms: 2000        # one peer call, transfer included
  retry_ms: 2000          # a failed peer is left alone this long
  promote: true           # keep fetched objects in the local CPU tier
  lookup: true            # Lookup reports objects peers hold (TIER_REMOTE)
  data_plane: ucx         # ucx | grpc
  ucx_fetch: auto         # true: peers send (Fetch) | false: gets | inplace | auto: true unless UCX < 1.14 with reader_first
  ucx_connect: auto       # serving_first | reader_first: who starts the UCX wire-up | auto: reader_first
  staging_mib: 256        # encoded fetches peers pull over UCX are staged here; 0: streams
  advertise: ""           # this node's address in handoff descriptors; empty: the bound address
  handoff_ms: 30000       # how long offered objects stay pinned without a heartbeat
  max_handoff_ms: 600000
tls:                      # mutual TLS on a TCP listener and to peers: all three files or none
  cert: ""                # PEM certificate (chain) of this node
  key: ""                 # its private key
  ca: ""                  # CA bundle client and peer certificates must chain to
  server_name: ""         # name peers' certificates must carry; empty: the --peer host
  insecure_tcp: false     # allow a non-loopback TCP listener without TLS
auth:
  tokens_file: ""         # tenants: tokens, certificate identities, roles, quotas; empty: one tenant
cluster:
  etcd: []                # etcd endpoints (http://host:port); also --etcd URL[,URL]; empty: none
  name: default           # nodes register under /kvstash/<name>/nodes/<node id>
  replicas: 1             # owners per object
  zone: ""                # reads prefer owners in the same zone
  ttl_s: 10               # membership lease; a node silent this long is dropped and fences itself
  etcd_timeout_ms: 0      # one etcd call; 0: min(2000, ttl_s * 1000 / 3)
  replication_queue: 65536
  hot_replicas: 0         # owners of hot and pinned objects; 0: as replicas
  hot_threshold: 32       # decayed reads here that make an object hot
  hot_half_life_s: 60     # half-life of those read counts
  hot_scan_ms: 5000       # how often the store's hit counts are scanned for hot objects
  replication_mode: async # async | sync (a commit returns once its R owners hold it)
  sync_timeout_ms: 5000   # sync: how long a commit waits for the owners' confirmation
  replicate_offers: true  # sync: owners read the writer's offered leases (no calls back to it)
)";

Status Bad(const std::string& where, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
}

// Scalar readers: yaml-cpp throws on conversion failure; these turn that into a Status.
Result<std::string> ReadString(const YAML::Node& node, const std::string& where) {
  if (!node.IsScalar()) return Bad(where, "expected a scalar");
  return node.Scalar();
}

template <typename T>
Result<T> ReadNumber(const std::string& text, const std::string& where) {
  std::istringstream in(text);
  T value{};
  in >> value;
  if (in.fail() || !in.eof()) return Bad(where, absl::StrCat("'", text, "' is not a valid number"));
  return value;
}

template <typename T>
Result<T> ReadIntInRange(const std::string& text, const std::string& where, int64_t lo,
                         int64_t hi) {
  KVSTASH_ASSIGN_OR_RETURN(int64_t v, ReadNumber<int64_t>(text, where));
  if (v < lo || v > hi) {
    return Bad(where, absl::StrCat(v, " is out of range [", lo, ", ", hi, "]"));
  }
  return static_cast<T>(v);
}

Result<uint64_t> ReadSize(const std::string& text, const std::string& where) {
  auto size = ParseByteSize(text);
  if (!size.ok()) return Bad(where, std::string(size.status().message()));
  return *size;
}

// One settable field: the same setter serves the YAML key and the command-line flag.
using Setter =
    std::function<Status(const std::string& text, const std::string& where, ServiceConfig& config)>;

template <typename T>
Setter IntField(T ServiceConfig::*field, int64_t lo, int64_t hi) {
  return [=](const std::string& text, const std::string& where, ServiceConfig& c) -> Status {
    KVSTASH_ASSIGN_OR_RETURN(c.*field, ReadIntInRange<T>(text, where, lo, hi));
    return OkStatus();
  };
}

template <typename T>
Setter StoreIntField(T storage::StoreOptions::*field, int64_t lo, int64_t hi) {
  return [=](const std::string& text, const std::string& where, ServiceConfig& c) -> Status {
    KVSTASH_ASSIGN_OR_RETURN(c.store.*field, ReadIntInRange<T>(text, where, lo, hi));
    return OkStatus();
  };
}

Setter SizeField(uint64_t ServiceConfig::*field) {
  return [=](const std::string& text, const std::string& where, ServiceConfig& c) -> Status {
    KVSTASH_ASSIGN_OR_RETURN(c.*field, ReadSize(text, where));
    return OkStatus();
  };
}

Setter StoreSizeField(uint64_t storage::StoreOptions::*field) {
  return [=](const std::string& text, const std::string& where, ServiceConfig& c) -> Status {
    KVSTASH_ASSIGN_OR_RETURN(c.store.*field, ReadSize(text, where));
    return OkStatus();
  };
}

Setter StringField(std::string ServiceConfig::*field) {
  return [=](const std::string& text, const std::string&, ServiceConfig& c) -> Status {
    c.*field = text;
    return OkStatus();
  };
}

Setter StoreStringField(std::string storage::StoreOptions::*field) {
  return [=](const std::string& text, const std::string&, ServiceConfig& c) -> Status {
    c.store.*field = text;
    return OkStatus();
  };
}

Result<bool> ReadBool(const std::string& text, const std::string& where) {
  if (text == "true" || text == "1" || text == "yes" || text == "on") return true;
  if (text == "false" || text == "0" || text == "no" || text == "off") return false;
  return Bad(where, absl::StrCat("'", text, "' is not a boolean (true/false)"));
}

Setter StoreBoolField(bool storage::StoreOptions::*field) {
  return [=](const std::string& text, const std::string& where, ServiceConfig& c) -> Status {
    KVSTASH_ASSIGN_OR_RETURN(c.store.*field, ReadBool(text, where));
    return OkStatus();
  };
}

Setter StoreFraction(double storage::StoreOptions::*field) {
  return [=](const std::string& text, const std::string& where, ServiceConfig& c) -> Status {
    KVSTASH_ASSIGN_OR_RETURN(double v, ReadNumber<double>(text, where));
    if (!(v > 0.0 && v <= 1.0)) return Bad(where, absl::StrCat(text, " is not in (0, 1]"));
    c.store.*field = v;
    return OkStatus();
  };
}

// raw, cachegen or kvq (a tier that holds, or transfers that send, KVQ containers).
Setter TierEncodingField(TierEncoding ServiceConfig::*field) {
  return [=](const std::string& text, const std::string& where, ServiceConfig& c) -> Status {
    (c.*field).kvq = false;
    if (text == "raw") {
      (c.*field).encoding = Encoding::kRaw;
    } else if (text == "cachegen") {
      (c.*field).encoding = Encoding::kCacheGen;
    } else if (text == "kvq") {
      (c.*field).encoding = Encoding::kCacheGen;
      (c.*field).kvq = true;
    } else {
      return Bad(where, absl::StrCat("unknown encoding '", text, "' (raw, cachegen or kvq)"));
    }
    return OkStatus();
  };
}

// The SSD tier also takes "auto" (TierEncoding::choose): chosen at start-up by measurement.
Setter SsdEncodingField() {
  const Setter plain = TierEncodingField(&ServiceConfig::ssd_encoding);
  return [=](const std::string& text, const std::string& where, ServiceConfig& c) -> Status {
    if (text == "auto") {
      c.ssd_encoding.encoding = Encoding::kRaw;
      c.ssd_encoding.kvq = false;
      c.ssd_encoding.choose = true;
      return OkStatus();
    }
    Status s = plain(text, where, c);
    if (!s.ok()) {
      return Bad(where, absl::StrCat("unknown encoding '", text, "' (raw, cachegen, kvq or auto)"));
    }
    c.ssd_encoding.choose = false;
    return OkStatus();
  };
}

Setter TierLevelField(TierEncoding ServiceConfig::*field) {
  return [=](const std::string& text, const std::string& where, ServiceConfig& c) -> Status {
    Result<int> level = ReadIntInRange<int>(text, where, 1, 3);
    if (!level.ok()) {
      return Bad(where, absl::StrCat("'", text, "' is not a CacheGen level (1, 2 or 3)"));
    }
    (c.*field).level = *level;
    return OkStatus();
  };
}

Setter TlsStringField(std::string TlsConfig::*field) {
  return [=](const std::string& text, const std::string&, ServiceConfig& c) -> Status {
    c.tls.*field = text;
    return OkStatus();
  };
}

Status SetInsecureTcp(const std::string& text, const std::string& where, ServiceConfig& c) {
  KVSTASH_ASSIGN_OR_RETURN(c.insecure_tcp, ReadBool(text, where));
  return OkStatus();
}

Setter PeerIntField(uint32_t PeerConfig::*field, int64_t lo, int64_t hi) {
  return [=](const std::string& text, const std::string& where, ServiceConfig& c) -> Status {
    KVSTASH_ASSIGN_OR_RETURN(c.peers.*field, ReadIntInRange<uint32_t>(text, where, lo, hi));
    return OkStatus();
  };
}

Setter PeerBoolField(bool PeerConfig::*field) {
  return [=](const std::string& text, const std::string& where, ServiceConfig& c) -> Status {
    KVSTASH_ASSIGN_OR_RETURN(c.peers.*field, ReadBool(text, where));
    return OkStatus();
  };
}

Setter PeerStringField(std::string PeerConfig::*field) {
  return [=](const std::string& text, const std::string&, ServiceConfig& c) -> Status {
    c.peers.*field = text;
    return OkStatus();
  };
}

Status SetPeerTransferEncoding(const std::string& text, const std::string& where,
                               ServiceConfig& c) {
  Result<PeerTransferEncoding> e = ParsePeerTransferEncoding(text);
  if (!e.ok()) return Bad(where, std::string(e.status().message()));
  c.peers.transfer_encoding = *e;
  return OkStatus();
}

// A comma-separated list (YAML sequences are joined with commas first); replaces the list.
Status SetPeerAddresses(const std::string& text, const std::string& where, ServiceConfig& c) {
  c.peers.addresses.clear();
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (item.empty()) continue;
    if (item.rfind("unix:", 0) == 0 || item.find(':') == std::string::npos) {
      return Bad(where, absl::StrCat("peer '", item, "' is not HOST:PORT"));
    }
    c.peers.addresses.push_back(item);
  }
  return OkStatus();
}

Status SetEtcdEndpoints(const std::string& text, const std::string& where, ServiceConfig& c) {
  c.cluster.etcd.clear();
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (item.empty()) continue;
    if (item.find(':') == std::string::npos) {
      return Bad(where, absl::StrCat("etcd endpoint '", item, "' is not [http://]HOST:PORT"));
    }
    c.cluster.etcd.push_back(item);
  }
  return OkStatus();
}

Setter ClusterIntField(uint32_t ClusterConfig::*field, int64_t lo, int64_t hi) {
  return [=](const std::string& text, const std::string& where, ServiceConfig& c) -> Status {
    KVSTASH_ASSIGN_OR_RETURN(c.cluster.*field, ReadIntInRange<uint32_t>(text, where, lo, hi));
    return OkStatus();
  };
}

Setter ClusterStringField(std::string ClusterConfig::*field) {
  return [=](const std::string& text, const std::string&, ServiceConfig& c) -> Status {
    c.cluster.*field = text;
    return OkStatus();
  };
}

Status SetReplicationMode(const std::string& text, const std::string& where, ServiceConfig& c) {
  Result<ReplicationMode> mode = ParseReplicationMode(text);
  if (!mode.ok()) return Bad(where, std::string(mode.status().message()));
  c.cluster.replication_mode = *mode;
  return OkStatus();
}

Status SetReplicateOffers(const std::string& text, const std::string& where, ServiceConfig& c) {
  KVSTASH_ASSIGN_OR_RETURN(c.cluster.replicate_offers, ReadBool(text, where));
  return OkStatus();
}

// The keys whose value is a list (a YAML sequence, or a comma-separated scalar).
bool IsListKey(const std::string& path) {
  return path == "peers.addresses" || path == "cluster.etcd";
}

struct Field {
  const char* yaml_path;  // "section.key" or "key"
  const char* flag;       // "--flag" or nullptr when only settable from YAML
  const char* help;
  Setter set;
};

const std::vector<Field>& Fields() {
  static const std::vector<Field> fields = {
      {"listen", "--listen", "gRPC address: unix:///path or host:port",
       StringField(&ServiceConfig::listen)},
      {"local_listen", "--local-listen",
       "second gRPC listener for same-node engines beside a TCP --listen: unix:///path",
       StringField(&ServiceConfig::local_listen)},
      {"arena_socket", "--arena-socket", "unix socket handing out the arena memfd",
       StringField(&ServiceConfig::arena_socket)},
      {"ready_file", "--ready-file", "write bound addresses as JSON here once serving",
       StringField(&ServiceConfig::ready_file)},
      {"log_level", "--log-level", "trace|debug|info|warn|error|off",
       StringField(&ServiceConfig::log_level)},
      {"metrics.address", "--metrics-address", "HTTP address for /metrics and /healthz",
       StringField(&ServiceConfig::metrics_address)},
      {"metrics.port", "--metrics-port", "HTTP port for /metrics and /healthz; 0 disables",
       IntField(&ServiceConfig::metrics_port, 0, 65535)},
      {"limits.max_message_bytes", "--max-message-bytes", "largest gRPC message accepted",
       SizeField(&ServiceConfig::max_message_bytes)},
      {"limits.max_keys_per_request", "--max-keys-per-request", "keys in one batched request",
       IntField(&ServiceConfig::max_keys_per_request, 1, 1 << 20)},
      {"limits.max_chunk_bytes", "--max-chunk-bytes", "data bytes in one PutChunk",
       SizeField(&ServiceConfig::max_chunk_bytes)},
      {"limits.stream_chunk_bytes", "--stream-chunk-bytes", "data bytes in one GetChunk",
       SizeField(&ServiceConfig::stream_chunk_bytes)},
      {"limits.max_list_limit", "--max-list-limit", "objects in one List page",
       IntField(&ServiceConfig::max_list_limit, 1, 1 << 20)},
      {"limits.stream_timeout_ms", "--stream-timeout-ms", "longest streaming Put/Get",
       IntField(&ServiceConfig::stream_timeout_ms, 1000, 3'600'000)},
      {"limits.rpc_threads", "--rpc-threads", "gRPC server thread cap",
       IntField(&ServiceConfig::rpc_threads, 2, 4096)},
      {"limits.local_control_connections", "--local-control-connections",
       "arena-socket connections served for local control calls (0: off)",
       IntField(&ServiceConfig::local_control_connections, 0, 65536)},
      {"limits.local_control_poll_us", "--local-control-poll-us",
       "after a local control call, poll for the next one this long before blocking (0: never)",
       IntField(&ServiceConfig::local_control_poll_us, 0, 100'000)},
      {"limits.attach_tickets", "--attach-tickets",
       "arena attach tickets a tenant may hold outstanding (certificate-identified clients)",
       IntField(&ServiceConfig::attach_tickets, 1, 4096)},
      {"limits.attach_ticket_ttl_ms", "--attach-ticket-ttl-ms",
       "how long an arena attach ticket stays valid (at most 10 s)",
       IntField(&ServiceConfig::attach_ticket_ttl_ms, 1, 10'000)},
      {"limits.stream_threads", "--stream-threads", "threads answering streaming Puts and Gets",
       IntField(&ServiceConfig::stream_threads, 1, 256)},
      {"limits.stream_poll_us", "--stream-poll-us",
       "a streaming Put/Get thread polls for its next event this long before blocking (0: never)",
       IntField(&ServiceConfig::stream_poll_us, 0, 100'000)},
      {"limits.shutdown_grace_ms", "--shutdown-grace-ms", "time in-flight RPCs get on SIGTERM",
       IntField(&ServiceConfig::shutdown_grace_ms, 0, 600'000)},
      {"storage.data_dir", "--data-dir", "directory of the SSD tier",
       StoreStringField(&storage::StoreOptions::data_dir)},
      {"storage.cpu_capacity", "--cpu-capacity", "CPU arena size (e.g. 512MiB, 4GiB)",
       StoreSizeField(&storage::StoreOptions::cpu_capacity_bytes)},
      {"storage.ssd_capacity", "--ssd-capacity", "SSD tier capacity; 0 disables the tier",
       StoreSizeField(&storage::StoreOptions::ssd_capacity_bytes)},
      {"storage.prefault_arena", "--prefault-arena", "commit the CPU arena's memory at start",
       StoreBoolField(&storage::StoreOptions::prefault_arena)},
      {"storage.tenant_arena_reserve", "--tenant-arena-reserve",
       "address space reserved for the arenas of tenants a SIGHUP reload gives a cpu quota "
       "(with --tokens-file; 0: none until restart)",
       StoreSizeField(&storage::StoreOptions::tenant_arena_reserve_bytes)},
      {"storage.background_commit_checks", "--background-commit-checks",
       "check put bytes against their crc32c right after Commit (false: on first read)",
       StoreBoolField(&storage::StoreOptions::background_commit_checks)},
      {"storage.high_watermark", "--high-watermark", "evict above this fill fraction",
       StoreFraction(&storage::StoreOptions::high_watermark)},
      {"storage.low_watermark", "--low-watermark", "evict down to this fill fraction",
       StoreFraction(&storage::StoreOptions::low_watermark)},
      {"storage.reservation_ms", "--reservation-ms", "default reservation lifetime",
       StoreIntField(&storage::StoreOptions::default_reservation_ms, 1, 3'600'000)},
      {"storage.lease_ms", "--lease-ms", "default read lease lifetime",
       StoreIntField(&storage::StoreOptions::default_lease_ms, 1, 3'600'000)},
      {"storage.max_lease_ms", "--max-lease-ms", "longest lease a client may ask for",
       StoreIntField(&storage::StoreOptions::max_lease_ms, 1, 86'400'000)},
      {"storage.ssd_admission_hits", "--ssd-admission-hits",
       "write to SSD only after N reads (0: write through)",
       StoreIntField(&storage::StoreOptions::ssd_admission_hits, 0, 1'000'000)},
      {"storage.ssd_io_threads", "--ssd-io-threads", "parallel SSD writers/readers",
       StoreIntField(&storage::StoreOptions::ssd_io_threads, 1, 256)},
      {"storage.cpu_eviction_policy", "--cpu-eviction-policy", "CPU tier eviction policy",
       StoreStringField(&storage::StoreOptions::cpu_eviction_policy)},
      {"storage.ssd_eviction_policy", "--ssd-eviction-policy", "SSD tier eviction policy",
       StoreStringField(&storage::StoreOptions::ssd_eviction_policy)},
      {"storage.gpu_pool_capacity", "--gpu-pool-capacity",
       "GPU pool tier in CUDA device memory (e.g. 4GiB); 0: none; needs a CUDA driver",
       SizeField(&ServiceConfig::gpu_pool_bytes)},
      {"storage.gpu_device", "--gpu-device", "CUDA device ordinal of the GPU pool",
       IntField(&ServiceConfig::gpu_device, 0, 1023)},
      {"tiers.ssd.encoding", "--ssd-encoding",
       "SSD tier encoding: raw | cachegen | kvq (both lossy, decoded on promotion) | auto "
       "(chosen at start-up from the SSD read rate and the codecs' measured speeds and ratios)",
       SsdEncodingField()},
      {"tiers.ssd.level", "--ssd-encoding-level", "CacheGen or KVQ level 1..3 of the SSD tier",
       TierLevelField(&ServiceConfig::ssd_encoding)},
      {"tiers.ssd.read_mbps", "--ssd-read-mbps",
       "SSD read rate in Mbit/s for --ssd-encoding auto (0: measured at start-up)",
       IntField(&ServiceConfig::ssd_read_mbps, 0, 10'000'000)},
      {"tiers.transfer.encoding", "--transfer-encoding",
       "streaming Get encoding for clients that accept it: raw | cachegen | kvq (lossy)",
       TierEncodingField(&ServiceConfig::transfer_encoding)},
      {"tiers.transfer.level", "--transfer-encoding-level",
       "CacheGen or KVQ level 1..3 of encoded transfers when the client asks for none",
       TierLevelField(&ServiceConfig::transfer_encoding)},
      // --peer is repeatable and handled by ParseCommandLine; this key takes a list.
      {"peers.addresses", nullptr, "peers' gRPC HOST:PORT addresses", &SetPeerAddresses},
      {"cluster.etcd", "--etcd", "etcd endpoints URL[,URL] (a cluster through etcd membership)",
       &SetEtcdEndpoints},
      {"cluster.name", "--cluster-name", "cluster name (etcd prefix /kvstash/<name>/)",
       ClusterStringField(&ClusterConfig::name)},
      {"cluster.replicas", "--replicas", "owners per object (R)",
       ClusterIntField(&ClusterConfig::replicas, 1, 16)},
      {"cluster.zone", "--zone", "this node's zone (reads prefer owners in it)",
       ClusterStringField(&ClusterConfig::zone)},
      {"cluster.ttl_s", "--cluster-ttl-s", "membership lease TTL in seconds",
       ClusterIntField(&ClusterConfig::ttl_s, 1, 3600)},
      {"cluster.etcd_timeout_ms", "--etcd-timeout-ms",
       "deadline of one etcd call (0: min(2000, ttl_s * 1000 / 3))",
       ClusterIntField(&ClusterConfig::etcd_timeout_ms, 0, 60'000)},
      {"cluster.replication_queue", "--replication-queue",
       "objects waiting to be forwarded to other owners, at most",
       ClusterIntField(&ClusterConfig::replication_queue, 1, 10'000'000)},
      {"cluster.hot_replicas", "--hot-replicas",
       "owners of hot and pinned objects (0: as --replicas)",
       ClusterIntField(&ClusterConfig::hot_replicas, 0, 16)},
      {"cluster.hot_threshold", "--hot-threshold",
       "decayed reads that make an object hot (with --hot-replicas)",
       ClusterIntField(&ClusterConfig::hot_threshold, 1, 1'000'000'000)},
      {"cluster.hot_half_life_s", "--hot-half-life-s", "half-life of the read counts, seconds",
       ClusterIntField(&ClusterConfig::hot_half_life_s, 1, 86'400)},
      {"cluster.hot_scan_ms", "--hot-scan-ms", "how often hot objects are looked for, ms",
       ClusterIntField(&ClusterConfig::hot_scan_ms, 50, 3'600'000)},
      {"cluster.replication_mode", "--replication-mode",
       "async | sync (a client's commit returns once the object's R owners hold it)",
       &SetReplicationMode},
      {"cluster.sync_timeout_ms", "--sync-timeout-ms",
       "sync replication: how long a commit waits for the owners, ms",
       ClusterIntField(&ClusterConfig::sync_timeout_ms, 10, 600'000)},
      {"cluster.replicate_offers", "--replicate-offers",
       "sync replication: offer the owners leases on the written objects so they read them "
       "without calling back (false: owners Acquire and Release)",
       &SetReplicateOffers},
      {"peers.node_id", "--node-id", "this node's name for peers (default <hostname>/<listen>)",
       PeerStringField(&PeerConfig::node_id)},
      {"peers.secret_file", "--peer-secret-file",
       "file holding the cluster secret peers present to each other",
       PeerStringField(&PeerConfig::secret_file)},
      {"peers.timeout_ms", "--peer-timeout-ms", "deadline of one peer call, transfer included",
       PeerIntField(&PeerConfig::timeout_ms, 10, 600'000)},
      {"peers.retry_ms", "--peer-retry-ms", "a failed peer is left alone this long",
       PeerIntField(&PeerConfig::retry_ms, 0, 3'600'000)},
      {"peers.promote", "--remote-promote",
       "keep objects fetched from peers in the local CPU tier (false: serve once)",
       PeerBoolField(&PeerConfig::promote)},
      {"peers.lookup", "--remote-lookup", "Lookup asks peers about local misses",
       PeerBoolField(&PeerConfig::lookup)},
      {"peers.advertise", "--advertise",
       "this node's address in handoff descriptors (default: the bound address)",
       PeerStringField(&PeerConfig::advertise)},
      {"peers.handoff_ms", "--handoff-ms", "default lifetime of a handoff's pins",
       PeerIntField(&PeerConfig::handoff_ms, 100, 86'400'000)},
      {"peers.max_handoff_ms", "--max-handoff-ms", "longest handoff lifetime a caller may ask",
       PeerIntField(&PeerConfig::max_handoff_ms, 100, 86'400'000)},
      {"peers.data_plane", "--peer-data-plane",
       "how objects move between nodes: ucx (one-sided reads) | grpc (Get streams)",
       PeerStringField(&PeerConfig::data_plane)},
      {"peers.ucx_fetch", "--peer-ucx-fetch",
       "UCX data plane: true: peers send fetched objects (GPU-pool landings received in place); "
       "false: this node reads them with gets (a serving peer's UCX may abort when this node dies "
       "mid-get); auto: true on UCX >= 1.14 or with serving_first; inplace: every landing "
       "received in place",
       PeerStringField(&PeerConfig::ucx_fetch)},
      {"peers.ucx_connect", "--peer-ucx-connect",
       "UCX data plane: serving_first: a serving node connects to its reader's UCX worker before "
       "answering Hello (it must reach the readers' UCX addresses); reader_first: readers "
       "connect; auto: reader_first (on UCX < 1.14 either side's death mid-wire-up can abort "
       "the other: docs/deploy.md)",
       PeerStringField(&PeerConfig::ucx_connect)},
      {"peers.staging_mib", "--peer-staging-mib",
       "UCX data plane: MiB of registered host memory for the codec containers of encoded "
       "fetches peers pull over UCX (0: their encoded fetches use gRPC streams)",
       PeerIntField(&PeerConfig::staging_mib, 0, 65'536)},
      {"peers.transfer_encoding", "--peer-transfer-encoding",
       "what fetches from peers carry: raw | cachegen | kvq | auto (per link, the fastest of "
       "raw, CacheGen and KVQ by their measured speeds and ratios)",
       &SetPeerTransferEncoding},
      {"peers.link_mbps", "--peer-link-mbps",
       "rate of the links to peers in Mbit/s for --peer-transfer-encoding auto (0: measured)",
       PeerIntField(&PeerConfig::link_mbps, 0, 10'000'000)},
      {"tls.cert", "--tls-cert", "PEM certificate of this node (mutual TLS on TCP and to peers)",
       TlsStringField(&TlsConfig::cert_file)},
      {"tls.key", "--tls-key", "PEM private key of --tls-cert",
       TlsStringField(&TlsConfig::key_file)},
      {"tls.ca", "--tls-ca", "PEM CA bundle that client and peer certificates must chain to",
       TlsStringField(&TlsConfig::ca_file)},
      {"tls.server_name", "--tls-server-name",
       "name peers' certificates must carry (default: the host of each --peer)",
       TlsStringField(&TlsConfig::server_name)},
      // --insecure-tcp is a flag without a value, handled by ParseCommandLine.
      {"tls.insecure_tcp", nullptr, "allow a non-loopback TCP listener without TLS",
       &SetInsecureTcp},
      {"auth.tokens_file", "--tokens-file",
       "tenants: tokens, certificate identities, roles and quotas (empty: single tenant)",
       StringField(&ServiceConfig::tokens_file)},
  };
  return fields;
}

const Field* FindField(const std::string& yaml_path) {
  for (const Field& f : Fields()) {
    if (yaml_path == f.yaml_path) return &f;
  }
  return nullptr;
}

Status ApplyNode(const YAML::Node& node, const std::string& prefix, ServiceConfig& config) {
  if (!node.IsMap()) {
    return Bad(prefix.empty() ? "config" : prefix, "expected a mapping of keys");
  }
  for (const auto& item : node) {
    std::string key = item.first.as<std::string>();
    std::string path = prefix.empty() ? key : absl::StrCat(prefix, ".", key);
    if (item.second.IsSequence() && IsListKey(path)) {
      const Field* field = FindField(path);
      std::string joined;
      for (const auto& element : item.second) {
        KVSTASH_ASSIGN_OR_RETURN(std::string text, ReadString(element, path));
        if (text.find(',') != std::string::npos) return Bad(path, "an item contains a comma");
        joined += (joined.empty() ? "" : ",") + text;
      }
      KVSTASH_RETURN_IF_ERROR(field->set(joined, path, config));
      continue;
    }
    if (item.second.IsMap()) {
      KVSTASH_RETURN_IF_ERROR(ApplyNode(item.second, path, config));
      continue;
    }
    const Field* field = FindField(path);
    if (field == nullptr) return Bad(path, "unknown configuration key");
    if (item.second.IsNull()) continue;  // "key:" with no value keeps the current setting
    KVSTASH_ASSIGN_OR_RETURN(std::string text, ReadString(item.second, path));
    KVSTASH_RETURN_IF_ERROR(field->set(text, path, config));
  }
  return OkStatus();
}

bool IsUnixTarget(const std::string& listen) { return listen.rfind("unix:", 0) == 0; }

// Whether a TCP listen address only accepts connections from this host.
bool IsLoopbackListen(const std::string& listen) {
  std::string host = listen.substr(0, listen.rfind(':'));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

std::string UnixPath(const std::string& listen) {
  std::string rest = listen.substr(5);
  if (rest.rfind("//", 0) == 0) rest = rest.substr(2);
  return rest;
}

}  // namespace

std::string_view EmbeddedDefaultConfigYaml() { return kEmbeddedDefault; }

std::string_view PeerTransferEncodingName(PeerTransferEncoding encoding) {
  switch (encoding) {
    case PeerTransferEncoding::kRaw:
      return "raw";
    case PeerTransferEncoding::kCacheGen:
      return "cachegen";
    case PeerTransferEncoding::kAuto:
      return "auto";
    case PeerTransferEncoding::kKvq:
      return "kvq";
  }
  return "invalid";
}

Result<PeerTransferEncoding> ParsePeerTransferEncoding(std::string_view text) {
  for (PeerTransferEncoding e : {PeerTransferEncoding::kRaw, PeerTransferEncoding::kCacheGen,
                                 PeerTransferEncoding::kAuto, PeerTransferEncoding::kKvq}) {
    if (text == PeerTransferEncodingName(e)) return e;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown transfer encoding '", std::string(text),
                                                 "' (raw, cachegen, kvq or auto)"));
}

std::string_view ReplicationModeName(ReplicationMode mode) {
  switch (mode) {
    case ReplicationMode::kAsync:
      return "async";
    case ReplicationMode::kSync:
      return "sync";
  }
  return "invalid";
}

Result<ReplicationMode> ParseReplicationMode(std::string_view text) {
  for (ReplicationMode m : {ReplicationMode::kAsync, ReplicationMode::kSync}) {
    if (text == ReplicationModeName(m)) return m;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown replication mode '", std::string(text), "' (async or sync)"));
}

Result<ServiceConfig> ApplyYaml(std::string_view yaml_text, ServiceConfig base) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml_text));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config is not valid YAML: ", e.what()));
  }
  if (root.IsNull()) return base;  // an empty file changes nothing
  try {
    KVSTASH_RETURN_IF_ERROR(ApplyNode(root, "", base));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config: ", e.what()));
  }
  return base;
}

Status ValidateConfig(const ServiceConfig& c) {
  if (c.listen.empty()) return Bad("listen", "must not be empty");
  if (IsUnixTarget(c.listen)) {
    std::string path = UnixPath(c.listen);
    if (path.empty()) return Bad("listen", "unix socket path is empty");
    if (path.size() > 107) return Bad("listen", "unix socket path is longer than 107 bytes");
  } else if (c.listen.find(':') == std::string::npos) {
    return Bad("listen", absl::StrCat("'", c.listen, "' is neither unix:PATH nor HOST:PORT"));
  }
  const bool tls_any =
      !c.tls.cert_file.empty() || !c.tls.key_file.empty() || !c.tls.ca_file.empty();
  if (tls_any && (c.tls.cert_file.empty() || c.tls.key_file.empty() || c.tls.ca_file.empty())) {
    return Bad("tls", "tls.cert, tls.key and tls.ca go together (mutual TLS needs all three)");
  }
  if (!IsUnixTarget(c.listen) && !c.tls.enabled() && !c.insecure_tcp &&
      !IsLoopbackListen(c.listen)) {
    return Bad("listen", absl::StrCat("'", c.listen,
                                      "' is not a loopback address: serve it with mutual TLS "
                                      "(--tls-cert, --tls-key, --tls-ca), or pass --insecure-tcp "
                                      "to accept plain TCP"));
  }
  if (!c.local_listen.empty()) {
    if (!IsUnixTarget(c.local_listen)) {
      return Bad("local_listen",
                 absl::StrCat("'", c.local_listen,
                              "' is not a unix socket (unix:///path): the second listener serves "
                              "same-node engines; TCP goes in listen"));
    }
    const std::string path = UnixPath(c.local_listen);
    if (path.empty()) return Bad("local_listen", "unix socket path is empty");
    if (path.size() > 107) return Bad("local_listen", "unix socket path is longer than 107 bytes");
    if (IsUnixTarget(c.listen)) {
      return Bad("local_listen",
                 absl::StrCat("listen is already a unix socket (", c.listen,
                              "); two unix listeners are not supported: set listen to the TCP "
                              "HOST:PORT peers and remote clients dial"));
    }
  }
  if (c.arena_socket.size() > 107) {
    return Bad("arena_socket", "unix socket path is longer than 107 bytes");
  }
  static const char* kLevels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
  if (std::find(std::begin(kLevels), std::end(kLevels), c.log_level) == std::end(kLevels)) {
    return Bad("log_level", absl::StrCat("unknown level '", c.log_level, "'"));
  }
  if (c.store.data_dir.empty()) return Bad("storage.data_dir", "must not be empty");
  if (c.store.cpu_capacity_bytes < (1ull << 20)) {
    return Bad("storage.cpu_capacity", "must be at least 1MiB");
  }
  if (c.store.tenant_arena_reserve_bytes > (1ull << 46)) {
    return Bad("storage.tenant_arena_reserve", "must be at most 64TiB (it is address space)");
  }
  if ((c.ssd_encoding.encoding != Encoding::kRaw || c.ssd_encoding.choose) &&
      c.store.ssd_capacity_bytes == 0) {
    return Bad("tiers.ssd.encoding",
               "is set but the SSD tier is disabled (storage.ssd_capacity 0)");
  }
  if (c.ssd_read_mbps != 0 && !c.ssd_encoding.choose) {
    return Bad("tiers.ssd.read_mbps", "is used only with tiers.ssd.encoding auto");
  }
  if (c.transfer_encoding.choose) {
    return Bad("tiers.transfer.encoding", "auto is an SSD tier encoding only");
  }
  if (c.store.low_watermark >= c.store.high_watermark) {
    return Bad("storage.low_watermark", "must be below storage.high_watermark");
  }
  if (c.store.default_lease_ms > c.store.max_lease_ms) {
    return Bad("storage.lease_ms", "must not exceed storage.max_lease_ms");
  }
  if (c.max_message_bytes < (64u << 10) || c.max_message_bytes > (1ull << 30)) {
    return Bad("limits.max_message_bytes", "must be within [64KiB, 1GiB]");
  }
  if (c.max_chunk_bytes == 0 || c.max_chunk_bytes + 4096 > c.max_message_bytes) {
    return Bad("limits.max_chunk_bytes", "must be positive and leave 4KiB of max_message_bytes");
  }
  if (c.stream_chunk_bytes < 4096 || c.stream_chunk_bytes + 4096 > c.max_message_bytes) {
    return Bad("limits.stream_chunk_bytes", "must be >= 4KiB and leave 4KiB of max_message_bytes");
  }
  if (c.stream_timeout_ms > c.store.max_lease_ms) {
    return Bad("limits.stream_timeout_ms", "must not exceed storage.max_lease_ms");
  }
  if (c.peers.data_plane != "ucx" && c.peers.data_plane != "grpc") {
    return Bad("peers.data_plane",
               absl::StrCat("unknown data plane '", c.peers.data_plane, "' (ucx or grpc)"));
  }
  if (c.peers.ucx_fetch != "auto" && c.peers.ucx_fetch != "true" && c.peers.ucx_fetch != "false" &&
      c.peers.ucx_fetch != "inplace") {
    return Bad("peers.ucx_fetch",
               absl::StrCat("'", c.peers.ucx_fetch, "' is not auto, true, false or inplace"));
  }
  if (c.peers.ucx_connect != "auto" && c.peers.ucx_connect != "serving_first" &&
      c.peers.ucx_connect != "reader_first") {
    return Bad("peers.ucx_connect", absl::StrCat("'", c.peers.ucx_connect,
                                                 "' is not auto, serving_first or reader_first"));
  }
  if (PeerTransferEncodingName(c.peers.transfer_encoding) == "invalid") {
    return Bad("peers.transfer_encoding",
               absl::StrCat("value ", static_cast<int>(c.peers.transfer_encoding),
                            " is not a transfer encoding (raw, cachegen, kvq or auto)"));
  }
#ifndef KVSTASH_HAVE_UCX
  if (c.peers.data_plane == "ucx" && !c.peers.addresses.empty()) {
    return Bad("peers.data_plane",
               "ucx, but this cachesvc was built without UCX (KVSTASH_UCX=OFF)");
  }
#endif
  if (c.peers.handoff_ms > c.peers.max_handoff_ms) {
    return Bad("peers.handoff_ms", "must not exceed peers.max_handoff_ms");
  }
  if (!c.peers.addresses.empty() && c.peers.secret_file.empty()) {
    return Bad("peers.secret_file", "is required when peers are configured (--peer-secret-file)");
  }
  if (ReplicationModeName(c.cluster.replication_mode) == "invalid") {
    return Bad("cluster.replication_mode",
               absl::StrCat("value ", static_cast<int>(c.cluster.replication_mode),
                            " is not a replication mode (async or sync)"));
  }
  if (!c.cluster.etcd.empty()) {
    if (c.peers.secret_file.empty()) {
      return Bad("peers.secret_file",
                 "is required in a cluster (--etcd): members read each "
                 "other's arenas (--peer-secret-file)");
    }
    if (IsUnixTarget(c.listen) && c.peers.advertise.empty()) {
      return Bad("listen",
                 "a cluster member needs a TCP listener (or --advertise HOST:PORT); same-node "
                 "engines connect to --local-listen unix:///path beside it");
    }
  }
  return OkStatus();
}

ParsedCommandLine ParseCommandLine(int argc, const char* const* argv) {
  ParsedCommandLine out;
  CLI::App app{
      "cachesvc: the KVStash cache service (gRPC API, shared-memory arena, SSD tier).\n"
      "Settings come from the embedded default, then --config FILE, then flags."};
  app.set_version_flag("--version", "cachesvc 0.1.0");
  std::string config_path;
  bool print_config = false;
  app.add_option("-c,--config", config_path, "YAML configuration file")->check(CLI::ExistingFile);
  app.add_flag("--print-default-config", print_config,
               "print the embedded default configuration and exit");
  bool check_config = false;
  app.add_flag("--check-config", check_config,
               "read and check the configuration (file and flags), print the verdict and exit: "
               "0 valid, 1 invalid");
  std::vector<std::pair<const Field*, std::optional<std::string>>> values;
  values.reserve(Fields().size());
  for (const Field& f : Fields()) values.emplace_back(&f, std::nullopt);
  for (auto& [field, value] : values) {
    if (field->flag != nullptr) app.add_option(field->flag, value, field->help);
  }
  bool insecure_tcp = false;
  app.add_flag("--insecure-tcp", insecure_tcp,
               "allow a non-loopback TCP listener without TLS (tls.insecure_tcp)");
  std::vector<std::string> peer_flags;
  app.add_option("--peer", peer_flags,
                 "a peer's gRPC HOST:PORT (repeatable; replaces peers.addresses of the file)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::ostringstream sout, serr;
    out.exit_code = app.exit(e, sout, serr);
    out.output = sout.str() + serr.str();
    return out;
  }
  if (print_config) {
    out.output = std::string(kEmbeddedDefault);
    return out;
  }
  auto fail = [&](const Status& s) {
    out.exit_code = check_config ? 1 : 2;
    out.output = absl::StrCat("cachesvc: ", std::string(s.message()), "\n");
    return out;
  };
  auto config = ApplyYaml(kEmbeddedDefault, ServiceConfig{});
  if (!config.ok()) return fail(config.status());  // a bug in the embedded text
  if (!config_path.empty()) {
    std::ifstream in(config_path);
    std::stringstream text;
    text << in.rdbuf();
    if (!in.good() && !in.eof()) {
      return fail(absl::InvalidArgumentError(absl::StrCat("cannot read ", config_path)));
    }
    auto from_file = ApplyYaml(text.str(), *config);
    if (!from_file.ok()) {
      return fail(absl::InvalidArgumentError(
          absl::StrCat(config_path, ": ", std::string(from_file.status().message()))));
    }
    config = std::move(from_file);
  }
  for (auto& [field, value] : values) {
    if (!value) continue;
    Status s = field->set(*value, field->flag, *config);
    if (!s.ok()) return fail(s);
  }
  if (insecure_tcp) config->insecure_tcp = true;
  if (!peer_flags.empty()) {
    std::string joined;
    for (const std::string& p : peer_flags) joined += (joined.empty() ? "" : ",") + p;
    Status s = SetPeerAddresses(joined, "--peer", *config);
    if (!s.ok()) return fail(s);
  }
  Status valid = ValidateConfig(*config);
  if (!valid.ok()) return fail(valid);
  if (check_config) {
    out.output = "cachesvc: configuration OK\n";
    return out;
  }
  out.config = std::move(*config);
  return out;
}

}  // namespace kvstash::cachesvc
