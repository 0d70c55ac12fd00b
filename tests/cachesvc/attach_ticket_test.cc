// Attach tickets on a real multi-tenant cachesvc over mutual TLS (docs/deploy.md "Attach
// tickets"): a client identified by its client certificate alone maps its own tenant's arena with
// single-use tickets from ArenaInfo, and reads and writes it; a ticket reused, expired, of the
// wrong length, made up, or issued to another tenant's certificate opens nothing of alpha's and
// each is refused with its precise status and no fd; a read-only identity gets no write mapping;
// tickets are bounded per tenant; a SIGHUP that moves the certificate to another tenant cuts its
// open local control connection and its unused tickets. The PKI is made at test time
// (scripts/make_test_certs.sh).
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "kvstash/client/kv_client.h"
#include "kvstash/proto/arena_handshake.h"
#include "kvstash/proto/convert.h"
#include "kvstash/proto/local_control.h"
#include "kvstash/proto/status_mapping.h"
#include "kvstash/v1/kvstash.grpc.pb.h"
#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using ::testing::HasSubstr;
using namespace ::kvstash::client;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr char kBetaToken[] = "beta-ticket-token-0123456789";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Closes what a successful attach received.
void CloseArena(const ReceivedArena& got) {
  if (got.fd >= 0) ::close(got.fd);
  if (got.writable_fd >= 0) ::close(got.writable_fd);
  if (got.connection >= 0) ::close(got.connection);
}

class AttachTicketTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pki_ = new TempDir();
    std::string out;
    ASSERT_EQ(
        RunProgram({std::string(KVSTASH_SOURCE_DIR) + "/scripts/make_test_certs.sh", pki_->path()},
                   &out),
        0)
        << out;
  }
  static void TearDownTestSuite() {
    delete pki_;
    pki_ = nullptr;
  }
  static std::string Pki(const std::string& file) { return pki_->path() + "/" + file; }

  // tenant-a: alpha (read-write); tenant-b: gamma, read-only (or alpha, `moved`); admin: ops
  // (no arena); the `node` certificate names nobody. beta has a token.
  void WriteTokens(bool moved = false) {
    std::ofstream out(tokens_);
    out << "cert  tenant-a " << (moved ? "gamma" : "alpha") << "\n"
        << "cert  tenant-b gamma ro\n"
        << "cert  admin ops admin\n"
        << "token " << kBetaToken << " beta\n"
        << "quota alpha cpu=1MiB\n"
        << "quota gamma cpu=1MiB\n"
        << "quota beta cpu=1MiB\n";
  }

  void StartNode(std::vector<std::string> extra = {}) {
    WriteTokens();
    ServiceOptions opts;
    opts.tcp = true;
    opts.metrics = true;
    opts.extra_args = {"--tokens-file", tokens_,           "--tls-cert", Pki("server.pem"),
                       "--tls-key",     Pki("server.key"), "--tls-ca",   Pki("ca.pem")};
    opts.extra_args.insert(opts.extra_args.end(), extra.begin(), extra.end());
    ASSERT_OK_AND_ASSIGN(svc_, ServiceProcess::Start(dir_.path(), opts));
  }

  ClientOptions CertOnly(const std::string& cert) const {
    ClientOptions o;
    o.connect_timeout = 3s;
    o.rpc_timeout = 5s;
    o.tls_ca_file = Pki("ca.pem");
    o.tls_cert_file = Pki("client-" + cert + ".pem");
    o.tls_key_file = Pki("client-" + cert + ".key");
    return o;
  }

  // A raw stub over mutual TLS with `cert`, on a connection of its own.
  std::unique_ptr<v1::KvStash::Stub> Stub(const std::string& cert) const {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ReadFile(Pki("ca.pem"));
    ssl.pem_cert_chain = ReadFile(Pki("client-" + cert + ".pem"));
    ssl.pem_private_key = ReadFile(Pki("client-" + cert + ".key"));
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return v1::KvStash::NewStub(
        grpc::CreateCustomChannel(svc_->target(), grpc::SslCredentials(ssl), args));
  }

  // ArenaInfo asking for a ticket (from this host unless `host` says otherwise); remembers the
  // arena socket. An error never comes with a ticket.
  Result<std::string> Ticket(v1::KvStash::Stub* stub, const std::string& host = HostBootId(),
                             const std::string& bearer = "", bool* read_only = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 10s);
    if (!bearer.empty()) ctx.AddMetadata("authorization", "Bearer " + bearer);
    v1::ArenaInfoRequest req;
    req.set_attach_ticket(true);
    req.set_host_id(host);
    v1::ArenaInfoResponse resp;
    Status s = FromGrpcStatus(stub->ArenaInfo(&ctx, req, &resp));
    if (!resp.attach_ticket().empty() && !s.ok()) return absl::InternalError("ticket and error");
    KVSTASH_RETURN_IF_ERROR(s);
    socket_ = resp.fd_socket_path();
    if (read_only != nullptr) *read_only = resp.read_only();
    return resp.attach_ticket();
  }

  Result<ReceivedArena> Attach(const std::string& ticket, bool writable, bool keep = false) {
    const ArenaAttachRequest req{.writable = writable, .token = "", .ticket = ticket};
    return ReceiveArenaFd(socket_, 5000, keep, req);
  }

  double Metric(const std::string& family) const { return MetricSum(svc_->metrics_port(), family); }

  static TempDir* pki_;
  TempDir dir_;
  std::string tokens_ = dir_.path() + "/tokens.txt";
  std::string socket_;
  std::unique_ptr<ServiceProcess> svc_;
};

TempDir* AttachTicketTest::pki_ = nullptr;

// A certificate-only client on the node's host attaches alpha's arena with tickets (read-write,
// with its local control channel, each connection its own ticket) and puts and reads through the
// mapping; a read-only certificate's client maps read-only and cannot write.
TEST_F(AttachTicketTest, CertificateOnlyClientUsesItsTenantsArena) {
  StartNode();
  ASSERT_OK_AND_ASSIGN(auto alpha, KvClient::Connect(svc_->target(), CertOnly("tenant-a")));
  ASSERT_TRUE(alpha->shared_memory_attached()) << alpha->shared_memory_status();
  EXPECT_TRUE(alpha->shared_memory_writable());
  EXPECT_TRUE(alpha->local_control_active());
  for (uint64_t i = 0; i < 4; ++i) {
    std::vector<uint8_t> payload = TestPayload(i, 8192);
    const ObjectName name = TestName(i, "");
    ASSERT_THAT(alpha->Put(name, WithCrc(TestInfo(32), payload), payload,
                           {.path = DataPath::kSharedMemory}),
                IsOk());
    ASSERT_OK_AND_ASSIGN(ReadLease lease, alpha->Acquire(name));
    ASSERT_EQ(lease.data().size(), payload.size());
    EXPECT_EQ(std::memcmp(lease.data().data(), payload.data(), payload.size()), 0);
  }
  ASSERT_OK_AND_ASSIGN(LookupReply found, alpha->Lookup(std::vector{TestName(0, "alpha")}));
  EXPECT_TRUE(found.results[0].present);
  EXPECT_GE(Metric("kvstash_attach_tickets_issued_total"), 1);
  EXPECT_GE(Metric("kvstash_attach_tickets_redeemed_total"), 1);
  EXPECT_EQ(Metric("kvstash_attach_tickets_refused_total"), 0);

  // gamma's certificate is read-only: mapped for reading, every write refused.
  ASSERT_OK_AND_ASSIGN(auto gamma, KvClient::Connect(svc_->target(), CertOnly("tenant-b")));
  ASSERT_TRUE(gamma->shared_memory_attached()) << gamma->shared_memory_status();
  EXPECT_FALSE(gamma->shared_memory_writable());
  std::vector<uint8_t> payload = TestPayload(9, 4096);
  EXPECT_THAT(gamma->Put(TestName(9, ""), WithCrc(TestInfo(16), payload), payload),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(gamma->Put(TestName(9, ""), WithCrc(TestInfo(16), payload), payload,
                         {.path = DataPath::kSharedMemory}),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  // ... and gamma's client sees nothing of alpha's.
  EXPECT_THAT(gamma->Acquire(TestName(0, "alpha")).status(),
              StatusIs(absl::StatusCode::kPermissionDenied));
}

// A ticket opens one attach; a reused, made-up, shortened or lengthened ticket, or a bearer token
// in its place, is UNAUTHENTICATED with no fd, and a refused near-miss leaves the real ticket
// usable.
TEST_F(AttachTicketTest, TicketIsSingleUseAndExact) {
  StartNode();
  auto stub = Stub("tenant-a");
  ASSERT_OK_AND_ASSIGN(std::string ticket, Ticket(stub.get()));
  ASSERT_EQ(ticket.size(), kArenaAttachTicketBytes);
  ASSERT_OK_AND_ASSIGN(ReceivedArena got, Attach(ticket, /*writable=*/true));
  EXPECT_EQ(got.hello.version, kArenaHandshakeVersion2);
  EXPECT_EQ(got.hello.arena_bytes, 1u << 20);
  EXPECT_NE(got.hello.features & kArenaFeatureWritableFd, 0u);
  EXPECT_GE(got.writable_fd, 0);
  CloseArena(got);

  const auto refused = StatusIs(absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(Attach(ticket, true), refused);  // used up
  EXPECT_THAT(Attach(ticket, false), refused);
  ASSERT_OK_AND_ASSIGN(std::string fresh, Ticket(stub.get()));
  std::string made_up = fresh;
  made_up[0] ^= 0x5a;
  EXPECT_THAT(Attach(made_up, true), refused);
  EXPECT_THAT(Attach(fresh.substr(0, 31), true), refused);
  EXPECT_THAT(Attach(fresh + "!", true), refused);
  EXPECT_THAT(Attach("", true), refused);
  EXPECT_THAT(Attach(kBetaToken, true), refused);  // a token is no ticket
  EXPECT_THAT(Attach(std::string(1024, '\xff'), true), refused);
  EXPECT_THAT(Attach(std::string(1025, '\xff'), true),
              StatusIs(absl::StatusCode::kInvalidArgument));  // over the frame's limit
  // None of those consumed the real one.
  ASSERT_OK_AND_ASSIGN(got, Attach(fresh, false));
  EXPECT_EQ(got.writable_fd, -1);
  CloseArena(got);
  EXPECT_GE(Metric("kvstash_attach_tickets_refused_total"), 8);
  EXPECT_GE(Metric("kvstash_arena_attach_refused_total"), 8);  // the last one never left
}

// A ticket stands for the identity its certificate mapped to: gamma's ticket maps gamma's arena
// (other memory, none of alpha's bytes) and its connection names only gamma's objects. Tickets go
// only to certificate-identified tenants with an arena, on this host.
TEST_F(AttachTicketTest, TicketIsBoundToItsCertificatesTenant) {
  StartNode();
  ASSERT_OK_AND_ASSIGN(auto alpha, KvClient::Connect(svc_->target(), CertOnly("tenant-a")));
  std::vector<uint8_t> payload = TestPayload(41, 4096);
  ASSERT_THAT(alpha->Put(TestName(41, ""), WithCrc(TestInfo(16), payload), payload), IsOk());
  auto alpha_stub = Stub("tenant-a");
  ASSERT_OK_AND_ASSIGN(std::string alpha_ticket, Ticket(alpha_stub.get()));
  ASSERT_OK_AND_ASSIGN(ReceivedArena mine, Attach(alpha_ticket, false));

  auto gamma_stub = Stub("tenant-b");
  ASSERT_OK_AND_ASSIGN(std::string gamma_ticket, Ticket(gamma_stub.get()));
  ASSERT_OK_AND_ASSIGN(ReceivedArena theirs, Attach(gamma_ticket, false, /*keep=*/true));
  struct stat sa, sg;
  ASSERT_EQ(::fstat(mine.fd, &sa), 0);
  ASSERT_EQ(::fstat(theirs.fd, &sg), 0);
  EXPECT_NE(sa.st_ino, sg.st_ino);
  EXPECT_NE(mine.hello.arena_offset, theirs.hello.arena_offset);
  auto* view = static_cast<uint8_t*>(
      ::mmap(nullptr, theirs.hello.arena_bytes, PROT_READ, MAP_SHARED, theirs.fd, 0));
  ASSERT_NE(view, MAP_FAILED);
  EXPECT_EQ(::memmem(view, theirs.hello.arena_bytes, payload.data(), payload.size()), nullptr);
  ::munmap(view, theirs.hello.arena_bytes);
  // The connection runs as gamma: alpha's key is PERMISSION_DENIED.
  ASSERT_NE(theirs.hello.features & kArenaFeatureLocalControl, 0u);
  v1::LookupRequest lookup;
  ToProto(TestName(41, "alpha"), lookup.add_keys());
  const std::string body = lookup.SerializeAsString();
  LocalFrameHeader h;
  h.code = static_cast<uint16_t>(LocalMethod::kLookup);
  h.sequence = 7;
  ASSERT_OK(WriteLocalFrame(theirs.connection, h,
                            {reinterpret_cast<const uint8_t*>(body.data()), body.size()}));
  LocalFrameHeader reply;
  std::string answer;
  ASSERT_OK(ReadLocalFrame(theirs.connection, &reply, &answer));
  EXPECT_EQ(reply.code, static_cast<uint16_t>(absl::StatusCode::kPermissionDenied)) << answer;
  CloseArena(mine);
  CloseArena(theirs);

  // No ticket: for a bearer token (it goes in the attach request itself), another host's caller,
  // a tenant without an arena, a certificate that names nobody.
  EXPECT_THAT(Ticket(Stub("node").get(), HostBootId(), kBetaToken),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(Ticket(alpha_stub.get(), "00000000-0000-0000-0000-000000000000"),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(Ticket(Stub("admin").get()), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(Ticket(Stub("node").get()), StatusIs(absl::StatusCode::kUnauthenticated));
  // alpha's object is as it was.
  ASSERT_OK_AND_ASSIGN(GetReply back, alpha->Get(TestName(41, "")));
  EXPECT_EQ(back.payload, payload);
}

// A read-only identity's ticket never yields a writable fd: a writable request is
// PERMISSION_DENIED (and uses the ticket up); a read-only one maps, and the mapping cannot be
// made writable.
TEST_F(AttachTicketTest, ReadOnlyIdentityGetsNoWriteMapping) {
  StartNode();
  auto stub = Stub("tenant-b");
  bool read_only = false;
  ASSERT_OK_AND_ASSIGN(std::string ticket, Ticket(stub.get(), HostBootId(), "", &read_only));
  EXPECT_TRUE(read_only);
  EXPECT_THAT(Attach(ticket, true), StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(Attach(ticket, false), StatusIs(absl::StatusCode::kUnauthenticated));
  ASSERT_OK_AND_ASSIGN(ticket, Ticket(stub.get()));
  ASSERT_OK_AND_ASSIGN(ReceivedArena got, Attach(ticket, false));
  EXPECT_EQ(got.writable_fd, -1);
  EXPECT_EQ(got.hello.features & kArenaFeatureWritableFd, 0u);
  errno = 0;
  EXPECT_EQ(::mmap(nullptr, got.hello.arena_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, got.fd, 0),
            MAP_FAILED);
  EXPECT_EQ(errno, EACCES);
  CloseArena(got);
}

// With --attach-ticket-ttl-ms 300 and --attach-tickets 2: a tenant's third outstanding ticket is
// RESOURCE_EXHAUSTED (another tenant still gets one); tickets past their TTL are refused as
// expired and free their slots.
TEST_F(AttachTicketTest, TicketsExpireAndAreBoundedPerTenant) {
  StartNode({"--attach-ticket-ttl-ms", "300", "--attach-tickets", "2"});
  auto alpha = Stub("tenant-a");
  ASSERT_OK_AND_ASSIGN(std::string first, Ticket(alpha.get()));
  ASSERT_OK_AND_ASSIGN(std::string second, Ticket(alpha.get()));
  EXPECT_NE(first, second);
  EXPECT_THAT(Ticket(alpha.get()), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(Ticket(Stub("tenant-b").get()), IsOk());
  std::this_thread::sleep_for(600ms);  // twice the TTL: a bounded wait, no timing assertion
  Result<ReceivedArena> late = Attach(first, false);
  EXPECT_THAT(late, StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(std::string(late.status().message()), HasSubstr("expired"));
  ASSERT_OK_AND_ASSIGN(std::string third, Ticket(alpha.get()));  // the expired ones are gone
  ASSERT_OK_AND_ASSIGN(ReceivedArena got, Attach(third, true));
  CloseArena(got);
  EXPECT_GE(Metric("kvstash_attach_tickets_refused_total"), 2);
}

// A SIGHUP that moves tenant-a's certificate to gamma: the local control connection alpha opened
// with a ticket answers UNAUTHENTICATED from its next call, and a ticket issued before the reload
// opens nothing; a token tenant's connections are not disturbed.
TEST_F(AttachTicketTest, ReloadRechecksTicketConnections) {
  StartNode();
  auto stub = Stub("tenant-a");
  ASSERT_OK_AND_ASSIGN(std::string open_ticket, Ticket(stub.get()));
  ASSERT_OK_AND_ASSIGN(std::string spare_ticket, Ticket(stub.get()));
  ASSERT_OK_AND_ASSIGN(ReceivedArena conn, Attach(open_ticket, true, /*keep=*/true));
  ASSERT_NE(conn.hello.features & kArenaFeatureLocalControl, 0u);
  ASSERT_OK_AND_ASSIGN(ReceivedArena beta,
                       ReceiveArenaFd(socket_, 5000, true, ArenaAttachRequest{true, kBetaToken}));
  auto lookup = [](int fd, uint32_t sequence) -> Status {
    v1::LookupRequest req;
    ToProto(TestName(1, ""), req.add_keys());
    const std::string body = req.SerializeAsString();
    LocalFrameHeader h;
    h.code = static_cast<uint16_t>(LocalMethod::kLookup);
    h.sequence = sequence;
    KVSTASH_RETURN_IF_ERROR(
        WriteLocalFrame(fd, h, {reinterpret_cast<const uint8_t*>(body.data()), body.size()}));
    LocalFrameHeader reply;
    std::string answer;
    KVSTASH_RETURN_IF_ERROR(ReadLocalFrame(fd, &reply, &answer));
    return reply.code == 0 ? OkStatus() : Status(static_cast<absl::StatusCode>(reply.code), answer);
  };
  ASSERT_THAT(lookup(conn.connection, 1), IsOk());

  WriteTokens(/*moved=*/true);
  ::kill(svc_->pid(), SIGHUP);
  const auto deadline = Clock::now() + 10s;
  while (svc_->Log().find("event=tenants_reloaded") == std::string::npos &&
         Clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_THAT(svc_->Log(), HasSubstr("event=tenants_reloaded"));
  EXPECT_THAT(lookup(conn.connection, 2), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(lookup(conn.connection, 3), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(Attach(spare_ticket, false), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(lookup(beta.connection, 1), IsOk());
  CloseArena(conn);
  CloseArena(beta);
}

}  // namespace
}  // namespace kvstash::testing
