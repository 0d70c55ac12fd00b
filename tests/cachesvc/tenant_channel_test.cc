// The local control channel of a multi-tenant cachesvc (real processes): a tenant's client gets
// the same fast control path as a single-tenant one, bound to the tenant its attach request's
// bearer token names. Over that channel, tenant alpha naming tenant beta's namespace, or beta's
// reservation and lease ids, in every call the channel carries is refused with a precise status,
// and nothing of beta's changes; a token revoked by SIGHUP stops working on connections already
// open, while another tenant's connections go on. A read-only token reads its tenant's objects
// (through a read-only mapping and the local control channel) but every call that writes is
// PERMISSION_DENIED, over gRPC and over the local channel, as is a writable attach.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
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
using namespace ::kvstash::client;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr char kAlpha[] = "alpha-channel-token-0123456789";
constexpr char kBeta[] = "beta-channel-token-0123456789";
constexpr char kAlphaReader[] = "alpha-reader-token-0123456789";  // alpha's, read-only

// One arena-socket connection attached with a bearer token and kept for local control calls.
class TenantConnection {
 public:
  static Result<std::unique_ptr<TenantConnection>> Open(const std::string& socket_path,
                                                        const std::string& token,
                                                        bool writable = true) {
    KVSTASH_ASSIGN_OR_RETURN(ReceivedArena got,
                             ReceiveArenaFd(socket_path, 5000, /*keep_connection=*/true,
                                            ArenaAttachRequest{writable, token}));
    ::close(got.fd);
    if (got.writable_fd >= 0) ::close(got.writable_fd);
    std::unique_ptr<TenantConnection> c(new TenantConnection());
    c->fd_ = got.connection;
    c->hello_ = got.hello;
    if ((got.hello.features & kArenaFeatureLocalControl) == 0) {
      return absl::FailedPreconditionError("the service kept no local control connection");
    }
    // Hello: a 16-byte client id.
    LocalFrameHeader h;
    h.code = static_cast<uint16_t>(LocalMethod::kHello);
    h.sequence = 1;
    const std::string id(kLocalClientIdBytes, static_cast<char>(token.size()));
    KVSTASH_RETURN_IF_ERROR(
        WriteLocalFrame(c->fd_, h, {reinterpret_cast<const uint8_t*>(id.data()), id.size()}));
    LocalFrameHeader reply;
    std::string body;
    KVSTASH_RETURN_IF_ERROR(ReadLocalFrame(c->fd_, &reply, &body));
    if (reply.code != 0) return absl::InternalError(absl::StrCat("Hello refused: ", body));
    return c;
  }
  ~TenantConnection() {
    if (fd_ >= 0) ::close(fd_);
  }
  const ArenaHandshake& hello() const { return hello_; }

  // One call; the reply's status (its code and text) and, when OK, `response` parsed.
  Status Call(LocalMethod method, const google::protobuf::MessageLite& request,
              google::protobuf::MessageLite* response) {
    LocalFrameHeader h;
    h.code = static_cast<uint16_t>(method);
    h.sequence = ++sequence_;
    const std::string body = request.SerializeAsString();
    KVSTASH_RETURN_IF_ERROR(
        WriteLocalFrame(fd_, h, {reinterpret_cast<const uint8_t*>(body.data()), body.size()}));
    LocalFrameHeader reply;
    std::string answer;
    KVSTASH_RETURN_IF_ERROR(ReadLocalFrame(fd_, &reply, &answer));
    if (reply.sequence != h.sequence) return absl::InternalError("reply out of order");
    if (reply.code != 0) return Status(static_cast<absl::StatusCode>(reply.code), answer);
    if (!response->ParseFromString(answer)) return absl::InternalError("unparsable reply");
    return OkStatus();
  }

 private:
  TenantConnection() = default;
  int fd_ = -1;
  uint32_t sequence_ = 1;
  ArenaHandshake hello_;
};

class TenantChannelTest : public ::testing::Test {
 protected:
  void WriteTokens(bool with_alpha = true) {
    std::ofstream out(tokens_);
    if (with_alpha) out << "token " << kAlpha << " alpha\n";
    out << "token " << kBeta << " beta\n"
        << "token " << kAlphaReader << " alpha ro\n"
        << "quota alpha cpu=1MiB\n"
        << "quota beta cpu=1MiB\n";
  }

  void SetUp() override {
    WriteTokens();
    ServiceOptions opts;
    opts.metrics = true;
    opts.extra_args = {"--tokens-file", tokens_};
    ASSERT_OK_AND_ASSIGN(svc_, ServiceProcess::Start(dir_.path(), opts));
    socket_ = dir_.path() + "/arena.sock";
  }

  std::unique_ptr<KvClient> As(const std::string& token, bool read_only = false) {
    ClientOptions o;
    o.connect_timeout = 3s;
    o.bearer_token = token;
    o.attach_read_only = read_only;
    auto kv = KvClient::Connect(svc_->target(), o);
    EXPECT_OK(kv);
    return kv.ok() ? std::move(*kv) : nullptr;
  }

  // Sends SIGHUP after rewriting the tokens file and waits for the reload.
  void Reload(bool with_alpha) {
    WriteTokens(with_alpha);
    const size_t before = Count(svc_->Log(), "event=tenants_reloaded");
    ::kill(svc_->pid(), SIGHUP);
    const auto deadline = Clock::now() + 10s;
    while (Count(svc_->Log(), "event=tenants_reloaded") == before && Clock::now() < deadline) {
      std::this_thread::sleep_for(20ms);
    }
    ASSERT_GT(Count(svc_->Log(), "event=tenants_reloaded"), before);
  }
  static size_t Count(const std::string& text, const std::string& what) {
    size_t n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
  }

  static v1::ReserveRequest ReserveOf(const ObjectName& name) {
    v1::ReserveRequest req;
    ToProto(name, req.mutable_key());
    ToProto(TestInfo(16), req.mutable_info());
    req.set_lease_ms(120'000);
    return req;
  }

  TempDir dir_;
  std::string tokens_ = dir_.path() + "/tokens.txt";
  std::string socket_;
  std::unique_ptr<ServiceProcess> svc_;
};

// A tenant's client attaches its own arena and keeps the connection as its local control
// channel; puts and gets over shared memory round-trip through it.
TEST_F(TenantChannelTest, TenantClientUsesTheLocalControlChannel) {
  std::unique_ptr<KvClient> alpha = As(kAlpha);
  ASSERT_NE(alpha, nullptr);
  ASSERT_TRUE(alpha->shared_memory_attached());
  EXPECT_TRUE(alpha->local_control_active());
  EXPECT_GE(MetricSum(svc_->metrics_port(), "kvstash_local_control_connections"), 1);
  for (uint64_t i = 0; i < 4; ++i) {
    std::vector<uint8_t> payload = TestPayload(i, 4096);
    const ObjectName name = TestName(i, "");
    ASSERT_THAT(alpha->Put(name, WithCrc(TestInfo(16), payload), payload,
                           {.path = DataPath::kSharedMemory}),
                IsOk());
    ASSERT_OK_AND_ASSIGN(GetReply got, alpha->Get(name));
    EXPECT_EQ(got.payload, payload);
    EXPECT_EQ(got.served_from, Tier::kCpu);
  }
  // The empty namespace was alpha's.
  ASSERT_OK_AND_ASSIGN(LookupReply found, alpha->Lookup(std::vector{TestName(0, "alpha")}));
  EXPECT_TRUE(found.results[0].present);
}

// alpha, on its own local control connection, names beta's namespace or beta's ids in every call
// the channel carries: each is refused with PERMISSION_DENIED (whole calls, or the item's status
// where the call answers per item), and beta's object, reservation and lease are as they were.
TEST_F(TenantChannelTest, EveryCallNamingAnotherTenantIsRefused) {
  std::unique_ptr<KvClient> beta_client = As(kBeta);
  ASSERT_NE(beta_client, nullptr);
  std::vector<uint8_t> payload = TestPayload(7, 4096);
  const ObjectName theirs = TestName(7, "beta");
  ASSERT_THAT(beta_client->Put(theirs, WithCrc(TestInfo(16), payload), payload), IsOk());

  ASSERT_OK_AND_ASSIGN(auto beta, TenantConnection::Open(socket_, kBeta));
  ASSERT_OK_AND_ASSIGN(auto alpha, TenantConnection::Open(socket_, kAlpha));
  EXPECT_NE(alpha->hello().arena_offset, beta->hello().arena_offset);
  // beta holds a reservation and a lease.
  v1::ReserveResponse reserved;
  ASSERT_OK(beta->Call(LocalMethod::kReserve, ReserveOf(TestName(8, "beta")), &reserved));
  v1::AcquireRequest acquire;
  ToProto(theirs, acquire.add_keys());
  v1::AcquireResponse leased;
  ASSERT_OK(beta->Call(LocalMethod::kAcquire, acquire, &leased));
  ASSERT_EQ(leased.results(0).status().code(), 0);

  const auto denied = StatusIs(absl::StatusCode::kPermissionDenied);
  v1::LookupRequest lookup;
  ToProto(theirs, lookup.add_keys());
  v1::LookupResponse looked;
  EXPECT_THAT(alpha->Call(LocalMethod::kLookup, lookup, &looked), denied);
  v1::AcquireResponse alpha_leased;
  EXPECT_THAT(alpha->Call(LocalMethod::kAcquire, acquire, &alpha_leased), denied);
  v1::ReserveResponse alpha_reserved;
  v1::ReserveRequest overwrite = ReserveOf(theirs);
  overwrite.set_overwrite(true);
  EXPECT_THAT(alpha->Call(LocalMethod::kReserve, overwrite, &alpha_reserved), denied);
  v1::ReserveManyRequest many;
  *many.add_items() = overwrite;
  v1::ReserveManyResponse many_reserved;
  ASSERT_OK(alpha->Call(LocalMethod::kReserveMany, many, &many_reserved));
  ASSERT_EQ(many_reserved.results_size(), 1);
  EXPECT_EQ(many_reserved.results(0).status().code(), grpc::StatusCode::PERMISSION_DENIED);
  // beta's ids.
  v1::CommitRequest commit;
  commit.set_reservation_id(reserved.reservation_id());
  v1::CommitResponse committed;
  EXPECT_THAT(alpha->Call(LocalMethod::kCommit, commit, &committed), denied);
  v1::CommitManyRequest commit_many;
  *commit_many.add_items() = commit;
  v1::CommitManyResponse committed_many;
  ASSERT_OK(alpha->Call(LocalMethod::kCommitMany, commit_many, &committed_many));
  ASSERT_EQ(committed_many.results_size(), 1);
  EXPECT_EQ(committed_many.results(0).code(), grpc::StatusCode::PERMISSION_DENIED);
  v1::AbortRequest abort;
  abort.set_reservation_id(reserved.reservation_id());
  v1::AbortResponse aborted;
  EXPECT_THAT(alpha->Call(LocalMethod::kAbort, abort, &aborted), denied);
  v1::ReleaseRequest release;
  release.add_lease_ids(leased.results(0).lease_id());
  v1::ReleaseResponse released;
  ASSERT_OK(alpha->Call(LocalMethod::kRelease, release, &released));
  ASSERT_EQ(released.results_size(), 1);
  EXPECT_EQ(released.results(0).code(), grpc::StatusCode::PERMISSION_DENIED);
  // The same keys in alpha's own namespace are alpha's own, where nothing is stored.
  v1::LookupRequest own;
  ToProto(TestName(7, ""), own.add_keys());
  ASSERT_OK(alpha->Call(LocalMethod::kLookup, own, &looked));
  EXPECT_FALSE(looked.results(0).present());

  // beta's reservation and lease are still beta's to end.
  v1::ReleaseResponse beta_released;
  ASSERT_OK(beta->Call(LocalMethod::kRelease, release, &beta_released));
  EXPECT_EQ(beta_released.results(0).code(), 0);
  v1::AbortResponse beta_aborted;
  EXPECT_OK(beta->Call(LocalMethod::kAbort, abort, &beta_aborted));
  // beta's object is unchanged.
  ASSERT_OK_AND_ASSIGN(GetReply got, beta_client->Get(theirs));
  EXPECT_EQ(got.payload, payload);
}

// A token revoked by a reload stops working on the local control connections it opened before;
// another tenant's connection is unaffected, and the revoked token cannot attach again.
TEST_F(TenantChannelTest, RevokedTokenStopsWorkingOnOpenConnections) {
  ASSERT_OK_AND_ASSIGN(auto alpha, TenantConnection::Open(socket_, kAlpha));
  ASSERT_OK_AND_ASSIGN(auto beta, TenantConnection::Open(socket_, kBeta));
  v1::LookupRequest lookup;
  ToProto(TestName(1, ""), lookup.add_keys());
  v1::LookupResponse looked;
  ASSERT_OK(alpha->Call(LocalMethod::kLookup, lookup, &looked));
  ASSERT_OK(beta->Call(LocalMethod::kLookup, lookup, &looked));

  // A reload that keeps alpha changes nothing for it.
  Reload(/*with_alpha=*/true);
  ASSERT_OK(alpha->Call(LocalMethod::kLookup, lookup, &looked));

  Reload(/*with_alpha=*/false);
  Status revoked = alpha->Call(LocalMethod::kLookup, lookup, &looked);
  EXPECT_THAT(revoked, StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(std::string(revoked.message()), HasSubstr("no longer authenticates"));
  v1::ReserveResponse reserved;
  EXPECT_THAT(alpha->Call(LocalMethod::kReserve, ReserveOf(TestName(2, "")), &reserved),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_OK(beta->Call(LocalMethod::kLookup, lookup, &looked));
  EXPECT_THAT(TenantConnection::Open(socket_, kAlpha).status(),
              StatusIs(absl::StatusCode::kUnauthenticated));
}

// alpha's read-only token: it attaches read-only and reads alpha's objects through the mapping
// and the local control channel; every write is PERMISSION_DENIED (stream Put, PutMany, Delete,
// Pin, Unpin, Offer over gRPC; Reserve, ReserveMany, Commit, CommitMany, Abort over the local
// channel and gRPC), a writable attach too, and alpha's objects stay as they were.
TEST_F(TenantChannelTest, ReadOnlyTokenReadsButEveryWriteIsRefused) {
  std::unique_ptr<KvClient> alpha = As(kAlpha);
  ASSERT_NE(alpha, nullptr);
  std::vector<uint8_t> payload = TestPayload(21, 4096);
  const ObjectName name = TestName(21, "");
  ASSERT_THAT(alpha->Put(name, WithCrc(TestInfo(16), payload), payload), IsOk());

  // Without asking for a read-only attach: no mapping, and why; reads still work (streams).
  std::unique_ptr<KvClient> plain = As(kAlphaReader);
  ASSERT_NE(plain, nullptr);
  EXPECT_FALSE(plain->shared_memory_attached());
  EXPECT_THAT(plain->shared_memory_status(), StatusIs(absl::StatusCode::kPermissionDenied));
  ASSERT_OK_AND_ASSIGN(GetReply streamed, plain->Get(name));
  EXPECT_EQ(streamed.payload, payload);
  EXPECT_THAT(ReceiveArenaFd(socket_, 5000, false, ArenaAttachRequest{true, kAlphaReader}),
              StatusIs(absl::StatusCode::kPermissionDenied));

  std::unique_ptr<KvClient> reader = As(kAlphaReader, /*read_only=*/true);
  ASSERT_NE(reader, nullptr);
  ASSERT_TRUE(reader->shared_memory_attached());
  EXPECT_FALSE(reader->shared_memory_writable());
  EXPECT_TRUE(reader->local_control_active());
  ASSERT_OK_AND_ASSIGN(GetReply got, reader->Get(name));
  EXPECT_EQ(got.payload, payload);
  EXPECT_EQ(got.served_from, Tier::kCpu);
  ASSERT_OK_AND_ASSIGN(ReadLease lease, reader->Acquire(name));
  EXPECT_TRUE(std::equal(lease.data().begin(), lease.data().end(), payload.begin()));
  ASSERT_OK_AND_ASSIGN(ListReply listed, reader->List(""));
  EXPECT_EQ(listed.objects.size(), 1u);

  const auto denied = StatusIs(absl::StatusCode::kPermissionDenied);
  std::vector<uint8_t> other = TestPayload(22, 4096);
  const ObjectInfo other_info = WithCrc(TestInfo(16), other);
  EXPECT_THAT(reader->Put(name, other_info, other, {.overwrite = true}), denied);
  EXPECT_THAT(reader->Put(TestName(22, ""), other_info, other), denied);
  EXPECT_THAT(reader->Put(TestName(22, ""), other_info, other, {.path = DataPath::kSharedMemory}),
              StatusIs(absl::StatusCode::kFailedPrecondition));  // the client's read-only mapping
  PutItem item{.name = TestName(23, ""), .info = other_info, .payload = other};
  std::vector<Status> many = reader->PutMany(std::span(&item, 1));
  ASSERT_EQ(many.size(), 1u);
  EXPECT_THAT(many[0], denied);
  EXPECT_THAT(reader->Delete(std::span(&name, 1)).status(), denied);
  EXPECT_THAT(reader->Pin(std::span(&name, 1)).status(), denied);
  EXPECT_THAT(reader->Unpin(std::span(&name, 1)).status(), denied);
  EXPECT_THAT(reader->Offer(std::span(&name, 1)).status(), denied);

  // The local control channel, frame by frame: writes refused, even of alpha's own ids.
  ASSERT_OK_AND_ASSIGN(auto writer, TenantConnection::Open(socket_, kAlpha));
  v1::ReserveResponse reserved;
  ASSERT_OK(writer->Call(LocalMethod::kReserve, ReserveOf(TestName(24, "")), &reserved));
  ASSERT_OK_AND_ASSIGN(auto channel, TenantConnection::Open(socket_, kAlphaReader, false));
  v1::ReserveResponse refused;
  EXPECT_THAT(channel->Call(LocalMethod::kReserve, ReserveOf(TestName(25, "")), &refused), denied);
  v1::ReserveManyRequest reserve_many;
  *reserve_many.add_items() = ReserveOf(TestName(25, ""));
  v1::ReserveManyResponse reserved_many;
  EXPECT_THAT(channel->Call(LocalMethod::kReserveMany, reserve_many, &reserved_many), denied);
  v1::CommitRequest commit;
  commit.set_reservation_id(reserved.reservation_id());
  v1::CommitResponse committed;
  EXPECT_THAT(channel->Call(LocalMethod::kCommit, commit, &committed), denied);
  v1::CommitManyRequest commit_many;
  *commit_many.add_items() = commit;
  v1::CommitManyResponse committed_many;
  EXPECT_THAT(channel->Call(LocalMethod::kCommitMany, commit_many, &committed_many), denied);
  v1::AbortRequest abort;
  abort.set_reservation_id(reserved.reservation_id());
  v1::AbortResponse aborted;
  EXPECT_THAT(channel->Call(LocalMethod::kAbort, abort, &aborted), denied);
  v1::LookupRequest lookup;
  ToProto(name, lookup.add_keys());
  v1::LookupResponse looked;
  ASSERT_OK(channel->Call(LocalMethod::kLookup, lookup, &looked));
  EXPECT_TRUE(looked.results(0).present());
  // The same over gRPC.
  auto stub =
      v1::KvStash::NewStub(grpc::CreateChannel(svc_->target(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", std::string("Bearer ") + kAlphaReader);
  v1::ReserveResponse grpc_reserved;
  EXPECT_EQ(stub->Reserve(&ctx, ReserveOf(TestName(26, "")), &grpc_reserved).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  // alpha's reservation is still alpha's: its abort goes through.
  EXPECT_OK(writer->Call(LocalMethod::kAbort, abort, &aborted));

  // alpha's object is unchanged, unpinned, and nothing else was stored.
  ASSERT_OK_AND_ASSIGN(GetReply after, alpha->Get(name));
  EXPECT_EQ(after.payload, payload);
  ASSERT_OK_AND_ASSIGN(ListReply all, alpha->List(""));
  ASSERT_EQ(all.objects.size(), 1u);
  EXPECT_FALSE(all.objects[0].pinned);
}

}  // namespace
}  // namespace kvstash::testing
