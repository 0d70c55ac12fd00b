// Private: the channels and stubs EtcdClient and its watcher share.
#ifndef KVSTASH_CLUSTER_ETCD_INTERNAL_H_
#define KVSTASH_CLUSTER_ETCD_INTERNAL_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "etcd/etcdserver/etcdserverpb/rpc.grpc.pb.h"
#include "kvstash/cluster/etcd_client.h"

namespace kvstash::cluster {

struct EtcdClient::Impl {
  struct Endpoint {
    std::string target;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<etcdserverpb::KV::Stub> kv;
    std::unique_ptr<etcdserverpb::Lease::Stub> lease;
    std::unique_ptr<etcdserverpb::Watch::Stub> watch;
  };
  EtcdOptions options;
  std::vector<Endpoint> endpoints;
  std::atomic<size_t> current{0};

  Endpoint& Pick() { return endpoints[current.load() % endpoints.size()]; }
  void SetDeadline(grpc::ClientContext* ctx) const {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(options.timeout_ms));
  }
  // Converts a gRPC status, naming the call and endpoint; moves on to the next endpoint when
  // this one did not answer.
  Status Check(const grpc::Status& s, const char* call, const Endpoint& ep);
  // Range over [key, range_end) (range_end empty: the one key).
  Result<RangeResult> Range(const std::string& key, const std::string& range_end);
};

}  // namespace kvstash::cluster

#endif  // KVSTASH_CLUSTER_ETCD_INTERNAL_H_
