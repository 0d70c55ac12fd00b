// A cluster member (real etcd and cachesvc processes on loopback) listening twice on one gRPC
// server: TCP for its peers (--listen) and a unix socket for same-node engines (--local-listen).
// A KvClient on the unix socket maps the arena (its socket derived from the unix listener) and
// writes and reads through it, no payload byte crossing gRPC, while the other member reads the
// same objects from it over TCP. Every loop is bounded in count and time.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "etcd_process.h"
#include "kvstash/client/kv_client.h"
#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using namespace ::kvstash::client;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(50ms);
  }
  return cond();
}

TEST(ClusterLocalListenTest, SameNodeClientMapsTheArenaOnTheUnixListenerWhilePeersReadOverTcp) {
  auto etcd = EtcdProcess::Start();
  if (!etcd.ok() && etcd.status().code() == absl::StatusCode::kFailedPrecondition) {
    GTEST_SKIP() << etcd.status();
  }
  ASSERT_THAT(etcd, IsOk());
  TempDir dirs[2];
  const std::string secret = dirs[0].path() + "/secret";
  std::ofstream(secret) << "kvstash-cluster-test-secret-0123456789\n";
  std::unique_ptr<ServiceProcess> nodes[2];
  for (int i = 0; i < 2; ++i) {
    ServiceOptions o;
    o.tcp = true;
    o.metrics = true;
    o.local_listen = i == 0;
    o.default_arena_socket = true;  // node 0's then sits next to its unix listener
    o.extra_args = {"--etcd",
                    (*etcd)->endpoint(),
                    "--cluster-name",
                    "local",
                    "--node-id",
                    "n" + std::to_string(i),
                    "--peer-secret-file",
                    secret,
                    "--peer-timeout-ms",
                    "2000",
                    "--peer-retry-ms",
                    "300"};
    ASSERT_OK_AND_ASSIGN(nodes[i], ServiceProcess::Start(dirs[i].path(), o));
  }
  auto metric = [&](int i, const char* family) {
    return MetricSum(nodes[i]->metrics_port(), family);
  };
  ASSERT_TRUE(WaitFor(
      [&] {
        return metric(0, "kvstash_cluster_nodes") == 2 && metric(1, "kvstash_cluster_nodes") == 2;
      },
      15s))
      << "the members did not see each other";

  // Node 0 serves both: its TCP target for peers, the unix socket for this node's engines.
  const std::string local_socket = dirs[0].path() + "/local.sock";
  ASSERT_EQ(nodes[0]->local_target(), "unix://" + local_socket);
  EXPECT_EQ(nodes[0]->target().rfind("127.0.0.1:", 0), 0u) << nodes[0]->target();
  EXPECT_TRUE(nodes[1]->local_target().empty());
  struct stat st;
  ASSERT_EQ(::stat((local_socket + ".arena").c_str(), &st), 0) << "arena socket not derived";
  EXPECT_TRUE(S_ISSOCK(st.st_mode));

  ClientOptions shm;
  shm.rpc_timeout = 15s;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<KvClient> local,
                       KvClient::Connect(nodes[0]->local_target(), shm));
  ASSERT_TRUE(local->shared_memory_attached()) << local->shared_memory_status();
  EXPECT_TRUE(local->shared_memory_writable());
  EXPECT_EQ(metric(0, "kvstash_arena_attach_total"), 1);
  // The same client options on the TCP listener get no arena (KvClient maps it for unix only).
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<KvClient> over_tcp,
                       KvClient::Connect(nodes[0]->target(), shm));
  EXPECT_FALSE(over_tcp->shared_memory_attached());

  // Writes through the mapped arena (kSharedMemory: FailedPrecondition without the mapping) and
  // reads in place under leases: 4 x 1 MiB, none of it over gRPC.
  constexpr int kObjects = 4;
  const double received_before = metric(0, "kvstash_grpc_received_bytes_total");
  std::vector<ObjectName> names;
  std::vector<std::vector<uint8_t>> payloads;
  for (int k = 0; k < kObjects; ++k) {
    names.push_back(TestName(900 + k, "local"));
    payloads.push_back(TestPayload(900 + k, TestInfo(4096).payload_bytes));  // 1 MiB
    PutOptions put;
    put.path = DataPath::kSharedMemory;
    ASSERT_OK(local->Put(names[k], WithCrc(TestInfo(4096), payloads[k]), payloads[k], put));
    ASSERT_OK_AND_ASSIGN(ReadLease lease, local->Acquire(names[k]));
    EXPECT_TRUE(std::equal(lease.data().begin(), lease.data().end(), payloads[k].begin(),
                           payloads[k].end()))
        << "object " << k;
    ASSERT_OK(lease.Release());
  }
  const double received = metric(0, "kvstash_grpc_received_bytes_total") - received_before;
  EXPECT_LT(received, 64 << 10) << "payload bytes reached node 0 over gRPC";

  // The other member reads them from node 0 over TCP (its remote tier: Hello and Acquire on node
  // 0's TCP listener, the bytes over UCX), byte for byte.
  ClientOptions remote;
  remote.use_shared_memory = false;
  remote.rpc_timeout = 15s;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<KvClient> peer_client,
                       KvClient::Connect(nodes[1]->target(), remote));
  for (int k = 0; k < kObjects; ++k) {
    Result<GetReply> got = absl::UnknownError("not tried");
    for (int t = 0; t < 30 && !got.ok(); ++t) {
      got = peer_client->Get(names[k]);
      if (!got.ok()) std::this_thread::sleep_for(100ms);
    }
    ASSERT_THAT(got, IsOk()) << "object " << k;
    EXPECT_TRUE(got->payload == payloads[k]) << "object " << k << ": bytes differ";
  }
  EXPECT_GE(metric(1, "kvstash_peer_fetched_objects_total"), kObjects);
  // Node 0 still answers its unix client after serving the peer.
  ASSERT_OK_AND_ASSIGN(LookupReply looked, local->Lookup(names));
  for (const KeyPresence& p : looked.results) EXPECT_TRUE(p.present);
  EXPECT_EQ(nodes[0]->Terminate(), 0);
  EXPECT_FALSE(std::filesystem::exists(local_socket)) << "unix listener left behind";
}

}  // namespace
}  // namespace kvstash::testing
