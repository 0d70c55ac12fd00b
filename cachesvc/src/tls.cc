#include "tls.h"

#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace kvstash::cachesvc {
namespace {

namespace fs = std::filesystem;

// gRPC's provider re-reads the private copy this often; a SIGHUP takes effect within it.
constexpr unsigned kRefreshSeconds = 1;

Result<std::string> ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read ", what, " ", path));
  std::stringstream text;
  text << in.rdbuf();
  if (text.str().empty())
    return absl::InvalidArgumentError(absl::StrCat(what, " ", path, " is empty"));
  return text.str();
}

Status WriteFile(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out.good()) return absl::InternalError(absl::StrCat("cannot write ", path.string()));
  ::chmod(path.c_str(), 0600);
  return OkStatus();
}

std::string OpenSslError() {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "no detail";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct StoreFree {
  void operator()(X509_STORE* s) const { X509_STORE_free(s); }
};
struct StoreCtxFree {
  void operator()(X509_STORE_CTX* c) const { X509_STORE_CTX_free(c); }
};
struct StackFree {
  void operator()(STACK_OF(X509) * s) const { sk_X509_pop_free(s, X509_free); }
};

std::unique_ptr<BIO, BioFree> MemBio(const std::string& text) {
  return std::unique_ptr<BIO, BioFree>(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

}  // namespace

Status CheckTlsFiles(const std::string& cert_pem, const std::string& key_pem,
                     const std::string& ca_pem) {
  ERR_clear_error();
  auto cert_bio = MemBio(cert_pem);
  std::unique_ptr<X509, X509Free> cert(
      PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr));
  if (!cert) {
    return absl::InvalidArgumentError(
        absl::StrCat("tls.cert holds no PEM certificate (", OpenSslError(), ")"));
  }
  // The rest of the chain, if any: intermediates for the verification below.
  std::unique_ptr<STACK_OF(X509), StackFree> chain(sk_X509_new_null());
  while (X509* extra = PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr)) {
    sk_X509_push(chain.get(), extra);
  }
  ERR_clear_error();  // the loop ends on "no start line"
  auto key_bio = MemBio(key_pem);
  std::unique_ptr<EVP_PKEY, KeyFree> key(
      PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  if (!key) {
    return absl::InvalidArgumentError(
        absl::StrCat("tls.key holds no PEM private key (", OpenSslError(), ")"));
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError("tls.key does not match the certificate of tls.cert");
  }
  std::unique_ptr<X509_STORE, StoreFree> store(X509_STORE_new());
  auto ca_bio = MemBio(ca_pem);
  int cas = 0;
  while (X509* ca = PEM_read_bio_X509(ca_bio.get(), nullptr, nullptr, nullptr)) {
    X509_STORE_add_cert(store.get(), ca);
    X509_free(ca);
    ++cas;
  }
  ERR_clear_error();
  if (cas == 0) return absl::InvalidArgumentError("tls.ca holds no PEM certificate");
  std::unique_ptr<X509_STORE_CTX, StoreCtxFree> ctx(X509_STORE_CTX_new());
  if (X509_STORE_CTX_init(ctx.get(), store.get(), cert.get(), chain.get()) != 1) {
    return absl::InternalError(absl::StrCat("X509_STORE_CTX_init: ", OpenSslError()));
  }
  if (X509_verify_cert(ctx.get()) != 1) {
    const int err = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat("tls.cert does not verify against tls.ca: ",
                                                   X509_verify_cert_error_string(err)));
  }
  return OkStatus();
}

Result<std::unique_ptr<TlsMaterial>> TlsMaterial::Create(const TlsConfig& config) {
  std::unique_ptr<TlsMaterial> m(new TlsMaterial());
  m->config_ = config;
  std::string tmpl = (fs::temp_directory_path() / "kvstash-tls-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) {
    return absl::InternalError(
        absl::StrCat("cannot create a private directory for TLS material: ", std::strerror(errno)));
  }
  m->dir_ = tmpl;  // mkdtemp makes it 0700
  KVSTASH_RETURN_IF_ERROR(m->Stage());
  const fs::path current = fs::path(m->dir_) / "current";
  m->provider_ = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      (current / "key.pem").string(), (current / "cert.pem").string(),
      (current / "ca.pem").string(), kRefreshSeconds);
  return m;
}

TlsMaterial::~TlsMaterial() {
  provider_.reset();
  if (!dir_.empty()) {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
}

Status TlsMaterial::Stage() {
  MutexLock lock(&mu_);
  KVSTASH_ASSIGN_OR_RETURN(std::string cert, ReadFile(config_.cert_file, "tls.cert"));
  KVSTASH_ASSIGN_OR_RETURN(std::string key, ReadFile(config_.key_file, "tls.key"));
  KVSTASH_ASSIGN_OR_RETURN(std::string ca, ReadFile(config_.ca_file, "tls.ca"));
  Status checked = CheckTlsFiles(cert, key, ca);
  if (!checked.ok()) {
    return Status(checked.code(), absl::StrCat(config_.cert_file, ", ", config_.key_file, ", ",
                                               config_.ca_file, ": ", checked.message()));
  }
  const int gen = ++generation_;
  const fs::path gen_dir = fs::path(dir_) / absl::StrCat("g", gen);
  std::error_code ec;
  fs::create_directory(gen_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", gen_dir.string()));
  KVSTASH_RETURN_IF_ERROR(WriteFile(gen_dir / "cert.pem", cert));
  KVSTASH_RETURN_IF_ERROR(WriteFile(gen_dir / "key.pem", key));
  KVSTASH_RETURN_IF_ERROR(WriteFile(gen_dir / "ca.pem", ca));
  // One rename swaps all three files at once for the provider's next read.
  const fs::path link_tmp = fs::path(dir_) / "current.tmp";
  fs::remove(link_tmp, ec);
  fs::create_directory_symlink(gen_dir.filename(), link_tmp, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot link ", link_tmp.string()));
  if (::rename(link_tmp.c_str(), (fs::path(dir_) / "current").c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot swap TLS material: ", std::strerror(errno)));
  }
  // The generation before the previous one can no longer be in the middle of a read.
  if (gen > 2) fs::remove_all(fs::path(dir_) / absl::StrCat("g", gen - 2), ec);
  return OkStatus();
}

Status TlsMaterial::Reload() {
  Status s = Stage();
  if (s.ok()) {
    spdlog::info("event=tls_reloaded cert={}", config_.cert_file);
  } else {
    spdlog::error("event=tls_reload_refused error=\"{}\"", std::string(s.message()));
  }
  return s;
}

std::shared_ptr<grpc::ServerCredentials> TlsMaterial::ServerCredentials() const {
  grpc::experimental::TlsServerCredentialsOptions options(provider_);
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  return grpc::experimental::TlsServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> TlsMaterial::ChannelCredentials() const {
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(provider_);
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  options.set_verify_server_certs(true);
  return grpc::experimental::TlsCredentials(options);
}

void TlsMaterial::AddChannelArguments(grpc::ChannelArguments* args) const {
  if (!config_.server_name.empty()) {
    args->SetSslTargetNameOverride(config_.server_name);
  }
}

}  // namespace kvstash::cachesvc
