// cachesvc: the KVStash cache service daemon. See kvstash/cachesvc/server.h for what it runs and
// kvstash/cachesvc/config.h for its settings; SIGTERM or SIGINT shut it down gracefully (exit 0),
// SIGHUP reloads the TLS files and the tokens file (CacheService::Reload).
#include <malloc.h>
#include <signal.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <string>

#include "kvstash/cachesvc/config.h"
#include "kvstash/cachesvc/server.h"

// Holds the shut-down service until exit (see the end of main).
kvstash::cachesvc::CacheService* g_finished_service = nullptr;

int main(int argc, char** argv) {
  kvstash::cachesvc::ParsedCommandLine parsed = kvstash::cachesvc::ParseCommandLine(argc, argv);
  if (!parsed.config) {
    std::fputs(parsed.output.c_str(), parsed.exit_code == 0 ? stdout : stderr);
    return parsed.exit_code;
  }
  const kvstash::cachesvc::ServiceConfig& config = *parsed.config;

  // Byte streams allocate MiB-sized message buffers per chunk. Above glibc's default mmap
  // threshold each would be a fresh mmap, zero-filled page by page and unmapped on free; keep
  // them on the heap and keep freed heap memory for the next call instead.
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);

  // gRPC's "poll" engine rather than its default epoll1, unless the environment chooses: under
  // epoll1 one thread at a time polls the sockets, and while a sync server thread sleeps in
  // epoll_wait, the threads answering Puts and Gets (limits.stream_poll_us) cannot poll them and
  // wait for its wake-up. With "poll" they read the sockets themselves
  // (docs/benchmarks-service.md). It suits a sidecar's tens of connections; set
  // GRPC_POLL_STRATEGY=epoll1 for thousands.
  // Synchronous replication (cluster.replication_mode sync) keeps epoll1, under which its put
  // latency was measured (docs/benchmarks-cluster.md). It works under "poll" too: a streaming Put's
  // commit holds its stream thread while the owners call back into this node (Hello, Acquire), and
  // the stream threads' queues then accept no connections (AsyncStreamServer, `listening`), since
  // under "poll" a connection is read by the threads of the queue that accepted it.
  setenv("GRPC_POLL_STRATEGY",
         config.cluster.replication_mode == kvstash::cachesvc::ReplicationMode::kSync ? "epoll1"
                                                                                      : "poll",
         /*overwrite=*/0);

  auto logger = spdlog::stderr_logger_mt("cachesvc");
  spdlog::set_default_logger(logger);
  // key=value records after a fixed prefix: easy to grep, easy for log shippers to parse.
  spdlog::set_pattern("ts=%Y-%m-%dT%H:%M:%S.%f%z level=%l pid=%P tid=%t %v");
  spdlog::set_level(spdlog::level::from_str(config.log_level));

  // Block the shutdown signals before any thread exists, so every thread inherits the mask and
  // only the sigwait below ever sees them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto service = kvstash::cachesvc::CacheService::Start(config);
  if (!service.ok()) {
    spdlog::critical("event=start_failed error=\"{}\"", std::string(service.status().message()));
    return 1;
  }
  int sig = 0;
  while (sigwait(&signals, &sig) == 0 && sig == SIGHUP) {
    spdlog::info("event=signal signal=SIGHUP");
    (void)(*service)->Reload();  // logged; the old material stays on error
  }
  spdlog::info("event=signal signal={}", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  kvstash::Status closed = (*service)->Shutdown();
  // Everything is stopped and the store is flushed and closed. Destroying the gRPC server now
  // would shut gRPC's runtime down, which joins an executor thread of the built-in health service
  // that can sit in epoll for seconds; the process is about to exit anyway, so keep the object
  // (reachable from a global, so leak checkers agree) and let exit reclaim it.
  g_finished_service = service->release();
  spdlog::shutdown();
  return closed.ok() ? 0 : 1;
}
