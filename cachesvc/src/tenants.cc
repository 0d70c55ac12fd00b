#include "kvstash/cachesvc/tenants.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <cctype>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "kvstash/common/byte_size.h"

namespace kvstash::cachesvc {
namespace {

using Digest = std::array<uint8_t, 32>;

Digest Sha256(std::string_view text) {
  Digest d;
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), d.data());
  return d;
}

bool TokenChars(std::string_view token) {
  for (char c : token) {
    if (c <= 0x20 || c >= 0x7f) return false;
  }
  return true;
}

Status LineError(int line, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("tokens file line ", line, ": ", what));
}

// The optional fields after the tenant: at most one role and one access, in either order.
Status ParseOptions(const std::vector<std::string>& fields, bool allow_peer, int line,
                    Identity* id) {
  bool role_seen = false, access_seen = false;
  for (const std::string& text : fields) {
    if (text == "rw" || text == "read-write" || text == "ro" || text == "read-only") {
      if (access_seen) return LineError(line, "two access fields (rw or ro)");
      access_seen = true;
      id->read_only = text == "ro" || text == "read-only";
      continue;
    }
    if (role_seen) return LineError(line, "two roles");
    role_seen = true;
    if (text == "user") {
      id->role = Role::kUser;
    } else if (text == "admin") {
      id->role = Role::kAdmin;
    } else if (text == "peer" && allow_peer) {
      id->role = Role::kPeer;
    } else {
      return LineError(line,
                       absl::StrCat("unknown role or access '", text.substr(0, 32), "' (user",
                                    allow_peer ? ", admin, peer" : " or admin", "; rw or ro)"));
    }
  }
  if (id->role == Role::kPeer && id->read_only) {
    return LineError(line, "a peer is never read-only");
  }
  return OkStatus();
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

const char* RoleName(Role role) {
  switch (role) {
    case Role::kUser:
      return "user";
    case Role::kAdmin:
      return "admin";
    case Role::kPeer:
      return "peer";
  }
  return "?";
}

bool ValidTenantName(std::string_view tenant) {
  if (tenant.empty() || tenant.size() > 64) return false;
  for (char c : tenant) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) {
      return false;
    }
  }
  return true;
}

Result<TenantTable> TenantTable::Parse(std::string_view text) {
  TenantTable table;
  std::istringstream in{std::string(text)};
  std::string raw;
  int line = 0;
  while (std::getline(in, raw)) {
    ++line;
    if (const size_t hash = raw.find('#'); hash != std::string::npos) raw.resize(hash);
    std::istringstream fields(raw);
    std::vector<std::string> f;
    for (std::string word; fields >> word;) {
      if (f.size() == 5) return LineError(line, "too many fields");
      f.push_back(std::move(word));
    }
    if (f.empty()) continue;
    const std::string& kind = f[0];
    if (kind == "quota") {
      if (f.size() < 3) return LineError(line, "quota needs a tenant and cpu=SIZE and/or ssd=SIZE");
      if (!ValidTenantName(f[1])) return LineError(line, "bad tenant name");
      TenantQuota q;
      for (size_t i = 2; i < f.size(); ++i) {
        const size_t eq = f[i].find('=');
        const std::string tier = f[i].substr(0, eq);
        if (eq == std::string::npos || (tier != "cpu" && tier != "ssd")) {
          return LineError(line, "quota limits are cpu=SIZE and ssd=SIZE");
        }
        auto size = ParseByteSize(f[i].substr(eq + 1));
        if (!size.ok()) return LineError(line, std::string(size.status().message()));
        (tier == "cpu" ? q.cpu_bytes : q.ssd_bytes) = *size;
      }
      if (!table.quotas_.emplace(f[1], q).second) {
        return LineError(line, absl::StrCat("a second quota for tenant ", f[1]));
      }
      continue;
    }
    if (kind != "token" && kind != "sha256" && kind != "cert") {
      return LineError(line, "lines start with token, sha256, cert or quota");
    }
    if (f.size() < 3) {
      return LineError(line, absl::StrCat(kind,
                                          " needs a credential, a tenant, and optionally a role "
                                          "and an access"));
    }
    Identity id;
    id.tenant = f[2];
    if (!ValidTenantName(id.tenant)) return LineError(line, "bad tenant name");
    KVSTASH_RETURN_IF_ERROR(
        ParseOptions(std::vector<std::string>(f.begin() + 3, f.end()), kind == "cert", line, &id));
    const std::string& credential = f[1];
    if (kind == "cert") {
      if (credential.size() > 256) return LineError(line, "certificate name longer than 256");
      id.principal = absl::StrCat("cert:", credential);
      table.certs_.emplace_back(credential, std::move(id));
      continue;
    }
    Digest digest;
    if (kind == "token") {
      if (credential.size() < 16 || credential.size() > kMaxTokenBytes || !TokenChars(credential)) {
        return LineError(line, "a token is 16 to 1024 printable characters");
      }
      digest = Sha256(credential);
    } else {
      if (credential.size() != 64) return LineError(line, "sha256 needs 64 hex digits");
      for (size_t i = 0; i < 32; ++i) {
        const int hi = HexValue(credential[2 * i]), lo = HexValue(credential[2 * i + 1]);
        if (hi < 0 || lo < 0) return LineError(line, "sha256 needs 64 hex digits");
        digest[i] = static_cast<uint8_t>(hi << 4 | lo);
      }
    }
    for (const auto& [existing, unused] : table.tokens_) {
      if (existing == digest) return LineError(line, "the same token twice");
    }
    id.principal = absl::StrCat("token#", line);
    table.tokens_.emplace_back(digest, std::move(id));
  }
  return table;
}

Result<TenantTable> TenantTable::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read tokens file ", path));
  std::stringstream text;
  text << in.rdbuf();
  if (text.str().size() > (16u << 20)) {
    return absl::InvalidArgumentError(absl::StrCat("tokens file ", path, " is over 16 MiB"));
  }
  auto table = Parse(text.str());
  if (!table.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", std::string(table.status().message())));
  }
  return table;
}

const Identity* TenantTable::FindToken(std::string_view token) const {
  const Digest digest = Sha256(token);
  const Identity* found = nullptr;
  for (const auto& [d, id] : tokens_) {
    // Every entry is compared, whichever matches.
    if (CRYPTO_memcmp(d.data(), digest.data(), d.size()) == 0) found = &id;
  }
  return found;
}

const Identity* TenantTable::FindCertificate(const std::vector<std::string>& names) const {
  for (const std::string& name : names) {
    for (const auto& [cert, id] : certs_) {
      if (cert == name) return &id;
    }
  }
  return nullptr;
}

TenantQuota TenantTable::Quota(const std::string& tenant) const {
  auto it = quotas_.find(tenant);
  return it == quotas_.end() ? TenantQuota{} : it->second;
}

Result<std::string> ParseBearerHeader(std::string_view header) {
  if (header.size() > kMaxAuthorizationHeaderBytes) {
    return absl::UnauthenticatedError(
        absl::StrCat("authorization header longer than ", kMaxAuthorizationHeaderBytes, " bytes"));
  }
  constexpr std::string_view kScheme = "bearer ";
  if (header.size() <= kScheme.size()) {
    return absl::UnauthenticatedError("authorization header is not 'Bearer <token>'");
  }
  for (size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(header[i])) != kScheme[i]) {
      return absl::UnauthenticatedError("authorization header is not 'Bearer <token>'");
    }
  }
  std::string_view token = header.substr(kScheme.size());
  if (token.size() > kMaxTokenBytes || !TokenChars(token)) {
    return absl::UnauthenticatedError("malformed bearer token");
  }
  return std::string(token);
}

std::vector<std::string> CertificateNames(
    const std::vector<std::pair<std::string, std::string>>& properties) {
  std::vector<std::string> cn, sans;
  for (const auto& [name, value] : properties) {
    const bool is_cn = name == "x509_common_name";
    if (!is_cn && name != "x509_subject_alternative_name" && name != "peer_dns" &&
        name != "peer_uri" && name != "peer_email" && name != "peer_ip") {
      continue;
    }
    if (value.empty() || value.size() > 256) continue;
    bool printable = true;
    for (char c : value) printable = printable && c > 0x20 && c < 0x7f;
    if (!printable) continue;
    (is_cn ? cn : sans).push_back(value);
  }
  cn.insert(cn.end(), sans.begin(), sans.end());
  return cn;
}

}  // namespace kvstash::cachesvc
