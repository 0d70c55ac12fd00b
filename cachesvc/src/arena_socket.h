// Hands the store's arena memfd to local clients over a unix socket (kvstash/proto/
// arena_handshake.h has the protocol). One accept thread; each connection gets the handshake and
// a dup of the fd via SCM_RIGHTS. Without a session factory the connection is then closed; with
// one, it stays open for local control calls (kvstash/proto/local_control.h), served in order by
// a thread of its own with a LocalControlSession made for it. Stop() is idempotent: it stops
// accepting, closes every connection (a call being handled finishes first) and joins all threads.
//
// Multi-tenant nodes start it with StartAuthenticated instead: nothing is sent until the client's
// attach request names a bearer token or presents an attach ticket (attach_tickets.h), which the
// attacher maps to that tenant's own arena fds (handshake version 2) or refuses (an error
// message, no fd). A grant that carries a session keeps the connection open for local control
// calls, served by that session (bound to the tenant the credential named); otherwise the
// connection is closed.
#ifndef KVSTASH_CACHESVC_ARENA_SOCKET_H_
#define KVSTASH_CACHESVC_ARENA_SOCKET_H_

#include <atomic>
#include <chrono>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "kvstash/common/metrics.h"
#include "kvstash/common/mutex.h"
#include "kvstash/common/status.h"
#include "kvstash/proto/arena_handshake.h"

namespace kvstash::cachesvc {

// Prepares `path` for bind(): fails when a live process listens there, removes a stale socket
// file left by a crash, refuses to touch anything that is not a socket.
Status ClaimUnixSocketPath(const std::string& path);

// The local control calls of one client connection. Made when the connection opens, used by that
// connection's thread only, destroyed when the connection closes: the destructor settles what the
// client left open (a client that died mid-put frees its reservations at once, not at expiry).
class LocalControlSession {
 public:
  virtual ~LocalControlSession() = default;
  // Handles one request frame: `method` is the frame's code, `body` its message. Sets the reply's
  // gRPC status code and body (the response message, or the error text).
  virtual void Handle(uint16_t method, std::string_view body, uint16_t* reply_code,
                      std::string* reply_body) = 0;
};
using LocalControlFactory = std::function<std::unique_ptr<LocalControlSession>()>;

// What one authenticated attach request gets: the handshake and the fds to send (1 or 2, owned by
// the caller of StartAuthenticated; they must stay open until Stop() returns), and optionally
// the session that serves the connection's local control calls afterwards (the server sets
// kArenaFeatureLocalControl when it keeps the connection, i.e. while fewer than
// `max_connections` are kept; otherwise the session is dropped and the connection closed).
struct ArenaGrant {
  ArenaHandshake hello;
  std::vector<int> fds;
  std::unique_ptr<LocalControlSession> session;
};
// Maps an attach request to its grant, or the refusal to send (UNAUTHENTICATED, ...). Called on
// connection threads, concurrently.
using ArenaAttacher = std::function<Result<ArenaGrant>(const ArenaAttachRequest&)>;

class ArenaSocketServer {
 public:
  // Binds and starts serving. `arena_fd` stays owned by the caller and must outlive Stop().
  // With `sessions` set, connections stay open for local control calls (at most
  // `max_connections` at a time; later ones get the handshake without the feature and are closed,
  // so those clients use gRPC). `sessions` must stay callable until Stop() returns. After each
  // call a connection's thread polls for the next request for up to `poll_window` before it
  // blocks (PollReadable in kvstash/proto/local_control.h): CPU spent to answer sooner.
  static Result<std::unique_ptr<ArenaSocketServer>> Start(
      const std::string& path, int arena_fd, const ArenaHandshake& hello, MetricsRegistry* metrics,
      LocalControlFactory sessions = nullptr, int max_connections = 0,
      std::chrono::microseconds poll_window = std::chrono::microseconds{0});
  // The multi-tenant socket: each connection must send an attach request within
  // kAttachTimeout; at most kMaxPendingAttaches are being attached at a time (later ones are
  // refused with UNAVAILABLE). Granted connections whose grant carries a session stay open for
  // local control calls, at most `max_connections` at a time, polled as Start's are. `attach`
  // must stay callable until Stop() returns.
  static Result<std::unique_ptr<ArenaSocketServer>> StartAuthenticated(
      const std::string& path, ArenaAttacher attach, MetricsRegistry* metrics,
      int max_connections = 0,
      std::chrono::microseconds poll_window = std::chrono::microseconds{0});
  static constexpr std::chrono::seconds kAttachTimeout{5};
  static constexpr int kMaxPendingAttaches = 64;
  ~ArenaSocketServer();
  ArenaSocketServer(const ArenaSocketServer&) = delete;
  ArenaSocketServer& operator=(const ArenaSocketServer&) = delete;

  const std::string& path() const { return path_; }
  // Stops accepting, closes the connections, joins the threads, removes the socket file.
  void Stop();

 private:
  struct Connection {
    int fd = -1;  // closed by whoever joins the thread
    std::thread thread;
    std::atomic<bool> done{false};
    bool serving = false;  // an authenticated connection kept for local control calls; conns_mu_
  };

  ArenaSocketServer() = default;
  Status Listen(const std::string& path, MetricsRegistry* metrics);
  void AcceptLoop();
  // Reads the attach request on `conn` and answers it; then serves the connection's local control
  // calls when the grant carries a session and a slot is free, else shuts the connection down.
  void Attach(Connection* conn);
  // Serves local control frames on `conn` with `session` until the client closes it or Stop().
  void Serve(Connection* conn, std::unique_ptr<LocalControlSession> session);
  // Joins and forgets connections whose thread has ended.
  void ReapLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(conns_mu_);

  std::string path_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;  // eventfd that interrupts poll() on Stop()
  int arena_fd_ = -1;
  ArenaHandshake hello_;
  Counter* attaches_ = nullptr;
  Counter* failures_ = nullptr;
  Gauge* open_connections_ = nullptr;
  Counter* bad_frames_ = nullptr;
  LocalControlFactory sessions_;
  ArenaAttacher attach_;
  Counter* refusals_ = nullptr;
  int max_connections_ = 0;
  std::chrono::microseconds poll_window_{0};
  Mutex conns_mu_;
  std::list<std::unique_ptr<Connection>> conns_ ABSL_GUARDED_BY(conns_mu_);
  int serving_ ABSL_GUARDED_BY(conns_mu_) = 0;  // authenticated connections kept for calls
  std::thread thread_;
  std::atomic<bool> stopped_{false};
};

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_ARENA_SOCKET_H_
