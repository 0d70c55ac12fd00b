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
//   on this node surviving. A CommitMany opens a CommitBatch: its objects are replicated
//   together after the last commit, one Replicate per owner carrying all the keys it owns.
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
// Threading: thread-safe. OnCommit is called by the store on committing threads; in async mode
// it only queues.
#ifndef KVSTASH_CACHESVC_CLUSTER_NODE_H_
#define KVSTASH_CACHESVC_CLUSTER_NODE_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "kvstash/cachesvc/config.h"
#include "kvstash/common/metrics.h"
#include "kvstash/storage/object_store.h"
#include "remote_tier.h"

namespace kvstash::cachesvc {

class ClusterNode;

// Batches the synchronous replication of the commits one thread makes while it lives (a
// CommitMany): in replication_mode sync, ClusterNode::OnCommit on that thread only records the
// committed name and returns OK, and Finish() then replicates all recorded names together (one
// Replicate per other owner carrying every key it owns, the owners in parallel) and returns each
// name's status, in commit order, with OnCommit's contract per object: OK once its R owners hold
// it. Without a cluster or in async mode nothing is recorded and Finish() returns no statuses.
// One thread's batch: create, commit, Finish on the same thread; batches do not nest (an inner one
// records nothing). A batch destroyed unfinished finishes first (its objects are still
// replicated; the statuses are dropped).
class CommitBatch {
 public:
  CommitBatch();
  ~CommitBatch();
  CommitBatch(const CommitBatch&) = delete;
  CommitBatch& operator=(const CommitBatch&) = delete;

  // Names recorded so far: a commit that raised it was deferred to Finish().
  size_t size() const { return names_.size(); }
  // Replicates the recorded names (blocks up to the sync timeout); one status per name.
  std::vector<Status> Finish();

 private:
  friend class ClusterNode;
  bool open_ = false;            // this batch is the thread's (not nested in another)
  ClusterNode* node_ = nullptr;  // the node whose OnCommit recorded the names
  std::vector<storage::StoredName> names_;
};

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
  // object's R owners hold it, or the error that the commit then returns (config.h); while a
  // CommitBatch is open on this thread, records the name there and returns OK.
  Status OnCommit(const storage::StoredName& name);

  grpc::Service* service();

 private:
  friend class CommitBatch;
  struct Impl;
  explicit ClusterNode(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_CLUSTER_NODE_H_
