// Mutual TLS and tenants on real cachesvc processes. TLS: clients without a certificate, with one
// of another CA, or an expired one are refused; plain TCP beyond loopback needs --insecure-tcp;
// SIGHUP swaps the certificates without dropping established connections (and refuses a broken
// pair); two nodes fetch from each other over mutual TLS. The certificates are made at test time
// (scripts/make_test_certs.sh); no private key is committed. Tenants: calls without, with
// malformed, huge, unknown or revoked credentials are refused; tenant B naming tenant A's
// namespace in every RPC is refused and A's objects stay as they were; ids of A's reservations
// and leases are refused to B; a tenant with a cpu quota maps only its own arena (read-only
// mappings for reads), one without gets no shared memory; quotas bound each tenant's arena.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <openssl/sha.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "kvstash/client/kv_client.h"
#include "kvstash/proto/arena_handshake.h"
#include "kvstash/proto/convert.h"
#include "kvstash/proto/local_control.h"
#include "kvstash/v1/kvstash.grpc.pb.h"
#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
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
  ASSERT_THAT(expired, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(std::string(expired.status().message()), HasSubstr("certificate has expired"));
  opts.extra_args = {"--tls-cert", Pki("server.pem"), "--tls-key", Pki("client-admin.key"),
                     "--tls-ca",   Pki("ca.pem")};
  Result<std::unique_ptr<ServiceProcess>> mismatched = ServiceProcess::Start(dir_.path(), opts);
  ASSERT_THAT(mismatched, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(std::string(mismatched.status().message()), HasSubstr("does not match"));
  opts.extra_args = {"--tls-cert", Pki("server.pem"), "--tls-key", Pki("server.key")};
  Result<std::unique_ptr<ServiceProcess>> partial = ServiceProcess::Start(dir_.path(), opts);
  ASSERT_THAT(partial, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(std::string(partial.status().message()), HasSubstr("go together"));
}

TEST_F(TlsTest, PlainTcpBeyondLoopbackNeedsInsecureTcp) {
  ServiceOptions opts;
  opts.listen = "0.0.0.0:0";
  Result<std::unique_ptr<ServiceProcess>> refused = ServiceProcess::Start(dir_.path(), opts);
  ASSERT_THAT(refused, StatusIs(absl::StatusCode::kUnavailable));
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

// ---- Tenants -------------------------------------------------------------------------------

constexpr char kAlphaToken[] = "alpha-token-0123456789";
constexpr char kBetaToken[] = "beta-token-0123456789";
constexpr char kAdminToken[] = "admin-token-0123456789";
constexpr char kGammaToken[] = "gamma-token-0123456789";

std::string Sha256Hex(const std::string& text) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), d);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : d) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

class TenantTest : public TlsTest {
 protected:
  void WriteTokens(bool with_beta = true) {
    std::ofstream out(tokens_);
    out << "# test tenants\n"
        << "token  " << kAlphaToken << "  alpha\n";
    if (with_beta) out << "sha256 " << Sha256Hex(kBetaToken) << " beta user\n";
    out << "token  " << kAdminToken << "  ops admin\n"
        << "token  " << kGammaToken << "  gamma\n"
        << "cert   tenant-a alpha\n"
        << "quota  alpha cpu=64KiB ssd=1MiB\n"
        << "quota  gamma cpu=1MiB\n";
  }

  void StartNode(bool tls = false) {
    WriteTokens();
    ServiceOptions opts;
    opts.metrics = true;
    opts.tcp = tls;
    opts.extra_args = {"--tokens-file", tokens_};
    if (tls) {
      std::vector<std::string> t = NodeTlsArgs(dir_.path());
      opts.extra_args.insert(opts.extra_args.end(), t.begin(), t.end());
    }
    ASSERT_OK_AND_ASSIGN(svc_, ServiceProcess::Start(dir_.path(), opts));
  }

  std::unique_ptr<KvClient> As(const std::string& token) {
    ClientOptions o;
    o.connect_timeout = 3s;
    o.bearer_token = token;
    auto kv = KvClient::Connect(svc_->target(), o);
    EXPECT_OK(kv);
    return kv.ok() ? std::move(*kv) : nullptr;
  }

  // A raw stub on a connection of its own, for metadata and ids KvClient does not expose.
  std::unique_ptr<v1::KvStash::Stub> RawStub() {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return v1::KvStash::NewStub(
        grpc::CreateCustomChannel(svc_->target(), grpc::InsecureChannelCredentials(), args));
  }
  static void Authorize(grpc::ClientContext* ctx, const std::string& header) {
    ctx->set_deadline(std::chrono::system_clock::now() + 10s);
    if (!header.empty()) ctx->AddMetadata("authorization", header);
  }

  std::string tokens_ = dir_.path() + "/tokens.txt";
};

// Every call of a client without credentials, or with a bad one, is UNAUTHENTICATED.
TEST_F(TenantTest, CallsWithoutOrWithBadCredentialsAreRefused) {
  StartNode();
  ObjectName name = TestName(1, "alpha");
  auto stub = RawStub();
  v1::LookupRequest req;
  ToProto(name, req.add_keys());
  for (const std::string& header :
       {std::string(), std::string("Basic YWxwaGE6cHc="), std::string("Bearer"),
        std::string("Bearer ") + std::string(5000, 'x'), std::string("Bearer bad token"),
        std::string("Bearer unknown-token-0123456789")}) {
    grpc::ClientContext ctx;
    Authorize(&ctx, header);
    v1::LookupResponse resp;
    grpc::Status s = stub->Lookup(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << header.substr(0, 40) << ": " << s.error_message();
    EXPECT_EQ(resp.results_size(), 0);
  }
  {
    // A header far beyond what gRPC takes is refused before it reaches the service. gRPC may
    // close the connection over it, so it gets a channel of its own.
    auto own = RawStub();
    grpc::ClientContext ctx;
    Authorize(&ctx, std::string("Bearer ") + std::string(64 << 10, 'y'));
    v1::LookupResponse resp;
    grpc::Status s = own->Lookup(&ctx, req, &resp);
    EXPECT_NE(s.error_code(), grpc::StatusCode::OK);
    EXPECT_EQ(resp.results_size(), 0);
  }
  {
    grpc::ClientContext ctx;
    Authorize(&ctx, std::string("Bearer ") + kAlphaToken);
    ctx.AddMetadata("authorization", std::string("Bearer ") + kBetaToken);
    v1::LookupResponse resp;
    EXPECT_EQ(stub->Lookup(&ctx, req, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    Authorize(&ctx, "");
    ctx.AddMetadata("kvstash-peer-token", "not-the-cluster-secret-000000");
    v1::LookupResponse resp;
    EXPECT_EQ(stub->Lookup(&ctx, req, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  std::unique_ptr<KvClient> none = As("");
  ASSERT_NE(none, nullptr);
  std::vector<uint8_t> payload = TestPayload(1, 4096);
  EXPECT_THAT(none->Put(name, WithCrc(TestInfo(16), payload), payload),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(none->Stats().status(), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_GE(MetricSum(svc_->metrics_port(), "kvstash_auth_refused_total"), 8);
}

TEST_F(TenantTest, RevokedTokenStopsWorkingAfterSighup) {
  StartNode();
  std::unique_ptr<KvClient> beta = As(kBetaToken);
  ASSERT_NE(beta, nullptr);
  ASSERT_THAT(beta->Stats().status(), IsOk());
  WriteTokens(/*with_beta=*/false);
  ::kill(svc_->pid(), SIGHUP);
  const auto deadline = Clock::now() + 10s;
  while (svc_->Log().find("event=tenants_reloaded") == std::string::npos &&
         Clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_THAT(svc_->Log(), HasSubstr("event=tenants_reloaded"));
  EXPECT_THAT(beta->Stats().status(), StatusIs(absl::StatusCode::kUnauthenticated));
  // A broken file is refused; the table in force stays.
  std::ofstream(tokens_) << "token short alpha\n";
  ::kill(svc_->pid(), SIGHUP);
  const auto refused_deadline = Clock::now() + 10s;
  while (svc_->Log().find("event=tenants_reload_refused") == std::string::npos &&
         Clock::now() < refused_deadline) {
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_THAT(svc_->Log(), HasSubstr("event=tenants_reload_refused"));
  std::unique_ptr<KvClient> alpha = As(kAlphaToken);
  ASSERT_NE(alpha, nullptr);
  EXPECT_THAT(alpha->Stats().status(), IsOk());
}

// Tenant beta names alpha's namespace in every RPC: each is refused with PERMISSION_DENIED, and
// alpha's object is still there, unchanged, unpinned, readable only by alpha.
TEST_F(TenantTest, TenantCannotNameAnotherTenantsNamespace) {
  StartNode();
  std::unique_ptr<KvClient> alpha = As(kAlphaToken), beta = As(kBetaToken), admin = As(kAdminToken);
  ASSERT_NE(alpha, nullptr);
  ASSERT_NE(beta, nullptr);
  // alpha (a cpu quota: an arena of its own) maps it; beta (no quota) gets no shared memory.
  EXPECT_TRUE(alpha->shared_memory_attached());
  EXPECT_FALSE(beta->shared_memory_attached());
  EXPECT_THAT(beta->shared_memory_status(), StatusIs(absl::StatusCode::kFailedPrecondition));

  std::vector<uint8_t> payload = TestPayload(9, 4096);
  ObjectInfo info = WithCrc(TestInfo(16), payload);
  const ObjectName mine = TestName(9, "alpha");
  ASSERT_THAT(alpha->Put(mine, info, payload), IsOk());
  // An empty namespace is the caller's own: the same object for alpha, nothing for beta.
  const ObjectName unnamed = TestName(9, "");
  ASSERT_OK_AND_ASSIGN(LookupReply own, alpha->Lookup(std::span(&unnamed, 1)));
  EXPECT_TRUE(own.results[0].present);
  ASSERT_OK_AND_ASSIGN(LookupReply other, beta->Lookup(std::span(&unnamed, 1)));
  EXPECT_FALSE(other.results[0].present);

  const auto denied = StatusIs(absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(beta->Lookup(std::span(&mine, 1)).status(), denied);
  EXPECT_THAT(beta->Get(mine).status(), denied);
  EXPECT_THAT(beta->Delete(std::span(&mine, 1)).status(), denied);
  EXPECT_THAT(beta->Pin(std::span(&mine, 1)).status(), denied);
  EXPECT_THAT(beta->Unpin(std::span(&mine, 1)).status(), denied);
  EXPECT_THAT(beta->Put(mine, info, TestPayload(10, 4096), {.overwrite = true}), denied);
  EXPECT_THAT(beta->Offer(std::span(&mine, 1)).status(), denied);
  EXPECT_THAT(beta->List("alpha").status(), denied);
  EXPECT_THAT(beta->List("", 0, "", /*all_namespaces=*/true).status(), denied);
  ASSERT_OK_AND_ASSIGN(Handoff offered, alpha->Offer(std::span(&mine, 1)));
  EXPECT_THAT(beta->FetchHandoff(offered).status(), denied);
  ASSERT_THAT(alpha->ReleaseHandoff(offered), IsOk());

  // Ids alpha was given are refused to beta.
  auto stub = RawStub();
  v1::AcquireRequest acquire;
  ToProto(mine, acquire.add_keys());
  v1::AcquireResponse leased;
  {
    grpc::ClientContext ctx;
    Authorize(&ctx, std::string("Bearer ") + kAlphaToken);
    ASSERT_OK(stub->Acquire(&ctx, acquire, &leased));
    ASSERT_EQ(leased.results(0).status().code(), 0);
  }
  v1::ReserveRequest reserve;
  ToProto(TestName(11, "alpha"), reserve.mutable_key());
  ToProto(info, reserve.mutable_info());
  v1::ReserveResponse reserved;
  {
    grpc::ClientContext ctx;
    Authorize(&ctx, std::string("Bearer ") + kAlphaToken);
    ASSERT_OK(stub->Reserve(&ctx, reserve, &reserved));
  }
  const std::string as_beta = std::string("Bearer ") + kBetaToken;
  {
    // The shared-memory calls, straight over gRPC (KvClient needs the arena for them).
    grpc::ClientContext ctx;
    Authorize(&ctx, as_beta);
    v1::AcquireResponse resp;
    EXPECT_EQ(stub->Acquire(&ctx, acquire, &resp).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_EQ(resp.results_size(), 0);
    grpc::ClientContext rctx;
    Authorize(&rctx, as_beta);
    v1::ReserveResponse rresp;
    EXPECT_EQ(stub->Reserve(&rctx, reserve, &rresp).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
    grpc::ClientContext actx;
    Authorize(&actx, as_beta);
    v1::ArenaInfoResponse aresp;
    EXPECT_EQ(stub->ArenaInfo(&actx, v1::ArenaInfoRequest(), &aresp).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_TRUE(aresp.fd_socket_path().empty());
  }
  {
    grpc::ClientContext ctx;
    Authorize(&ctx, as_beta);
    v1::ReleaseRequest release;
    release.add_lease_ids(leased.results(0).lease_id());
    v1::ReleaseResponse resp;
    ASSERT_OK(stub->Release(&ctx, release, &resp));
    EXPECT_EQ(resp.results(0).code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    grpc::ClientContext ctx;
    Authorize(&ctx, as_beta);
    v1::CommitRequest commit;
    commit.set_reservation_id(reserved.reservation_id());
    v1::CommitResponse resp;
    EXPECT_EQ(stub->Commit(&ctx, commit, &resp).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    grpc::ClientContext ctx;
    Authorize(&ctx, as_beta);
    v1::AbortRequest abort;
    abort.set_reservation_id(reserved.reservation_id());
    v1::AbortResponse resp;
    EXPECT_EQ(stub->Abort(&ctx, abort, &resp).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    // alpha still owns both: its release and abort succeed.
    grpc::ClientContext ctx;
    Authorize(&ctx, std::string("Bearer ") + kAlphaToken);
    v1::ReleaseRequest release;
    release.add_lease_ids(leased.results(0).lease_id());
    v1::ReleaseResponse resp;
    ASSERT_OK(stub->Release(&ctx, release, &resp));
    EXPECT_EQ(resp.results(0).code(), 0);
    grpc::ClientContext actx;
    Authorize(&actx, std::string("Bearer ") + kAlphaToken);
    v1::AbortRequest abort;
    abort.set_reservation_id(reserved.reservation_id());
    v1::AbortResponse aresp;
    EXPECT_OK(stub->Abort(&actx, abort, &aresp));
  }

  // Nothing of alpha's changed or leaked.
  ASSERT_OK_AND_ASSIGN(GetReply got, alpha->Get(mine));
  EXPECT_EQ(got.payload, payload);
  ASSERT_OK_AND_ASSIGN(ListReply alpha_list, alpha->List(""));
  ASSERT_EQ(alpha_list.objects.size(), 1u);
  EXPECT_FALSE(alpha_list.objects[0].pinned);
  ASSERT_OK_AND_ASSIGN(ListReply beta_list, beta->List(""));
  EXPECT_TRUE(beta_list.objects.empty());
  // Stats: a tenant sees its own bytes against its quota; the admin sees the node.
  ASSERT_OK_AND_ASSIGN(ServiceStats beta_stats, beta->Stats());
  for (const auto& t : beta_stats.tiers) EXPECT_EQ(t.used_bytes, 0u);
  ASSERT_OK_AND_ASSIGN(ServiceStats alpha_stats, alpha->Stats());
  ASSERT_FALSE(alpha_stats.tiers.empty());
  EXPECT_EQ(alpha_stats.tiers[0].used_bytes, payload.size());
  EXPECT_EQ(alpha_stats.tiers[0].capacity_bytes, 64u << 10);
  ASSERT_NE(admin, nullptr);
  ASSERT_OK_AND_ASSIGN(ListReply everything, admin->List("", 0, "", /*all_namespaces=*/true));
  EXPECT_EQ(everything.objects.size(), 1u);
  ASSERT_OK_AND_ASSIGN(ServiceStats node, admin->Stats());
  EXPECT_GT(node.uptime_ms, 0u);
}

// A handoff belongs to the tenant that offered it: another tenant holding its id (and naming
// keys of its own namespace) can neither extend, end nor fetch it, and the pins stay.
TEST_F(TenantTest, HandoffIsTheOfferingTenants) {
  StartNode();
  std::unique_ptr<KvClient> alpha = As(kAlphaToken), beta = As(kBetaToken);
  ASSERT_NE(alpha, nullptr);
  ASSERT_NE(beta, nullptr);
  std::vector<uint8_t> payload = TestPayload(31, 4096);
  const ObjectName unnamed = TestName(31, "");
  ASSERT_THAT(alpha->Put(unnamed, WithCrc(TestInfo(16), payload), payload), IsOk());
  ASSERT_OK_AND_ASSIGN(Handoff offered, alpha->Offer(std::span(&unnamed, 1)));
  ASSERT_EQ(offered.names.size(), 1u);
  EXPECT_TRUE(offered.names[0].name_space.empty());  // beta's CallerKeys do not refuse it

  const auto denied = StatusIs(absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(beta->HeartbeatHandoff(offered).status(), denied);
  EXPECT_THAT(beta->ReleaseHandoff(offered), denied);
  EXPECT_THAT(beta->FetchHandoff(offered).status(), denied);
  // A handoff descriptor of the same id with the node left empty is refused the same way.
  Handoff local = offered;
  local.node.clear();
  EXPECT_THAT(beta->ReleaseHandoff(local), denied);

  // Still alpha's, still pinned: alpha extends and ends it; then it is gone for everyone.
  ASSERT_OK_AND_ASSIGN(uint64_t ms, alpha->HeartbeatHandoff(offered, 5000));
  EXPECT_GT(ms, 0u);
  ASSERT_THAT(alpha->ReleaseHandoff(offered), IsOk());
  EXPECT_THAT(alpha->HeartbeatHandoff(offered).status(), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(beta->ReleaseHandoff(offered), StatusIs(absl::StatusCode::kNotFound));
}

// `kvstash generate` reaches a mutual-TLS, multi-tenant node with --tls-* and --token-file: its
// chunks land in the token's tenant namespace, and the second run loads them.
TEST_F(TenantTest, GenerateThroughTlsWithAToken) {
  StartNode(/*tls=*/true);
  const std::string token_file = dir_.path() + "/alpha.token";
  std::ofstream(token_file) << kAlphaToken << "\n";
  // Named, not a literal pair inside the argument list (bugprone-suspicious-missing-comma).
  const std::string prompt =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
      "park with her friends. One day, she saw a big red ball under a tree.";
  auto generate = [&](std::string* log) {
    return RunProgram({BinaryPath("cli/kvstash"),
                       "generate",
                       "--model",
                       std::string(KVSTASH_SHARED_DATA) + "/models/stories260K.bin",
                       "--tokenizer",
                       std::string(KVSTASH_SHARED_DATA) + "/models/tok512.bin",
                       "--prompt",
                       prompt,
                       "--max-tokens",
                       "4",
                       "--chunk-tokens",
                       "16",
                       "--threads",
                       "1",
                       "--cache-target",
                       svc_->target(),
                       "--tls-ca",
                       Pki("ca.pem"),
                       "--tls-cert",
                       Pki("client-node.pem"),
                       "--tls-key",
                       Pki("client-node.key"),
                       "--token-file",
                       token_file},
                      log, 120'000);
  };
  std::string first, second;
  ASSERT_EQ(generate(&first), 0) << first;
  EXPECT_THAT(first, HasSubstr("cache: hit 0 of"));
  ASSERT_EQ(generate(&second), 0) << second;
  EXPECT_THAT(second, Not(HasSubstr("cache: hit 0 of")));
  EXPECT_THAT(second, HasSubstr("cache: hit"));

  ASSERT_OK_AND_ASSIGN(auto alpha, KvClient::Connect(svc_->target(), [] {
                         ClientOptions o = ClientTls("client-node");
                         o.bearer_token = kAlphaToken;
                         return o;
                       }()));
  ASSERT_OK_AND_ASSIGN(ListReply mine, alpha->List("alpha"));
  EXPECT_FALSE(mine.objects.empty());
  // Without the token the certificate names no tenant: refused.
  std::string refused;
  EXPECT_NE(RunProgram({BinaryPath("cli/kvstash"), "ls", "--target", svc_->target(), "--tls-ca",
                        Pki("ca.pem"), "--tls-cert", Pki("client-node.pem"), "--tls-key",
                        Pki("client-node.key")},
                       &refused),
            0);
  EXPECT_THAT(refused, HasSubstr("UNAUTHENTICATED"));
}

// alpha's cpu quota (64 KiB) is the size of its own arena: its puts past it evict its own
// oldest objects (to SSD), never another tenant's; an object larger than the quota is refused.
TEST_F(TenantTest, QuotaIsTheTenantsOwnArena) {
  StartNode();
  std::unique_ptr<KvClient> alpha = As(kAlphaToken), beta = As(kBetaToken);
  ASSERT_NE(alpha, nullptr);
  ASSERT_NE(beta, nullptr);
  ASSERT_TRUE(alpha->shared_memory_attached());
  std::vector<uint8_t> theirs = TestPayload(300, 16 << 10);
  ASSERT_THAT(beta->Put(TestName(300, ""), WithCrc(TestInfo(64), theirs), theirs), IsOk());
  // Eight 16 KiB objects, twice the quota: every put succeeds.
  std::vector<std::vector<uint8_t>> mine;
  for (uint64_t i = 0; i < 8; ++i) {
    mine.push_back(TestPayload(100 + i, 16 << 10));
    ASSERT_THAT(alpha->Put(TestName(100 + i, ""), WithCrc(TestInfo(64), mine[i]), mine[i]), IsOk())
        << i;
  }
  ASSERT_OK_AND_ASSIGN(ServiceStats alpha_stats, alpha->Stats());
  ASSERT_FALSE(alpha_stats.tiers.empty());
  EXPECT_LE(alpha_stats.tiers[0].used_bytes, 64u << 10);  // the CPU tier: within the quota
  // Nothing of beta's was evicted for alpha, and all of alpha's are still readable.
  ASSERT_OK_AND_ASSIGN(GetReply got, beta->Get(TestName(300, "")));
  EXPECT_EQ(got.payload, theirs);
  for (uint64_t i = 0; i < 8; ++i) {
    ASSERT_OK_AND_ASSIGN(GetReply back, alpha->Get(TestName(100 + i, "")));
    EXPECT_EQ(back.payload, mine[i]) << i;
  }
  std::vector<uint8_t> big = TestPayload(200, 272 * 256);  // 68 KiB: 272 tokens of 256 bytes
  EXPECT_THAT(alpha->Put(TestName(200, ""), WithCrc(TestInfo(272), big), big),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_GE(MetricSum(svc_->metrics_port(), "kvstash_quota_exceeded_total"), 1);
}

// The arena socket of a multi-tenant node: a client gets only its own tenant's arena, after its
// bearer token is checked; a read-only attach gets an fd whose mapping cannot be written; a
// client without a token, with a bad one, or of a tenant without an arena gets no fd and a
// precise status; another tenant's fd is other memory that holds nothing of alpha's.
TEST_F(TenantTest, ArenaSocketHandsATenantOnlyItsOwnArena) {
  StartNode();
  std::unique_ptr<KvClient> alpha = As(kAlphaToken);
  ASSERT_NE(alpha, nullptr);
  ASSERT_TRUE(alpha->shared_memory_attached());
  std::vector<uint8_t> payload = TestPayload(41, 4096);
  const ObjectName mine = TestName(41, "alpha");
  ASSERT_THAT(alpha->Put(mine, WithCrc(TestInfo(16), payload), payload), IsOk());
  const std::string sock = dir_.path() + "/arena.sock";
  auto attach = [&](const std::string& token, bool writable) {
    return ReceiveArenaFd(sock, 5000, false, ArenaAttachRequest{writable, token});
  };

  // Refused, each with its status and no fd.
  EXPECT_THAT(attach("", true), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(attach("unknown-token-0123456789", true),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(attach("bad token", false), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(attach(kBetaToken, true), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(attach(kAdminToken, false), StatusIs(absl::StatusCode::kFailedPrecondition));
  {
    // Not an attach request at all: a refusal, then the connection closes.
    sockaddr_un addr;
    ASSERT_OK_AND_ASSIGN(unsigned len, MakeUnixAddress(sock, &addr));
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), len), 0);
    const char garbage[16] = "GET / HTTP/1.1";
    ASSERT_EQ(::send(fd, garbage, sizeof(garbage), MSG_NOSIGNAL), 16);
    char reply[64] = {};
    ssize_t n = ::recv(fd, reply, sizeof(reply), MSG_WAITALL);
    ::close(fd);
    ASSERT_GE(n, 12);
    EXPECT_EQ(std::string(reply, 4), "KVSE");
  }
  EXPECT_GE(MetricSum(svc_->metrics_port(), "kvstash_arena_attach_refused_total"), 6);

  // alpha, read-only: its own 64 KiB arena, one fd, which cannot be written in any way.
  ASSERT_OK_AND_ASSIGN(ReceivedArena ro, attach(kAlphaToken, false));
  EXPECT_EQ(ro.hello.version, kArenaHandshakeVersion2);
  EXPECT_NE(ro.hello.features & kArenaFeatureReadOnlyFd, 0u);
  EXPECT_EQ(ro.hello.features & kArenaFeatureWritableFd, 0u);
  EXPECT_EQ(ro.writable_fd, -1);
  EXPECT_EQ(ro.hello.arena_bytes, 64u << 10);
  errno = 0;
  EXPECT_EQ(::mmap(nullptr, ro.hello.arena_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, ro.fd, 0),
            MAP_FAILED);
  EXPECT_EQ(errno, EACCES);
  errno = 0;
  EXPECT_EQ(::ftruncate(ro.fd, 1 << 20), -1);  // sealed (and opened read-only)
  auto* view =
      static_cast<uint8_t*>(::mmap(nullptr, ro.hello.arena_bytes, PROT_READ, MAP_SHARED, ro.fd, 0));
  ASSERT_NE(view, MAP_FAILED);
  errno = 0;
  EXPECT_EQ(::mprotect(view, ro.hello.arena_bytes, PROT_READ | PROT_WRITE), -1);
  EXPECT_EQ(errno, EACCES);
  // A lease of alpha's object: its bytes are in alpha's mapping at offset - arena_offset.
  auto stub = RawStub();
  v1::AcquireRequest acquire;
  ToProto(mine, acquire.add_keys());
  v1::AcquireResponse leased;
  {
    grpc::ClientContext ctx;
    Authorize(&ctx, std::string("Bearer ") + kAlphaToken);
    ASSERT_OK(stub->Acquire(&ctx, acquire, &leased));
    ASSERT_EQ(leased.results(0).status().code(), 0);
  }
  const uint64_t offset = leased.results(0).arena_offset();
  ASSERT_GE(offset, ro.hello.arena_offset);
  ASSERT_LE(offset - ro.hello.arena_offset + payload.size(), ro.hello.arena_bytes);
  const uint8_t* leased_bytes = view + (offset - ro.hello.arena_offset);
  EXPECT_EQ(std::memcmp(leased_bytes, payload.data(), payload.size()), 0);
  // Writing through the lease's view faults (in a child, bounded by an alarm).
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::alarm(10);
    // The default action, so the fault kills the child with SIGSEGV also under ASan, whose own
    // handler would report it and abort instead.
    ::signal(SIGSEGV, SIG_DFL);
    volatile uint8_t* target = const_cast<volatile uint8_t*>(leased_bytes);
    target[0] = static_cast<uint8_t>(~leased_bytes[0]);
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status)) << "a write through a read-only lease mapping went through";
  EXPECT_EQ(WTERMSIG(status), SIGSEGV);
  EXPECT_EQ(std::memcmp(leased_bytes, payload.data(), payload.size()), 0);
  {
    grpc::ClientContext ctx;
    Authorize(&ctx, std::string("Bearer ") + kAlphaToken);
    v1::ReleaseRequest release;
    release.add_lease_ids(leased.results(0).lease_id());
    v1::ReleaseResponse resp;
    ASSERT_OK(stub->Release(&ctx, release, &resp));
  }

  // gamma, read-write: its own memory (another inode, another range), none of alpha's bytes.
  ASSERT_OK_AND_ASSIGN(ReceivedArena g, attach(kGammaToken, true));
  EXPECT_NE(g.hello.features & kArenaFeatureWritableFd, 0u);
  ASSERT_GE(g.writable_fd, 0);
  EXPECT_EQ(g.hello.arena_bytes, 1u << 20);
  struct stat sa, sg, sgw;
  ASSERT_EQ(::fstat(ro.fd, &sa), 0);
  ASSERT_EQ(::fstat(g.fd, &sg), 0);
  ASSERT_EQ(::fstat(g.writable_fd, &sgw), 0);
  EXPECT_NE(sa.st_ino, sg.st_ino);
  EXPECT_EQ(sg.st_ino, sgw.st_ino);
  EXPECT_TRUE(offset < g.hello.arena_offset ||
              offset >= g.hello.arena_offset + g.hello.arena_bytes);
  auto* gview =
      static_cast<uint8_t*>(::mmap(nullptr, g.hello.arena_bytes, PROT_READ, MAP_SHARED, g.fd, 0));
  ASSERT_NE(gview, MAP_FAILED);
  EXPECT_EQ(::memmem(gview, g.hello.arena_bytes, payload.data(), payload.size()), nullptr);
  ::munmap(gview, g.hello.arena_bytes);
  ::munmap(view, ro.hello.arena_bytes);
  ::close(ro.fd);
  ::close(g.fd);
  ::close(g.writable_fd);
  // alpha's object is as it was.
  ASSERT_OK_AND_ASSIGN(GetReply got, alpha->Get(mine));
  EXPECT_EQ(got.payload, payload);
}

TEST_F(TenantTest, ClientCertificateNamesTheTenant) {
  StartNode(/*tls=*/true);
  ASSERT_OK_AND_ASSIGN(auto a, KvClient::Connect(svc_->target(), ClientTls("client-tenant-a")));
  std::vector<uint8_t> payload = TestPayload(5, 4096);
  ASSERT_THAT(a->Put(TestName(5, ""), WithCrc(TestInfo(16), payload), payload), IsOk());
  ASSERT_OK_AND_ASSIGN(LookupReply found, a->Lookup(std::vector{TestName(5, "alpha")}));
  EXPECT_TRUE(found.results[0].present);
  // tenant-b's certificate is valid but names no tenant.
  ASSERT_OK_AND_ASSIGN(auto b, KvClient::Connect(svc_->target(), ClientTls("client-tenant-b")));
  EXPECT_THAT(b->Stats().status(), StatusIs(absl::StatusCode::kUnauthenticated));
  // A token wins over the certificate it came with.
  ClientOptions with_token = ClientTls("client-tenant-b");
  with_token.bearer_token = kBetaToken;
  ASSERT_OK_AND_ASSIGN(auto b2, KvClient::Connect(svc_->target(), with_token));
  EXPECT_THAT(b2->Lookup(std::vector{TestName(5, "alpha")}).status(),
              StatusIs(absl::StatusCode::kPermissionDenied));
}

// Two multi-tenant nodes over mutual TLS: a tenant's object put on A is fetched by B for the
// same tenant (the nodes know each other by the cluster secret), and another tenant naming it on
// B is refused before any peer is asked.
TEST_F(TenantTest, PeersFetchForTheSameTenantOnly) {
  WriteTokens();
  TempDir dir_b;
  const std::string secret = dir_.path() + "/secret";
  std::ofstream(secret) << "kvstash-test-cluster-secret-0123456789\n";
  ServiceOptions a_opts;
  a_opts.tcp = true;
  a_opts.extra_args = NodeTlsArgs(dir_.path());
  a_opts.extra_args.insert(a_opts.extra_args.end(),
                           {"--peer-secret-file", secret, "--tokens-file", tokens_});
  ASSERT_OK_AND_ASSIGN(svc_, ServiceProcess::Start(dir_.path(), a_opts));
  ServiceOptions b_opts;
  b_opts.tcp = true;
  b_opts.extra_args = NodeTlsArgs(dir_b.path());
  b_opts.extra_args.insert(b_opts.extra_args.end(),
                           {"--peer-secret-file", secret, "--tokens-file", tokens_, "--peer",
                            svc_->target(), "--peer-timeout-ms", "20000"});
  ASSERT_OK_AND_ASSIGN(auto b, ServiceProcess::Start(dir_b.path(), b_opts));

  auto connect = [&](const std::string& target, const char* token) {
    ClientOptions o = ClientTls("client-node");  // a valid certificate that names no tenant
    o.bearer_token = token;
    return KvClient::Connect(target, o);
  };
  ASSERT_OK_AND_ASSIGN(auto alpha_a, connect(svc_->target(), kAlphaToken));
  std::vector<uint8_t> payload = TestPayload(21, 8192);
  ASSERT_THAT(alpha_a->Put(TestName(21, ""), WithCrc(TestInfo(32), payload), payload), IsOk());
  ASSERT_OK_AND_ASSIGN(auto alpha_b, connect(b->target(), kAlphaToken));
  ASSERT_OK_AND_ASSIGN(GetReply got, alpha_b->Get(TestName(21, "")));
  EXPECT_EQ(got.payload, payload);
  ASSERT_OK_AND_ASSIGN(auto beta_b, connect(b->target(), kBetaToken));
  EXPECT_THAT(beta_b->Get(TestName(21, "alpha")).status(),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(beta_b->Get(TestName(21, "")).status(), StatusIs(absl::StatusCode::kNotFound));

  // Handoffs across nodes: node B forwards heartbeats and releases with the cluster secret and
  // the caller's tenant, so beta on B cannot touch alpha's handoff on A, while alpha's fetch
  // through B ends it (the peer role releases it on A).
  std::vector<uint8_t> offered_payload = TestPayload(22, 8192);
  const ObjectName unnamed = TestName(22, "");
  ASSERT_THAT(alpha_a->Put(unnamed, WithCrc(TestInfo(32), offered_payload), offered_payload),
              IsOk());
  ASSERT_OK_AND_ASSIGN(Handoff offered, alpha_a->Offer(std::span(&unnamed, 1)));
  ASSERT_EQ(offered.node, svc_->target());
  const auto denied = StatusIs(absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(beta_b->HeartbeatHandoff(offered).status(), denied);
  EXPECT_THAT(beta_b->ReleaseHandoff(offered), denied);
  EXPECT_THAT(beta_b->FetchHandoff(offered).status(), denied);
  ASSERT_OK_AND_ASSIGN(uint64_t ms, alpha_a->HeartbeatHandoff(offered));  // still there
  EXPECT_GT(ms, 0u);
  ASSERT_OK_AND_ASSIGN(HandoffFetch fetched, alpha_b->FetchHandoff(offered, true));
  EXPECT_EQ(fetched.fetched, 1u);
  EXPECT_THAT(alpha_a->HeartbeatHandoff(offered).status(), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK_AND_ASSIGN(GetReply handed, alpha_b->Get(unnamed));
  EXPECT_EQ(handed.payload, offered_payload);
}

}  // namespace
}  // namespace kvstash::testing
