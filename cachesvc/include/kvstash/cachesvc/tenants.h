// Tenants of a multi-tenant cachesvc: who a caller is (a bearer token or a client certificate
// name), which tenant and role that makes it, and each tenant's quotas. docs/deploy.md "Tenants".
//
// The tokens file (--tokens-file; in Kubernetes a Secret) is line-based; '#' starts a comment:
//
//   token  <token>            <tenant> [user|admin] [rw|ro]
//                                          a bearer token (16..1024 printable chars)
//   sha256 <64 hex digits>    <tenant> [user|admin] [rw|ro]
//                                          the same, stored as its SHA-256
//   cert   <name>             <tenant> [user|admin|peer] [rw|ro]
//                                          a client certificate whose subject CN or one of whose
//                                          SANs is <name>
//   quota  <tenant> cpu=<size> ssd=<size>  bytes per tier (0 or absent: no limit)
//
// The role and the access may come in either order; the defaults are user and rw. `ro`
// (read-only, also spelt `read-only`) credentials read their tenant's objects but every call that
// stores, changes or removes objects or pins is PERMISSION_DENIED, as is a writable mapping of
// the tenant's arena; peers are never read-only.
//
// Tenants are [A-Za-z0-9._-]{1,64}; a tenant's objects live in the namespace of the same name.
// Tokens are kept only as SHA-256 digests and compared in constant time against every entry.
//
// Parsing is pure and thread-safe; TenantTable is immutable once built. Errors are
// InvalidArgument naming the line; they never echo a token.
#ifndef KVSTASH_CACHESVC_TENANTS_H_
#define KVSTASH_CACHESVC_TENANTS_H_

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kvstash/common/status.h"

namespace kvstash::cachesvc {

enum class Role {
  kUser,   // its own namespace only
  kAdmin,  // also lists and reads statistics across tenants
  kPeer,   // another cachesvc node: any namespace (it fetches for its own tenants)
};

const char* RoleName(Role role);

struct Identity {
  std::string tenant;  // the namespace of the caller's objects
  Role role = Role::kUser;
  std::string principal;   // for logs: "token#<line>", "cert:<name>", "peer-secret"
  bool read_only = false;  // `ro`: no call that writes (see above)
};

struct TenantQuota {
  uint64_t cpu_bytes = 0;  // 0: no limit
  uint64_t ssd_bytes = 0;
};

inline constexpr size_t kMaxTokenBytes = 1024;
inline constexpr size_t kMaxAuthorizationHeaderBytes = 8 + kMaxTokenBytes;  // "Bearer " + token

class TenantTable {
 public:
  static Result<TenantTable> Parse(std::string_view text);
  static Result<TenantTable> Load(const std::string& path);

  // The identity of a bearer token, or nullptr. Hashes the token and compares the digest with
  // every entry, so the time does not depend on which entry (if any) matches.
  const Identity* FindToken(std::string_view token) const;
  // The identity of the first of `names` (a certificate's CN and SANs) that a cert line names.
  const Identity* FindCertificate(const std::vector<std::string>& names) const;
  TenantQuota Quota(const std::string& tenant) const;

  size_t token_count() const { return tokens_.size(); }
  size_t certificate_count() const { return certs_.size(); }
  const std::map<std::string, TenantQuota>& quotas() const { return quotas_; }

 private:
  std::vector<std::pair<std::array<uint8_t, 32>, Identity>> tokens_;
  std::vector<std::pair<std::string, Identity>> certs_;
  std::map<std::string, TenantQuota> quotas_;
};

// The token of an `authorization` header value "Bearer <token>" (scheme case-insensitive, one
// space). Unauthenticated, without echoing the value, when it is longer than
// kMaxAuthorizationHeaderBytes, of another scheme, empty, or holds characters a token cannot.
Result<std::string> ParseBearerHeader(std::string_view header);

// The names of a client certificate from the properties gRPC's TLS layer reports for it
// (grpc::AuthContext: "x509_common_name", "x509_subject_alternative_name", ...): the CN first,
// then the SANs, each at most 256 bytes and printable; others are skipped.
std::vector<std::string> CertificateNames(
    const std::vector<std::pair<std::string, std::string>>& properties);

bool ValidTenantName(std::string_view tenant);

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_TENANTS_H_
