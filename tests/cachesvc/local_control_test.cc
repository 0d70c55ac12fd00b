// The local control channel of the real cachesvc binary, spoken frame by frame: the handshake
// announces it, calls answer as their gRPC methods do, malformed frames close only their own
// connection, and a client's last closed connection settles what it left open.
#include "kvstash/proto/local_control.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <sstream>
#include <string>
#include <thread>

#include "kvstash/proto/arena_handshake.h"
#include "kvstash/proto/convert.h"
#include "kvstash/v1/kvstash.grpc.pb.h"
#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using ::testing::HasSubstr;

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// One raw arena-socket connection.
class RawConnection {
 public:
  static Result<RawConnection> Open(const std::string& socket_path) {
    KVSTASH_ASSIGN_OR_RETURN(ReceivedArena got,
                             ReceiveArenaFd(socket_path, 5000, /*keep_connection=*/true));
    ::close(got.fd);
    RawConnection c;
    c.fd_ = got.connection;
    c.hello_ = got.hello;
    return c;
  }
  RawConnection() = default;
  RawConnection(RawConnection&& o) noexcept : fd_(std::exchange(o.fd_, -1)), hello_(o.hello_) {}
  ~RawConnection() {
    if (fd_ >= 0) ::close(fd_);
  }
  const ArenaHandshake& hello() const { return hello_; }
  int fd() const { return fd_; }

  Status Send(uint16_t method, const std::string& body, uint32_t sequence, uint16_t flags = 0) {
    LocalFrameHeader h;
    h.code = method;
    h.flags = flags;
    h.sequence = sequence;
    return WriteLocalFrame(fd_, h, Bytes(body));
  }
  Status Receive(LocalFrameHeader* h, std::string* body) { return ReadLocalFrame(fd_, h, body); }
  // Sends a message and waits for its answer; the reply's code and body land in the outputs.
  Status Call(LocalMethod method, const google::protobuf::MessageLite& req, uint16_t* code,
              std::string* body) {
    static uint32_t sequence = 100;
    const uint32_t seq = ++sequence;
    KVSTASH_RETURN_IF_ERROR(Send(static_cast<uint16_t>(method), req.SerializeAsString(), seq));
    LocalFrameHeader h;
    KVSTASH_RETURN_IF_ERROR(Receive(&h, body));
    if (h.sequence != seq) return absl::InternalError("reply out of order");
    *code = h.code;
    return OkStatus();
  }
  // True when the service closed the connection (a read sees EOF, or a reset when the service
  // left bytes unread).
  bool ClosedByPeer() {
    char c;
    timeval tv{5, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ssize_t n = ::recv(fd_, &c, 1, 0);
    return n == 0 || (n < 0 && errno == ECONNRESET);
  }

 private:
  int fd_ = -1;
  ArenaHandshake hello_;
};

class LocalControlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServiceOptions options;
    options.metrics = true;
    options.extra_args = extra_args_;
    auto svc = ServiceProcess::Start(dir_.path(), options);
    ASSERT_OK(svc);
    svc_ = std::move(*svc);
    stub_ = v1::KvStash::NewStub(
        grpc::CreateChannel(svc_->target(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    v1::ArenaInfoResponse info;
    ASSERT_OK(stub_->ArenaInfo(&ctx, v1::ArenaInfoRequest(), &info));
    socket_path_ = info.fd_socket_path();
  }
  uint64_t ActiveReservations() {
    grpc::ClientContext ctx;
    v1::StatsResponse stats;
    if (!stub_->Stats(&ctx, v1::StatsRequest(), &stats).ok()) return UINT64_MAX;
    return stats.reservations_active();
  }
  v1::ReserveRequest ReserveOf(uint64_t i) {
    v1::ReserveRequest req;
    ToProto(TestName(i), req.mutable_key());
    ToProto(TestInfo(64), req.mutable_info());
    req.set_lease_ms(120'000);  // longer than any test: only the channel can free it early
    return req;
  }

  std::vector<std::string> extra_args_;
  TempDir dir_;
  std::unique_ptr<ServiceProcess> svc_;
  std::unique_ptr<v1::KvStash::Stub> stub_;
  std::string socket_path_;
};

TEST_F(LocalControlTest, CallsAnswerAsTheirGrpcMethods) {
  auto conn = RawConnection::Open(socket_path_);
  ASSERT_OK(conn);
  EXPECT_NE(conn->hello().features & kArenaFeatureLocalControl, 0u);
  EXPECT_GE(MetricSum(svc_->metrics_port(), "kvstash_local_control_connections"), 1);

  uint16_t code = 0;
  std::string body;
  ASSERT_OK(conn->Call(LocalMethod::kReserve, ReserveOf(1), &code, &body));
  ASSERT_EQ(code, 0) << body;
  v1::ReserveResponse reserved;
  ASSERT_TRUE(reserved.ParseFromString(body));
  EXPECT_EQ(reserved.arena_generation(), conn->hello().arena_generation);

  // An invalid request: the gRPC method's status, code and text.
  v1::ReserveRequest no_info = ReserveOf(2);
  no_info.clear_info();
  ASSERT_OK(conn->Call(LocalMethod::kReserve, no_info, &code, &body));
  grpc::ClientContext ctx;
  v1::ReserveResponse over_grpc;
  grpc::Status g = stub_->Reserve(&ctx, no_info, &over_grpc);
  EXPECT_EQ(code, static_cast<uint16_t>(g.error_code()));
  EXPECT_NE(code, 0);
  EXPECT_EQ(body, g.error_message());

  // A wrong checksum fails the Commit, which settles the reservation.
  v1::CommitRequest commit;
  commit.set_reservation_id(reserved.reservation_id());
  commit.set_payload_crc32c(12345);
  ASSERT_OK(conn->Call(LocalMethod::kCommit, commit, &code, &body));
  v1::AbortRequest abort;
  abort.set_reservation_id(reserved.reservation_id());
  ASSERT_OK(conn->Call(LocalMethod::kAbort, abort, &code, &body));

  // Batched calls answer per item.
  v1::AcquireRequest acquire;
  ToProto(TestName(999), acquire.add_keys());
  ASSERT_OK(conn->Call(LocalMethod::kAcquire, acquire, &code, &body));
  ASSERT_EQ(code, 0) << body;
  v1::AcquireResponse acquired;
  ASSERT_TRUE(acquired.ParseFromString(body));
  ASSERT_EQ(acquired.results_size(), 1);
  EXPECT_EQ(acquired.results(0).status().code(), static_cast<int>(grpc::StatusCode::NOT_FOUND));
}

TEST_F(LocalControlTest, BadRequestsGetAnErrorAndTheConnectionGoesOn) {
  auto conn = RawConnection::Open(socket_path_);
  ASSERT_OK(conn);
  LocalFrameHeader h;
  std::string body;
  // Unknown method.
  ASSERT_OK(conn->Send(77, "", 1));
  ASSERT_OK(conn->Receive(&h, &body));
  EXPECT_EQ(h.sequence, 1u);
  EXPECT_EQ(h.code, static_cast<uint16_t>(grpc::StatusCode::UNIMPLEMENTED));
  EXPECT_THAT(body, HasSubstr("unknown method 77"));
  // A body that is no ReserveRequest.
  ASSERT_OK(conn->Send(static_cast<uint16_t>(LocalMethod::kReserve), "\xff\xff\xff", 2));
  ASSERT_OK(conn->Receive(&h, &body));
  EXPECT_EQ(h.code, static_cast<uint16_t>(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_THAT(body, HasSubstr("cannot parse"));
  // A parsable but invalid request: the handler's own validation.
  v1::ReserveRequest empty;
  ASSERT_OK(conn->Send(static_cast<uint16_t>(LocalMethod::kReserve), empty.SerializeAsString(), 3));
  ASSERT_OK(conn->Receive(&h, &body));
  EXPECT_EQ(h.code, static_cast<uint16_t>(grpc::StatusCode::INVALID_ARGUMENT));
  // A Hello with a wrong id size.
  ASSERT_OK(conn->Send(static_cast<uint16_t>(LocalMethod::kHello), "short", 4));
  ASSERT_OK(conn->Receive(&h, &body));
  EXPECT_EQ(h.code, static_cast<uint16_t>(grpc::StatusCode::INVALID_ARGUMENT));
  // A no-reply Release is answered by nothing; the next call's reply comes next.
  v1::ReleaseRequest release;
  release.add_lease_ids(424242);
  ASSERT_TRUE(conn->Send(static_cast<uint16_t>(LocalMethod::kRelease), release.SerializeAsString(),
                         5, kLocalFlagNoReply)
                  .ok());
  v1::LookupRequest lookup;
  ToProto(TestName(5), lookup.add_keys());
  ASSERT_OK(conn->Send(static_cast<uint16_t>(LocalMethod::kLookup), lookup.SerializeAsString(), 6));
  ASSERT_OK(conn->Receive(&h, &body));
  EXPECT_EQ(h.sequence, 6u);
  EXPECT_EQ(h.code, 0);
}

TEST_F(LocalControlTest, MalformedFramesCloseOnlyTheirConnection) {
  const double bad_before =
      MetricSum(svc_->metrics_port(), "kvstash_local_control_bad_frames_total");
  {
    auto conn = RawConnection::Open(socket_path_);
    ASSERT_OK(conn);
    const std::string garbage(32, 'x');  // wrong magic
    ASSERT_EQ(::send(conn->fd(), garbage.data(), garbage.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(garbage.size()));
    EXPECT_TRUE(conn->ClosedByPeer());
  }
  {
    auto conn = RawConnection::Open(socket_path_);
    ASSERT_OK(conn);
    LocalFrameHeader h;
    h.code = static_cast<uint16_t>(LocalMethod::kLookup);
    h.body_bytes = kMaxLocalFrameBody + 1;  // announced, never sent
    auto head = EncodeLocalFrameHeader(h);
    ASSERT_EQ(::send(conn->fd(), head.data(), head.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(head.size()));
    EXPECT_TRUE(conn->ClosedByPeer());
  }
  EXPECT_GE(MetricSum(svc_->metrics_port(), "kvstash_local_control_bad_frames_total"),
            bad_before + 2);
  // The service goes on serving, on new connections and over gRPC.
  auto conn = RawConnection::Open(socket_path_);
  ASSERT_OK(conn);
  uint16_t code = 1;
  std::string body;
  v1::LookupRequest lookup;
  ToProto(TestName(3), lookup.add_keys());
  ASSERT_OK(conn->Call(LocalMethod::kLookup, lookup, &code, &body));
  EXPECT_EQ(code, 0);
  EXPECT_EQ(ActiveReservations(), 0u);
}

TEST_F(LocalControlTest, ClosingTheLastConnectionOfAClientSettlesItsReservations) {
  const std::string id(kLocalClientIdBytes, 'A');
  auto first = RawConnection::Open(socket_path_);
  auto second = RawConnection::Open(socket_path_);
  ASSERT_OK(first);
  ASSERT_OK(second);
  uint16_t code = 0;
  std::string body;
  for (RawConnection* c : {&*first, &*second}) {
    LocalFrameHeader h;
    ASSERT_OK(c->Send(static_cast<uint16_t>(LocalMethod::kHello), id, 1));
    ASSERT_OK(c->Receive(&h, &body));
    ASSERT_EQ(h.code, 0) << body;
  }
  // Reserved on the second connection, which then closes: the first keeps the client alive.
  ASSERT_OK(second->Call(LocalMethod::kReserve, ReserveOf(10), &code, &body));
  ASSERT_EQ(code, 0) << body;
  { RawConnection gone = std::move(*second); }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(ActiveReservations(), 1u);
  // A connection that never said Hello is a client of its own.
  {
    auto anonymous = RawConnection::Open(socket_path_);
    ASSERT_OK(anonymous);
    ASSERT_OK(anonymous->Call(LocalMethod::kReserve, ReserveOf(11), &code, &body));
    ASSERT_EQ(code, 0) << body;
    EXPECT_EQ(ActiveReservations(), 2u);
  }
  uint64_t active = UINT64_MAX;
  for (int i = 0; i < 500 && active != 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    active = ActiveReservations();
  }
  EXPECT_EQ(active, 1u);
  // The client's last connection closes.
  { RawConnection gone = std::move(*first); }
  for (int i = 0; i < 500 && active != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    active = ActiveReservations();
  }
  EXPECT_EQ(active, 0u);
  for (int i = 0;
       i < 500 && MetricSum(svc_->metrics_port(), "kvstash_local_control_connections") != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(MetricSum(svc_->metrics_port(), "kvstash_local_control_connections"), 0);
  // Counted before the connection stops counting (the reservations go a moment earlier).
  EXPECT_GE(MetricSum(svc_->metrics_port(), "kvstash_local_control_abandoned_total"), 2);
}

class LocalControlOffTest : public LocalControlTest {
 protected:
  LocalControlOffTest() { extra_args_ = {"--local-control-connections", "0"}; }
};

TEST_F(LocalControlOffTest, TheHandshakeSaysSoAndTheConnectionCloses) {
  auto conn = RawConnection::Open(socket_path_);
  ASSERT_OK(conn);
  EXPECT_EQ(conn->hello().features & kArenaFeatureLocalControl, 0u);
  EXPECT_TRUE(conn->ClosedByPeer());
}

// The service polls for a connection's next call for --local-control-poll-us, then blocks in its
// read: calls answer the same whether they come within the window, after it, or with polling off.
TEST_F(LocalControlTest, CallsAnswerWithinAndAfterThePollWindow) {
  auto conn = RawConnection::Open(socket_path_);
  ASSERT_OK(conn);
  v1::LookupRequest lookup;
  ToProto(TestName(5), lookup.add_keys());
  for (int pause_ms : {0, 0, 30, 0, 30}) {  // the default window is 1 ms
    std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms));
    uint16_t code = 1;
    std::string body;
    ASSERT_OK(conn->Call(LocalMethod::kLookup, lookup, &code, &body));
    ASSERT_EQ(code, 0) << body;
    v1::LookupResponse found;
    ASSERT_TRUE(found.ParseFromString(body));
    ASSERT_EQ(found.results_size(), 1);
    EXPECT_FALSE(found.results(0).present());
  }
}

class LocalControlPollOffTest : public LocalControlTest {
 protected:
  LocalControlPollOffTest() { extra_args_ = {"--local-control-poll-us", "0"}; }
};

TEST_F(LocalControlPollOffTest, CallsAnswerFromBlockingReads) {
  auto conn = RawConnection::Open(socket_path_);
  ASSERT_OK(conn);
  EXPECT_NE(conn->hello().features & kArenaFeatureLocalControl, 0u);
  uint16_t code = 1;
  std::string body;
  ASSERT_OK(conn->Call(LocalMethod::kReserve, ReserveOf(1), &code, &body));
  ASSERT_EQ(code, 0) << body;
  v1::ReserveResponse reserved;
  ASSERT_TRUE(reserved.ParseFromString(body));
  v1::AbortRequest abort;
  abort.set_reservation_id(reserved.reservation_id());
  ASSERT_OK(conn->Call(LocalMethod::kAbort, abort, &code, &body));
  EXPECT_EQ(code, 0) << body;
  EXPECT_EQ(ActiveReservations(), 0u);
}

TEST(PollReadable, SaysWhenAReadWouldNotBlockAndConsumesNothing) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  using std::chrono::microseconds;
  EXPECT_FALSE(PollReadable(fds[0], microseconds{0}));     // no window: no poll at all
  EXPECT_FALSE(PollReadable(fds[0], microseconds{2000}));  // nothing came within the window
  ASSERT_EQ(::write(fds[1], "ab", 2), 2);
  EXPECT_TRUE(PollReadable(fds[0], microseconds{2000}));
  EXPECT_TRUE(PollReadable(fds[0], microseconds{2000}));  // it peeks: the bytes are still there
  char got[2] = {};
  ASSERT_EQ(::read(fds[0], got, 2), 2);
  EXPECT_EQ(std::string(got, 2), "ab");
  EXPECT_FALSE(PollReadable(fds[0], microseconds{1000}));
  // A byte written while the caller polls ends the poll.
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    EXPECT_EQ(::write(fds[1], "c", 1), 1);
  });
  bool seen = false;
  for (int i = 0; i < 1000 && !seen; ++i) seen = PollReadable(fds[0], microseconds{100'000});
  writer.join();
  EXPECT_TRUE(seen);
  ASSERT_EQ(::read(fds[0], got, 1), 1);
  // The end of the stream is something to read too (the read returns 0 at once).
  ::close(fds[1]);
  EXPECT_TRUE(PollReadable(fds[0], microseconds{2000}));
  ::close(fds[0]);
}

TEST(LocalFrameHeader, EncodeDecodeRoundTripAndLimits) {
  LocalFrameHeader h{.body_bytes = 1234, .code = 7, .flags = kLocalFlagNoReply, .sequence = 99};
  auto bytes = EncodeLocalFrameHeader(h);
  auto back = DecodeLocalFrameHeader(bytes);
  ASSERT_OK(back);
  EXPECT_EQ(back->body_bytes, 1234u);
  EXPECT_EQ(back->code, 7);
  EXPECT_EQ(back->flags, kLocalFlagNoReply);
  EXPECT_EQ(back->sequence, 99u);
  EXPECT_THAT(DecodeLocalFrameHeader(std::span<const uint8_t>(bytes.data(), 15)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  bytes[1] = 'Z';
  EXPECT_THAT(std::string(DecodeLocalFrameHeader(bytes).status().message()), HasSubstr("magic"));
  h.body_bytes = kMaxLocalFrameBody + 1;
  EXPECT_THAT(std::string(DecodeLocalFrameHeader(EncodeLocalFrameHeader(h)).status().message()),
              HasSubstr("limit"));
  EXPECT_STREQ(LocalMethodName(static_cast<uint16_t>(LocalMethod::kCommitMany)), "CommitMany");
  EXPECT_STREQ(LocalMethodName(500), "unknown");
}

}  // namespace
}  // namespace kvstash::testing
