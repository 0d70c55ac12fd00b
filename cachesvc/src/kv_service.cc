#include "kv_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "cachegen_tier_codec.h"
#include "cluster_node.h"
#include "kvstash/proto/arena_handshake.h"
#include "kvstash/proto/convert.h"
#include "kvstash/proto/status_mapping.h"
#include "request_checks.h"

#ifndef KVSTASH_VERSION
#define KVSTASH_VERSION "0.0.0"
#endif

namespace kvstash::cachesvc {
namespace {
using Clock = std::chrono::steady_clock;

// The caller of this thread's in-process calls (CallerScope), or null.
thread_local const Caller* scoped_caller = nullptr;
}  // namespace

KvStashService::CallerScope::CallerScope(const Caller& caller) : previous_(scoped_caller) {
  scoped_caller = &caller;
}

KvStashService::CallerScope::~CallerScope() { scoped_caller = previous_; }

KvStashService::KvStashService(storage::ObjectStore* store, const ServiceConfig& config,
                               std::string arena_socket_path, RpcMetrics* metrics,
                               RemoteTier* remote, HandoffRegistry* handoffs, Authorizer* auth,
                               AttachTickets* tickets)
    : store_(store),
      config_(config),
      arena_socket_path_(std::move(arena_socket_path)),
      metrics_(metrics),
      remote_(remote),
      handoffs_(handoffs),
      auth_(auth),
      tickets_(tickets),
      started_(Clock::now()) {
  if (config_.transfer_encoding.encoding == Encoding::kCacheGen) {
    for (int level = 1; level <= 4; ++level) {
      // Encode only: these never decode, so one idle pool thread each.
      if (level <= 3) {
        cachegen_transfer_codecs_[level - 1] = std::make_unique<CacheGenTierCodec>(
            TierEncoding{Encoding::kCacheGen, level, /*kvq=*/false}, /*decode_threads=*/1);
      }
      kvq_transfer_codecs_[level - 1] = std::make_unique<CacheGenTierCodec>(
          TierEncoding{Encoding::kCacheGen, level, /*kvq=*/true}, /*decode_threads=*/1);
    }
  }
  UseRawStreamHandlers();
}

Status KvStashService::CheckKeyCount(int count, const char* method) const {
  if (static_cast<uint64_t>(count) > config_.max_keys_per_request) {
    return Invalid(absl::StrCat(method, " carries ", count, " keys; the limit is ",
                                config_.max_keys_per_request, " per request"));
  }
  return OkStatus();
}

// ---- Callers -----------------------------------------------------------------

Result<Caller> KvStashService::Who(const grpc::ServerContext* ctx) const {
  if (ctx == nullptr && scoped_caller != nullptr) return *scoped_caller;
  if (auth_ == nullptr) return Caller{};
  return auth_->Authenticate(ctx);
}

Result<std::vector<ObjectName>> KvStashService::CallerKeys(
    const Caller& caller, const google::protobuf::RepeatedPtrField<v1::ObjectKey>& keys) const {
  KVSTASH_ASSIGN_OR_RETURN(std::vector<ObjectName> names, ParseKeys(keys));
  if (auth_ != nullptr) KVSTASH_RETURN_IF_ERROR(auth_->ScopeAll(caller, &names));
  return names;
}

Result<ObjectName> KvStashService::CallerKey(const Caller& caller, const v1::ObjectKey& key,
                                             const std::string& where) const {
  KVSTASH_ASSIGN_OR_RETURN(ObjectName name, ParseKey(key, where));
  if (auth_ != nullptr) KVSTASH_RETURN_IF_ERROR(auth_->Scope(caller, &name));
  return name;
}

Status KvStashService::CheckWrite(const Caller& caller, const char* what) const {
  return auth_ == nullptr ? OkStatus() : auth_->CheckWrite(caller, what);
}

Status KvStashService::CheckQuota(const Caller& caller, uint64_t bytes) {
  if (auth_ == nullptr || !caller.restricted) return OkStatus();
  storage::NamespaceUsage usage = store_->Usage(caller.identity.tenant);
  // A tenant with an arena of its own (sized by its cpu quota) is bounded by that arena: a put
  // evicts the tenant's own least valuable objects, and is ResourceExhausted only when nothing
  // there is evictable. Only an object larger than the whole quota is refused here.
  if (store_->arena_segment(caller.identity.tenant).index != 0) usage.cpu_bytes = 0;
  return auth_->CheckQuota(caller, bytes, usage);
}

// ---- Lookup ----------------------------------------------------------------

bool KvStashService::UsesPeers(const grpc::ServerContext* ctx) const {
  return remote_ != nullptr && remote_->has_peers() && !LocalScopeOnly(ctx);
}

Result<storage::Lease> KvStashService::AcquireFromPeers(const ObjectName& name, uint32_t lease_ms,
                                                        const Status& fetched, bool own_arena) {
  if (!fetched.ok()) return fetched;
  KVSTASH_ASSIGN_OR_RETURN(storage::Lease lease,
                           own_arena ? store_->AcquireInOwnArena(name.storage_key, lease_ms)
                                     : store_->Acquire(name.storage_key, lease_ms));
  lease.served_from = storage::Tier::kRemote;
  if (!config_.peers.promote) {
    // The lease keeps the bytes until it ends; nothing else finds the object here.
    (void)store_->Delete(name.storage_key);
  }
  return lease;
}

grpc::Status KvStashService::Lookup(grpc::ServerContext* ctx, const v1::LookupRequest* req,
                                    v1::LookupResponse* resp) {
  RpcScope scope(metrics_, Method::kLookup, req->ByteSizeLong());
  Status s = scope.Finish(DoLookup(ctx, *req, resp));
  scope.AddSent(resp->ByteSizeLong());
  return ToGrpcStatus(s);
}

Status KvStashService::DoLookup(const grpc::ServerContext* ctx, const v1::LookupRequest& req,
                                v1::LookupResponse* resp) {
  KVSTASH_ASSIGN_OR_RETURN(Caller caller, Who(ctx));
  KVSTASH_RETURN_IF_ERROR(CheckKeyCount(req.keys_size(), "Lookup"));
  KVSTASH_ASSIGN_OR_RETURN(std::vector<ObjectName> names, CallerKeys(caller, req.keys()));
  std::vector<ObjectName> missing;
  std::vector<int> missing_at;
  for (const ObjectName& name : names) {
    storage::LookupEntry entry = store_->Lookup(name.storage_key);
    v1::LookupResult* result = resp->add_results();
    result->set_present(entry.present);
    if (entry.present) {
      result->set_tier(ToProtoTier(entry.tier));
      result->set_payload_bytes(entry.info.payload_bytes);
      ToProto(entry.info, result->mutable_info());
    } else {
      missing.push_back(name);
      missing_at.push_back(resp->results_size() - 1);
    }
  }
  if (!missing.empty() && config_.peers.lookup && UsesPeers(ctx)) {
    std::vector<std::optional<ObjectInfo>> remote = remote_->Lookup(missing);
    for (size_t i = 0; i < remote.size(); ++i) {
      if (!remote[i]) continue;
      v1::LookupResult* result = resp->mutable_results(missing_at[i]);
      result->set_present(true);
      result->set_tier(v1::TIER_REMOTE);
      result->set_payload_bytes(remote[i]->payload_bytes);
      ToProto(*remote[i], result->mutable_info());
    }
  }
  uint32_t prefix = 0;
  while (static_cast<int>(prefix) < resp->results_size() && resp->results(prefix).present()) {
    ++prefix;
  }
  resp->set_longest_prefix(prefix);
  return OkStatus();
}

// ---- Two-phase put ----------------------------------------------------------

grpc::Status KvStashService::Reserve(grpc::ServerContext* ctx, const v1::ReserveRequest* req,
                                     v1::ReserveResponse* resp) {
  RpcScope scope(metrics_, Method::kReserve, req->ByteSizeLong());
  Result<Caller> caller = Who(ctx);
  Status s = scope.Finish(caller.ok() ? DoReserve(*caller, *req, resp) : caller.status());
  scope.AddSent(resp->ByteSizeLong());
  return ToGrpcStatus(s);
}

Status KvStashService::DoReserve(const Caller& caller, const v1::ReserveRequest& req,
                                 v1::ReserveResponse* resp) {
  KVSTASH_RETURN_IF_ERROR(CheckWrite(caller, "Reserve"));
  if (!req.has_key()) return Invalid("key: missing");
  KVSTASH_ASSIGN_OR_RETURN(ObjectName name, CallerKey(caller, req.key(), "key"));
  KVSTASH_ASSIGN_OR_RETURN(ObjectInfo info, ParseInfo(req.info(), req.has_info(), "info"));
  KVSTASH_RETURN_IF_ERROR(CheckQuota(caller, info.payload_bytes));
  KVSTASH_ASSIGN_OR_RETURN(
      storage::Reservation r,
      store_->Reserve(ToStoredName(name), info, req.lease_ms(), req.overwrite()));
  Status range = CheckArenaRange(*store_, r.arena_offset, info.payload_bytes);
  if (!range.ok()) {
    (void)store_->Abort(r.id);
    return range;
  }
  if (auth_ != nullptr) auth_->Own(caller, Authorizer::IdKind::kReservation, r.id);
  resp->set_reservation_id(r.id);
  resp->set_arena_offset(r.arena_offset);
  resp->set_arena_generation(store_->arena_generation());
  resp->set_expires_in_ms(r.expires_in_ms);
  return OkStatus();
}

Status KvStashService::CheckOwner(const grpc::ServerContext* ctx, const Caller* known, bool lease,
                                  uint64_t id) {
  if (auth_ == nullptr) return OkStatus();
  Caller caller;
  if (known == nullptr) {
    KVSTASH_ASSIGN_OR_RETURN(caller, Who(ctx));
    known = &caller;
  }
  return auth_->CheckOwner(
      *known, lease ? Authorizer::IdKind::kLease : Authorizer::IdKind::kReservation, id,
      /*forget=*/true);
}

grpc::Status KvStashService::Commit(grpc::ServerContext* ctx, const v1::CommitRequest* req,
                                    v1::CommitResponse* resp) {
  RpcScope scope(metrics_, Method::kCommit, req->ByteSizeLong());
  Result<Caller> caller = Who(ctx);
  Status owner = caller.ok() ? CheckWrite(*caller, "Commit") : caller.status();
  if (owner.ok()) owner = CheckOwner(ctx, &*caller, /*lease=*/false, req->reservation_id());
  if (!owner.ok()) return ToGrpcStatus(scope.Finish(owner));
  return ToGrpcStatus(
      scope.Finish(store_->Commit(req->reservation_id(), req->payload_crc32c(), req->durable())));
}

grpc::Status KvStashService::Abort(grpc::ServerContext* ctx, const v1::AbortRequest* req,
                                   v1::AbortResponse*) {
  RpcScope scope(metrics_, Method::kAbort, req->ByteSizeLong());
  Result<Caller> caller = Who(ctx);
  Status owner = caller.ok() ? CheckWrite(*caller, "Abort") : caller.status();
  if (owner.ok()) owner = CheckOwner(ctx, &*caller, /*lease=*/false, req->reservation_id());
  if (!owner.ok()) return ToGrpcStatus(scope.Finish(owner));
  return ToGrpcStatus(scope.Finish(store_->Abort(req->reservation_id())));
}

grpc::Status KvStashService::ReserveMany(grpc::ServerContext* ctx,
                                         const v1::ReserveManyRequest* req,
                                         v1::ReserveManyResponse* resp) {
  RpcScope scope(metrics_, Method::kReserveMany, req->ByteSizeLong());
  Result<Caller> caller = Who(ctx);
  Status s = caller.ok() ? CheckWrite(*caller, "ReserveMany") : caller.status();
  if (s.ok()) s = CheckKeyCount(req->items_size(), "ReserveMany");
  if (s.ok()) {
    for (const v1::ReserveRequest& item : req->items()) {
      v1::ReserveResult* result = resp->add_results();
      ToItemStatus(DoReserve(*caller, item, result->mutable_reservation()),
                   result->mutable_status());
      if (result->status().code() != 0) result->clear_reservation();
    }
  }
  scope.Finish(s);
  scope.AddSent(resp->ByteSizeLong());
  return ToGrpcStatus(s);
}

grpc::Status KvStashService::CommitMany(grpc::ServerContext* ctx, const v1::CommitManyRequest* req,
                                        v1::CommitManyResponse* resp) {
  RpcScope scope(metrics_, Method::kCommitMany, req->ByteSizeLong());
  Result<Caller> caller = Who(ctx);
  Status s = caller.ok() ? CheckWrite(*caller, "CommitMany") : caller.status();
  if (s.ok()) s = CheckKeyCount(req->items_size(), "CommitMany");
  if (s.ok()) {
    // In a cluster with synchronous replication, the items' owners are asked together once all
    // are committed here (one Replicate per owner), not one object after the other.
    CommitBatch batch;
    std::vector<int> deferred;  // the result index of each commit the batch took, in its order
    for (const v1::CommitRequest& item : req->items()) {
      Status owner = CheckOwner(ctx, &*caller, /*lease=*/false, item.reservation_id());
      const size_t before = batch.size();
      ToItemStatus(
          owner.ok() ? store_->Commit(item.reservation_id(), item.payload_crc32c(), item.durable())
                     : owner,
          resp->add_results());
      if (batch.size() > before) deferred.push_back(resp->results_size() - 1);
    }
    const std::vector<Status> replicated = batch.Finish();
    for (size_t i = 0; i < replicated.size() && i < deferred.size(); ++i) {
      if (!replicated[i].ok()) ToItemStatus(replicated[i], resp->mutable_results(deferred[i]));
    }
  }
  scope.Finish(s);
  scope.AddSent(resp->ByteSizeLong());
  return ToGrpcStatus(s);
}

// ---- Leased get -------------------------------------------------------------

grpc::Status KvStashService::Acquire(grpc::ServerContext* ctx, const v1::AcquireRequest* req,
                                     v1::AcquireResponse* resp) {
  RpcScope scope(metrics_, Method::kAcquire, req->ByteSizeLong());
  Status s = scope.Finish(DoAcquire(ctx, *req, resp));
  scope.AddSent(resp->ByteSizeLong());
  return ToGrpcStatus(s);
}

Status KvStashService::DoAcquire(const grpc::ServerContext* ctx, const v1::AcquireRequest& req,
                                 v1::AcquireResponse* resp) {
  KVSTASH_ASSIGN_OR_RETURN(Caller caller, Who(ctx));
  KVSTASH_RETURN_IF_ERROR(CheckKeyCount(req.keys_size(), "Acquire"));
  KVSTASH_ASSIGN_OR_RETURN(std::vector<ObjectName> names, CallerKeys(caller, req.keys()));
  uint64_t expires = 0;
  bool any = false;
  const uint64_t generation = store_->arena_generation();
  // A tenant with an arena of its own maps only that arena: its leases must lie there. Objects
  // it stored (or peers fetched for it) before a reload gave it the arena are in the shared one;
  // AcquireInOwnArena moves them, and one it cannot move is FAILED_PRECONDITION, which KvClient
  // reads over the byte stream instead. Peers read any arena (UCX), tenants without an arena
  // attach none: both get leases where the bytes are, as before.
  const bool restricted_tenant =
      auth_ != nullptr && caller.restricted && caller.identity.role != Role::kPeer;
  const storage::ArenaSegment own =
      restricted_tenant ? store_->arena_segment(caller.identity.tenant) : storage::ArenaSegment{};
  const bool own_arena = own.index != 0;
  // Local leases first; the misses are fetched from peers in one batch.
  std::vector<Result<storage::Lease>> leases;
  leases.reserve(names.size());
  std::vector<ObjectName> missing;
  std::vector<size_t> missing_at;
  for (const ObjectName& name : names) {
    leases.push_back(own_arena ? store_->AcquireInOwnArena(name.storage_key, req.lease_ms())
                               : store_->Acquire(name.storage_key, req.lease_ms()));
    if (leases.back().status().code() == absl::StatusCode::kNotFound) {
      missing.push_back(name);
      missing_at.push_back(leases.size() - 1);
    }
  }
  if (!missing.empty() && UsesPeers(ctx)) {
    std::vector<Status> fetched = remote_->Fetch(missing);
    for (size_t i = 0; i < missing.size(); ++i) {
      leases[missing_at[i]] = AcquireFromPeers(missing[i], req.lease_ms(), fetched[i], own_arena);
    }
  }
  for (size_t n = 0; n < names.size(); ++n) {
    v1::AcquireResult* result = resp->add_results();
    Result<storage::Lease>& lease = leases[n];
    if (lease.ok()) {
      Status range = CheckArenaRange(*store_, lease->arena_offset, lease->info.payload_bytes);
      if (range.ok() && own_arena &&
          (lease->arena_offset < own.offset || lease->arena_offset - own.offset > own.bytes ||
           lease->info.payload_bytes > own.bytes - (lease->arena_offset - own.offset))) {
        // Another namespace's object (an admin's key) is not in this client's mapping either.
        range = absl::FailedPreconditionError(absl::StrCat(
            "object ", names[n].storage_key.ToHex(), " is outside the arena of tenant ",
            caller.identity.tenant, "; read it over the byte stream (Get)"));
      }
      if (!range.ok()) {
        (void)store_->Release(lease->id);
        lease = range;
      }
    }
    if (!lease.ok()) {
      ToItemStatus(lease.status(), result->mutable_status());
      continue;
    }
    ToItemStatus(OkStatus(), result->mutable_status());
    ToProto(lease->info, result->mutable_info());
    if (auth_ != nullptr) auth_->Own(caller, Authorizer::IdKind::kLease, lease->id);
    result->set_lease_id(lease->id);
    result->set_arena_offset(lease->arena_offset);
    result->set_arena_generation(generation);
    result->set_served_from(ToProtoTier(lease->served_from));
    expires = any ? std::min(expires, lease->expires_in_ms) : lease->expires_in_ms;
    any = true;
  }
  resp->set_expires_in_ms(expires);
  return OkStatus();
}

grpc::Status KvStashService::Release(grpc::ServerContext* ctx, const v1::ReleaseRequest* req,
                                     v1::ReleaseResponse* resp) {
  RpcScope scope(metrics_, Method::kRelease, req->ByteSizeLong());
  Result<Caller> caller = Who(ctx);
  Status s = caller.ok() ? CheckKeyCount(req->lease_ids_size(), "Release") : caller.status();
  if (s.ok()) {
    for (uint64_t id : req->lease_ids()) {
      Status owner = CheckOwner(ctx, &*caller, /*lease=*/true, id);
      ToItemStatus(owner.ok() ? store_->Release(id) : owner, resp->add_results());
    }
  }
  scope.Finish(s);
  scope.AddSent(resp->ByteSizeLong());
  return ToGrpcStatus(s);
}

// ---- Delete, pin, list, stats, arena ----------------------------------------

Status KvStashService::DoKeys(const grpc::ServerContext* ctx, KeysOp op, const v1::KeysRequest& req,
                              v1::KeysResponse* resp) {
  static const char* kNames[] = {"Delete", "Pin", "Unpin"};
  KVSTASH_ASSIGN_OR_RETURN(Caller caller, Who(ctx));
  KVSTASH_RETURN_IF_ERROR(CheckWrite(caller, kNames[static_cast<int>(op)]));
  KVSTASH_RETURN_IF_ERROR(CheckKeyCount(req.keys_size(), kNames[static_cast<int>(op)]));
  KVSTASH_ASSIGN_OR_RETURN(std::vector<ObjectName> names, CallerKeys(caller, req.keys()));
  for (const ObjectName& name : names) {
    Status s;
    switch (op) {
      case KeysOp::kDelete:
        s = store_->Delete(name.storage_key);
        break;
      case KeysOp::kPin:
        s = store_->Pin(name.storage_key);
        break;
      case KeysOp::kUnpin:
        s = store_->Unpin(name.storage_key);
        break;
    }
    ToItemStatus(s, resp->add_results());
  }
  return OkStatus();
}

grpc::Status KvStashService::Delete(grpc::ServerContext* ctx, const v1::KeysRequest* req,
                                    v1::KeysResponse* resp) {
  RpcScope scope(metrics_, Method::kDelete, req->ByteSizeLong());
  Status s = scope.Finish(DoKeys(ctx, KeysOp::kDelete, *req, resp));
  scope.AddSent(resp->ByteSizeLong());
  return ToGrpcStatus(s);
}

grpc::Status KvStashService::Pin(grpc::ServerContext* ctx, const v1::KeysRequest* req,
                                 v1::KeysResponse* resp) {
  RpcScope scope(metrics_, Method::kPin, req->ByteSizeLong());
  Status s = scope.Finish(DoKeys(ctx, KeysOp::kPin, *req, resp));
  scope.AddSent(resp->ByteSizeLong());
  return ToGrpcStatus(s);
}

grpc::Status KvStashService::Unpin(grpc::ServerContext* ctx, const v1::KeysRequest* req,
                                   v1::KeysResponse* resp) {
  RpcScope scope(metrics_, Method::kUnpin, req->ByteSizeLong());
  Status s = scope.Finish(DoKeys(ctx, KeysOp::kUnpin, *req, resp));
  scope.AddSent(resp->ByteSizeLong());
  return ToGrpcStatus(s);
}

grpc::Status KvStashService::List(grpc::ServerContext* ctx, const v1::ListRequest* req,
                                  v1::ListResponse* resp) {
  RpcScope scope(metrics_, Method::kList, req->ByteSizeLong());
  Status s = scope.Finish(DoList(ctx, *req, resp));
  scope.AddSent(resp->ByteSizeLong());
  return ToGrpcStatus(s);
}

Status KvStashService::DoList(const grpc::ServerContext* ctx, const v1::ListRequest& req,
                              v1::ListResponse* resp) {
  KVSTASH_ASSIGN_OR_RETURN(Caller caller, Who(ctx));
  if (req.namespace_().size() > kMaxNamespaceBytes) {
    return Invalid(absl::StrCat("namespace longer than ", kMaxNamespaceBytes, " bytes"));
  }
  std::string name_space = req.namespace_();
  if (auth_ != nullptr) {
    KVSTASH_RETURN_IF_ERROR(auth_->CheckList(caller, name_space, req.all_namespaces()));
    if (caller.restricted && name_space.empty()) name_space = caller.identity.tenant;
  }
  uint32_t limit = req.limit() == 0 ? 1000 : std::min(req.limit(), config_.max_list_limit);
  KVSTASH_ASSIGN_OR_RETURN(storage::ListPage page,
                           store_->List(name_space, req.all_namespaces(), limit, req.page_token()));
  for (const storage::ListedObject& o : page.objects) {
    v1::ListedObject* out = resp->add_objects();
    auto key_bytes = o.name.storage_key.Bytes();
    out->set_storage_key(key_bytes.data(), key_bytes.size());
    ToProto(MakeObjectName(o.name.name_space, o.name.model_fingerprint, o.name.token_hash),
            out->mutable_key());
    ToProto(o.info, out->mutable_info());
    out->set_tier(ToProtoTier(o.tier));
    out->set_pinned(o.pinned);
    out->set_hits(o.hits);
  }
  resp->set_next_page_token(page.next_page_token);
  return OkStatus();
}

grpc::Status KvStashService::Stats(grpc::ServerContext* ctx, const v1::StatsRequest* req,
                                   v1::StatsResponse* resp) {
  RpcScope scope(metrics_, Method::kStats, req->ByteSizeLong());
  Status s = scope.Finish(DoStats(ctx, resp));
  scope.AddSent(resp->ByteSizeLong());
  return ToGrpcStatus(s);
}

Status KvStashService::DoStats(const grpc::ServerContext* ctx, v1::StatsResponse* resp) {
  KVSTASH_ASSIGN_OR_RETURN(Caller caller, Who(ctx));
  if (!caller.admin()) {
    // A tenant sees its own bytes per tier against its quota, nothing of the others.
    const storage::NamespaceUsage usage = store_->Usage(caller.identity.tenant);
    const TenantQuota quota = auth_->Quota(caller.identity.tenant);
    v1::TierStats* cpu = resp->add_tiers();
    cpu->set_tier(ToProtoTier(storage::Tier::kCpu));
    cpu->set_capacity_bytes(quota.cpu_bytes);
    cpu->set_used_bytes(usage.cpu_bytes);
    cpu->set_logical_bytes(usage.cpu_bytes);
    v1::TierStats* ssd = resp->add_tiers();
    ssd->set_tier(ToProtoTier(storage::Tier::kSsd));
    ssd->set_capacity_bytes(quota.ssd_bytes);
    ssd->set_used_bytes(usage.ssd_bytes);
    ssd->set_logical_bytes(usage.ssd_bytes);
    resp->set_version(KVSTASH_VERSION);
    return OkStatus();
  }
  storage::StoreStats stats = store_->Stats();
  if (remote_ != nullptr && remote_->has_peers()) stats.tiers.push_back(remote_->Stats());
  for (const storage::TierStats& t : stats.tiers) {
    v1::TierStats* out = resp->add_tiers();
    out->set_tier(ToProtoTier(t.tier));
    out->set_capacity_bytes(t.capacity_bytes);
    out->set_used_bytes(t.used_bytes);
    out->set_objects(t.objects);
    out->set_hits(t.hits);
    out->set_misses(t.misses);
    out->set_evictions(t.evictions);
    out->set_bytes_read(t.bytes_read);
    out->set_bytes_written(t.bytes_written);
    out->set_logical_bytes(t.logical_bytes);
  }
  resp->set_checksum_failures(stats.checksum_failures);
  resp->set_reservations_active(stats.reservations_active);
  resp->set_reservations_expired(stats.reservations_expired);
  resp->set_leases_active(stats.leases_active);
  resp->set_pinned_objects(stats.pinned_objects);
  resp->set_version(KVSTASH_VERSION);
  resp->set_uptime_ms(static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started_).count()));
  return OkStatus();
}

grpc::Status KvStashService::ArenaInfo(grpc::ServerContext* ctx, const v1::ArenaInfoRequest* req,
                                       v1::ArenaInfoResponse* resp) {
  RpcScope scope(metrics_, Method::kArenaInfo, req->ByteSizeLong());
  Status s = DoArenaInfo(ctx, *req, resp);
  if (!s.ok()) {
    resp->Clear();  // no path, and above all no ticket, with an error
    return ToGrpcStatus(scope.Finish(s));
  }
  scope.Finish(OkStatus());
  scope.AddSent(resp->ByteSizeLong());
  return grpc::Status::OK;
}

Status KvStashService::DoArenaInfo(const grpc::ServerContext* ctx, const v1::ArenaInfoRequest& req,
                                   v1::ArenaInfoResponse* resp) {
  uint64_t arena_bytes = store_->arena_bytes();
  if (auth_ != nullptr && auth_->multi_tenant()) {
    // A tenant maps only its own arena (docs/deploy.md "Shared memory"); the arena socket checks
    // the bearer token (or the attach ticket) again before it sends any fd.
    const uint64_t generation = auth_->generation();  // before the caller is authenticated
    std::vector<std::string> certificate_names;
    Result<Caller> caller =
        ctx == nullptr ? Who(ctx) : auth_->Authenticate(ctx, &certificate_names);
    KVSTASH_RETURN_IF_ERROR(caller.status());
    const storage::ArenaSegment seg = store_->arena_segment(caller->identity.tenant);
    if (!caller->restricted || seg.index == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "no shared memory for ",
          caller->restricted ? "tenant " + caller->identity.tenant : std::string("peers"),
          " on this multi-tenant cachesvc (a tenant gets an arena of its own from a cpu quota); "
          "use the gRPC byte streams"));
    }
    arena_bytes = seg.bytes;
    resp->set_read_only(caller->identity.read_only);
    if (req.attach_ticket()) {
      // docs/deploy.md "Attach tickets": the arena socket cannot see the client certificate, so
      // the identity it maps to travels to the socket as a single-use ticket.
      if (certificate_names.empty() || tickets_ == nullptr) {
        return absl::FailedPreconditionError(
            "attach tickets are for callers identified by a client certificate alone; a bearer "
            "token goes in the attach request itself");
      }
      // Not a security check (a ticket works only on this host's arena socket anyway): a client
      // on another host, whose arena socket path may exist there too, gets no ticket to waste.
      const std::string& host = HostBootId();
      if (!req.host_id().empty() && !host.empty() && req.host_id() != host) {
        return absl::FailedPreconditionError(
            "the caller runs on another host than this cachesvc (ArenaInfoRequest.host_id): it "
            "cannot reach the arena; use the gRPC byte streams");
      }
      KVSTASH_ASSIGN_OR_RETURN(
          std::string ticket,
          tickets_->Issue(
              TicketGrant{*caller, Credential{"", std::move(certificate_names)}, generation}));
      resp->set_attach_ticket(std::move(ticket));
      resp->set_attach_ticket_ttl_ms(static_cast<uint32_t>(tickets_->ttl().count()));
    }
  } else if (req.attach_ticket()) {
    return absl::FailedPreconditionError(
        "attach tickets are issued by multi-tenant cachesvc nodes (--tokens-file) only; a "
        "single-tenant node's arena socket is guarded by its file permissions: dial its unix "
        "socket");
  }
  resp->set_fd_socket_path(arena_socket_path_);
  resp->set_arena_bytes(arena_bytes);
  resp->set_arena_generation(store_->arena_generation());
  resp->set_alignment(kArenaAlignment);
  return OkStatus();
}

}  // namespace kvstash::cachesvc
