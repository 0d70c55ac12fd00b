// KvClient's prefill/decode handoff calls and the Handoff wire form (a HandoffDescriptor).
#include "absl/strings/str_cat.h"
#include "client_core.h"
#include "kvstash/client/kv_client.h"
#include "kvstash/proto/convert.h"
#include "kvstash/proto/status_mapping.h"

namespace kvstash::client {
namespace {

void ToDescriptor(const Handoff& h, v1::HandoffDescriptor* d) {
  d->set_node(h.node);
  d->set_handoff_id(h.id);
  for (const ObjectName& n : h.names) ToProto(n, d->add_keys());
  for (uint64_t b : h.payload_bytes) d->add_payload_bytes(b);
}

Result<Handoff> FromDescriptor(const v1::HandoffDescriptor& d) {
  if (d.keys_size() != d.payload_bytes_size()) {
    return absl::InvalidArgumentError("handoff: one payload size per key expected");
  }
  if (d.node().empty() || d.node().size() > 1024) {
    return absl::InvalidArgumentError("handoff: node address missing or too long");
  }
  Handoff h;
  h.node = d.node();
  h.id = d.handoff_id();
  for (int i = 0; i < d.keys_size(); ++i) {
    KVSTASH_ASSIGN_OR_RETURN(ObjectName n, FromProto(d.keys(i)));
    h.names.push_back(std::move(n));
    h.payload_bytes.push_back(d.payload_bytes(i));
  }
  return h;
}

}  // namespace

std::string Handoff::Serialize() const {
  v1::HandoffDescriptor d;
  ToDescriptor(*this, &d);
  return d.SerializeAsString();
}

Result<Handoff> Handoff::Parse(std::string_view bytes) {
  v1::HandoffDescriptor d;
  if (bytes.size() > (64u << 20) ||
      !d.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::InvalidArgumentError("not a serialized handoff");
  }
  return FromDescriptor(d);
}

Result<Handoff> KvClient::Offer(std::span<const ObjectName> names, uint32_t handoff_ms) {
  grpc::ClientContext ctx;
  core_->SetRpcDeadline(&ctx);
  v1::OfferRequest req;
  for (const ObjectName& n : names) ToProto(n, req.add_keys());
  req.set_handoff_ms(handoff_ms);
  v1::OfferResponse resp;
  KVSTASH_RETURN_IF_ERROR(FromGrpcStatus(core_->stub->Offer(&ctx, req, &resp)));
  KVSTASH_ASSIGN_OR_RETURN(Handoff h, FromDescriptor(resp.handoff()));
  h.expires_in_ms = resp.expires_in_ms();
  return h;
}

Result<HandoffFetch> KvClient::FetchHandoff(const Handoff& handoff, bool all_or_nothing,
                                            Tier land_tier) {
  if (land_tier != Tier::kCpu && land_tier != Tier::kGpu) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a handoff cannot land in the ", std::string(TierName(land_tier)), " tier (cpu or gpu)"));
  }
  grpc::ClientContext ctx;
  core_->SetRpcDeadline(&ctx);
  v1::FetchHandoffRequest req;
  ToDescriptor(handoff, req.mutable_handoff());
  req.set_all_or_nothing(all_or_nothing);
  if (land_tier == Tier::kGpu) req.set_land_tier(v1::TIER_GPU);
  v1::FetchHandoffResponse resp;
  KVSTASH_RETURN_IF_ERROR(FromGrpcStatus(core_->stub->FetchHandoff(&ctx, req, &resp)));
  if (static_cast<size_t>(resp.results_size()) != handoff.names.size()) {
    return absl::InternalError("FetchHandoff answered with a wrong number of results");
  }
  HandoffFetch out;
  for (const v1::ItemStatus& r : resp.results()) out.results.push_back(FromItemStatus(r));
  out.fetched = resp.fetched();
  out.already_local = resp.already_local();
  out.longest_prefix = resp.longest_prefix();
  out.fetched_bytes = resp.fetched_bytes();
  return out;
}

Result<uint64_t> KvClient::HeartbeatHandoff(const Handoff& handoff, uint32_t extend_ms) {
  grpc::ClientContext ctx;
  core_->SetRpcDeadline(&ctx);
  v1::HandoffRequest req;
  req.set_node(handoff.node);
  req.set_handoff_id(handoff.id);
  req.set_extend_ms(extend_ms);
  v1::HandoffResponse resp;
  KVSTASH_RETURN_IF_ERROR(FromGrpcStatus(core_->stub->HeartbeatHandoff(&ctx, req, &resp)));
  return resp.expires_in_ms();
}

Status KvClient::ReleaseHandoff(const Handoff& handoff) {
  grpc::ClientContext ctx;
  core_->SetRpcDeadline(&ctx);
  v1::HandoffRequest req;
  req.set_node(handoff.node);
  req.set_handoff_id(handoff.id);
  v1::HandoffResponse resp;
  return FromGrpcStatus(core_->stub->ReleaseHandoff(&ctx, req, &resp));
}

}  // namespace kvstash::client
