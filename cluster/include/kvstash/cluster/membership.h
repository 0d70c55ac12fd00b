// Membership: this node's registration in etcd and its view of the other live nodes.
//
// Registration: a lease of ttl_s seconds and the node's record (node_record.h) under
// /kvstash/<cluster>/nodes/<id> attached to it, renewed on a dedicated thread every ttl_s / 3.
// Fencing: when the last renewal etcd acknowledged is older than ttl_s (etcd unreachable, this
// process stopped, the link cut), the node is fenced: fenced() is true, the view leaves this
// node out, and the service stops taking on objects for others (it serves only what it holds).
// The renewal thread keeps trying; once etcd answers again it renews the lease, or, if the lease
// expired meanwhile, registers anew with a larger epoch, and the fence lifts.
// The view: the records under the prefix, read once and then followed by a watch that resumes
// from the last revision after a disconnect (etcd_client.h). A record that does not decode is
// logged and left out.
//
// Threading: thread-safe. `on_change` is called on the renewal or watch thread, one call at a
// time, after every change of the view or of the fence; it must not call Stop or destroy this.
// Stop (and the destructor) revoke the lease so the node leaves the view at once.
#ifndef KVSTASH_CLUSTER_MEMBERSHIP_H_
#define KVSTASH_CLUSTER_MEMBERSHIP_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvstash/cluster/etcd_client.h"
#include "kvstash/cluster/node_record.h"
#include "kvstash/common/status.h"

namespace kvstash::cluster {

struct MembershipOptions {
  std::string cluster = "default";  // [A-Za-z0-9._:-]
  NodeRecord self;                  // epoch is set at each registration
  uint32_t ttl_s = 10;
};

struct MemberView {
  std::vector<NodeRecord> nodes;  // live nodes, by id; this node included unless fenced
  bool fenced = true;
  uint64_t version = 0;        // grows with every change
  uint64_t registrations = 0;  // how often this node registered (1 after a clean start)
};

class Membership {
 public:
  using ChangeFn = std::function<void(const MemberView&)>;

  // Tries to register once before returning (the node starts fenced when etcd does not answer,
  // and keeps trying). `etcd` must outlive this. InvalidArgument for a bad cluster name, node id
  // or TTL.
  static Result<std::unique_ptr<Membership>> Start(EtcdClient* etcd, MembershipOptions options,
                                                   ChangeFn on_change);
  ~Membership();
  Membership(const Membership&) = delete;
  Membership& operator=(const Membership&) = delete;

  MemberView view() const;
  bool fenced() const;
  const NodeRecord& self() const;
  std::string prefix() const;  // /kvstash/<cluster>/nodes/

  // Stops the threads and revokes the lease (best effort). Idempotent.
  void Stop();

 private:
  struct Impl;
  explicit Membership(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

std::string NodesPrefix(const std::string& cluster);

}  // namespace kvstash::cluster

#endif  // KVSTASH_CLUSTER_MEMBERSHIP_H_
