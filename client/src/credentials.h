// How KvClient's channel authenticates: mutual TLS for TCP targets when configured, and a bearer
// token on every call. Internal to the client.
#ifndef KVSTASH_CLIENT_SRC_CREDENTIALS_H_
#define KVSTASH_CLIENT_SRC_CREDENTIALS_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "kvstash/client/kv_client.h"
#include "kvstash/common/status.h"

namespace kvstash::client::internal {

// The channel to `target` with `args`: TLS (options' tls_* files, read now) for a TCP target when
// tls_ca_file is set, else plaintext; every call carries options.bearer_token, when set, as
// `authorization: Bearer <token>`. InvalidArgument for unreadable files or a token with
// characters a header cannot carry.
Result<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& target,
                                                   const ClientOptions& options,
                                                   grpc::ChannelArguments args);

}  // namespace kvstash::client::internal

#endif  // KVSTASH_CLIENT_SRC_CREDENTIALS_H_
