// Who is calling, and what it may name: the service side of tenants (kvstash/cachesvc/tenants.h,
// docs/deploy.md "Tenants").
//
// Single-tenant mode (no tokens file): every caller is unrestricted, as before tenants existed.
// Multi-tenant mode: each call must carry a credential, tried in this order:
//  1. metadata `kvstash-peer-token` equal to the cluster secret: another node (role peer);
//  2. `authorization: Bearer <token>`: the token's tenant and role (a malformed, unknown or
//     revoked token is UNAUTHENTICATED, and a client certificate does not rescue it);
//  3. the client certificate of a mutual-TLS connection: the cert line naming its CN or a SAN.
// Nothing else is accepted (UNAUTHENTICATED). A user or admin names only keys of its own tenant's
// namespace: an empty namespace becomes the tenant's, another one is PERMISSION_DENIED. Admins
// may additionally List any namespace and see the whole node's Stats. A read-only credential
// (`ro`) may make no call that writes (CheckWrite: PERMISSION_DENIED).
//
// Reservation and lease ids are numbered by the store, so they are not secrets: the ids a tenant
// was given are recorded here, and Commit, Abort and Release of another tenant's id are
// PERMISSION_DENIED.
//
// Thread-safety: every method may be called from any thread; Reload swaps the table atomically.
#ifndef KVSTASH_CACHESVC_AUTHZ_H_
#define KVSTASH_CACHESVC_AUTHZ_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "kvstash/cachesvc/config.h"
#include "kvstash/cachesvc/tenants.h"
#include "kvstash/common/metrics.h"
#include "kvstash/proto/convert.h"
#include "kvstash/storage/object_store.h"

namespace kvstash::cachesvc {

struct Caller {
  Identity identity;
  // False in single-tenant mode and for peers: names are used as given.
  bool restricted = false;
  bool admin() const { return !restricted || identity.role == Role::kAdmin; }
};

// What authenticated a caller whose authentication outlives one call (a tenant's local control
// connection), so that it can be checked again after a reload: its bearer token or, for a
// connection attached with an attach ticket (attach_tickets.h), the names of the client
// certificate the ticket was issued to.
struct Credential {
  std::string token;                           // empty: the certificate names below
  std::vector<std::string> certificate_names;  // the CN, then the SANs (CertificateNames)
};

class Authorizer {
 public:
  // Loads config.tokens_file (when set) and the cluster secret (peers.secret_file, when set).
  static Result<std::unique_ptr<Authorizer>> Create(const ServiceConfig& config,
                                                    MetricsRegistry* metrics);

  bool multi_tenant() const { return !tokens_file_.empty(); }

  // The caller of `ctx` (nullptr: an in-process call, allowed only in single-tenant mode).
  // Unauthenticated as described above; counted in kvstash_auth_refused_total{reason}. When the
  // caller was identified by its client certificate (3. above) and `certificate_names` is set, it
  // gets the certificate's names (left empty otherwise).
  Result<Caller> Authenticate(const grpc::ServerContext* ctx,
                              std::vector<std::string>* certificate_names = nullptr) const;

  // The caller presenting bearer `token` outside gRPC (the arena socket's attach request):
  // Unauthenticated for an empty, malformed, unknown or revoked token (counted like the gRPC
  // refusals). Single-tenant mode: an unrestricted caller, whatever the token.
  Result<Caller> AuthenticateToken(const std::string& token) const;
  // The caller `credential` names in the table now: its token as AuthenticateToken, or else the
  // identity of its certificate names (Unauthenticated when no cert line names them any more).
  // A certificate whose line now has the peer role comes back unrestricted: callers that bind a
  // tenant refuse it.
  Result<Caller> Reauthenticate(const Credential& credential) const;

  // Re-reads the tokens file (SIGHUP): revoked tokens stop working for new calls. On error the
  // old table stays. `before_swap`, when set, sees the new table after it parsed and before any
  // call is authenticated against it (the service adds the arenas of tenants it gives a cpu
  // quota, so their first attach finds the arena).
  Status Reload(const std::function<void(const TenantTable&)>& before_swap = nullptr);
  // Counts the table swaps of Reload: a connection authenticated once (a tenant's local control
  // channel) checks its token again when this has moved.
  uint64_t generation() const { return generation_.load(std::memory_order_acquire); }

  // Rewrites an empty namespace to the caller's tenant; PermissionDenied for another tenant's.
  Status Scope(const Caller& caller, ObjectName* name) const;
  Status ScopeAll(const Caller& caller, std::vector<ObjectName>* names) const;
  // PermissionDenied unless the caller may list `name_space` (or all, for admins).
  Status CheckList(const Caller& caller, const std::string& name_space, bool all) const;

  // PermissionDenied when the caller's credential is read-only (`ro` in the tokens file): for
  // every call that stores, changes or removes objects or pins (`what` names it).
  Status CheckWrite(const Caller& caller, const char* what) const;

  // ResourceExhausted when putting `bytes` more into `usage` would pass the caller's quota of a
  // tier; counted in kvstash_quota_exceeded_total{tenant, tier}.
  Status CheckQuota(const Caller& caller, uint64_t bytes, const storage::NamespaceUsage& usage);
  TenantQuota Quota(const std::string& tenant) const;

  enum class IdKind { kReservation, kLease };
  void Own(const Caller& caller, IdKind kind, uint64_t id);
  // PermissionDenied when the id was handed to another tenant; NotFound when it was never handed
  // to a tenant (or has long expired). `forget`: the id ends with this call.
  Status CheckOwner(const Caller& caller, IdKind kind, uint64_t id, bool forget);

 private:
  Authorizer() = default;

  std::string tokens_file_;
  std::string secret_;
  uint32_t id_lifetime_ms_ = 0;
  MetricsRegistry* metrics_ = nullptr;
  mutable std::mutex mu_;
  std::shared_ptr<const TenantTable> table_;  // guarded by mu_
  std::atomic<uint64_t> generation_{0};
  Counter* refused_missing_ = nullptr;
  Counter* refused_malformed_ = nullptr;
  Counter* refused_unknown_ = nullptr;
  Counter* refused_certificate_ = nullptr;

  struct Owned {
    std::string tenant;
    int64_t expires_ns = 0;
  };
  std::mutex ids_mu_;
  std::unordered_map<uint64_t, Owned> ids_[2];  // by IdKind; guarded by ids_mu_
  uint64_t inserts_ = 0;                        // guarded by ids_mu_
};

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_AUTHZ_H_
