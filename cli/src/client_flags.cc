#include "client_flags.h"

#include <fstream>

#include "absl/strings/str_cat.h"

namespace kvstash::cli {

void AddClientFlags(CLI::App* cmd, ClientFlags& flags) {
  cmd->add_option("--tls-ca", flags.tls_ca, "PEM CA bundle: mutual TLS to a TCP cachesvc target");
  cmd->add_option("--tls-cert", flags.tls_cert, "PEM client certificate for mutual TLS");
  cmd->add_option("--tls-key", flags.tls_key, "PEM private key of --tls-cert");
  cmd->add_option("--tls-server-name", flags.tls_server_name,
                  "name the service's certificate must carry (default: the target's host)");
  cmd->add_option("--token-file", flags.token_file,
                  "file whose first line is the tenant's bearer token (multi-tenant cachesvc)");
  cmd->add_flag("--read-only,--attach-read-only", flags.attach_read_only,
                "map the shared-memory arena for reading only (needed with a read-only token; "
                "puts then go over the byte stream)");
}

Status ApplyClientFlags(const ClientFlags& flags, client::ClientOptions* options) {
  options->tls_ca_file = flags.tls_ca;
  options->tls_cert_file = flags.tls_cert;
  options->tls_key_file = flags.tls_key;
  options->tls_server_name = flags.tls_server_name;
  options->attach_read_only = flags.attach_read_only;
  options->bearer_token.clear();
  if (flags.token_file.empty()) return OkStatus();
  std::ifstream in(flags.token_file);
  std::string token;
  if (!in || !std::getline(in, token)) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read --token-file ", flags.token_file));
  }
  while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
  options->bearer_token = std::move(token);
  return OkStatus();
}

}  // namespace kvstash::cli
