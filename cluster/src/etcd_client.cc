#include "kvstash/cluster/etcd_client.h"

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "etcd_internal.h"

namespace kvstash::cluster {
namespace {

std::string ChannelTarget(const std::string& endpoint) {
  for (const char* scheme : {"http://", "https://"}) {
    const std::string s(scheme);
    if (endpoint.rfind(s, 0) == 0) {
      std::string rest = endpoint.substr(s.size());
      if (!rest.empty() && rest.back() == '/') rest.pop_back();
      return rest;
    }
  }
  return endpoint;
}

KeyValue FromProto(const mvccpb::KeyValue& kv) {
  return KeyValue{kv.key(), kv.value(), kv.mod_revision(), kv.lease()};
}

}  // namespace

std::string PrefixRangeEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    unsigned char last = static_cast<unsigned char>(end.back());
    if (last < 0xff) {
      end.back() = static_cast<char>(last + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');
}

Status EtcdClient::Impl::Check(const grpc::Status& s, const char* call, const Endpoint& ep) {
  if (s.ok()) return OkStatus();
  const auto code = static_cast<absl::StatusCode>(s.error_code());
  if (code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kDeadlineExceeded) {
    size_t expected = current.load();
    if (endpoints.size() > 1 && endpoints[expected % endpoints.size()].target == ep.target) {
      current.compare_exchange_strong(expected, expected + 1);
    }
  }
  return Status(code, absl::StrCat("etcd ", call, " at ", ep.target, ": ", s.error_message()));
}

EtcdClient::EtcdClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
EtcdClient::~EtcdClient() = default;

Result<std::unique_ptr<EtcdClient>> EtcdClient::Create(const EtcdOptions& options) {
  if (options.endpoints.empty()) return absl::InvalidArgumentError("no etcd endpoints");
  if (options.timeout_ms == 0) return absl::InvalidArgumentError("etcd timeout_ms is 0");
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  grpc::ChannelArguments args;
  // Reconnect soon after etcd returns (gRPC's default back-off grows to two minutes).
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  for (const std::string& e : options.endpoints) {
    if (e.empty()) return absl::InvalidArgumentError("empty etcd endpoint");
    Impl::Endpoint ep;
    ep.target = ChannelTarget(e);
    ep.channel = grpc::CreateCustomChannel(ep.target, grpc::InsecureChannelCredentials(), args);
    ep.kv = etcdserverpb::KV::NewStub(ep.channel);
    ep.lease = etcdserverpb::Lease::NewStub(ep.channel);
    ep.watch = etcdserverpb::Watch::NewStub(ep.channel);
    impl->endpoints.push_back(std::move(ep));
  }
  return std::unique_ptr<EtcdClient>(new EtcdClient(std::move(impl)));
}

std::string EtcdClient::current_endpoint() const { return impl_->Pick().target; }

Result<int64_t> EtcdClient::Put(const std::string& key, const std::string& value, int64_t lease) {
  Impl::Endpoint& ep = impl_->Pick();
  grpc::ClientContext ctx;
  impl_->SetDeadline(&ctx);
  etcdserverpb::PutRequest req;
  req.set_key(key);
  req.set_value(value);
  req.set_lease(lease);
  etcdserverpb::PutResponse resp;
  KVSTASH_RETURN_IF_ERROR(impl_->Check(ep.kv->Put(&ctx, req, &resp), "Put", ep));
  return resp.header().revision();
}

Result<RangeResult> EtcdClient::Impl::Range(const std::string& key, const std::string& range_end) {
  Endpoint& ep = Pick();
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  etcdserverpb::RangeRequest req;
  req.set_key(key);
  if (!range_end.empty()) req.set_range_end(range_end);
  etcdserverpb::RangeResponse resp;
  KVSTASH_RETURN_IF_ERROR(Check(ep.kv->Range(&ctx, req, &resp), "Range", ep));
  RangeResult out;
  out.revision = resp.header().revision();
  for (const auto& kv : resp.kvs()) out.kvs.push_back(FromProto(kv));
  return out;
}

Result<RangeResult> EtcdClient::Get(const std::string& key) { return impl_->Range(key, ""); }

Result<RangeResult> EtcdClient::GetPrefix(const std::string& prefix) {
  return impl_->Range(prefix, PrefixRangeEnd(prefix));
}

Result<int64_t> EtcdClient::Delete(const std::string& key) {
  Impl::Endpoint& ep = impl_->Pick();
  grpc::ClientContext ctx;
  impl_->SetDeadline(&ctx);
  etcdserverpb::DeleteRangeRequest req;
  req.set_key(key);
  etcdserverpb::DeleteRangeResponse resp;
  KVSTASH_RETURN_IF_ERROR(impl_->Check(ep.kv->DeleteRange(&ctx, req, &resp), "DeleteRange", ep));
  return resp.deleted();
}

Result<int64_t> EtcdClient::LeaseGrant(int64_t ttl_s) {
  if (ttl_s <= 0) return absl::InvalidArgumentError("lease TTL must be positive");
  Impl::Endpoint& ep = impl_->Pick();
  grpc::ClientContext ctx;
  impl_->SetDeadline(&ctx);
  etcdserverpb::LeaseGrantRequest req;
  req.set_ttl(ttl_s);
  etcdserverpb::LeaseGrantResponse resp;
  KVSTASH_RETURN_IF_ERROR(impl_->Check(ep.lease->LeaseGrant(&ctx, req, &resp), "LeaseGrant", ep));
  if (!resp.error().empty()) {
    return absl::UnavailableError(absl::StrCat("etcd LeaseGrant: ", resp.error()));
  }
  return resp.id();
}

Result<int64_t> EtcdClient::LeaseKeepAliveOnce(int64_t lease) {
  Impl::Endpoint& ep = impl_->Pick();
  grpc::ClientContext ctx;
  impl_->SetDeadline(&ctx);
  // LeaseKeepAlive is a stream; one request and one answer per renewal keeps no stream state
  // across etcd restarts.
  auto stream = ep.lease->LeaseKeepAlive(&ctx);
  etcdserverpb::LeaseKeepAliveRequest req;
  req.set_id(lease);
  etcdserverpb::LeaseKeepAliveResponse resp;
  bool answered = stream->Write(req) && stream->Read(&resp);
  stream->WritesDone();
  if (!answered) ctx.TryCancel();
  grpc::Status s = stream->Finish();
  if (!answered) {
    KVSTASH_RETURN_IF_ERROR(impl_->Check(s, "LeaseKeepAlive", ep));
    // Finish said OK (or CANCELLED by us) but no answer came.
    return absl::UnavailableError(absl::StrCat("etcd LeaseKeepAlive at ", ep.target,
                                               ": no answer (", s.error_message(), ")"));
  }
  if (resp.ttl() <= 0) {
    return absl::NotFoundError(absl::StrCat("etcd lease ", lease, " has expired"));
  }
  return resp.ttl();
}

Status EtcdClient::LeaseRevoke(int64_t lease) {
  Impl::Endpoint& ep = impl_->Pick();
  grpc::ClientContext ctx;
  impl_->SetDeadline(&ctx);
  etcdserverpb::LeaseRevokeRequest req;
  req.set_id(lease);
  etcdserverpb::LeaseRevokeResponse resp;
  return impl_->Check(ep.lease->LeaseRevoke(&ctx, req, &resp), "LeaseRevoke", ep);
}

}  // namespace kvstash::cluster
