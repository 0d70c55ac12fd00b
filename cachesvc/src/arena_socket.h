// Hands the store's arena memfd to local clients over a unix socket (kvstash/proto/
// arena_handshake.h has the protocol). One accept thread; each connection gets the handshake and
// a dup of the fd via SCM_RIGHTS, then is closed. Stop() is idempotent and joins the thread.
#ifndef KVSTASH_CACHESVC_ARENA_SOCKET_H_
#define KVSTASH_CACHESVC_ARENA_SOCKET_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "kvstash/common/metrics.h"
#include "kvstash/common/status.h"
#include "kvstash/proto/arena_handshake.h"

namespace kvstash::cachesvc {

// Prepares `path` for bind(): fails when a live process listens there, removes a stale socket
// file left by a crash, refuses to touch anything that is not a socket.
Status ClaimUnixSocketPath(const std::string& path);

class ArenaSocketServer {
 public:
  // Binds and starts serving. `arena_fd` stays owned by the caller and must outlive Stop().
  static Result<std::unique_ptr<ArenaSocketServer>> Start(const std::string& path, int arena_fd,
                                                          const ArenaHandshake& hello,
                                                          MetricsRegistry* metrics);
  ~ArenaSocketServer();
  ArenaSocketServer(const ArenaSocketServer&) = delete;
  ArenaSocketServer& operator=(const ArenaSocketServer&) = delete;

  const std::string& path() const { return path_; }
  // Stops accepting, joins the thread, removes the socket file.
  void Stop();

 private:
  ArenaSocketServer() = default;
  void AcceptLoop();

  std::string path_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;  // eventfd that interrupts poll() on Stop()
  int arena_fd_ = -1;
  ArenaHandshake hello_;
  Counter* attaches_ = nullptr;
  Counter* failures_ = nullptr;
  std::thread thread_;
  std::atomic<bool> stopped_{false};
};

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_ARENA_SOCKET_H_
