#include "local_control_session.h"

#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "kvstash/common/mutex.h"
#include "kvstash/proto/local_control.h"

namespace kvstash::cachesvc {
namespace {

// Beyond this many open handles per client the rest are left to expire on their own, so a client
// that never releases cannot grow the record without bound.
constexpr size_t kMaxTrackedHandles = size_t{1} << 20;

// The reservations and leases one client holds. Shared by the sessions of its connections.
class ClientHandles {
 public:
  void AddReservation(uint64_t id) { Add(&reservations_, id); }
  void AddLease(uint64_t id) { Add(&leases_, id); }
  void SettleReservation(uint64_t id) {
    MutexLock lock(&mu_);
    reservations_.erase(id);
  }
  void SettleLease(uint64_t id) {
    MutexLock lock(&mu_);
    leases_.erase(id);
  }
  void MoveTo(ClientHandles* other) {
    MutexLock lock(&mu_);
    for (uint64_t id : reservations_) other->AddReservation(id);
    for (uint64_t id : leases_) other->AddLease(id);
    reservations_.clear();
    leases_.clear();
  }
  // Aborts and releases everything still open (ids settled elsewhere fail quietly: the store
  // never reuses ids). Returns how many were still open.
  uint64_t SettleAll(storage::ObjectStore* store) {
    MutexLock lock(&mu_);
    uint64_t settled = 0;
    for (uint64_t id : reservations_) settled += store->Abort(id).ok() ? 1 : 0;
    for (uint64_t id : leases_) settled += store->Release(id).ok() ? 1 : 0;
    reservations_.clear();
    leases_.clear();
    return settled;
  }

 private:
  void Add(std::unordered_set<uint64_t>* set, uint64_t id) {
    MutexLock lock(&mu_);
    if (set->size() < kMaxTrackedHandles) set->insert(id);
  }

  Mutex mu_;
  std::unordered_set<uint64_t> reservations_ ABSL_GUARDED_BY(mu_);
  std::unordered_set<uint64_t> leases_ ABSL_GUARDED_BY(mu_);
};

// Client id -> its handles and how many connections it has open.
class ClientRegistry {
 public:
  ClientRegistry(storage::ObjectStore* store, Counter* abandoned)
      : store_(store), abandoned_(abandoned) {}

  std::shared_ptr<ClientHandles> Join(const std::string& client_id) {
    MutexLock lock(&mu_);
    Entry& e = clients_[client_id];
    if (e.handles == nullptr) e.handles = std::make_shared<ClientHandles>();
    ++e.connections;
    return e.handles;
  }

  // A connection closed; settles the client's handles when it was the last one. Handles of a
  // connection that never said Hello are its own (`client_id` empty) and are settled at once.
  void Leave(const std::string& client_id, const std::shared_ptr<ClientHandles>& handles) {
    if (!client_id.empty()) {
      MutexLock lock(&mu_);
      auto it = clients_.find(client_id);
      if (it == clients_.end() || --it->second.connections > 0) return;
      clients_.erase(it);
    }
    uint64_t settled = handles->SettleAll(store_);
    if (settled > 0) {
      if (abandoned_ != nullptr) abandoned_->Increment(settled);
      spdlog::info("event=local_client_gone settled_open_handles={}", settled);
    }
  }

 private:
  struct Entry {
    std::shared_ptr<ClientHandles> handles;
    int connections = 0;
  };
  storage::ObjectStore* store_;
  Counter* abandoned_;
  Mutex mu_;
  std::unordered_map<std::string, Entry> clients_ ABSL_GUARDED_BY(mu_);
};

// Parses the request, runs `handler` (a unary KvStashService method; those never touch the
// ServerContext, so none is passed), fills the reply and returns the status it carries.
template <typename Request, typename Response>
grpc::Status Run(KvStashService* service,
                 grpc::Status (KvStashService::*handler)(grpc::ServerContext*, const Request*,
                                                         Response*),
                 std::string_view body, Request* request, Response* response, uint16_t* reply_code,
                 std::string* reply_body) {
  grpc::Status status;
  if (!request->ParseFromArray(body.data(), static_cast<int>(body.size()))) {
    status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("local control: cannot parse the ",
                                       Request::descriptor()->name(), " message"));
  } else {
    status = (service->*handler)(nullptr, request, response);
  }
  *reply_code = static_cast<uint16_t>(status.error_code());
  if (status.ok()) {
    response->SerializeToString(reply_body);
  } else {
    *reply_body = status.error_message();
  }
  return status;
}

// The tenant a multi-tenant node's session calls as (TenantLocalSessions).
struct TenantBinding {
  Authorizer* auth = nullptr;
  Caller caller;
  Credential credential;    // of the attach request, checked again after a reload
  uint64_t generation = 0;  // auth->generation() when `caller` was last checked
  Status refused;           // sticky: the token stopped naming this tenant
};

class ServiceLocalSession final : public LocalControlSession {
 public:
  ServiceLocalSession(KvStashService* service, std::shared_ptr<ClientRegistry> registry,
                      std::unique_ptr<TenantBinding> tenant = nullptr)
      : service_(service),
        registry_(std::move(registry)),
        handles_(std::make_shared<ClientHandles>()),
        tenant_(std::move(tenant)) {}
  ~ServiceLocalSession() override { registry_->Leave(client_id_, handles_); }

  void Handle(uint16_t method, std::string_view body, uint16_t* reply_code,
              std::string* reply_body) override;

 private:
  // OK while the attach request's credential still names the session's tenant.
  Status CheckTenant();
  void Dispatch(uint16_t method, std::string_view body, uint16_t* reply_code,
                std::string* reply_body);

  KvStashService* service_;
  std::shared_ptr<ClientRegistry> registry_;
  std::string client_id_;  // empty until Hello
  std::shared_ptr<ClientHandles> handles_;
  std::unique_ptr<TenantBinding> tenant_;  // null on a single-tenant node
};

Status ServiceLocalSession::CheckTenant() {
  TenantBinding& t = *tenant_;
  if (!t.refused.ok()) return t.refused;
  const uint64_t generation = t.auth->generation();
  if (generation == t.generation) return OkStatus();
  const char* what = t.credential.token.empty() ? "certificate" : "token";
  Result<Caller> now = t.auth->Reauthenticate(t.credential);
  if (!now.ok()) {
    t.refused = absl::UnauthenticatedError(
        absl::StrCat("local control: the ", what, " of this connection no longer authenticates (",
                     std::string(now.status().message()), ")"));
  } else if (!now->restricted || now->identity.tenant != t.caller.identity.tenant) {
    t.refused = absl::UnauthenticatedError(absl::StrCat(
        "local control: the ", what, " of this connection now names another tenant; attach again"));
  } else {
    t.caller = *now;  // a changed role or access takes effect now
    t.generation = generation;
  }
  return t.refused;
}

void ServiceLocalSession::Handle(uint16_t method, std::string_view body, uint16_t* reply_code,
                                 std::string* reply_body) {
  if (tenant_ == nullptr) {
    Dispatch(method, body, reply_code, reply_body);
    return;
  }
  Status s = CheckTenant();
  if (!s.ok()) {
    *reply_code = static_cast<uint16_t>(s.code());
    *reply_body = std::string(s.message());
    return;
  }
  KvStashService::CallerScope scope(tenant_->caller);
  Dispatch(method, body, reply_code, reply_body);
}

void ServiceLocalSession::Dispatch(uint16_t method, std::string_view body, uint16_t* reply_code,
                                   std::string* reply_body) {
  switch (static_cast<LocalMethod>(method)) {
    case LocalMethod::kHello: {
      if (body.size() != kLocalClientIdBytes || !client_id_.empty()) {
        *reply_code = static_cast<uint16_t>(grpc::StatusCode::INVALID_ARGUMENT);
        *reply_body = client_id_.empty()
                          ? absl::StrCat("local control: Hello carries ", body.size(),
                                         " bytes, expected a ", kLocalClientIdBytes, "-byte id")
                          : "local control: Hello sent twice on one connection";
        return;
      }
      // A tenant's ids are its own: another tenant naming the same id joins another record.
      client_id_ = tenant_ == nullptr
                       ? std::string(body)
                       : absl::StrCat(tenant_->caller.identity.tenant, "/", std::string(body));
      std::shared_ptr<ClientHandles> own = std::move(handles_);
      handles_ = registry_->Join(client_id_);
      own->MoveTo(handles_.get());  // what this connection took before its Hello
      *reply_code = 0;
      return;
    }
    case LocalMethod::kAttach:
      // The arena attach request every client sends first; a single-tenant service has nothing
      // to check (it sent the handshake already). It carries kLocalFlagNoReply.
      *reply_code = 0;
      return;
    case LocalMethod::kLookup: {
      v1::LookupRequest req;
      v1::LookupResponse resp;
      Run(service_, &KvStashService::Lookup, body, &req, &resp, reply_code, reply_body);
      return;
    }
    case LocalMethod::kReserve: {
      v1::ReserveRequest req;
      v1::ReserveResponse resp;
      if (Run(service_, &KvStashService::Reserve, body, &req, &resp, reply_code, reply_body).ok()) {
        handles_->AddReservation(resp.reservation_id());
      }
      return;
    }
    case LocalMethod::kReserveMany: {
      v1::ReserveManyRequest req;
      v1::ReserveManyResponse resp;
      if (Run(service_, &KvStashService::ReserveMany, body, &req, &resp, reply_code, reply_body)
              .ok()) {
        for (const v1::ReserveResult& r : resp.results()) {
          if (r.status().code() == 0) handles_->AddReservation(r.reservation().reservation_id());
        }
      }
      return;
    }
    case LocalMethod::kCommit: {
      v1::CommitRequest req;
      v1::CommitResponse resp;
      Run(service_, &KvStashService::Commit, body, &req, &resp, reply_code, reply_body);
      // Settled either way: a failed Commit leaves nothing the client could still commit.
      handles_->SettleReservation(req.reservation_id());
      return;
    }
    case LocalMethod::kCommitMany: {
      v1::CommitManyRequest req;
      v1::CommitManyResponse resp;
      Run(service_, &KvStashService::CommitMany, body, &req, &resp, reply_code, reply_body);
      for (const v1::CommitRequest& item : req.items()) {
        handles_->SettleReservation(item.reservation_id());
      }
      return;
    }
    case LocalMethod::kAbort: {
      v1::AbortRequest req;
      v1::AbortResponse resp;
      Run(service_, &KvStashService::Abort, body, &req, &resp, reply_code, reply_body);
      handles_->SettleReservation(req.reservation_id());
      return;
    }
    case LocalMethod::kAcquire: {
      v1::AcquireRequest req;
      v1::AcquireResponse resp;
      if (Run(service_, &KvStashService::Acquire, body, &req, &resp, reply_code, reply_body).ok()) {
        for (const v1::AcquireResult& r : resp.results()) {
          if (r.status().code() == 0) handles_->AddLease(r.lease_id());
        }
      }
      return;
    }
    case LocalMethod::kRelease: {
      v1::ReleaseRequest req;
      v1::ReleaseResponse resp;
      Run(service_, &KvStashService::Release, body, &req, &resp, reply_code, reply_body);
      for (uint64_t id : req.lease_ids()) handles_->SettleLease(id);
      return;
    }
  }
  *reply_code = static_cast<uint16_t>(grpc::StatusCode::UNIMPLEMENTED);
  *reply_body = absl::StrCat("local control: unknown method ", method);
}

}  // namespace

namespace {

std::shared_ptr<ClientRegistry> MakeRegistry(storage::ObjectStore* store,
                                             MetricsRegistry* metrics) {
  Counter* abandoned = metrics->GetCounter(
      "kvstash_local_control_abandoned_total",
      "Reservations aborted and leases released because their client's last local control "
      "connection closed");
  return std::make_shared<ClientRegistry>(store, abandoned);
}

}  // namespace

LocalControlFactory ServiceLocalSessions(KvStashService* service, storage::ObjectStore* store,
                                         MetricsRegistry* metrics) {
  auto registry = MakeRegistry(store, metrics);
  return [service, registry]() -> std::unique_ptr<LocalControlSession> {
    return std::make_unique<ServiceLocalSession>(service, registry);
  };
}

TenantLocalFactory TenantLocalSessions(KvStashService* service, storage::ObjectStore* store,
                                       Authorizer* auth, MetricsRegistry* metrics) {
  auto registry = MakeRegistry(store, metrics);
  return [service, registry, auth](const Caller& caller, Credential credential,
                                   uint64_t generation) -> std::unique_ptr<LocalControlSession> {
    auto tenant = std::make_unique<TenantBinding>();
    tenant->auth = auth;
    tenant->caller = caller;
    tenant->credential = std::move(credential);
    tenant->generation = generation;
    return std::make_unique<ServiceLocalSession>(service, registry, std::move(tenant));
  };
}

}  // namespace kvstash::cachesvc
