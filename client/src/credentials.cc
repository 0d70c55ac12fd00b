#include "credentials.h"

#include <grpcpp/support/client_interceptor.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "client_core.h"

namespace kvstash::client::internal {
namespace {

Result<std::string> ReadPem(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read ", what, " ", path));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Adds the bearer token to every call's initial metadata.
class BearerInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit BearerInterceptor(const std::string* header) : header_(header) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", *header_});
    }
    methods->Proceed();
  }

 private:
  const std::string* header_;
};

class BearerFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerFactory(const std::string& token) : header_(absl::StrCat("Bearer ", token)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new BearerInterceptor(&header_);  // the factory lives as long as the channel
  }

 private:
  const std::string header_;
};

}  // namespace

Result<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& target,
                                                   const ClientOptions& options,
                                                   grpc::ChannelArguments args) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!options.tls_ca_file.empty() && !IsUnixTarget(target)) {
    grpc::SslCredentialsOptions ssl;
    KVSTASH_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem(options.tls_ca_file, "tls_ca_file"));
    if (!options.tls_cert_file.empty()) {
      KVSTASH_ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadPem(options.tls_cert_file, "tls_cert_file"));
      KVSTASH_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadPem(options.tls_key_file, "tls_key_file"));
    }
    credentials = grpc::SslCredentials(ssl);
    if (!options.tls_server_name.empty()) args.SetSslTargetNameOverride(options.tls_server_name);
  }
  if (options.bearer_token.empty()) return grpc::CreateCustomChannel(target, credentials, args);
  for (char c : options.bearer_token) {
    // What a header value may carry (RFC 6750 b64token plus a little); refused here rather than
    // by gRPC mid-call.
    if (c <= 0x20 || c >= 0x7f) {
      return absl::InvalidArgumentError("bearer_token holds a space or a non-printable character");
    }
  }
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> factories;
  factories.push_back(std::make_unique<BearerFactory>(options.bearer_token));
  return grpc::experimental::CreateCustomChannelWithInterceptors(target, credentials, args,
                                                                 std::move(factories));
}

}  // namespace kvstash::client::internal
