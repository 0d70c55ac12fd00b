#include "kvstash/proto/arena_handshake.h"

#include <fcntl.h>
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
#include "kvstash/proto/local_control.h"

namespace kvstash {
namespace {

constexpr uint8_t kMagic[4] = {'K', 'V', 'S', 'A'};
constexpr char kErrorMagic[4] = {'K', 'V', 'S', 'E'};

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

std::vector<uint8_t> EncodeArenaHandshake(const ArenaHandshake& hello) {
  const bool v2 = hello.version == kArenaHandshakeVersion2;
  std::vector<uint8_t> out(v2 ? kArenaHandshakeV2Bytes : kArenaHandshakeBytes);
  std::memcpy(out.data(), kMagic, 4);
  EncodeFixed32(out.data() + 4, v2 ? kArenaHandshakeVersion2 : kArenaHandshakeVersion);
  EncodeFixed64(out.data() + 8, hello.arena_bytes);
  EncodeFixed64(out.data() + 16, hello.arena_generation);
  EncodeFixed32(out.data() + 24, hello.alignment);
  EncodeFixed32(out.data() + 28, hello.features);
  if (v2) EncodeFixed64(out.data() + 32, hello.arena_offset);
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
  if (version != kArenaHandshakeVersion && version != kArenaHandshakeVersion2) {
    return absl::InvalidArgumentError(
        absl::StrCat("arena handshake version ", version, " is not supported (want ",
                     kArenaHandshakeVersion, " or ", kArenaHandshakeVersion2, ")"));
  }
  if (version == kArenaHandshakeVersion2 && bytes.size() < kArenaHandshakeV2Bytes) {
    return absl::InvalidArgumentError(absl::StrCat("arena handshake version 2 is ", bytes.size(),
                                                   " bytes, expected ", kArenaHandshakeV2Bytes));
  }
  ArenaHandshake hello;
  hello.version = version;
  hello.arena_bytes = DecodeFixed64(bytes.data() + 8);
  hello.arena_generation = DecodeFixed64(bytes.data() + 16);
  hello.alignment = DecodeFixed32(bytes.data() + 24);
  hello.features = DecodeFixed32(bytes.data() + 28);
  if (version == kArenaHandshakeVersion2) hello.arena_offset = DecodeFixed64(bytes.data() + 32);
  return hello;
}

std::string EncodeArenaAttachRequest(const ArenaAttachRequest& request) {
  std::string out;
  uint8_t first = request.writable ? kArenaAttachWritable : 0;
  if (request.ticket.has_value()) first |= kArenaAttachTicketMarker;
  out.push_back(static_cast<char>(first));
  out.append(request.ticket.has_value() ? *request.ticket : request.token);
  return out;
}

Result<ArenaAttachRequest> DecodeArenaAttachRequest(std::span<const uint8_t> body) {
  if (body.empty()) return absl::InvalidArgumentError("arena attach request is empty");
  if ((body[0] & ~(kArenaAttachWritable | kArenaAttachTicketMarker)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("arena attach request has an unknown first byte ", int{body[0]}));
  }
  if (body.size() - 1 > kMaxArenaAttachTokenBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "arena attach request's credential is longer than ", kMaxArenaAttachTokenBytes, " bytes"));
  }
  ArenaAttachRequest request;
  request.writable = (body[0] & kArenaAttachWritable) != 0;
  std::string credential(reinterpret_cast<const char*>(body.data()) + 1, body.size() - 1);
  if ((body[0] & kArenaAttachTicketMarker) != 0) {
    request.ticket.emplace(std::move(credential));
  } else {
    request.token = std::move(credential);
  }
  return request;
}

const std::string& HostBootId() {
  static const std::string id = [] {
    std::string text(64, '\0');
    FdCloser fd(::open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) return std::string();
    ssize_t n = ::read(fd.get(), text.data(), text.size());
    if (n <= 0) return std::string();
    text.resize(static_cast<size_t>(n));
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
    return text;
  }();
  return id;
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

Status SendArenaFds(int conn_fd, std::span<const int> fds, const ArenaHandshake& hello) {
  if (fds.empty() || fds.size() > 2) {
    return absl::InvalidArgumentError("an arena handshake carries one or two fds");
  }
  auto bytes = EncodeArenaHandshake(hello);
  iovec iov{bytes.data(), bytes.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(2 * sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = CMSG_SPACE(fds.size() * sizeof(int));
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(fds.size() * sizeof(int));
  std::memcpy(CMSG_DATA(cmsg), fds.data(), fds.size() * sizeof(int));
  ssize_t n;
  do {
    n = ::sendmsg(conn_fd, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return absl::UnavailableError(absl::StrCat("sendmsg: ", ErrnoText(errno)));
  // 40 bytes on a fresh unix stream socket are never split; the fds went with the first byte.
  if (static_cast<size_t>(n) != bytes.size()) {
    return absl::UnavailableError("arena handshake was sent partially");
  }
  return OkStatus();
}

Status SendArenaError(int conn_fd, const Status& refusal) {
  std::string text(refusal.message());
  if (text.size() > kMaxArenaErrorBytes) text.resize(kMaxArenaErrorBytes);
  std::string out(kErrorMagic, kErrorMagic + 4);
  PutFixed32(&out, static_cast<uint32_t>(refusal.code()));
  PutFixed32(&out, static_cast<uint32_t>(text.size()));
  out += text;
  size_t sent = 0;
  while (sent < out.size()) {
    ssize_t n = ::send(conn_fd, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return absl::UnavailableError(absl::StrCat("send: ", ErrnoText(errno)));
    sent += static_cast<size_t>(n);
  }
  return OkStatus();
}

namespace {

// Reads exactly bytes.size() bytes, keeping (at most two) fds that come with them in `fds`.
Status ReadWithFds(int sock, std::span<uint8_t> bytes, FdCloser* fds, const std::string& path,
                   int timeout_ms) {
  size_t got = 0;
  while (got < bytes.size()) {
    iovec iov{bytes.data() + got, bytes.size() - got};
    alignas(cmsghdr) char control[CMSG_SPACE(2 * sizeof(int))] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return absl::DeadlineExceededError(
          absl::StrCat("arena socket ", path, " did not answer in ", timeout_ms, " ms"));
    }
    if (n < 0) return absl::UnavailableError(absl::StrCat("recvmsg: ", ErrnoText(errno)));
    if (n == 0) {
      return absl::UnavailableError(
          absl::StrCat("arena socket ", path, " closed after ", got, " bytes"));
    }
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
          c->cmsg_len >= CMSG_LEN(sizeof(int))) {
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; ++i) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
          if (fds[0].get() < 0) {
            fds[0].reset(fd);
          } else if (fds[1].get() < 0) {
            fds[1].reset(fd);
          } else {
            ::close(fd);  // a well-behaved server sends at most two
          }
        }
      }
    }
    if (msg.msg_flags & MSG_CTRUNC) {
      return absl::InvalidArgumentError("arena handshake carried more ancillary data than two fds");
    }
    got += static_cast<size_t>(n);
  }
  return OkStatus();
}

}  // namespace

Result<ReceivedArena> ReceiveArenaFd(const std::string& socket_path, int timeout_ms,
                                     bool keep_connection, const ArenaAttachRequest& request) {
  sockaddr_un addr;
  KVSTASH_ASSIGN_OR_RETURN(unsigned addr_len, MakeUnixAddress(socket_path, &addr));
  if (request.token.size() > kMaxArenaAttachTokenBytes ||
      (request.ticket.has_value() && request.ticket->size() > kMaxArenaAttachTokenBytes)) {
    return absl::InvalidArgumentError("credential too long for the arena attach request");
  }
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
  // The attach request goes first. A version 1 server may already have answered and closed;
  // a failed send then shows as the answer (or its absence) below.
  {
    std::string body = EncodeArenaAttachRequest(request);
    LocalFrameHeader header;
    header.code = static_cast<uint16_t>(LocalMethod::kAttach);
    header.flags = kLocalFlagNoReply;
    header.body_bytes = static_cast<uint32_t>(body.size());
    (void)WriteLocalFrame(sock.get(), header,
                          {reinterpret_cast<const uint8_t*>(body.data()), body.size()});
  }
  FdCloser fds[2] = {FdCloser(-1), FdCloser(-1)};
  std::array<uint8_t, kArenaHandshakeV2Bytes> bytes{};
  KVSTASH_RETURN_IF_ERROR(
      ReadWithFds(sock.get(), std::span<uint8_t>(bytes.data(), 12), fds, socket_path, timeout_ms));
  if (std::memcmp(bytes.data(), kErrorMagic, 4) == 0) {
    const uint32_t code = DecodeFixed32(bytes.data() + 4);
    const uint32_t length = DecodeFixed32(bytes.data() + 8);
    if (length > kMaxArenaErrorBytes || code == 0 || code > 16) {
      return absl::InvalidArgumentError("arena socket sent a malformed refusal");
    }
    std::string text(length, '\0');
    KVSTASH_RETURN_IF_ERROR(ReadWithFds(
        sock.get(), std::span<uint8_t>(reinterpret_cast<uint8_t*>(text.data()), text.size()), fds,
        socket_path, timeout_ms));
    return Status(static_cast<absl::StatusCode>(code),
                  absl::StrCat("arena socket refused the attach: ", text));
  }
  const size_t total = DecodeFixed32(bytes.data() + 4) == kArenaHandshakeVersion2
                           ? kArenaHandshakeV2Bytes
                           : kArenaHandshakeBytes;
  KVSTASH_RETURN_IF_ERROR(ReadWithFds(sock.get(), std::span<uint8_t>(bytes.data() + 12, total - 12),
                                      fds, socket_path, timeout_ms));
  KVSTASH_ASSIGN_OR_RETURN(ArenaHandshake hello,
                           DecodeArenaHandshake(std::span<const uint8_t>(bytes.data(), total)));
  if (fds[0].get() < 0) return absl::InvalidArgumentError("arena handshake carried no fd");
  const bool writable_expected =
      hello.version == kArenaHandshakeVersion2 && (hello.features & kArenaFeatureWritableFd) != 0;
  if (writable_expected && fds[1].get() < 0) {
    return absl::InvalidArgumentError("arena handshake announced a read-write fd it did not carry");
  }
  ReceivedArena out;
  out.hello = hello;
  out.fd = fds[0].release();
  if (writable_expected) out.writable_fd = fds[1].release();
  if (keep_connection) out.connection = sock.release();
  return out;
}

}  // namespace kvstash
