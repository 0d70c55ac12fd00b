// The TLS and bearer-token flags of every `kvstash` subcommand that talks to cachesvc, so that
// each of them reaches a TLS-only or multi-tenant node the same way (docs/deploy.md).
#ifndef KVSTASH_CLI_CLIENT_FLAGS_H_
#define KVSTASH_CLI_CLIENT_FLAGS_H_

#include <CLI/CLI.hpp>
#include <string>

#include "kvstash/client/kv_client.h"
#include "kvstash/common/status.h"

namespace kvstash::cli {

struct ClientFlags {
  std::string tls_ca, tls_cert, tls_key, tls_server_name;
  std::string token_file;
  bool attach_read_only = false;  // ClientOptions::attach_read_only
};

// Adds --tls-ca, --tls-cert, --tls-key, --tls-server-name, --token-file and --read-only (also
// spelt --attach-read-only) to `cmd`; `flags` must outlive the parse.
void AddClientFlags(CLI::App* cmd, ClientFlags& flags);

// Sets the TLS files, the bearer token (the first line of --token-file, trailing spaces and
// CR dropped) and attach_read_only of `options`, leaving its other fields alone. InvalidArgument
// when the token file cannot be read.
Status ApplyClientFlags(const ClientFlags& flags, client::ClientOptions* options);

}  // namespace kvstash::cli

#endif  // KVSTASH_CLI_CLIENT_FLAGS_H_
