// Mutual TLS on real cachesvc processes: clients without a certificate, with one of another CA,
// or an expired one are refused; plain TCP beyond loopback needs --insecure-tcp; SIGHUP swaps the
// certificates without dropping established connections (and refuses a broken pair); two nodes
// fetch from each other over mutual TLS. The certificates are made at test time
// (scripts/make_test_certs.sh); no private key is committed.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "kvstash/client/kv_client.h"
#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using ::testing::HasSubstr;
using namespace ::kvstash::client;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pki_ = new TempDir();
    std::string out;
    const int rc = RunProgram(
        {std::string(KVSTASH_SOURCE_DIR) + "/scripts/make_test_certs.sh", pki_->path()}, &out);
    ASSERT_EQ(rc, 0) << out;
  }
  static void TearDownTestSuite() {
    delete pki_;
    pki_ = nullptr;
  }

  static std::string Pki(const std::string& file) { return pki_->path() + "/" + file; }

  // Copies of the node's files in `dir`, so a test can replace them and send SIGHUP.
  static std::vector<std::string> NodeTlsArgs(const std::string& dir,
                                              const std::string& prefix = "") {
    for (const char* f : {"server.pem", "server.key", "ca.pem"}) {
      std::filesystem::copy_file(Pki(prefix + f), dir + "/" + f,
                                 std::filesystem::copy_options::overwrite_existing);
    }
    return {"--tls-cert",        dir + "/server.pem", "--tls-key",
            dir + "/server.key", "--tls-ca",          dir + "/ca.pem"};
  }

  static ClientOptions ClientTls(const std::string& cert, const std::string& ca = "ca.pem") {
    ClientOptions o;
    o.connect_timeout = 3s;
    o.rpc_timeout = 5s;
    o.tls_ca_file = Pki(ca);
    if (!cert.empty()) {
      o.tls_cert_file = Pki(cert + ".pem");
      o.tls_key_file = Pki(cert + ".key");
    }
    return o;
  }

  void StartTlsNode() {
    ServiceOptions opts;
    opts.tcp = true;
    opts.extra_args = NodeTlsArgs(dir_.path());
    ASSERT_OK_AND_ASSIGN(svc_, ServiceProcess::Start(dir_.path(), opts));
  }

  static Status PutAndGet(KvClient& kv, uint64_t seed) {
    std::vector<uint8_t> payload = TestPayload(seed, 4096);
    ObjectInfo info = WithCrc(TestInfo(16), payload);
    ObjectName name = TestName(seed);
    KVSTASH_RETURN_IF_ERROR(kv.Put(name, info, payload, {.overwrite = true}));
    KVSTASH_ASSIGN_OR_RETURN(GetReply got, kv.Get(name));
    if (got.payload != payload) return absl::DataLossError("payload differs");
    return OkStatus();
  }

  static TempDir* pki_;
  TempDir dir_;
  std::unique_ptr<ServiceProcess> svc_;
};

TempDir* TlsTest::pki_ = nullptr;

TEST_F(TlsTest, ClientWithCertificateOfTheCaIsServed) {
  StartTlsNode();
  ASSERT_OK_AND_ASSIGN(auto kv, KvClient::Connect(svc_->target(), ClientTls("client-tenant-a")));
  EXPECT_THAT(PutAndGet(*kv, 1), IsOk());
  EXPECT_THAT(svc_->Log(), HasSubstr("tls=mutual"));
}

TEST_F(TlsTest, ClientWithoutCertificateIsRefused) {
  StartTlsNode();
  EXPECT_THAT(KvClient::Connect(svc_->target(), ClientTls("")).status(),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(TlsTest, ClientOfAnotherCaIsRefused) {
  StartTlsNode();
  EXPECT_THAT(KvClient::Connect(svc_->target(), ClientTls("stranger")).status(),
              StatusIs(absl::StatusCode::kUnavailable));
  // ... and a client that does not trust the service's CA refuses the service.
  EXPECT_THAT(
      KvClient::Connect(svc_->target(), ClientTls("client-tenant-a", "other-ca.pem")).status(),
      StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(TlsTest, ExpiredClientCertificateIsRefused) {
  StartTlsNode();
  EXPECT_THAT(KvClient::Connect(svc_->target(), ClientTls("expired")).status(),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(TlsTest, PlaintextClientIsRefused) {
  StartTlsNode();
  ClientOptions plain;
  plain.connect_timeout = 3s;
  EXPECT_THAT(KvClient::Connect(svc_->target(), plain).status(),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(TlsTest, ExpiredOrMismatchedServerMaterialStopsStartUp) {
  ServiceOptions opts;
  opts.tcp = true;
  opts.extra_args = {"--tls-cert",       Pki("expired.pem"), "--tls-key",
                     Pki("expired.key"), "--tls-ca",         Pki("ca.pem")};
  Result<std::unique_ptr<ServiceProcess>> expired = ServiceProcess::Start(dir_.path(), opts);
  ASSERT_FALSE(expired.ok());
  EXPECT_THAT(std::string(expired.status().message()), HasSubstr("certificate has expired"));
  opts.extra_args = {"--tls-cert", Pki("server.pem"), "--tls-key", Pki("client-admin.key"),
                     "--tls-ca",   Pki("ca.pem")};
  Result<std::unique_ptr<ServiceProcess>> mismatched = ServiceProcess::Start(dir_.path(), opts);
  ASSERT_FALSE(mismatched.ok());
  EXPECT_THAT(std::string(mismatched.status().message()), HasSubstr("does not match"));
  opts.extra_args = {"--tls-cert", Pki("server.pem"), "--tls-key", Pki("server.key")};
  Result<std::unique_ptr<ServiceProcess>> partial = ServiceProcess::Start(dir_.path(), opts);
  ASSERT_FALSE(partial.ok());
  EXPECT_THAT(std::string(partial.status().message()), HasSubstr("go together"));
}

TEST_F(TlsTest, PlainTcpBeyondLoopbackNeedsInsecureTcp) {
  ServiceOptions opts;
  opts.listen = "0.0.0.0:0";
  Result<std::unique_ptr<ServiceProcess>> refused = ServiceProcess::Start(dir_.path(), opts);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("--insecure-tcp"));
  opts.extra_args = {"--insecure-tcp"};
  ASSERT_OK_AND_ASSIGN(svc_, ServiceProcess::Start(dir_.path(), opts));
  ASSERT_OK_AND_ASSIGN(auto kv, KvClient::Connect(svc_->target()));
  EXPECT_THAT(PutAndGet(*kv, 2), IsOk());
}

TEST_F(TlsTest, SighupSwapsCertificatesWithoutDroppingConnections) {
  StartTlsNode();
  ASSERT_OK_AND_ASSIGN(auto before, KvClient::Connect(svc_->target(), ClientTls("client-node")));
  ASSERT_THAT(PutAndGet(*before, 3), IsOk());

  // A broken pair is refused and the old material stays.
  std::filesystem::copy_file(Pki("client-admin.key"), dir_.path() + "/server.key",
                             std::filesystem::copy_options::overwrite_existing);
  ::kill(svc_->pid(), SIGHUP);
  const auto refused_deadline = Clock::now() + 10s;
  while (svc_->Log().find("event=tls_reload_refused") == std::string::npos &&
         Clock::now() < refused_deadline) {
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_THAT(svc_->Log(), HasSubstr("event=tls_reload_refused"));
  ASSERT_OK_AND_ASSIGN(auto still, KvClient::Connect(svc_->target(), ClientTls("client-tenant-a")));
  EXPECT_THAT(PutAndGet(*still, 4), IsOk());

  // The other CA's material: after SIGHUP, new handshakes use it.
  (void)NodeTlsArgs(dir_.path(), "other-");
  std::filesystem::copy_file(Pki("other-ca.pem"), dir_.path() + "/ca.pem",
                             std::filesystem::copy_options::overwrite_existing);
  ::kill(svc_->pid(), SIGHUP);
  std::unique_ptr<KvClient> after;
  const auto deadline = Clock::now() + 20s;  // gRPC re-reads the private copy every second
  for (int attempt = 0; attempt < 40 && after == nullptr && Clock::now() < deadline; ++attempt) {
    auto kv = KvClient::Connect(svc_->target(), ClientTls("stranger", "other-ca.pem"));
    if (kv.ok()) after = std::move(*kv);
  }
  ASSERT_NE(after, nullptr) << svc_->Log();
  EXPECT_THAT(PutAndGet(*after, 5), IsOk());
  // The connection made before the swap still works; new ones under the old CA do not.
  EXPECT_THAT(PutAndGet(*before, 6), IsOk());
  EXPECT_THAT(KvClient::Connect(svc_->target(), ClientTls("client-tenant-a")).status(),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(TlsTest, PeersFetchOverMutualTls) {
  TempDir dir_b;
  const std::string secret = dir_.path() + "/secret";
  std::ofstream(secret) << "kvstash-test-cluster-secret-0123456789\n";
  ServiceOptions a_opts;
  a_opts.tcp = true;
  a_opts.extra_args = NodeTlsArgs(dir_.path());
  a_opts.extra_args.insert(a_opts.extra_args.end(), {"--peer-secret-file", secret});
  ASSERT_OK_AND_ASSIGN(svc_, ServiceProcess::Start(dir_.path(), a_opts));
  ServiceOptions b_opts;
  b_opts.tcp = true;
  b_opts.extra_args = NodeTlsArgs(dir_b.path());
  b_opts.extra_args.insert(b_opts.extra_args.end(), {"--peer-secret-file", secret, "--peer",
                                                     svc_->target(), "--peer-timeout-ms", "20000"});
  ASSERT_OK_AND_ASSIGN(auto b, ServiceProcess::Start(dir_b.path(), b_opts));

  ASSERT_OK_AND_ASSIGN(auto on_a, KvClient::Connect(svc_->target(), ClientTls("client-tenant-a")));
  std::vector<uint8_t> payload = TestPayload(7, 8192);
  ObjectInfo info = WithCrc(TestInfo(32), payload);
  ASSERT_THAT(on_a->Put(TestName(7), info, payload), IsOk());
  ASSERT_OK_AND_ASSIGN(auto on_b, KvClient::Connect(b->target(), ClientTls("client-tenant-a")));
  ASSERT_OK_AND_ASSIGN(GetReply got, on_b->Get(TestName(7)));
  EXPECT_EQ(got.payload, payload);
  EXPECT_THAT(svc_->Log(), HasSubstr("event=peer_hello"));
}

}  // namespace
}  // namespace kvstash::testing
