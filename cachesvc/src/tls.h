// Mutual TLS for cachesvc's gRPC listener and its channels to peers (docs/deploy.md "TLS").
//
// TlsMaterial checks the configured certificate, key and CA (PEM; the key must match the
// certificate, the certificate must be within its validity period and chain to the CA), then
// copies them into a private directory (mode 0700, removed on destruction) from which gRPC's
// FileWatcherCertificateProvider serves them to every TLS connection. Reload() (SIGHUP) checks the
// files again and, only if they pass, swaps the private copy in one rename of a directory
// symlink; gRPC picks the new copy up within about a second. Established connections keep their
// session; new handshakes use the new material. Editing the configured files without SIGHUP
// changes nothing, and a half-written or mismatched pair is refused (the old one stays).
//
// The server requires and verifies a client certificate (mutual TLS) against the CA. Channels
// to peers present this node's certificate and verify the peer's certificate against the CA and
// the peer's host name (or tls.server_name).
//
// Thread-safety: all methods may be called from any thread.
#ifndef KVSTASH_CACHESVC_TLS_H_
#define KVSTASH_CACHESVC_TLS_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "kvstash/cachesvc/config.h"
#include "kvstash/common/mutex.h"
#include "kvstash/common/status.h"

namespace grpc::experimental {
class CertificateProviderInterface;
}

namespace kvstash::cachesvc {

class TlsMaterial {
 public:
  // InvalidArgument naming the file at fault (unreadable, not PEM, key not matching, expired,
  // not signed by the CA); Internal when the private directory cannot be made.
  static Result<std::unique_ptr<TlsMaterial>> Create(const TlsConfig& config);
  ~TlsMaterial();
  TlsMaterial(const TlsMaterial&) = delete;
  TlsMaterial& operator=(const TlsMaterial&) = delete;

  std::shared_ptr<grpc::ServerCredentials> ServerCredentials() const;
  std::shared_ptr<grpc::ChannelCredentials> ChannelCredentials() const;
  // Channel arguments peers' channels need (the server-name override when tls.server_name is
  // set).
  void AddChannelArguments(grpc::ChannelArguments* args) const;

  // Re-reads the configured files; on success the new material serves new handshakes. On error
  // the old material stays and the error says why.
  Status Reload();

 private:
  TlsMaterial() = default;
  Status Stage();

  TlsConfig config_;
  std::string dir_;  // private copies: dir_/current -> dir_/g<N>
  Mutex mu_;         // one Stage at a time
  int generation_ ABSL_GUARDED_BY(mu_) = 0;
  std::shared_ptr<grpc::experimental::CertificateProviderInterface> provider_;
};

// Checks a PEM certificate chain, key and CA bundle as TlsMaterial does: the key matches the
// first certificate, which is valid now and verifies against the CA. Exposed for the tests.
Status CheckTlsFiles(const std::string& cert_pem, const std::string& key_pem,
                     const std::string& ca_pem);

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_TLS_H_
