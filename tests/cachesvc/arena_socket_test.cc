// The SCM_RIGHTS handshake between ArenaSocketServer and ReceiveArenaFd, over a real memfd.
#include "arena_socket.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>

#include "kvstash/proto/arena_handshake.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::cachesvc {
namespace {

std::string TempSocketPath(const std::string& tag) {
  return (std::filesystem::temp_directory_path() /
          ("kvs_arena_" + tag + "_" + std::to_string(::getpid()) + ".sock"))
      .string();
}

TEST(ArenaHandshake, EncodeDecodeRoundTrip) {
  ArenaHandshake hello{
      .arena_bytes = 1ull << 33, .arena_generation = 0xABCDEF12345ull, .alignment = 64};
  auto bytes = EncodeArenaHandshake(hello);
  auto back = DecodeArenaHandshake(bytes);
  ASSERT_OK(back);
  EXPECT_EQ(back->arena_bytes, hello.arena_bytes);
  EXPECT_EQ(back->arena_generation, hello.arena_generation);
  EXPECT_EQ(back->alignment, 64u);
  bytes[0] = 'X';
  EXPECT_THAT(DecodeArenaHandshake(bytes), StatusIs(absl::StatusCode::kInvalidArgument));
  bytes = EncodeArenaHandshake(hello);
  bytes[4] = 9;  // version
  EXPECT_THAT(std::string(DecodeArenaHandshake(bytes).status().message()),
              ::testing::HasSubstr("version 9"));
  EXPECT_THAT(DecodeArenaHandshake(std::span<const uint8_t>(bytes.data(), 10)),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ArenaHandshake, VersionTwoAndAttachRequestRoundTrip) {
  ArenaHandshake hello{.arena_bytes = 1ull << 30,
                       .arena_generation = 77,
                       .alignment = 4096,
                       .features = kArenaFeatureReadOnlyFd | kArenaFeatureWritableFd,
                       .arena_offset = 3ull << 30,
                       .version = kArenaHandshakeVersion2};
  auto bytes = EncodeArenaHandshake(hello);
  ASSERT_EQ(bytes.size(), kArenaHandshakeV2Bytes);
  ASSERT_OK_AND_ASSIGN(ArenaHandshake back, DecodeArenaHandshake(bytes));
  EXPECT_EQ(back.version, kArenaHandshakeVersion2);
  EXPECT_EQ(back.arena_offset, hello.arena_offset);
  EXPECT_EQ(back.features, hello.features);
  // A version 2 message cut to version 1's length is refused.
  EXPECT_THAT(DecodeArenaHandshake(std::span<const uint8_t>(bytes.data(), kArenaHandshakeBytes)),
              StatusIs(absl::StatusCode::kInvalidArgument));

  std::string body = EncodeArenaAttachRequest({.writable = false, .token = "tok-0123456789abcdef"});
  ASSERT_OK_AND_ASSIGN(ArenaAttachRequest request,
                       DecodeArenaAttachRequest(std::span<const uint8_t>(
                           reinterpret_cast<const uint8_t*>(body.data()), body.size())));
  EXPECT_FALSE(request.writable);
  EXPECT_EQ(request.token, "tok-0123456789abcdef");
  const uint8_t bad_access[] = {7, 'x'};
  EXPECT_THAT(DecodeArenaAttachRequest(bad_access), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(DecodeArenaAttachRequest({}), StatusIs(absl::StatusCode::kInvalidArgument));
  std::string huge(2 + kMaxArenaAttachTokenBytes, 't');
  huge[0] = 1;
  EXPECT_THAT(DecodeArenaAttachRequest(std::span<const uint8_t>(
                  reinterpret_cast<const uint8_t*>(huge.data()), huge.size())),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

// The attach-ticket variant: the marker bit, the ticket's bytes in place of the token; a token
// request keeps its first version's bytes (servers that predate tickets still take it).
TEST(ArenaHandshake, AttachTicketRequestRoundTrip) {
  auto decode = [](const std::string& body) {
    return DecodeArenaAttachRequest(
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(body.data()), body.size()));
  };
  const std::string ticket(kArenaAttachTicketBytes, '\x9c');
  std::string body = EncodeArenaAttachRequest({.writable = true, .token = "", .ticket = ticket});
  ASSERT_EQ(body.size(), 1 + kArenaAttachTicketBytes);
  EXPECT_EQ(static_cast<uint8_t>(body[0]), kArenaAttachWritable | kArenaAttachTicketMarker);
  ASSERT_OK_AND_ASSIGN(ArenaAttachRequest request, decode(body));
  EXPECT_TRUE(request.writable);
  ASSERT_TRUE(request.ticket.has_value());
  EXPECT_EQ(*request.ticket, ticket);
  EXPECT_TRUE(request.token.empty());
  // Read-only, and a ticket of any length (the server judges it), even none.
  ASSERT_OK_AND_ASSIGN(request,
                       decode(EncodeArenaAttachRequest(
                           {.writable = false, .token = "", .ticket = std::string(5, 'x')})));
  EXPECT_FALSE(request.writable);
  EXPECT_EQ(request.ticket, std::string(5, 'x'));
  ASSERT_OK_AND_ASSIGN(request, decode(std::string(1, '\x02')));
  ASSERT_TRUE(request.ticket.has_value());
  EXPECT_TRUE(request.ticket->empty());
  // The token form is unchanged: access byte 0 or 1, no ticket.
  EXPECT_EQ(EncodeArenaAttachRequest({.writable = true, .token = "tok"}), std::string("\x01tok"));
  ASSERT_OK_AND_ASSIGN(request, decode(std::string("\x01tok")));
  EXPECT_FALSE(request.ticket.has_value());
  // Unknown bits, and a ticket over the credential limit, are refused.
  EXPECT_THAT(decode(std::string("\x04tok")), StatusIs(absl::StatusCode::kInvalidArgument));
  std::string huge(2 + kMaxArenaAttachTokenBytes, 't');
  huge[0] = kArenaAttachTicketMarker;
  EXPECT_THAT(decode(huge), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ArenaSocket, HandsOutTheSameMemory) {
  constexpr size_t kBytes = 1 << 20;
  int memfd = ::memfd_create("kvs-test-arena", MFD_CLOEXEC);
  ASSERT_GE(memfd, 0);
  ASSERT_EQ(::ftruncate(memfd, kBytes), 0);
  auto* server_view =
      static_cast<uint8_t*>(::mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0));
  ASSERT_NE(server_view, MAP_FAILED);

  MetricsRegistry metrics;
  std::string path = TempSocketPath("same");
  auto server = ArenaSocketServer::Start(path, memfd, {kBytes, 7, 64}, &metrics);
  ASSERT_OK(server);

  for (int round = 0; round < 3; ++round) {
    auto got = ReceiveArenaFd(path, 2000);
    ASSERT_OK(got);
    EXPECT_EQ(got->hello.arena_bytes, kBytes);
    EXPECT_EQ(got->hello.arena_generation, 7u);
    auto* client_view = static_cast<uint8_t*>(
        ::mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_SHARED, got->fd, 0));
    ASSERT_NE(client_view, MAP_FAILED);
    ::close(got->fd);
    client_view[4096 + round] = static_cast<uint8_t>(0x5A + round);  // client writes ...
    EXPECT_EQ(server_view[4096 + round], 0x5A + round);              // ... server sees it
    server_view[100] = static_cast<uint8_t>(round);
    EXPECT_EQ(client_view[100], round);
    ::munmap(client_view, kBytes);
  }
  // The server counts an attach after its sendmsg returns, which can be after we received it.
  std::string rendered;
  for (int i = 0; i < 1000; ++i) {
    rendered = metrics.Render();
    if (rendered.find("kvstash_arena_attach_total 3") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_THAT(rendered, ::testing::HasSubstr("kvstash_arena_attach_total 3"));

  (*server)->Stop();
  EXPECT_FALSE(std::filesystem::exists(path));
  auto after = ReceiveArenaFd(path, 500);
  EXPECT_THAT(after, StatusIs(absl::StatusCode::kUnavailable));
  ::munmap(server_view, kBytes);
  ::close(memfd);
}

TEST(ArenaSocket, RefusesALiveSocketAndReplacesAStaleOne) {
  std::string path = TempSocketPath("claim");
  int memfd = ::memfd_create("kvs-test-arena", MFD_CLOEXEC);
  ASSERT_EQ(::ftruncate(memfd, 4096), 0);
  auto first = ArenaSocketServer::Start(path, memfd, {4096, 1, 64}, nullptr);
  ASSERT_OK(first);
  auto second = ArenaSocketServer::Start(path, memfd, {4096, 2, 64}, nullptr);
  ASSERT_THAT(second, StatusIs(absl::StatusCode::kFailedPrecondition));
  (*first)->Stop();

  // A socket file nobody listens on (what kill -9 leaves behind) is replaced.
  int stale = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr;
  unsigned len = *MakeUnixAddress(path, &addr);
  ASSERT_EQ(::bind(stale, reinterpret_cast<sockaddr*>(&addr), len), 0);
  ::close(stale);
  ASSERT_TRUE(std::filesystem::exists(path));
  auto third = ArenaSocketServer::Start(path, memfd, {4096, 3, 64}, nullptr);
  ASSERT_OK(third);
  auto got = ReceiveArenaFd(path, 2000);
  ASSERT_OK(got);
  EXPECT_EQ(got->hello.arena_generation, 3u);
  ::close(got->fd);
  (*third)->Stop();

  // A regular file is never removed.
  {
    std::FILE* f = std::fopen(path.c_str(), "w");
    std::fclose(f);
  }
  auto fourth = ArenaSocketServer::Start(path, memfd, {4096, 4, 64}, nullptr);
  ASSERT_THAT(fourth, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(fourth.status().message()), ::testing::HasSubstr("not a socket"));
  EXPECT_TRUE(std::filesystem::exists(path));
  std::filesystem::remove(path);
  ::close(memfd);
}

TEST(ArenaSocket, ClientErrors) {
  EXPECT_THAT(ReceiveArenaFd("", 100), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ReceiveArenaFd(std::string(200, 'a'), 100),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ReceiveArenaFd("/nonexistent/kvs.sock", 100),
              StatusIs(absl::StatusCode::kUnavailable));

  // A server that accepts but never answers runs into the client's timeout.
  std::string path = TempSocketPath("mute");
  std::filesystem::remove(path);
  int mute = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr;
  unsigned len = *MakeUnixAddress(path, &addr);
  ASSERT_EQ(::bind(mute, reinterpret_cast<sockaddr*>(&addr), len), 0);
  ASSERT_EQ(::listen(mute, 4), 0);
  auto got = ReceiveArenaFd(path, 200);
  EXPECT_THAT(got, StatusIs(absl::StatusCode::kDeadlineExceeded));
  ::close(mute);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace kvstash::cachesvc
