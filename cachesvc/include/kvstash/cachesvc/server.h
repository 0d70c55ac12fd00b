// CacheService: the whole cachesvc daemon in one object, so tests and benchmarks can embed it and
// `cachesvc` (main.cc) is a thin shell around it.
//
// Start() opens the ObjectStore, then starts the gRPC server (kvstash.v1.KvStash, the standard
// grpc.health.v1 health service and server reflection) on `listen` and, when set, on the unix
// socket `local_listen` as well (one server, two listening ports; TLS only on a TCP one), the
// arena socket that hands the memfd to local clients, and the HTTP listener for /metrics and
// /healthz. A unix socket path is refused when a live process listens on it; a stale one from a
// crash is replaced.
//
// Shutdown(): health turns NOT_SERVING and /healthz 503; the gRPC server stops accepting and gives
// in-flight RPCs shutdown_grace_ms to finish (then cancels them; a cancelled streaming Put aborts
// its reservation); the arena socket closes; the store is closed, which flushes queued SSD writes;
// the HTTP listener stops last. Idempotent; the destructor calls it.
//
// Thread-safety: every method may be called from any thread.
#ifndef KVSTASH_CACHESVC_SERVER_H_
#define KVSTASH_CACHESVC_SERVER_H_

#include <memory>
#include <string>

#include "kvstash/cachesvc/config.h"
#include "kvstash/common/metrics.h"
#include "kvstash/common/status.h"

namespace kvstash::cachesvc {

class CacheService {
 public:
  static Result<std::unique_ptr<CacheService>> Start(const ServiceConfig& config);
  ~CacheService();
  CacheService(const CacheService&) = delete;
  CacheService& operator=(const CacheService&) = delete;

  // The address clients dial: "unix:///path" or "host:port" with the bound port.
  std::string target() const;
  // The second, same-node listener (config local_listen: "unix:///path"), or empty without one.
  // Same-node clients dial it to get the arena (arena_socket_path() sits next to it).
  std::string local_target() const;
  std::string arena_socket_path() const;
  int metrics_port() const;  // 0 when disabled
  MetricsRegistry& metrics();

  // SIGHUP: re-reads the TLS files (tls.h) and the tokens file. What fails to load is refused
  // and the previous material stays in force; the first error is returned. Connections and
  // calls in flight are not dropped.
  Status Reload();

  // Returns the status of closing the store (flushing the SSD tier).
  Status Shutdown();

 private:
  struct Impl;
  explicit CacheService(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_SERVER_H_
