// Prometheus /metrics and /healthz over plain HTTP (cpp-httplib), served by a small thread pool
// of its own. /healthz answers 200 "ok" while `healthy()` is true and 503 otherwise.
#ifndef KVSTASH_CACHESVC_METRICS_HTTP_H_
#define KVSTASH_CACHESVC_METRICS_HTTP_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "kvstash/common/metrics.h"
#include "kvstash/common/status.h"

namespace httplib {
class Server;
}

namespace kvstash::cachesvc {

class MetricsHttpServer {
 public:
  // Binds address:port (port 0 picks a free one) and starts serving. `registry` must outlive
  // the server; `healthy` is called from the HTTP threads.
  static Result<std::unique_ptr<MetricsHttpServer>> Start(const std::string& address, int port,
                                                          const MetricsRegistry* registry,
                                                          std::function<bool()> healthy);
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  int port() const { return port_; }
  // Stops listening and joins. Idempotent.
  void Stop();

 private:
  MetricsHttpServer();

  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  std::atomic<bool> listen_returned_{false};
  int port_ = 0;
};

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_METRICS_HTTP_H_
