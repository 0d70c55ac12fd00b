#include "authz.h"

#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "remote_tier.h"

namespace kvstash::cachesvc {
namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string_view View(const grpc::string_ref& ref) { return {ref.data(), ref.size()}; }

}  // namespace

Result<std::unique_ptr<Authorizer>> Authorizer::Create(const ServiceConfig& config,
                                                       MetricsRegistry* metrics) {
  std::unique_ptr<Authorizer> a(new Authorizer());
  a->tokens_file_ = config.tokens_file;
  a->metrics_ = metrics;
  // Ids live as long as the longest reservation or lease could.
  a->id_lifetime_ms_ = config.store.max_lease_ms + config.stream_timeout_ms;
  const char* help = "calls refused for their credentials, by reason";
  a->refused_missing_ =
      metrics->GetCounter("kvstash_auth_refused_total", help, {{"reason", "missing"}});
  a->refused_malformed_ =
      metrics->GetCounter("kvstash_auth_refused_total", help, {{"reason", "malformed"}});
  a->refused_unknown_ =
      metrics->GetCounter("kvstash_auth_refused_total", help, {{"reason", "unknown_token"}});
  a->refused_certificate_ =
      metrics->GetCounter("kvstash_auth_refused_total", help, {{"reason", "unknown_certificate"}});
  if (!config.peers.secret_file.empty()) {
    std::ifstream in(config.peers.secret_file);
    std::stringstream text;
    text << in.rdbuf();
    a->secret_ = text.str();
    while (!a->secret_.empty() && (a->secret_.back() == '\n' || a->secret_.back() == '\r')) {
      a->secret_.pop_back();
    }
  }
  if (a->multi_tenant()) {
    KVSTASH_ASSIGN_OR_RETURN(TenantTable table, TenantTable::Load(a->tokens_file_));
    spdlog::info("event=tenants_loaded file={} tokens={} certificates={} quotas={}",
                 a->tokens_file_, table.token_count(), table.certificate_count(),
                 table.quotas().size());
    a->table_ = std::make_shared<const TenantTable>(std::move(table));
  }
  return a;
}

Status Authorizer::Reload(const std::function<void(const TenantTable&)>& before_swap) {
  if (!multi_tenant()) return OkStatus();
  auto table = TenantTable::Load(tokens_file_);
  if (!table.ok()) {
    spdlog::error("event=tenants_reload_refused error=\"{}\"",
                  std::string(table.status().message()));
    return table.status();
  }
  auto fresh = std::make_shared<const TenantTable>(std::move(*table));
  if (before_swap) before_swap(*fresh);
  const size_t tokens = fresh->token_count();
  const size_t certificates = fresh->certificate_count();
  const size_t quotas = fresh->quotas().size();
  {
    std::lock_guard<std::mutex> lock(mu_);
    table_ = std::move(fresh);
    generation_.fetch_add(1, std::memory_order_release);
  }
  // Logged once the new table (and the arenas `before_swap` added) is in force: tests and
  // operators take this line to mean the reload has happened.
  spdlog::info("event=tenants_reloaded tokens={} certificates={} quotas={}", tokens, certificates,
               quotas);
  return OkStatus();
}

Result<Caller> Authorizer::AuthenticateToken(const std::string& token) const {
  if (!multi_tenant()) return Caller{};
  if (token.empty()) {
    refused_missing_->Increment();
    return absl::UnauthenticatedError("no bearer token in the arena attach request");
  }
  // The same checks as the header's: parse it as one.
  Result<std::string> parsed = ParseBearerHeader(absl::StrCat("Bearer ", token));
  if (!parsed.ok()) {
    refused_malformed_->Increment();
    return parsed.status();
  }
  std::shared_ptr<const TenantTable> table;
  {
    std::lock_guard<std::mutex> lock(mu_);
    table = table_;
  }
  const Identity* id = table->FindToken(*parsed);
  if (id == nullptr) {
    refused_unknown_->Increment();
    return absl::UnauthenticatedError("unknown or revoked bearer token");
  }
  return Caller{*id, true};
}

Result<Caller> Authorizer::Reauthenticate(const Credential& credential) const {
  if (!multi_tenant()) return Caller{};
  if (!credential.token.empty() || credential.certificate_names.empty()) {
    return AuthenticateToken(credential.token);
  }
  std::shared_ptr<const TenantTable> table;
  {
    std::lock_guard<std::mutex> lock(mu_);
    table = table_;
  }
  const Identity* id = table->FindCertificate(credential.certificate_names);
  if (id == nullptr) {
    refused_certificate_->Increment();
    return absl::UnauthenticatedError(absl::StrCat(
        "client certificate ", credential.certificate_names[0], " is no longer a tenant's"));
  }
  return Caller{*id, id->role != Role::kPeer};
}

Result<Caller> Authorizer::Authenticate(const grpc::ServerContext* ctx,
                                        std::vector<std::string>* certificate_names) const {
  if (!multi_tenant()) return Caller{};
  if (ctx == nullptr) {
    return absl::UnauthenticatedError("in-process calls are not served in multi-tenant mode");
  }
  std::shared_ptr<const TenantTable> table;
  {
    std::lock_guard<std::mutex> lock(mu_);
    table = table_;
  }
  const auto& metadata = ctx->client_metadata();
  if (auto it = metadata.find(kPeerTokenHeader); it != metadata.end()) {
    const std::string_view presented = View(it->second);
    if (secret_.empty() || presented.size() != secret_.size() ||
        CRYPTO_memcmp(presented.data(), secret_.data(), secret_.size()) != 0) {
      refused_unknown_->Increment();
      return absl::UnauthenticatedError("wrong cluster secret");
    }
    Caller peer;
    peer.identity.role = Role::kPeer;
    peer.identity.principal = "peer-secret";
    return peer;
  }
  // gRPC may deliver a repeated header as several entries: more than one is refused.
  auto [first, last] = metadata.equal_range("authorization");
  if (first != last) {
    if (std::next(first) != last) {
      refused_malformed_->Increment();
      return absl::UnauthenticatedError("more than one authorization header");
    }
    Result<std::string> token = ParseBearerHeader(View(first->second));
    if (!token.ok()) {
      refused_malformed_->Increment();
      return token.status();
    }
    const Identity* id = table->FindToken(*token);
    if (id == nullptr) {
      refused_unknown_->Increment();
      return absl::UnauthenticatedError("unknown or revoked bearer token");
    }
    return Caller{*id, true};
  }
  std::shared_ptr<const grpc::AuthContext> auth = ctx->auth_context();
  if (auth != nullptr && auth->IsPeerAuthenticated()) {
    std::vector<std::pair<std::string, std::string>> properties;
    for (const grpc::AuthProperty& p : *auth) {
      properties.emplace_back(std::string(p.first.data(), p.first.size()),
                              std::string(p.second.data(), p.second.size()));
    }
    std::vector<std::string> names = CertificateNames(properties);
    const Identity* id = table->FindCertificate(names);
    if (id == nullptr) {
      refused_certificate_->Increment();
      return absl::UnauthenticatedError(absl::StrCat(
          "client certificate ", names.empty() ? std::string("(no usable name)") : names[0],
          " is not a tenant's"));
    }
    Caller caller{*id, id->role != Role::kPeer};
    if (certificate_names != nullptr) *certificate_names = std::move(names);
    return caller;
  }
  refused_missing_->Increment();
  return absl::UnauthenticatedError(
      "this cachesvc serves several tenants: send 'authorization: Bearer <token>' or a client "
      "certificate");
}

Status Authorizer::Scope(const Caller& caller, ObjectName* name) const {
  if (!caller.restricted) return OkStatus();
  if (name->name_space.empty()) {
    *name = MakeObjectName(caller.identity.tenant, name->model_fingerprint, name->token_hash);
    return OkStatus();
  }
  if (name->name_space != caller.identity.tenant) {
    return absl::PermissionDeniedError(
        absl::StrCat("tenant ", caller.identity.tenant, " may not name keys of another namespace"));
  }
  return OkStatus();
}

Status Authorizer::ScopeAll(const Caller& caller, std::vector<ObjectName>* names) const {
  for (ObjectName& name : *names) KVSTASH_RETURN_IF_ERROR(Scope(caller, &name));
  return OkStatus();
}

Status Authorizer::CheckList(const Caller& caller, const std::string& name_space, bool all) const {
  if (caller.admin()) return OkStatus();
  if (all) {
    return absl::PermissionDeniedError("listing all namespaces needs the admin role");
  }
  if (!name_space.empty() && name_space != caller.identity.tenant) {
    return absl::PermissionDeniedError(
        absl::StrCat("tenant ", caller.identity.tenant, " may not list another namespace"));
  }
  return OkStatus();
}

Status Authorizer::CheckWrite(const Caller& caller, const char* what) const {
  if (!caller.restricted || !caller.identity.read_only) return OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(
      "the credential of tenant ", caller.identity.tenant, " is read-only: ", what, " writes"));
}

TenantQuota Authorizer::Quota(const std::string& tenant) const {
  std::lock_guard<std::mutex> lock(mu_);
  return table_ == nullptr ? TenantQuota{} : table_->Quota(tenant);
}

Status Authorizer::CheckQuota(const Caller& caller, uint64_t bytes,
                              const storage::NamespaceUsage& usage) {
  if (!caller.restricted) return OkStatus();
  const TenantQuota q = Quota(caller.identity.tenant);
  const char* tier = nullptr;
  uint64_t limit = 0, used = 0;
  if (q.cpu_bytes != 0 && usage.cpu_bytes + bytes > q.cpu_bytes) {
    tier = "cpu", limit = q.cpu_bytes, used = usage.cpu_bytes;
  } else if (q.ssd_bytes != 0 && usage.ssd_bytes + bytes > q.ssd_bytes) {
    tier = "ssd", limit = q.ssd_bytes, used = usage.ssd_bytes;
  }
  if (tier == nullptr) return OkStatus();
  metrics_
      ->GetCounter("kvstash_quota_exceeded_total", "puts refused for a tenant's quota",
                   {{"tenant", caller.identity.tenant}, {"tier", tier}})
      ->Increment();
  return absl::ResourceExhaustedError(absl::StrCat("tenant ", caller.identity.tenant, " ", tier,
                                                   " quota: ", used, " of ", limit, " bytes used, ",
                                                   bytes, " more would pass it"));
}

void Authorizer::Own(const Caller& caller, IdKind kind, uint64_t id) {
  if (!caller.restricted) return;
  const int64_t now = NowNs();
  std::lock_guard<std::mutex> lock(ids_mu_);
  auto& ids = ids_[static_cast<int>(kind)];
  // Ids whose reservation or lease has certainly ended are dropped now and then.
  if (++inserts_ % 4096 == 0) {
    for (auto it = ids.begin(); it != ids.end();) {
      it = it->second.expires_ns < now ? ids.erase(it) : std::next(it);
    }
  }
  ids[id] = Owned{caller.identity.tenant, now + static_cast<int64_t>(id_lifetime_ms_) * 1'000'000};
}

Status Authorizer::CheckOwner(const Caller& caller, IdKind kind, uint64_t id, bool forget) {
  if (!caller.restricted) return OkStatus();
  std::lock_guard<std::mutex> lock(ids_mu_);
  auto& ids = ids_[static_cast<int>(kind)];
  auto it = ids.find(id);
  if (it == ids.end()) {
    // Not handed to any tenant (or long over): the store knows nothing of it either.
    return absl::NotFoundError(
        absl::StrCat(kind == IdKind::kLease ? "lease " : "reservation ", id, " is not open"));
  }
  if (it->second.tenant != caller.identity.tenant) {
    return absl::PermissionDeniedError(absl::StrCat(
        kind == IdKind::kLease ? "lease " : "reservation ", id, " belongs to another tenant"));
  }
  if (forget) ids.erase(it);
  return OkStatus();
}

}  // namespace kvstash::cachesvc
