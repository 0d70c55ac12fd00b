// ClusterNode: this cachesvc as a member of a cluster through etcd (cluster/ module).
//
// - Membership: registers {gRPC address, UCX address, capacity, zone, epoch} under a lease and
//   watches the other members (cluster/membership.h). Live members feed the remote tier as
//   peers (static --peer peers stay); reads ask an object's owners first, those in this node's
//   zone before the others.
// - Placement: the owners of an object are the R highest-scoring live nodes by weighted
//   rendezvous hashing (cluster/placement.h), weights from the nodes' capacities.
// - Replication: every object committed here by a client (not one fetched from a peer) is queued
//   and forwarded, off the writer's path, to its other owners: KvStashCluster.Replicate asks each
//   owner to pull it from this node through the remote tier's fetch (UCX one-sided reads). A
//   forward that fails is retried twice; a full queue drops (counted). With replication_mode
//   sync the committing thread sends those Replicate calls itself (in parallel, one per other
//   owner) and the commit returns only when all confirmed: no acknowledged object then depends
//   on this node surviving.
// - Loss: when a member leaves the view, each survivor re-forwards every object it holds to its
//   owners in the new view (owners that hold it already answer from a Lookup), so the next
//   owners take over the lost node's objects, and objects it was still forwarding reach R. A join
//   moves nothing: readers find objects on their old owners through the remote tier until they are
//   fetched.
// - Hot and pinned objects (--hot-replicas above --replicas): every --hot-scan-ms the replicator
//   reads the store's listing; an object pinned here, or whose reads here (the store's hit
//   count, decayed with a half-life of --hot-half-life-s) reach --hot-threshold, is hot and is
//   forwarded to its hot-R owners. Replicate carries the wanted R per key; the called owners
//   remember it while they hold the object, so after a loss the survivors re-replicate hot keys
//   to hot-R owners of the new view even when the node that saw the reads is the one lost.
// - Fence: while membership is fenced (no renewal acknowledged within the TTL) nothing is
//   forwarded and Replicate is refused; the node serves what it holds and keeps the last peers
//   it knew for reads.
//
// Threading: thread-safe. OnCommit is called by the store on committing threads and only queues.
#ifndef KVSTASH_CACHESVC_CLUSTER_NODE_H_
#define KVSTASH_CACHESVC_CLUSTER_NODE_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "kvstash/cachesvc/config.h"
#include "kvstash/common/metrics.h"
#include "kvstash/storage/object_store.h"
#include "remote_tier.h"

namespace kvstash::cachesvc {

class ClusterNode {
 public:
  // Creates the node (and its KvStashCluster service) without joining yet. `store`, `remote`
  // and `metrics` must outlive it. InvalidArgument for a bad node id or cluster name.
  static Result<std::unique_ptr<ClusterNode>> Create(const ServiceConfig& config,
                                                     storage::ObjectStore* store,
                                                     RemoteTier* remote, MetricsRegistry* metrics);
  ~ClusterNode();
  ClusterNode(const ClusterNode&) = delete;
  ClusterNode& operator=(const ClusterNode&) = delete;

  // Registers in etcd with `grpc_address` (the bound or advertised address) and starts the
  // replicator. A node that cannot reach etcd starts fenced and keeps trying.
  Status Join(const std::string& grpc_address);
  // Leaves (revokes the lease), stops the replicator. Idempotent.
  void Stop();

  // The store's commit observer, on the committing thread. Asynchronous replication: queues the
  // forward and returns OK. Synchronous (cluster.replication_mode sync): returns once the
  // object's R owners hold it, or the error that the commit then returns (config.h).
  Status OnCommit(const storage::StoredName& name);

  grpc::Service* service();

 private:
  struct Impl;
  explicit ClusterNode(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_CLUSTER_NODE_H_
