// RemoteTier's own methods: start-up (Create), the cluster's peers, the public fetches and
// lookups, and GPU pool registration. RemoteTier::Impl (remote_tier_impl.h) holds the state and,
// in remote_tier_peers.cc, remote_tier_fetch.cc and remote_tier_serving.cc, the logic.
#include "remote_tier.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kvstash/proto/status_mapping.h"
#include "remote_tier_impl.h"
#include "ssd_encoding_choice.h"
#include "tls.h"

namespace kvstash::cachesvc {
namespace {

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

}  // namespace

bool LocalScopeOnly(const grpc::ServerContext* ctx) {
  if (ctx == nullptr) return false;
  auto it = ctx->client_metadata().find(kScopeHeader);
  return it != ctx->client_metadata().end() &&
         std::string_view(it->second.data(), it->second.size()) == kScopeLocal;
}

RemoteTier::RemoteTier(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RemoteTier::~RemoteTier() = default;

Result<std::unique_ptr<RemoteTier>> RemoteTier::Create(const ServiceConfig& config,
                                                       storage::ObjectStore* store,
                                                       MetricsRegistry* metrics,
                                                       const std::string& listen_target,
                                                       const TlsMaterial* tls) {
  auto impl = std::make_unique<Impl>();
  impl->config = config.peers;
  impl->tls_required = tls != nullptr;
  impl->store = store;
  impl->metrics = metrics;
  if (!config.peers.secret_file.empty()) {
    KVSTASH_ASSIGN_OR_RETURN(impl->secret, ReadSecret(config.peers.secret_file));
  }
  impl->node_id = config.peers.node_id;
  if (impl->node_id.empty()) {
    char host[256] = {0};
    ::gethostname(host, sizeof host - 1);
    impl->node_id = absl::StrCat(host, "/", listen_target);
  }
  impl->hello_refused = metrics->GetCounter(
      "kvstash_peer_hello_refused_total", "peer Hello calls refused for a missing or wrong secret");
#ifdef KVSTASH_HAVE_UCX
  if (config.peers.data_plane == "ucx" && !impl->secret.empty()) {
    KVSTASH_ASSIGN_OR_RETURN(impl->transport,
                             transport::UcxTransport::Create({.name = "cachesvc"}));
    const bool fixed_ucx = transport::UcxTransport::UcxAtLeast(1, 14);  // openucx/ucx#8175
    // docs/deploy.md "Which UCX": below 1.14 a reader dying during a wire-up it initiated can
    // abort the serving process; the serving node that connects first initiates it itself, but
    // then a serving peer killed mid-transfer can abort its reader the same way (1 of 36 runs of
    // PeerTest.APeerKilledMidTransfer...), so auto is reader_first everywhere and serving_first
    // is the operator's choice.
    impl->connect_first = config.peers.ucx_connect == "serving_first";
    impl->ucx_in_place = config.peers.ucx_fetch == "inplace";
    // auto: Fetch wherever the wire-up abort is out of the way (UCX >= 1.14, or this node
    // connects first); gets only with reader_first on an old UCX, where both abort.
    impl->ucx_fetch = config.peers.ucx_fetch == "true" || impl->ucx_in_place ||
                      (config.peers.ucx_fetch == "auto" && (fixed_ucx || impl->connect_first));
    // The aborts a reader's death can still cause: the wire-up's (old UCX, readers connect first)
    // on this node as a serving peer, and the get reply's (any UCX) on the peers this node reads
    // with gets.
    const bool wireup_risk = !fixed_ucx && !impl->connect_first;
    const bool get_risk = !impl->ucx_fetch;
    const char* risk = wireup_risk && get_risk ? "wireup,get_reply"
                       : wireup_risk           ? "wireup"
                       : get_risk              ? "get_reply"
                                               : nullptr;
    spdlog::log(risk == nullptr ? spdlog::level::info : spdlog::level::warn,
                "event={} ucx_version={} connect={} peer_reads={}{}{}",
                risk == nullptr ? "ucx_transport" : "ucx_aborts_on_reader_death",
                transport::UcxTransport::UcxVersion(),
                impl->connect_first ? "serving_first" : "reader_first",
                impl->ucx_in_place ? "inplace"
                : impl->ucx_fetch  ? "fetch"
                                   : "get",
                risk == nullptr ? "" : " risk=", risk == nullptr ? "" : risk);
    const char* connect_help =
        "Hellos for which this node connected to the reader's UCX worker "
        "first (peers.ucx_connect serving_first), by result";
    impl->connect_backs_ok =
        metrics->GetCounter("kvstash_peer_connect_backs_total", connect_help, {{"result", "ok"}});
    impl->connect_backs_failed = metrics->GetCounter("kvstash_peer_connect_backs_total",
                                                     connect_help, {{"result", "failed"}});
    impl->reader_endpoints =
        metrics->GetGauge("kvstash_peer_reader_endpoints",
                          "UCX endpoints this node holds to its readers' workers (serving_first)");
    // The whole reserved range, spare included: arenas a reload adds later (AddTenantArena) are
    // then readable by peers through the rkey they already hold. UCX's TCP and shared-memory
    // transports register nothing per page; a transport that pins pages at registration (RDMA
    // verbs) may refuse the unmapped spare, and then only the arenas mapped now are offered.
    auto region =
        impl->transport->RegisterRegion(store->arena_base(), store->arena_reserved_bytes());
    if (!region.ok() && store->arena_reserved_bytes() > store->arena_bytes()) {
      spdlog::warn(
          "event=arena_reserve_not_registered reserved_bytes={} error=\"{}\": peers read only "
          "the arenas mapped at start (objects in tenant arenas a reload adds are out of their "
          "reach)",
          store->arena_reserved_bytes(), std::string(region.status().message()));
      region = impl->transport->RegisterRegion(store->arena_base(), store->arena_bytes());
    }
    if (!region.ok()) return region.status();
    impl->region = *region;
    if (config.peers.staging_mib > 0) {
      KVSTASH_ASSIGN_OR_RETURN(
          impl->staging,
          PeerStaging::Create(impl->transport.get(), uint64_t{config.peers.staging_mib} << 20,
                              store, metrics, config.peers.timeout_ms * 2 + 1000));
      spdlog::info("event=peer_staging bytes={} hold_ms={}", impl->staging->region().bytes,
                   config.peers.timeout_ms * 2 + 1000);
    }
    Impl* raw = impl.get();
    KVSTASH_RETURN_IF_ERROR(
        impl->transport->SetNotificationHandler(kReleaseMessageId, [raw](std::string_view payload) {
          v1::ReleaseRequest req;  // from an authenticated peer, but parsed as untrusted bytes
          if (!req.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) return;
          for (uint64_t id : req.lease_ids()) (void)raw->store->Release(id);
        }));
  }
#endif
  if (!impl->secret.empty()) impl->hello_service = std::make_unique<Impl::HelloService>(impl.get());
  // Registered on every node with peers, so that a scrape shows 0 where nothing calibrated.
  Counter* calibrations = metrics->GetCounter(
      "kvstash_peer_codec_calibrations_total",
      "start-up codec calibrations (codec_choice); only --peer-transfer-encoding auto runs one");
  if (config.peers.transfer_encoding != PeerTransferEncoding::kRaw) {
    // Decodes CacheGen and KVQ at any level (the container says which) on a private pool.
    impl->decoder = std::make_unique<CacheGenTierCodec>(TierEncoding{Encoding::kRaw, 1});
    std::string choice = "measured_per_link";  // no spaces: the log is key=value
    if (config.peers.transfer_encoding == PeerTransferEncoding::kAuto) {
      KVSTASH_ASSIGN_OR_RETURN(impl->candidates,
                               CalibrateTransferCodecs(config.transfer_encoding.level));
      calibrations->Increment();
      if (config.peers.link_mbps != 0) {
        choice = codec::CodecRatesName(codec::ChooseEncoding(
            impl->candidates, config.peers.link_mbps * 1e6 / 8, codec::CostModel::kTransfer));
      }
    }
    spdlog::info("event=peer_transfer_encoding policy={} link_mbps={} choice={} candidates={}",
                 PeerTransferEncodingName(config.peers.transfer_encoding), config.peers.link_mbps,
                 config.peers.transfer_encoding == PeerTransferEncoding::kAuto
                     ? choice
                     : std::string(PeerTransferEncodingName(config.peers.transfer_encoding)),
                 DescribeCodecCandidates(impl->candidates, codec::CostModel::kTransfer));
  }
  impl->channel_args.SetMaxReceiveMessageSize(static_cast<int>(config.max_message_bytes));
  // A fresh connection attempt soon after a peer comes back, not gRPC's backoff of up to 2 min.
  impl->channel_args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  if (tls != nullptr) tls->AddChannelArguments(&impl->channel_args);
  impl->credentials =
      tls != nullptr ? tls->ChannelCredentials() : grpc::InsecureChannelCredentials();
  {
    MutexLock lock(&impl->peers_mu);
    for (const std::string& address : config.peers.addresses) {
      impl->peers.push_back(impl->MakePeer(address));
    }
  }
  spdlog::info("event=peers node_id={} peers={} data_plane={} serving_peers={}", impl->node_id,
               config.peers.addresses.size(), config.peers.data_plane,
               impl->hello_service != nullptr);
  return std::unique_ptr<RemoteTier>(new RemoteTier(std::move(impl)));
}

bool RemoteTier::has_peers() const { return !impl_->Snapshot(nullptr).empty(); }

void RemoteTier::SetClusterPeers(const std::vector<std::string>& addresses) {
  MutexLock lock(&impl_->peers_mu);
  for (auto& peer : impl_->peers) {
    if (!peer->from_cluster) continue;
    const bool listed =
        std::find(addresses.begin(), addresses.end(), peer->address) != addresses.end();
    if (listed && !peer->listed.load()) {
      peer->down_until_ns = 0;  // back in the view: try it at once
      spdlog::info("event=cluster_peer_listed peer={}", peer->address);
    } else if (!listed && peer->listed.load()) {
      spdlog::info("event=cluster_peer_unlisted peer={}", peer->address);
    }
    peer->listed = listed;
  }
  for (const std::string& address : addresses) {
    bool known = false;
    for (auto& peer : impl_->peers) known = known || peer->address == address;
    if (known) continue;
    auto peer = impl_->MakePeer(address);
    peer->from_cluster = true;
    impl_->peers.push_back(std::move(peer));
    spdlog::info("event=cluster_peer_listed peer={}", address);
  }
}

std::shared_ptr<grpc::Channel> RemoteTier::MakeChannel(const std::string& address) const {
  return grpc::CreateCustomChannel(address, impl_->credentials, impl_->channel_args);
}

void RemoteTier::SetRanker(Ranker ranker) {
  MutexLock lock(&impl_->peers_mu);
  impl_->ranker = std::move(ranker);
}

void RemoteTier::AddPeerToken(grpc::ClientContext* ctx) const {
  ctx->AddMetadata(kPeerTokenHeader, impl_->secret);
}

grpc::Status RemoteTier::CheckPeerToken(const grpc::ServerContext* ctx) const {
  return impl_->CheckToken(ctx);
}

void RemoteTier::SetTransferEncoder(TransferEncoder encoder) {
#ifdef KVSTASH_HAVE_UCX
  if (impl_->staging != nullptr) impl_->staging->SetEncoder(std::move(encoder));
#else
  (void)encoder;
#endif
}

uint64_t RemoteTier::staging_bytes_in_use() const {
#ifdef KVSTASH_HAVE_UCX
  if (impl_->staging != nullptr) return impl_->staging->bytes_in_use();
#endif
  return 0;
}

std::string RemoteTier::ucx_worker_address() const {
#ifdef KVSTASH_HAVE_UCX
  if (impl_->transport != nullptr) return impl_->transport->worker_address();
#endif
  return "";
}

Result<bool> RemoteTier::RegisterGpuPool(const storage::GpuPoolRegion& pool) {
  impl_->gpu_offered = true;
#ifdef KVSTASH_HAVE_UCX
  if (impl_->transport == nullptr) {
    impl_->gpu_not_registered =
        absl::StrCat("no UCX transport (peers.data_plane ", impl_->config.data_plane,
                     ", and a cluster secret, are needed)");
    spdlog::info("event=gpu_pool_not_registered reason=\"{}\"", impl_->gpu_not_registered);
    return false;
  }
  if (!impl_->transport->SupportsCuda()) {
    impl_->gpu_not_registered =
        "this UCX has no CUDA memory support (build against libucx-cu13: "
        "scripts/build_ucx_cuda.sh)";
    spdlog::warn("event=gpu_pool_not_registered reason=\"{}\"", impl_->gpu_not_registered);
    return false;
  }
  KVSTASH_ASSIGN_OR_RETURN(impl_->gpu_region, impl_->transport->RegisterRegion(
                                                  reinterpret_cast<void*>(pool.device_base),
                                                  pool.bytes, transport::MemoryKind::kCuda));
  impl_->gpu_base = pool.device_base;
  impl_->gpu_registered = true;
  spdlog::info("event=gpu_pool_registered device={} bytes={} memory=cuda rkey_bytes={}",
               pool.device, pool.bytes, impl_->gpu_region.packed_rkey.size());
  return true;
#else
  (void)pool;
  impl_->gpu_not_registered = "built without UCX (KVSTASH_UCX=OFF)";
  spdlog::info("event=gpu_pool_not_registered reason=\"{}\"", impl_->gpu_not_registered);
  return false;
#endif
}

Status RemoteTier::CanLandInGpu() const {
  if (!impl_->gpu_offered) {
    return absl::FailedPreconditionError(
        "this node has no GPU pool (cachesvc --gpu-pool-capacity): nothing can land in the gpu "
        "tier");
  }
  if (!impl_->gpu_registered) {
    return absl::FailedPreconditionError(absl::StrCat(
        "this node's GPU pool is not registered with UCX, so fetches cannot land in it: ",
        impl_->gpu_not_registered));
  }
  return OkStatus();
}

bool RemoteTier::IsPeer(const std::string& address) const {
  return impl_->Find(address) != nullptr;
}

grpc::Service* RemoteTier::peer_service() { return impl_->hello_service.get(); }

std::vector<std::optional<ObjectInfo>> RemoteTier::Lookup(const std::vector<ObjectName>& names) {
  std::vector<std::optional<ObjectInfo>> out(names.size());
  std::vector<size_t> remaining(names.size());
  for (size_t i = 0; i < names.size(); ++i) remaining[i] = i;
  for (auto& peer : impl_->Snapshot(names.empty() ? nullptr : &names[0])) {
    if (remaining.empty()) break;
    if (impl_->Down(*peer)) continue;
    grpc::ClientContext ctx;
    impl_->PrepareContext(&ctx);
    v1::LookupRequest req;
    for (size_t i : remaining) ToProto(names[i], req.add_keys());
    v1::LookupResponse resp;
    Status s = FromGrpcStatus(peer->kv->Lookup(&ctx, req, &resp));
    if (s.ok() && resp.results_size() != static_cast<int>(remaining.size())) {
      s = absl::InternalError("peer answered Lookup with the wrong number of results");
    }
    if (!s.ok()) {
      impl_->MarkDown(*peer, s);
      continue;
    }
    std::vector<size_t> still;
    for (int r = 0; r < resp.results_size(); ++r) {
      const v1::LookupResult& result = resp.results(r);
      Result<ObjectInfo> info = FromProto(result.info());
      if (result.present() && info.ok()) {
        out[remaining[r]] = *info;
      } else {
        still.push_back(remaining[r]);
      }
    }
    remaining.swap(still);
  }
  return out;
}

std::vector<Status> RemoteTier::Fetch(const std::vector<ObjectName>& names) {
  std::vector<Status> out(names.size(), absl::NotFoundError("no peer holds the object"));
  std::vector<size_t> remaining(names.size());
  for (size_t i = 0; i < names.size(); ++i) remaining[i] = i;
  for (auto& peer : impl_->Snapshot(names.empty() ? nullptr : &names[0])) {
    if (remaining.empty()) break;
    if (impl_->Down(*peer)) continue;
    impl_->FetchFromPeer(*peer, names, remaining, out);
  }
  impl_->Count(out);
  return out;
}

std::vector<Status> RemoteTier::FetchFrom(const std::string& address,
                                          const std::vector<ObjectName>& names,
                                          storage::Tier land) {
  std::shared_ptr<Impl::Peer> peer = impl_->Find(address);
  if (peer == nullptr) {
    return std::vector<Status>(
        names.size(), absl::FailedPreconditionError(
                          absl::StrCat("node ", address, " is not a peer of this node (--peer)")));
  }
  if (land != storage::Tier::kCpu) {
    Status can = land == storage::Tier::kGpu
                     ? CanLandInGpu()
                     : absl::InvalidArgumentError(absl::StrCat(
                           "a fetch cannot land in the ", std::string(TierName(land)), " tier"));
    if (!can.ok()) return std::vector<Status>(names.size(), can);
  }
  std::vector<Status> out(names.size(), absl::NotFoundError("the peer does not hold the object"));
  std::vector<size_t> remaining(names.size());
  for (size_t i = 0; i < names.size(); ++i) remaining[i] = i;
  peer->down_until_ns = 0;  // asked for explicitly: try it now
  impl_->FetchFromPeer(*peer, names, remaining, out, land);
  impl_->Count(out);
  return out;
}

std::vector<Status> RemoteTier::FetchFrom(const std::string& address,
                                          const std::vector<ObjectName>& names,
                                          const std::vector<OfferedLease>& offers,
                                          std::vector<bool>* via_offer) {
  std::vector<bool> via(names.size(), false);
  std::shared_ptr<Impl::Peer> peer = impl_->Find(address);
  if (peer == nullptr || offers.size() != names.size()) {
    if (via_offer != nullptr) *via_offer = via;
    return FetchFrom(address, names);
  }
  std::vector<Status> out(names.size(), absl::NotFoundError("the peer does not hold the object"));
  std::vector<size_t> remaining(names.size());
  for (size_t i = 0; i < names.size(); ++i) remaining[i] = i;
  peer->down_until_ns = 0;  // asked for explicitly: try it now
  impl_->FetchOffered(*peer, names, offers, remaining, out, via);
  if (!remaining.empty()) impl_->FetchFromPeer(*peer, names, remaining, out);
  impl_->Count(out);
  if (via_offer != nullptr) *via_offer = std::move(via);
  return out;
}

Result<uint64_t> RemoteTier::ForwardHandoff(const std::string& address, uint64_t handoff_id,
                                            uint32_t extend_ms, bool release,
                                            const std::string& tenant) {
  std::shared_ptr<Impl::Peer> peer = impl_->Find(address);
  if (peer == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("node ", address, " is not a peer of this node (--peer)"));
  }
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx);
  if (!tenant.empty()) ctx.AddMetadata(kForTenantHeader, tenant);
  v1::HandoffRequest req;
  req.set_node(address);
  req.set_handoff_id(handoff_id);
  req.set_extend_ms(extend_ms);
  v1::HandoffResponse resp;
  grpc::Status s = release ? peer->kv->ReleaseHandoff(&ctx, req, &resp)
                           : peer->kv->HeartbeatHandoff(&ctx, req, &resp);
  KVSTASH_RETURN_IF_ERROR(FromGrpcStatus(s));
  return resp.expires_in_ms();
}

storage::TierStats RemoteTier::Stats() const {
  storage::TierStats t;
  t.tier = storage::Tier::kRemote;
  t.hits = impl_->hits.load(std::memory_order_relaxed);
  t.misses = impl_->misses.load(std::memory_order_relaxed);
  MutexLock lock(&impl_->peers_mu);
  for (const auto& peer : impl_->peers) t.bytes_read += peer->fetched_bytes->Value();
  return t;
}

}  // namespace kvstash::cachesvc
