// Prefill/decode handoff RPCs of KvStashService (docs/api.md "Handoff"): Offer on the prefill
// node, FetchHandoff on the decode node (which pulls from the prefill node through the remote
// tier and then ends the handoff there), heartbeats and releases forwarded to the node that
// holds the handoff.
#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "kv_service.h"
#include "kvstash/proto/convert.h"
#include "kvstash/proto/status_mapping.h"
#include "request_checks.h"

namespace kvstash::cachesvc {

namespace {

// The tenant a handoff call acts for: a user's or admin's own (restricted callers), the one a
// peer forwards for (kForTenantHeader; only peers may name one), or empty (single-tenant mode,
// or a peer acting for nobody in particular): see HandoffRegistry.
std::string HandoffTenant(const grpc::ServerContext* ctx, const Caller& caller) {
  if (caller.restricted) return caller.identity.tenant;
  if (caller.identity.role != Role::kPeer || ctx == nullptr) return "";
  auto it = ctx->client_metadata().find(kForTenantHeader);
  if (it == ctx->client_metadata().end()) return "";
  return std::string(it->second.data(), it->second.size());
}

}  // namespace

void KvStashService::SetAdvertisedAddress(std::string address) {
  MutexLock lock(&advertised_mu_);
  advertised_ = std::move(address);
}

std::string KvStashService::AdvertisedAddress() const {
  MutexLock lock(&advertised_mu_);
  return advertised_;
}

grpc::Status KvStashService::Offer(grpc::ServerContext* ctx, const v1::OfferRequest* req,
                                   v1::OfferResponse* resp) {
  RpcScope scope(metrics_, Method::kOffer, req->ByteSizeLong());
  Status s = scope.Finish(DoOffer(ctx, *req, resp));
  scope.AddSent(resp->ByteSizeLong());
  return ToGrpcStatus(s);
}

Status KvStashService::DoOffer(const grpc::ServerContext* ctx, const v1::OfferRequest& req,
                               v1::OfferResponse* resp) {
  KVSTASH_ASSIGN_OR_RETURN(Caller caller, Who(ctx));
  KVSTASH_RETURN_IF_ERROR(CheckWrite(caller, "Offer"));  // it pins the objects
  if (handoffs_ == nullptr) return absl::UnimplementedError("this node does not offer handoffs");
  KVSTASH_RETURN_IF_ERROR(CheckKeyCount(req.keys_size(), "Offer"));
  KVSTASH_ASSIGN_OR_RETURN(std::vector<ObjectName> names, CallerKeys(caller, req.keys()));
  KVSTASH_ASSIGN_OR_RETURN(HandoffRegistry::Offered offered,
                           handoffs_->Offer(names, req.handoff_ms(), HandoffTenant(ctx, caller)));
  v1::HandoffDescriptor* d = resp->mutable_handoff();
  d->set_node(AdvertisedAddress());
  d->set_handoff_id(offered.id);
  for (size_t k = 0; k < offered.pinned.size(); ++k) {
    *d->add_keys() = req.keys(static_cast<int>(offered.pinned[k]));
    d->add_payload_bytes(offered.payload_bytes[k]);
  }
  for (const Status& r : offered.results) ToItemStatus(r, resp->add_results());
  resp->set_expires_in_ms(offered.expires_in_ms);
  return OkStatus();
}

grpc::Status KvStashService::FetchHandoff(grpc::ServerContext* ctx,
                                          const v1::FetchHandoffRequest* req,
                                          v1::FetchHandoffResponse* resp) {
  RpcScope scope(metrics_, Method::kFetchHandoff, req->ByteSizeLong());
  Status s = scope.Finish(DoFetchHandoff(ctx, *req, resp));
  scope.AddSent(resp->ByteSizeLong());
  return ToGrpcStatus(s);
}

Status KvStashService::DoFetchHandoff(const grpc::ServerContext* ctx,
                                      const v1::FetchHandoffRequest& req,
                                      v1::FetchHandoffResponse* resp) {
  KVSTASH_ASSIGN_OR_RETURN(Caller caller, Who(ctx));
  KVSTASH_RETURN_IF_ERROR(CheckWrite(caller, "FetchHandoff"));  // it stores what it fetches
  const v1::HandoffDescriptor& d = req.handoff();
  KVSTASH_RETURN_IF_ERROR(CheckKeyCount(d.keys_size(), "FetchHandoff"));
  if (d.payload_bytes_size() != d.keys_size()) {
    return Invalid("descriptor: payload_bytes must have one entry per key");
  }
  if (d.node().empty()) return Invalid("descriptor: node is empty");
  KVSTASH_ASSIGN_OR_RETURN(std::vector<ObjectName> names, CallerKeys(caller, d.keys()));
  const std::string tenant = HandoffTenant(ctx, caller);
  // Where the objects land here (proto field land_tier): the arena unless the GPU tier is asked
  // for, which needs a GPU pool that UCX can read peers' bytes into.
  storage::Tier land = storage::Tier::kCpu;
  if (req.land_tier() == v1::TIER_GPU) {
    land = storage::Tier::kGpu;
    if (remote_ != nullptr) {
      KVSTASH_RETURN_IF_ERROR(remote_->CanLandInGpu());
    } else if (config_.gpu_pool_bytes == 0) {
      return absl::FailedPreconditionError(
          "this node has no GPU pool (cachesvc --gpu-pool-capacity): nothing can land in the gpu "
          "tier");
    } else {
      return absl::FailedPreconditionError(
          "landing in the GPU tier needs this node's UCX data plane (--peer and a cluster secret)");
    }
  } else if (req.land_tier() != v1::TIER_UNSPECIFIED && req.land_tier() != v1::TIER_CPU) {
    return Invalid("land_tier: a handoff lands in TIER_CPU (the default) or TIER_GPU");
  }
  const bool self = d.node() == AdvertisedAddress();
  if (!self && (remote_ == nullptr || !remote_->IsPeer(d.node()))) {
    // Never dial (and present the cluster secret to) an address an engine made up.
    return absl::FailedPreconditionError(absl::StrCat("cannot fetch a handoff from ", d.node(),
                                                      ": not a peer of this node (--peer)"));
  }
  if (self && handoffs_ != nullptr) {
    // Another tenant's handoff: refused before anything is read or released. (An unknown id is
    // not an error here: the objects may still be stored.)
    Status owner = handoffs_->Check(d.handoff_id(), tenant);
    if (absl::IsPermissionDenied(owner)) return owner;
  }
  // What this node holds already is not fetched again.
  std::vector<Status> results(names.size());
  std::vector<ObjectName> missing;
  std::vector<size_t> missing_at;
  for (size_t i = 0; i < names.size(); ++i) {
    storage::LookupEntry entry = store_->Lookup(names[i].storage_key);
    if (entry.present) {
      resp->set_already_local(resp->already_local() + 1);
      continue;
    }
    if (self) {
      results[i] = absl::NotFoundError("offered by this node but no longer stored");
      continue;
    }
    missing.push_back(names[i]);
    missing_at.push_back(i);
  }
  if (!missing.empty()) {
    std::vector<Status> fetched = remote_->FetchFrom(d.node(), missing, land);
    for (size_t k = 0; k < missing.size(); ++k) {
      const size_t i = missing_at[k];
      results[i] = fetched[k];
      if (fetched[k].ok()) {
        resp->set_fetched(resp->fetched() + 1);
        resp->set_fetched_bytes(resp->fetched_bytes() + d.payload_bytes(static_cast<int>(i)));
      }
    }
  }
  // The pins on the prefill node have done their job (or the data is lost either way).
  if (!self) {
    // The prefill node checks the tenant only now: what was fetched above are objects of the
    // caller's own namespace (CallerKeys), which it may read anyway, but another tenant's
    // handoff stays pinned and the call is refused.
    Result<uint64_t> released = remote_->ForwardHandoff(d.node(), d.handoff_id(), 0, true, tenant);
    if (absl::IsPermissionDenied(released.status())) return released.status();
    if (!released.ok()) {
      spdlog::warn("event=handoff_release_failed node={} id={:016x} error=\"{}\"", d.node(),
                   d.handoff_id(), std::string(released.status().message()));
    }
  } else if (handoffs_ != nullptr) {
    (void)handoffs_->Release(d.handoff_id(), tenant);
  }
  Status first_failure;
  uint32_t prefix = 0;
  bool open = true;
  for (const Status& r : results) {
    ToItemStatus(r, resp->add_results());
    open = open && r.ok();
    if (open) ++prefix;
    if (!r.ok() && first_failure.ok()) first_failure = r;
  }
  resp->set_longest_prefix(prefix);
  spdlog::info(
      "event=handoff_fetched node={} id={:016x} land_tier={} objects={} fetched={} "
      "already_local={} failed={}",
      d.node(), d.handoff_id(), TierName(land), names.size(), resp->fetched(),
      resp->already_local(), names.size() - resp->fetched() - resp->already_local());
  if (req.all_or_nothing() && !first_failure.ok()) {
    return Status(first_failure.code(),
                  absl::StrCat("handoff incomplete: ", first_failure.message()));
  }
  return OkStatus();
}

grpc::Status KvStashService::HeartbeatHandoff(grpc::ServerContext* ctx,
                                              const v1::HandoffRequest* req,
                                              v1::HandoffResponse* resp) {
  RpcScope scope(metrics_, Method::kHeartbeatHandoff, req->ByteSizeLong());
  return ToGrpcStatus(scope.Finish(DoHandoff(ctx, *req, /*release=*/false, resp)));
}

grpc::Status KvStashService::ReleaseHandoff(grpc::ServerContext* ctx, const v1::HandoffRequest* req,
                                            v1::HandoffResponse* resp) {
  RpcScope scope(metrics_, Method::kReleaseHandoff, req->ByteSizeLong());
  return ToGrpcStatus(scope.Finish(DoHandoff(ctx, *req, /*release=*/true, resp)));
}

Status KvStashService::DoHandoff(const grpc::ServerContext* ctx, const v1::HandoffRequest& req,
                                 bool release, v1::HandoffResponse* resp) {
  // Handoff ids are random 64-bit values, and a handoff is its offering tenant's: another
  // tenant holding the descriptor may neither extend nor end it (peers forward the tenant).
  KVSTASH_ASSIGN_OR_RETURN(Caller caller, Who(ctx));
  const std::string tenant = HandoffTenant(ctx, caller);
  const bool here = req.node().empty() || req.node() == AdvertisedAddress() || LocalScopeOnly(ctx);
  if (here) {
    if (handoffs_ == nullptr) return absl::NotFoundError("unknown handoff");
    if (release) return handoffs_->Release(req.handoff_id(), tenant);
    KVSTASH_ASSIGN_OR_RETURN(uint64_t ms,
                             handoffs_->Extend(req.handoff_id(), req.extend_ms(), tenant));
    resp->set_expires_in_ms(ms);
    return OkStatus();
  }
  if (remote_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("handoff of node ", req.node(), ": this node has no peers (--peer)"));
  }
  KVSTASH_ASSIGN_OR_RETURN(uint64_t ms, remote_->ForwardHandoff(req.node(), req.handoff_id(),
                                                                req.extend_ms(), release, tenant));
  resp->set_expires_in_ms(ms);
  return OkStatus();
}

}  // namespace kvstash::cachesvc
