#include "arena_socket.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kvstash/proto/local_control.h"

namespace kvstash::cachesvc {

Status ClaimUnixSocketPath(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("cannot stat ", path, ": ", strerror(errno)));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " exists and is not a socket; refusing to replace it"));
  }
  sockaddr_un addr;
  KVSTASH_ASSIGN_OR_RETURN(unsigned len, MakeUnixAddress(path, &addr));
  int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (probe < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  int rc = ::connect(probe, reinterpret_cast<sockaddr*>(&addr), len);
  ::close(probe);
  if (rc == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is in use by a running process (another cachesvc?)"));
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot remove stale socket ", path, ": ", strerror(errno)));
  }
  spdlog::info("event=stale_socket_removed path={}", path);
  return OkStatus();
}

Result<std::unique_ptr<ArenaSocketServer>> ArenaSocketServer::Start(
    const std::string& path, int arena_fd, const ArenaHandshake& hello, MetricsRegistry* metrics,
    LocalControlFactory sessions, int max_connections, std::chrono::microseconds poll_window) {
  std::unique_ptr<ArenaSocketServer> server(new ArenaSocketServer());
  server->arena_fd_ = arena_fd;
  server->hello_ = hello;
  server->sessions_ = std::move(sessions);
  server->max_connections_ = max_connections;
  server->poll_window_ = poll_window;
  if (server->sessions_ != nullptr && max_connections > 0) {
    server->hello_.features |= kArenaFeatureLocalControl;
  } else {
    server->sessions_ = nullptr;
    server->hello_.features &= ~kArenaFeatureLocalControl;
  }
  KVSTASH_RETURN_IF_ERROR(server->Listen(path, metrics));
  return server;
}

Result<std::unique_ptr<ArenaSocketServer>> ArenaSocketServer::StartAuthenticated(
    const std::string& path, ArenaAttacher attach, MetricsRegistry* metrics, int max_connections,
    std::chrono::microseconds poll_window) {
  if (attach == nullptr)
    return absl::InvalidArgumentError("an authenticated socket needs an attacher");
  std::unique_ptr<ArenaSocketServer> server(new ArenaSocketServer());
  server->attach_ = std::move(attach);
  server->max_connections_ = max_connections;
  server->poll_window_ = poll_window;
  KVSTASH_RETURN_IF_ERROR(server->Listen(path, metrics));
  return server;
}

Status ArenaSocketServer::Listen(const std::string& path, MetricsRegistry* metrics) {
  KVSTASH_RETURN_IF_ERROR(ClaimUnixSocketPath(path));
  path_ = path;
  if (metrics != nullptr) {
    attaches_ = metrics->GetCounter("kvstash_arena_attach_total",
                                    "Arena memfds handed to clients over the unix socket");
    failures_ = metrics->GetCounter("kvstash_arena_attach_failures_total",
                                    "Arena handshakes that failed to send");
    refusals_ = metrics->GetCounter(
        "kvstash_arena_attach_refused_total",
        "Arena attach requests refused (no or a bad token, no arena of the tenant's own)");
    open_connections_ = metrics->GetGauge("kvstash_local_control_connections",
                                          "Arena-socket connections open for local control calls");
    bad_frames_ = metrics->GetCounter(
        "kvstash_local_control_bad_frames_total",
        "Local control connections closed for a malformed frame or a failed reply");
  }
  sockaddr_un addr;
  KVSTASH_ASSIGN_OR_RETURN(unsigned len, MakeUnixAddress(path, &addr));
  listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (listen_fd_ < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    return absl::UnavailableError(absl::StrCat("bind ", path, ": ", strerror(errno)));
  }
  if (::listen(listen_fd_, 128) != 0) {
    return absl::UnavailableError(absl::StrCat("listen ", path, ": ", strerror(errno)));
  }
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) return absl::InternalError(absl::StrCat("eventfd: ", strerror(errno)));
  thread_ = std::thread([this] { AcceptLoop(); });
  return OkStatus();
}

ArenaSocketServer::~ArenaSocketServer() {
  Stop();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void ArenaSocketServer::Stop() {
  if (stopped_.exchange(true)) return;
  if (wake_fd_ >= 0) {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof(one));
  }
  if (thread_.joinable()) thread_.join();
  if (listen_fd_ >= 0) {
    ::close(listen_fd_);
    listen_fd_ = -1;
    ::unlink(path_.c_str());
  }
  std::list<std::unique_ptr<Connection>> conns;
  {
    MutexLock lock(&conns_mu_);
    // Wakes each connection's blocking read; a call being handled finishes, its reply fails.
    for (auto& conn : conns_) ::shutdown(conn->fd, SHUT_RDWR);
    conns.swap(conns_);
  }
  for (auto& conn : conns) {
    conn->thread.join();
    ::close(conn->fd);
  }
}

void ArenaSocketServer::ReapLocked() {
  for (auto it = conns_.begin(); it != conns_.end();) {
    if ((*it)->done.load()) {
      (*it)->thread.join();
      ::close((*it)->fd);
      it = conns_.erase(it);
    } else {
      ++it;
    }
  }
}

void ArenaSocketServer::Serve(Connection* conn, std::unique_ptr<LocalControlSession> session) {
  LocalFrameHeader request;
  std::string body;
  std::string reply;
  while (true) {
    // The next request of a client in the middle of a put or get (Reserve, copy, Commit) comes
    // within a copy's time; polling for it saves the wake-up of a blocked read.
    PollReadable(conn->fd, poll_window_);
    Status s = ReadLocalFrame(conn->fd, &request, &body);
    if (!s.ok()) {
      // Unavailable is the client closing (or Stop()); anything else is a protocol error.
      if (s.code() != absl::StatusCode::kUnavailable) {
        if (bad_frames_ != nullptr) bad_frames_->Increment();
        spdlog::warn("event=local_control_bad_frame error=\"{}\"", std::string(s.message()));
      }
      break;
    }
    uint16_t code = 0;
    reply.clear();
    session->Handle(request.code, body, &code, &reply);
    if ((request.flags & kLocalFlagNoReply) != 0) continue;
    if (reply.size() > kMaxLocalFrameBody) {
      // Only a request near the frame limit can get here (limits.max_keys_per_request raised far
      // above its default); the client can repeat it over gRPC, whose limit is its own.
      code = static_cast<uint16_t>(absl::StatusCode::kResourceExhausted);
      reply = absl::StrCat("the reply of ", reply.size(), " bytes exceeds the local control ",
                           "channel's frame limit of ", kMaxLocalFrameBody, " bytes; use gRPC");
    }
    LocalFrameHeader answer;
    answer.code = code;
    answer.sequence = request.sequence;
    s = WriteLocalFrame(conn->fd, answer,
                        {reinterpret_cast<const uint8_t*>(reply.data()), reply.size()});
    if (!s.ok()) {
      if (bad_frames_ != nullptr && !stopped_.load()) bad_frames_->Increment();
      break;
    }
  }
  // The client sees EOF now; the fd itself is closed by whoever joins this thread.
  ::shutdown(conn->fd, SHUT_RDWR);
  session.reset();  // settles what the client left open, before the connection counts as gone
  if (open_connections_ != nullptr) open_connections_->Add(-1);
  {
    MutexLock lock(&conns_mu_);
    if (conn->serving) --serving_;
  }
  conn->done = true;
}

namespace {

// Reads exactly `n` bytes (the socket's SO_RCVTIMEO bounds each wait).
Status ReadExact(int fd, uint8_t* out, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::recv(fd, out + got, n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return absl::DeadlineExceededError("no attach request in time");
    }
    if (r <= 0) return absl::UnavailableError("the client left before its attach request");
    got += static_cast<size_t>(r);
  }
  return OkStatus();
}

}  // namespace

void ArenaSocketServer::Attach(Connection* conn) {
  timeval tv{};
  tv.tv_sec = kAttachTimeout.count();
  ::setsockopt(conn->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(conn->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  // The header first, so a body announced larger than an attach request is never read.
  std::array<uint8_t, kLocalFrameHeaderBytes> head{};
  Status s = ReadExact(conn->fd, head.data(), head.size());
  Result<ArenaGrant> grant = absl::UnknownError("");
  if (s.ok()) {
    Result<LocalFrameHeader> header = DecodeLocalFrameHeader(head);
    if (!header.ok()) {
      s = absl::InvalidArgumentError(
          absl::StrCat("malformed attach request: ", std::string(header.status().message())));
    } else if (header->code != static_cast<uint16_t>(LocalMethod::kAttach)) {
      s = absl::InvalidArgumentError(
          absl::StrCat("expected an attach request, got method ", header->code));
    } else if (header->body_bytes > 1 + kMaxArenaAttachTokenBytes) {
      s = absl::InvalidArgumentError(
          absl::StrCat("attach request of ", header->body_bytes, " bytes is over the limit"));
    } else {
      std::string body(header->body_bytes, '\0');
      s = ReadExact(conn->fd, reinterpret_cast<uint8_t*>(body.data()), body.size());
      if (s.ok()) {
        Result<ArenaAttachRequest> request =
            DecodeArenaAttachRequest({reinterpret_cast<const uint8_t*>(body.data()), body.size()});
        s = request.status();
        if (s.ok()) {
          grant = attach_(*request);
          s = grant.status();
        }
      }
    }
  }
  if (s.ok()) {
    // The connection stays for local control calls when the grant brings a session for them
    // and a slot is free; the handshake says which.
    bool keep = false;
    if (grant->session != nullptr) {
      MutexLock lock(&conns_mu_);
      keep = serving_ < max_connections_;
      if (keep) {
        ++serving_;
        conn->serving = true;
      }
    }
    if (keep) {
      grant->hello.features |= kArenaFeatureLocalControl;
    } else {
      grant->hello.features &= ~kArenaFeatureLocalControl;
      grant->session.reset();
    }
    // Counted before the handshake goes out: a client that has read it finds itself counted.
    if (keep && open_connections_ != nullptr) open_connections_->Add(1);
    s = SendArenaFds(conn->fd, grant->fds, grant->hello);
    if (s.ok()) {
      if (attaches_ != nullptr) attaches_->Increment();
    } else {
      if (failures_ != nullptr) failures_->Increment();
      spdlog::warn("event=arena_attach_failed error=\"{}\"", std::string(s.message()));
    }
    if (keep && s.ok()) {
      // Calls may be far apart: reads block (Stop() shuts the socket down); a client that stops
      // reading its replies must not hold the thread forever.
      timeval none{};
      ::setsockopt(conn->fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
      timeval send_limit{};
      send_limit.tv_sec = 30;
      ::setsockopt(conn->fd, SOL_SOCKET, SO_SNDTIMEO, &send_limit, sizeof(send_limit));
      Serve(conn, std::move(grant->session));  // marks the connection done
      return;
    }
    if (keep) {
      grant->session.reset();
      if (open_connections_ != nullptr) open_connections_->Add(-1);
      MutexLock lock(&conns_mu_);
      --serving_;
      conn->serving = false;
    }
  } else {
    if (refusals_ != nullptr) refusals_->Increment();
    spdlog::info("event=arena_attach_refused code={} error=\"{}\"",
                 absl::StatusCodeToString(s.code()), std::string(s.message()));
    if (s.code() != absl::StatusCode::kUnavailable) (void)SendArenaError(conn->fd, s);
  }
  ::shutdown(conn->fd, SHUT_RDWR);
  conn->done = true;
}

void ArenaSocketServer::AcceptLoop() {
  pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
  while (true) {
    int rc = ::poll(fds, 2, -1);
    if (rc < 0) {
      if (errno == EINTR) continue;
      spdlog::error("event=arena_socket_poll_failed error=\"{}\"", strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    if ((fds[0].revents & POLLIN) == 0) continue;
    int conn = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) continue;  // EAGAIN, or the peer left before accept
    if (attach_ != nullptr) {
      MutexLock lock(&conns_mu_);
      ReapLocked();
      // Connections kept for local control calls have their own limit (Attach).
      if (conns_.size() - static_cast<size_t>(serving_) >=
          static_cast<size_t>(kMaxPendingAttaches)) {
        if (refusals_ != nullptr) refusals_->Increment();
        (void)SendArenaError(conn, absl::UnavailableError("too many attach requests at once"));
        ::close(conn);
        continue;
      }
      auto owned = std::make_unique<Connection>();
      Connection* c = owned.get();
      c->fd = conn;
      conns_.push_back(std::move(owned));
      c->thread = std::thread([this, c] { Attach(c); });
      continue;
    }
    bool keep = false;
    ArenaHandshake hello = hello_;
    if (sessions_ != nullptr) {
      MutexLock lock(&conns_mu_);
      ReapLocked();
      keep = conns_.size() < static_cast<size_t>(max_connections_);
      if (!keep) hello.features &= ~kArenaFeatureLocalControl;
    }
    // Counted before the handshake goes out: a client that has read it finds itself counted.
    if (keep && open_connections_ != nullptr) open_connections_->Add(1);
    // A peer that never reads cannot stall the loop: the 32-byte message fits the socket buffer.
    Status s = SendArenaFd(conn, arena_fd_, hello);
    if (s.ok() && keep) {
      // A client that stops reading its replies must not hold a thread forever.
      timeval tv{};
      tv.tv_sec = 30;
      ::setsockopt(conn, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
      auto owned = std::make_unique<Connection>();
      Connection* c = owned.get();
      c->fd = conn;
      MutexLock lock(&conns_mu_);
      conns_.push_back(std::move(owned));
      c->thread = std::thread([this, c] { Serve(c, sessions_()); });
    } else {
      if (keep && open_connections_ != nullptr) open_connections_->Add(-1);
      ::close(conn);
    }
    if (s.ok()) {
      if (attaches_ != nullptr) attaches_->Increment();
    } else {
      if (failures_ != nullptr) failures_->Increment();
      spdlog::warn("event=arena_attach_failed error=\"{}\"", std::string(s.message()));
    }
  }
}

}  // namespace kvstash::cachesvc
