// KvClient::ClusterStatus: kvstash.v1.KvStashCluster.Status on the client's channel.
#include "client_core.h"
#include "kvstash/client/kv_client.h"
#include "kvstash/proto/status_mapping.h"
#include "kvstash/v1/cluster.grpc.pb.h"

namespace kvstash::client {

Result<ClusterStatusReply> KvClient::ClusterStatus() {
  auto stub = v1::KvStashCluster::NewStub(core_->channel);
  grpc::ClientContext ctx;
  core_->SetRpcDeadline(&ctx);
  v1::ClusterStatusRequest req;
  v1::ClusterStatusResponse resp;
  KVSTASH_RETURN_IF_ERROR(FromGrpcStatus(stub->Status(&ctx, req, &resp)));
  ClusterStatusReply out;
  out.cluster = resp.cluster();
  out.node_id = resp.node_id();
  out.replicas = resp.replicas();
  out.fenced = resp.fenced();
  for (const v1::ClusterNodeStatus& n : resp.nodes()) {
    out.nodes.push_back({n.id(), n.grpc_address(), n.zone(), n.state(), n.capacity_bytes(),
                         n.epoch(), n.objects(), n.under_replicated(), n.replication_pending()});
  }
  return out;
}

}  // namespace kvstash::client
