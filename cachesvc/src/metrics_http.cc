#include "metrics_http.h"

#include <httplib.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"

namespace kvstash::cachesvc {

MetricsHttpServer::MetricsHttpServer() : http_(std::make_unique<httplib::Server>()) {}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

Result<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(const std::string& address,
                                                                    int port,
                                                                    const MetricsRegistry* registry,
                                                                    std::function<bool()> healthy) {
  std::unique_ptr<MetricsHttpServer> server(new MetricsHttpServer());
  httplib::Server& http = *server->http_;
  // Linux lets two SO_REUSEPORT listeners share a port; a second daemon must fail instead.
  http.set_socket_options([](int sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  // Scrapes are rare and cheap: two threads are plenty and keep the daemon's footprint small.
  http.new_task_queue = [] { return new httplib::ThreadPool(2); };
  http.Get("/metrics", [registry](const httplib::Request&, httplib::Response& res) {
    res.set_content(registry->Render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  http.Get("/healthz",
           [healthy = std::move(healthy)](const httplib::Request&, httplib::Response& res) {
             if (healthy()) {
               res.set_content("ok\n", "text/plain");
             } else {
               res.status = 503;
               res.set_content("shutting down\n", "text/plain");
             }
           });
  int bound = port == 0 ? http.bind_to_any_port(address.c_str())
                        : (http.bind_to_port(address.c_str(), port) ? port : -1);
  if (bound < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for HTTP metrics on ", address, ":", port));
  }
  server->port_ = bound;
  server->thread_ = std::thread([s = server.get()] {
    s->http_->listen_after_bind();
    s->listen_returned_ = true;
  });
  // stop() is a no-op until the listen loop runs, so make sure it runs before anyone can stop it.
  while (!http.is_running() && !server->listen_returned_) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (server->listen_returned_) {
    server->thread_.join();
    return absl::UnavailableError(
        absl::StrCat("HTTP listener on ", address, ":", bound, " stopped at once"));
  }
  return server;
}

void MetricsHttpServer::Stop() {
  if (!thread_.joinable()) return;
  http_->stop();
  thread_.join();
}

}  // namespace kvstash::cachesvc
