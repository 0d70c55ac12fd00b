// EtcdClient: the few etcd v3 calls cluster membership needs, over gRPC stubs generated from
// etcd's own protos (cluster/CMakeLists.txt).
//
// Endpoints are tried in order; a call that fails with UNAVAILABLE or DEADLINE_EXCEEDED moves
// the client to the next endpoint for later calls (the call itself is not retried: callers
// decide, since a Put may have been applied). Every call has a deadline of
// EtcdOptions::timeout_ms. Errors: Unavailable (no etcd answers), DeadlineExceeded, NotFound
// (a lease that expired or never existed), InvalidArgument (bad arguments), others as etcd
// answers them, each with a message naming the call and the endpoint.
//
// Threading: every method is thread-safe and blocking. A Watcher runs its own thread and calls
// its callback there, never concurrently with itself; the callback must not destroy the watcher.
#ifndef KVSTASH_CLUSTER_ETCD_CLIENT_H_
#define KVSTASH_CLUSTER_ETCD_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvstash/common/status.h"

namespace kvstash::cluster {

struct EtcdOptions {
  // "http://host:port", "host:port" (or unix:path). At least one.
  std::vector<std::string> endpoints;
  uint32_t timeout_ms = 2000;
};

struct KeyValue {
  std::string key;
  std::string value;
  int64_t mod_revision = 0;
  int64_t lease = 0;
};

struct RangeResult {
  std::vector<KeyValue> kvs;
  int64_t revision = 0;  // the store's revision when read (watch from revision + 1)
};

struct WatchEvent {
  enum class Type { kPut, kDelete };
  Type type = Type::kPut;
  KeyValue kv;  // for kDelete only key and mod_revision are set
};

class EtcdClient;

// A watch over a key prefix that survives disconnects: after the stream breaks it reopens from
// the revision after the last one delivered, so no event is lost or repeated. When etcd has
// compacted that revision away, `on_resync` is called instead and the caller must re-read the
// prefix (then the watch continues from the current revision). Destroying the watcher stops it
// (blocks until the thread ends, at most about one timeout).
class Watcher {
 public:
  using EventsFn = std::function<void(const std::vector<WatchEvent>&, int64_t revision)>;
  using ResyncFn = std::function<int64_t()>;  // re-read; returns the revision read at
  virtual ~Watcher() = default;
  // Number of times the stream was (re)opened; 1 while it never broke.
  virtual uint64_t streams_opened() const = 0;
};

class EtcdClient {
 public:
  static Result<std::unique_ptr<EtcdClient>> Create(const EtcdOptions& options);
  ~EtcdClient();
  EtcdClient(const EtcdClient&) = delete;
  EtcdClient& operator=(const EtcdClient&) = delete;

  // Returns the revision of the write. lease 0: no lease.
  Result<int64_t> Put(const std::string& key, const std::string& value, int64_t lease = 0);
  Result<RangeResult> Get(const std::string& key);
  Result<RangeResult> GetPrefix(const std::string& prefix);
  // Number of keys deleted.
  Result<int64_t> Delete(const std::string& key);

  // A lease of ttl_s seconds; its id.
  Result<int64_t> LeaseGrant(int64_t ttl_s);
  // One keep-alive round trip; the TTL etcd granted anew. NotFound when the lease has expired.
  Result<int64_t> LeaseKeepAliveOnce(int64_t lease);
  Status LeaseRevoke(int64_t lease);

  // Watches keys starting with `prefix` from `start_revision` (> 0). Retries with a back-off of
  // at most 1 s while etcd is unreachable.
  Result<std::unique_ptr<Watcher>> WatchPrefix(const std::string& prefix, int64_t start_revision,
                                               Watcher::EventsFn on_events,
                                               Watcher::ResyncFn on_resync);

  // The endpoint the next call goes to.
  std::string current_endpoint() const;

 private:
  struct Impl;
  explicit EtcdClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  friend class WatcherImpl;
};

// The end of the key range of a prefix scan (etcd's range_end): the prefix with its last byte
// incremented, dropping trailing 0xff bytes; "\0" for an empty prefix (everything).
std::string PrefixRangeEnd(const std::string& prefix);

}  // namespace kvstash::cluster

#endif  // KVSTASH_CLUSTER_ETCD_CLIENT_H_
