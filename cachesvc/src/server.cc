#include "kvstash/cachesvc/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "arena_socket.h"
#include "async_streams.h"
#include "attach_tickets.h"
#include "authz.h"
#include "cachegen_tier_codec.h"
#include "cluster_node.h"
#include "kv_service.h"
#include "kvstash/common/mutex.h"
#include "kvstash/storage/gpu_pool.h"
#include "kvstash/storage/object_store.h"
#include "local_control_session.h"
#include "metrics_http.h"
#include "remote_tier.h"
#include "rpc_metrics.h"
#include "ssd_encoding_choice.h"
#include "tls.h"

namespace kvstash::cachesvc {
namespace {

constexpr char kServiceName[] = "kvstash.v1.KvStash";

bool IsUnix(const std::string& listen) { return listen.rfind("unix:", 0) == 0; }

std::string UnixPath(const std::string& listen) {
  std::string rest = listen.substr(5);
  if (rest.rfind("//", 0) == 0) rest = rest.substr(2);
  return rest;
}

std::string DefaultArenaSocket(const ServiceConfig& config) {
  if (!config.local_listen.empty()) return UnixPath(config.local_listen) + ".arena";
  if (IsUnix(config.listen)) return UnixPath(config.listen) + ".arena";
  return (std::filesystem::path(config.store.data_dir) / "arena.sock").string();
}

// "host:0" becomes "host:<bound port>"; a wildcard host becomes loopback for local dialers.
std::string ResolvedTcpTarget(const std::string& listen, int port) {
  std::string host = listen.substr(0, listen.rfind(':'));
  if (host == "0.0.0.0" || host.empty()) host = "127.0.0.1";
  if (host == "[::]") host = "[::1]";
  return absl::StrCat(host, ":", port);
}

Status WriteReadyFile(const std::string& path, const nlohmann::json& content) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << content.dump() << "\n";
    if (!out.good()) {
      return absl::InvalidArgumentError(absl::StrCat("cannot write ready file ", tmp));
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot rename ready file to ", path));
  }
  return OkStatus();
}

}  // namespace

struct CacheService::Impl {
  ServiceConfig config;
  MetricsRegistry registry;
  std::unique_ptr<RpcMetrics> rpc_metrics;
  std::unique_ptr<TlsMaterial> tls;  // when tls.enabled(); outlives the server and the peers
  std::unique_ptr<storage::TierCodec> ssd_codec;  // outlives the store (declared before it)
  std::unique_ptr<storage::ObjectStore> store;
  std::unique_ptr<RemoteTier> remote;              // peers; after the store, before the service
  std::unique_ptr<ClusterNode> cluster;            // etcd membership and replication (--etcd)
  std::atomic<ClusterNode*> commit_hook{nullptr};  // the store's commit observer forwards here
  std::unique_ptr<HandoffRegistry> handoffs;
  std::unique_ptr<Authorizer> auth;        // tenants (authz.h); before the service
  std::unique_ptr<AttachTickets> tickets;  // multi-tenant nodes only; before the service
  std::unique_ptr<KvStashService> service;
  // Declared before the server: its completion queues must outlive it.
  std::unique_ptr<AsyncStreamServer> async_streams;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<ArenaSocketServer> arena_socket;
  std::unique_ptr<MetricsHttpServer> http;
  std::string target;
  std::string local_target;  // config.local_listen, once bound
  std::string arena_socket_path;
  std::atomic<bool> serving{false};
  std::mutex shutdown_mu;
  bool shut_down = false;
  Status close_status;
  // One SyncTenantArenas at a time (reloads come from the SIGHUP thread, but Reload is public).
  Mutex arenas_mu;
  // Tenants that have an arena of their own (from start-up or a reload).
  std::set<std::string> arena_tenants ABSL_GUARDED_BY(arenas_mu);

  // A reloaded tokens file's tenants, before calls are authenticated against it: a tenant newly
  // given a cpu quota gets its arena now (docs/deploy.md "Shared memory"); a changed or removed
  // quota of a tenant that has one applies at the next restart. Each outcome is logged and
  // counted in kvstash_tenant_arena_reloads_total{outcome}.
  void SyncTenantArenas(const TenantTable& table) {
    auto count = [this](const char* outcome) {
      registry
          .GetCounter("kvstash_tenant_arena_reloads_total",
                      "tenants' arenas at tokens reloads: added, resize_deferred, kept "
                      "(quota removed), reserve_exhausted, failed",
                      {{"outcome", outcome}})
          ->Increment();
    };
    MutexLock lock(&arenas_mu);
    std::set<std::string> with_quota;
    for (const auto& [tenant, quota] : table.quotas()) {
      if (quota.cpu_bytes == 0) continue;
      with_quota.insert(tenant);
      const storage::ArenaSegment seg = store->arena_segment(tenant);
      if (seg.index != 0) {
        const uint64_t wanted = quota.cpu_bytes - quota.cpu_bytes % 4096;
        if (wanted != seg.bytes) {
          spdlog::warn(
              "event=tenant_arena_resize_deferred tenant={} arena_bytes={} quota_bytes={}: the "
              "arena keeps its size until cachesvc restarts",
              tenant, seg.bytes, quota.cpu_bytes);
          count("resize_deferred");
        }
        continue;
      }
      Result<storage::ArenaSegment> added = store->AddTenantArena({tenant, quota.cpu_bytes});
      if (added.ok()) {
        arena_tenants.insert(tenant);
        spdlog::info("event=tenant_arena_added tenant={} bytes={} offset={} spare_bytes={}", tenant,
                     added->bytes, added->offset,
                     store->arena_reserved_bytes() - store->arena_bytes());
        count("added");
        continue;
      }
      const bool exhausted = added.status().code() == absl::StatusCode::kResourceExhausted;
      spdlog::error(
          "event=tenant_arena_refused tenant={} bytes={} reason={} error=\"{}\": the tenant's "
          "objects go to the shared arena (no shared memory for its clients) until a reload with "
          "room or a restart",
          tenant, quota.cpu_bytes, exhausted ? "reserve_exhausted" : "failed",
          std::string(added.status().message()));
      count(exhausted ? "reserve_exhausted" : "failed");
    }
    for (const std::string& tenant : arena_tenants) {
      if (with_quota.count(tenant) > 0) continue;
      spdlog::warn(
          "event=tenant_arena_kept tenant={}: no cpu quota in the reloaded file; its arena stays "
          "until cachesvc restarts",
          tenant);
      count("kept");
    }
  }
};

CacheService::CacheService(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CacheService::~CacheService() {
  if (impl_ != nullptr) (void)Shutdown();
}

Result<std::unique_ptr<CacheService>> CacheService::Start(const ServiceConfig& config) {
  KVSTASH_RETURN_IF_ERROR(ValidateConfig(config));
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->config.store.metrics = &impl->registry;
  impl->rpc_metrics = std::make_unique<RpcMetrics>(&impl->registry);
  impl->arena_socket_path =
      config.arena_socket.empty() ? DefaultArenaSocket(config) : config.arena_socket;
  if (impl->arena_socket_path.size() > kMaxUnixSocketPathBytes) {
    return absl::InvalidArgumentError(absl::StrCat("arena socket path ", impl->arena_socket_path,
                                                   " is longer than ", kMaxUnixSocketPathBytes,
                                                   " bytes; set --arena-socket"));
  }
  // gRPC silently replaces an existing unix socket file; refuse to steal a live one.
  if (IsUnix(config.listen)) KVSTASH_RETURN_IF_ERROR(ClaimUnixSocketPath(UnixPath(config.listen)));
  if (!config.local_listen.empty()) {
    KVSTASH_RETURN_IF_ERROR(ClaimUnixSocketPath(UnixPath(config.local_listen)));
  }

  if (config.tls.enabled()) {
    KVSTASH_ASSIGN_OR_RETURN(impl->tls, TlsMaterial::Create(config.tls));
  }
  // --ssd-encoding auto measures here, before the store opens its SSD tier; the calibration
  // decodes on as many threads as the tier codec's pool.
  const size_t ssd_decode_threads = std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 8);
  KVSTASH_ASSIGN_OR_RETURN(impl->config.ssd_encoding,
                           ResolveSsdEncoding(config, ssd_decode_threads, &impl->registry));
  impl->ssd_codec =
      std::make_unique<CacheGenTierCodec>(impl->config.ssd_encoding, ssd_decode_threads);
  impl->config.store.ssd_codec = impl->ssd_codec.get();
  if (!config.cluster.etcd.empty()) {
    Impl* hook_owner = impl.get();
    impl->config.store.on_commit = [hook_owner](const storage::StoredName& name) -> Status {
      if (ClusterNode* c = hook_owner->commit_hook.load()) return c->OnCommit(name);
      return OkStatus();
    };
  }
  // Multi-tenant: every tenant with a cpu quota gets an arena of its own of that size
  // (docs/deploy.md "Shared memory"); the others' objects live in the shared arena, which no
  // client maps. A reload adds arenas for tenants it gives a cpu quota, in the address space
  // reserved after these (storage.tenant_arena_reserve); a resize waits for a restart.
  if (config.tokens_file.empty()) impl->config.store.tenant_arena_reserve_bytes = 0;
  if (!config.tokens_file.empty() && impl->config.store.tenant_arenas.empty()) {
    auto table = TenantTable::Load(config.tokens_file);
    if (!table.ok()) return table.status();
    for (const auto& [tenant, quota] : table->quotas()) {
      if (quota.cpu_bytes > 0)
        impl->config.store.tenant_arenas.push_back({tenant, quota.cpu_bytes});
    }
  }
  storage::GpuPoolRegion gpu_pool;  // --gpu-pool-capacity: the store's GPU pool tier
  auto store = config.gpu_pool_bytes > 0
                   ? storage::OpenStoreWithGpuPool(
                         impl->config.store, {config.gpu_device, config.gpu_pool_bytes}, &gpu_pool)
                   : storage::ObjectStore::Open(impl->config.store);
  if (!store.ok()) {
    if (config.gpu_pool_bytes > 0 &&
        store.status().code() == absl::StatusCode::kFailedPrecondition) {
      return Status(store.status().code(),
                    absl::StrCat("storage.gpu_pool_capacity (--gpu-pool-capacity) is set but no "
                                 "GPU pool can be made here: ",
                                 std::string(store.status().message())));
    }
    return Status(store.status().code(),
                  absl::StrCat("cannot open the store in ", config.store.data_dir, ": ",
                               std::string(store.status().message())));
  }
  impl->store = std::move(*store);
  {
    MutexLock lock(&impl->arenas_mu);
    for (const storage::TenantArenaOptions& t : impl->config.store.tenant_arenas) {
      impl->arena_tenants.insert(t.name_space);
    }
  }
  if (!config.peers.addresses.empty() || !config.peers.secret_file.empty()) {
    auto remote = RemoteTier::Create(impl->config, impl->store.get(), &impl->registry,
                                     config.listen, impl->tls.get());
    if (!remote.ok()) {
      (void)impl->store->Close();
      return remote.status();
    }
    impl->remote = std::move(*remote);
  }
  if (config.gpu_pool_bytes > 0) {
    bool registered = false;
    if (impl->remote != nullptr) {
      auto r = impl->remote->RegisterGpuPool(gpu_pool);
      if (!r.ok()) {
        (void)impl->store->Close();
        return r.status();
      }
      registered = *r;
    }
    spdlog::info("event=gpu_pool device={} bytes={} ucx_registered={}", gpu_pool.device,
                 gpu_pool.bytes, registered);
  }
  if (!config.cluster.etcd.empty()) {
    auto node =
        ClusterNode::Create(impl->config, impl->store.get(), impl->remote.get(), &impl->registry);
    if (!node.ok()) {
      (void)impl->store->Close();
      return node.status();
    }
    impl->cluster = std::move(*node);
  }
  impl->handoffs = std::make_unique<HandoffRegistry>(
      impl->store.get(), &impl->registry, config.peers.handoff_ms, config.peers.max_handoff_ms);
  auto auth = Authorizer::Create(impl->config, &impl->registry);
  if (!auth.ok()) {
    (void)impl->store->Close();
    return auth.status();
  }
  impl->auth = std::move(*auth);
  if (impl->auth->multi_tenant()) {
    impl->tickets =
        std::make_unique<AttachTickets>(std::chrono::milliseconds{config.attach_ticket_ttl_ms},
                                        config.attach_tickets, &impl->registry);
  }
  impl->service = std::make_unique<KvStashService>(
      impl->store.get(), impl->config, impl->arena_socket_path, impl->rpc_metrics.get(),
      impl->remote.get(), impl->handoffs.get(), impl->auth.get(), impl->tickets.get());
  if (impl->remote != nullptr) {
    // Peers' encoded fetches over UCX are encoded as this node's Gets are.
    KvStashService* service = impl->service.get();
    impl->remote->SetTransferEncoder([service](const grpc::ServerContext* ctx,
                                               const v1::GetRequest& req, const ObjectInfo& info,
                                               std::span<const uint8_t> payload) {
      return service->EncodeForTransfer(ctx, req, info, payload);
    });
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int bound_port = 0;
  // A unix socket is guarded by its file permissions; TCP by mutual TLS when configured (plain
  // TCP beyond loopback only with insecure_tcp, ValidateConfig).
  const bool listen_tls = impl->tls != nullptr && !IsUnix(config.listen);
  builder.AddListeningPort(
      config.listen,
      listen_tls ? impl->tls->ServerCredentials() : grpc::InsecureServerCredentials(), &bound_port);
  // The same-node listener beside a TCP one (ValidateConfig: a unix socket, and `listen` is TCP):
  // the same services and authorization, no TLS; the arena socket sits next to it.
  int local_bound = 0;
  if (!config.local_listen.empty()) {
    builder.AddListeningPort(config.local_listen, grpc::InsecureServerCredentials(), &local_bound);
  }
  builder.RegisterService(impl->service.get());
  if (impl->remote != nullptr && impl->remote->peer_service() != nullptr) {
    builder.RegisterService(impl->remote->peer_service());
  }
  if (impl->cluster != nullptr) builder.RegisterService(impl->cluster->service());
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(config.max_message_bytes));
  grpc::ResourceQuota quota("cachesvc");
  quota.SetMaxThreads(config.rpc_threads);
  builder.SetResourceQuota(quota);
  // Detect peers that vanished without closing the connection (a killed VM, a cut cable).
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30'000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10'000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5'000);
  // A streaming Put's commit under synchronous replication holds its stream thread until the
  // owners confirmed, and they call back into this server: its connections must not depend on
  // that thread (AsyncStreamServer, `listening`).
  impl->async_streams = std::make_unique<AsyncStreamServer>(
      impl->service.get(), impl->rpc_metrics.get(), &builder, config.stream_threads,
      std::chrono::microseconds{config.stream_poll_us},
      /*listening=*/config.cluster.etcd.empty() ||
          config.cluster.replication_mode != ReplicationMode::kSync);
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr || bound_port == 0 ||
      (!config.local_listen.empty() && local_bound == 0)) {
    if (impl->server != nullptr) impl->server->Shutdown();
    impl->async_streams->Stop();
    (void)impl->store->Close();
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", config.listen,
        config.local_listen.empty() ? "" : absl::StrCat(" and ", config.local_listen)));
  }
  impl->local_target = config.local_listen;
  impl->async_streams->Start();
  impl->target =
      IsUnix(config.listen) ? config.listen : ResolvedTcpTarget(config.listen, bound_port);
  impl->service->SetAdvertisedAddress(config.peers.advertise.empty() ? impl->target
                                                                     : config.peers.advertise);
  if (auto* health = impl->server->GetHealthCheckService(); health != nullptr) {
    health->SetServingStatus(true);
    health->SetServingStatus(kServiceName, true);
  }

  ArenaHandshake hello;
  hello.arena_bytes = impl->store->arena_bytes();
  hello.arena_generation = impl->store->arena_generation();
  hello.alignment = kArenaAlignment;
  auto fail = [&](const Status& s) {
    impl->server->Shutdown();
    impl->server->Wait();
    impl->async_streams->Stop();
    (void)impl->store->Close();
    return s;
  };
  // The default socket of a TCP listener lives in data_dir, which nothing has created yet when
  // the SSD tier is off.
  std::error_code mkdir_error;
  const std::filesystem::path socket_dir =
      std::filesystem::path(impl->arena_socket_path).parent_path();
  if (!socket_dir.empty()) std::filesystem::create_directories(socket_dir, mkdir_error);
  if (mkdir_error) {
    return fail(absl::FailedPreconditionError(absl::StrCat(
        "cannot create ", socket_dir.string(), " for the arena socket: ", mkdir_error.message())));
  }
  // Multi-tenant: the socket hands a client only its own tenant's arena, after checking its
  // bearer token or attach ticket, and keeps the connection as a local control channel bound to
  // that tenant (every call runs as the credential's caller). docs/deploy.md "Shared memory".
  if (impl->auth->multi_tenant()) {
    Authorizer* auth = impl->auth.get();
    AttachTickets* tickets = impl->tickets.get();
    storage::ObjectStore* store = impl->store.get();
    TenantLocalFactory sessions;
    if (config.local_control_connections > 0) {
      sessions = TenantLocalSessions(impl->service.get(), store, auth, &impl->registry);
    }
    ArenaAttacher attach = [auth, tickets, store,
                            sessions](const ArenaAttachRequest& req) -> Result<ArenaGrant> {
      Caller caller;
      Credential credential;
      uint64_t generation = 0;
      if (req.ticket.has_value()) {
        // Consumed here, whatever follows. Its caller was authenticated when it was issued;
        // after a reload since, its certificate is checked against the table in force.
        KVSTASH_ASSIGN_OR_RETURN(TicketGrant granted, tickets->Redeem(*req.ticket));
        caller = std::move(granted.caller);
        credential = std::move(granted.credential);
        generation = auth->generation();
        if (generation != granted.generation) {
          Result<Caller> now = auth->Reauthenticate(credential);
          if (!now.ok()) return now.status();
          if (!now->restricted || now->identity.tenant != caller.identity.tenant) {
            return absl::UnauthenticatedError(
                "the attach ticket's certificate names another tenant since it was issued");
          }
          caller = *now;  // a changed role or access takes effect now
        }
      } else {
        generation = auth->generation();  // before the token is checked
        KVSTASH_ASSIGN_OR_RETURN(caller, auth->AuthenticateToken(req.token));
        credential.token = req.token;
      }
      const char* what = req.ticket.has_value() ? "attach ticket" : "token";
      if (caller.identity.role == Role::kPeer) {
        return absl::PermissionDeniedError("peers do not map arenas");
      }
      if (req.writable && caller.identity.read_only) {
        return absl::PermissionDeniedError(absl::StrCat(
            "the ", what, " of tenant ", caller.identity.tenant,
            " is read-only: no writable mapping (attach read-only, ClientOptions::read_only)"));
      }
      const storage::ArenaSegment seg = store->arena_segment(caller.identity.tenant);
      if (seg.index == 0) {
        return absl::FailedPreconditionError(absl::StrCat(
            "tenant ", caller.identity.tenant,
            " has no arena of its own on this node (no cpu quota when cachesvc started); use "
            "the gRPC byte streams"));
      }
      ArenaGrant grant;
      grant.hello.version = kArenaHandshakeVersion2;
      grant.hello.arena_bytes = seg.bytes;
      grant.hello.arena_generation = store->arena_generation();
      grant.hello.alignment = kArenaAlignment;
      grant.hello.arena_offset = seg.offset;
      grant.hello.features = kArenaFeatureReadOnlyFd;
      grant.fds.push_back(seg.read_only_fd);
      if (req.writable) {
        grant.hello.features |= kArenaFeatureWritableFd;
        grant.fds.push_back(seg.fd);
      }
      if (sessions != nullptr) grant.session = sessions(caller, std::move(credential), generation);
      return grant;
    };
    auto arena = ArenaSocketServer::StartAuthenticated(
        impl->arena_socket_path, attach, &impl->registry, config.local_control_connections,
        std::chrono::microseconds{config.local_control_poll_us});
    if (!arena.ok()) return fail(arena.status());
    impl->arena_socket = std::move(*arena);
  } else {
    auto arena = ArenaSocketServer::Start(
        impl->arena_socket_path, impl->store->arena_fd(), hello, &impl->registry,
        ServiceLocalSessions(impl->service.get(), impl->store.get(), &impl->registry),
        config.local_control_connections, std::chrono::microseconds{config.local_control_poll_us});
    if (!arena.ok()) return fail(arena.status());
    impl->arena_socket = std::move(*arena);
  }

  if (impl->cluster != nullptr) {
    Status joined =
        impl->cluster->Join(config.peers.advertise.empty() ? impl->target : config.peers.advertise);
    if (!joined.ok()) {
      impl->arena_socket->Stop();
      return fail(joined);
    }
    impl->commit_hook = impl->cluster.get();
  }
  Impl* raw = impl.get();
  if (config.metrics_port != 0) {
    auto http = MetricsHttpServer::Start(config.metrics_address, config.metrics_port,
                                         &impl->registry, [raw] { return raw->serving.load(); });
    if (!http.ok()) {
      if (impl->arena_socket) impl->arena_socket->Stop();
      return fail(http.status());
    }
    impl->http = std::move(*http);
  }
  impl->serving = true;
  spdlog::info(
      "event=serving tls={} tenants={} target={} local_target={} arena_socket={} arena_bytes={} "
      "generation={} metrics_port={} "
      "data_dir={} cpu_capacity={} ssd_capacity={} ssd_encoding={}",
      listen_tls ? "mutual" : "off", impl->auth->multi_tenant() ? "multi" : "single", impl->target,
      impl->local_target.empty() ? "none" : impl->local_target, impl->arena_socket_path,
      hello.arena_bytes, hello.arena_generation, impl->http ? impl->http->port() : 0,
      config.store.data_dir, config.store.cpu_capacity_bytes, config.store.ssd_capacity_bytes,
      impl->ssd_codec->name());
  if (!config.ready_file.empty()) {
    nlohmann::json ready = {{"target", impl->target},
                            {"local_target", impl->local_target},
                            {"arena_socket", impl->arena_socket_path},
                            {"metrics_port", impl->http ? impl->http->port() : 0},
                            {"pid", static_cast<int64_t>(::getpid())},
                            {"arena_generation", hello.arena_generation}};
    Status s = WriteReadyFile(config.ready_file, ready);
    if (!s.ok()) {
      impl->serving = false;
      if (impl->http) impl->http->Stop();
      if (impl->arena_socket) impl->arena_socket->Stop();
      return fail(s);
    }
  }
  return std::unique_ptr<CacheService>(new CacheService(std::move(impl)));
}

std::string CacheService::target() const { return impl_->target; }
std::string CacheService::local_target() const { return impl_->local_target; }
std::string CacheService::arena_socket_path() const { return impl_->arena_socket_path; }
int CacheService::metrics_port() const { return impl_->http ? impl_->http->port() : 0; }
MetricsRegistry& CacheService::metrics() { return impl_->registry; }

Status CacheService::Reload() {
  Status result = OkStatus();
  if (impl_->tls != nullptr) result.Update(impl_->tls->Reload());
  Impl* impl = impl_.get();
  result.Update(
      impl->auth->Reload([impl](const TenantTable& table) { impl->SyncTenantArenas(table); }));
  return result;
}

Status CacheService::Shutdown() {
  std::lock_guard<std::mutex> lock(impl_->shutdown_mu);
  if (impl_->shut_down) return impl_->close_status;
  impl_->shut_down = true;
  Impl& s = *impl_;
  spdlog::info("event=shutdown_begin grace_ms={}", s.config.shutdown_grace_ms);
  s.serving = false;
  if (s.cluster != nullptr) {
    s.commit_hook = nullptr;
    s.cluster->Stop();  // leaves the view first, so the others stop routing here
  }
  if (auto* health = s.server->GetHealthCheckService(); health != nullptr) health->Shutdown();
  s.server->Shutdown(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(s.config.shutdown_grace_ms));
  s.server->Wait();
  s.async_streams->Stop();  // every Put and Get is over: leases and reservations are settled
  spdlog::info("event=shutdown_grpc_stopped");
  if (s.arena_socket) s.arena_socket->Stop();
  s.handoffs.reset();  // unpins what is still offered
  s.close_status = s.store->Close();
  spdlog::info("event=shutdown_store_closed");
  if (!s.close_status.ok()) {
    spdlog::error("event=store_close_failed error=\"{}\"", std::string(s.close_status.message()));
  }
  for (const std::string& listener : {s.config.listen, s.config.local_listen}) {
    if (!IsUnix(listener)) continue;
    struct stat st;
    std::string path = UnixPath(listener);
    if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path.c_str());
  }
  if (!s.config.ready_file.empty()) ::unlink(s.config.ready_file.c_str());
  if (s.http) s.http->Stop();
  spdlog::info("event=shutdown_done store_close={}", s.close_status.ok() ? "ok" : "failed");
  return s.close_status;
}

}  // namespace kvstash::cachesvc
