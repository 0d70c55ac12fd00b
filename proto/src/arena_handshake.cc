#include "kvstash/proto/arena_handshake.h"

#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kvstash/common/coding.h"

namespace kvstash {
namespace {

constexpr uint8_t kMagic[4] = {'K', 'V', 'S', 'A'};

std::string ErrnoText(int err) { return std::strerror(err); }

// Closes the fd on scope exit unless released.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;
  int release() { return std::exchange(fd_, -1); }
  int get() const { return fd_; }
  void reset(int fd) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_;
};

}  // namespace

std::array<uint8_t, kArenaHandshakeBytes> EncodeArenaHandshake(const ArenaHandshake& hello) {
  std::array<uint8_t, kArenaHandshakeBytes> out{};
  std::memcpy(out.data(), kMagic, 4);
  EncodeFixed32(out.data() + 4, kArenaHandshakeVersion);
  EncodeFixed64(out.data() + 8, hello.arena_bytes);
  EncodeFixed64(out.data() + 16, hello.arena_generation);
  EncodeFixed32(out.data() + 24, hello.alignment);
  EncodeFixed32(out.data() + 28, hello.features);
  return out;
}

Result<ArenaHandshake> DecodeArenaHandshake(std::span<const uint8_t> bytes) {
  if (bytes.size() < kArenaHandshakeBytes) {
    return absl::InvalidArgumentError(absl::StrCat("arena handshake is ", bytes.size(),
                                                   " bytes, expected ", kArenaHandshakeBytes));
  }
  if (std::memcmp(bytes.data(), kMagic, 4) != 0) {
    return absl::InvalidArgumentError("arena handshake has a wrong magic");
  }
  uint32_t version = DecodeFixed32(bytes.data() + 4);
  if (version != kArenaHandshakeVersion) {
    return absl::InvalidArgumentError(absl::StrCat("arena handshake version ", version,
                                                   " is not supported (want ",
                                                   kArenaHandshakeVersion, ")"));
  }
  ArenaHandshake hello;
  hello.arena_bytes = DecodeFixed64(bytes.data() + 8);
  hello.arena_generation = DecodeFixed64(bytes.data() + 16);
  hello.alignment = DecodeFixed32(bytes.data() + 24);
  hello.features = DecodeFixed32(bytes.data() + 28);
  return hello;
}

Result<unsigned> MakeUnixAddress(const std::string& path, void* addr) {
  auto* un = static_cast<sockaddr_un*>(addr);
  std::memset(un, 0, sizeof(*un));
  un->sun_family = AF_UNIX;
  if (path.empty()) return absl::InvalidArgumentError("unix socket path is empty");
  if (path.size() > kMaxUnixSocketPathBytes) {
    return absl::InvalidArgumentError(absl::StrCat("unix socket path '", path, "' is longer than ",
                                                   kMaxUnixSocketPathBytes, " bytes"));
  }
  std::memcpy(un->sun_path, path.data(), path.size());
  return static_cast<unsigned>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
}

Status SendArenaFd(int conn_fd, int arena_fd, const ArenaHandshake& hello) {
  auto bytes = EncodeArenaHandshake(hello);
  iovec iov{bytes.data(), bytes.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(cmsg), &arena_fd, sizeof(int));
  ssize_t n;
  do {
    n = ::sendmsg(conn_fd, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return absl::UnavailableError(absl::StrCat("sendmsg: ", ErrnoText(errno)));
  // 32 bytes on a fresh unix stream socket are never split; the fd went with the first byte.
  if (static_cast<size_t>(n) != bytes.size()) {
    return absl::UnavailableError("arena handshake was sent partially");
  }
  return OkStatus();
}

Result<ReceivedArena> ReceiveArenaFd(const std::string& socket_path, int timeout_ms,
                                     bool keep_connection) {
  sockaddr_un addr;
  KVSTASH_ASSIGN_OR_RETURN(unsigned addr_len, MakeUnixAddress(socket_path, &addr));
  FdCloser sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (sock.get() < 0) return absl::UnavailableError(absl::StrCat("socket: ", ErrnoText(errno)));
  timeval tv{};
  tv.tv_sec = timeout_ms / 1000;
  tv.tv_usec = (timeout_ms % 1000) * 1000;
  ::setsockopt(sock.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(sock.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (::connect(sock.get(), reinterpret_cast<sockaddr*>(&addr), addr_len) != 0) {
    return absl::UnavailableError(
        absl::StrCat("connect to arena socket ", socket_path, ": ", ErrnoText(errno)));
  }
  std::array<uint8_t, kArenaHandshakeBytes> bytes{};
  size_t got = 0;
  FdCloser received(-1);
  while (got < bytes.size()) {
    iovec iov{bytes.data() + got, bytes.size() - got};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n = ::recvmsg(sock.get(), &msg, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return absl::DeadlineExceededError(
          absl::StrCat("arena socket ", socket_path, " did not answer in ", timeout_ms, " ms"));
    }
    if (n < 0) return absl::UnavailableError(absl::StrCat("recvmsg: ", ErrnoText(errno)));
    if (n == 0) {
      return absl::UnavailableError(
          absl::StrCat("arena socket ", socket_path, " closed after ", got, " bytes"));
    }
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
          c->cmsg_len >= CMSG_LEN(sizeof(int))) {
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; ++i) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
          if (received.get() < 0) {
            received.reset(fd);
          } else {
            ::close(fd);  // a well-behaved server sends exactly one
          }
        }
      }
    }
    if (msg.msg_flags & MSG_CTRUNC) {
      return absl::InvalidArgumentError("arena handshake carried more ancillary data than one fd");
    }
    got += static_cast<size_t>(n);
  }
  KVSTASH_ASSIGN_OR_RETURN(ArenaHandshake hello, DecodeArenaHandshake(bytes));
  if (received.get() < 0) return absl::InvalidArgumentError("arena handshake carried no fd");
  ReceivedArena out;
  out.hello = hello;
  out.fd = received.release();
  if (keep_connection) out.connection = sock.release();
  return out;
}

}  // namespace kvstash
