// The tokens file, the authorization header and the certificate names a TLS handshake reports are
// untrusted text (the file may be edited by hand; the others come from any client). Each parser
// must accept or reject without crashing, and what it accepts must be consistent: every token
// line parsed is found again by its token, with its tenant and access (ro), and a parsed bearer
// token is one a header can carry.
//
// Input: three parts separated by the byte 0x00: tokens-file text, an authorization header value,
// then certificate properties as "name=value" lines.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kvstash/cachesvc/tenants.h"

using kvstash::cachesvc::CertificateNames;
using kvstash::cachesvc::ParseBearerHeader;
using kvstash::cachesvc::TenantTable;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> parts;
  for (size_t start = 0;;) {
    const size_t end = in.find('\0', start);
    parts.push_back(in.substr(start, end == std::string_view::npos ? end : end - start));
    if (end == std::string_view::npos || parts.size() == 3) break;
    start = end + 1;
  }
  parts.resize(3);

  auto table = TenantTable::Parse(parts[0]);
  if (table.ok()) {
    // Each "token <t> <tenant> ..." line that parsed must resolve to that tenant, read-only
    // exactly when the line says ro.
    std::istringstream lines{std::string(parts[0])};
    for (std::string line; std::getline(lines, line);) {
      if (const size_t hash = line.find('#'); hash != std::string::npos) line.resize(hash);
      std::istringstream fields(line);
      std::string kind, token, tenant;
      if (!(fields >> kind >> token >> tenant) || kind != "token") continue;
      const kvstash::cachesvc::Identity* id = table->FindToken(token);
      if (id == nullptr || id->tenant != tenant) std::abort();
      bool ro = false;
      for (std::string option; fields >> option;)
        ro = ro || option == "ro" || option == "read-only";
      if (id->read_only != ro) std::abort();
    }
  }

  auto token = ParseBearerHeader(parts[1]);
  if (token.ok()) {
    if (token->empty() || token->size() > kvstash::cachesvc::kMaxTokenBytes) std::abort();
    for (char c : *token) {
      if (c <= 0x20 || c >= 0x7f) std::abort();
    }
    if (table.ok()) (void)table->FindToken(*token);
  }

  std::vector<std::pair<std::string, std::string>> properties;
  std::istringstream props{std::string(parts[2])};
  for (std::string line; std::getline(props, line);) {
    const size_t eq = line.find('=');
    if (eq == std::string::npos) continue;
    properties.emplace_back(line.substr(0, eq), line.substr(eq + 1));
  }
  std::vector<std::string> names = CertificateNames(properties);
  for (const std::string& n : names) {
    if (n.empty() || n.size() > 256) std::abort();
  }
  if (table.ok()) (void)table->FindCertificate(names);
  return 0;
}
