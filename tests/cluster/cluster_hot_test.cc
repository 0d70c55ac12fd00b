// Hot and pinned objects on more owners: four real cachesvc nodes and one real etcd on loopback,
// R = 2, --hot-replicas 3. An object read often on node 0 and an object pinned there reach three
// owners while a cold one stays on two; when node 0 (the node that saw the reads) is killed, the
// survivors re-replicate the hot keys to three owners of the new view. Copies are counted with
// local-scope Lookups (a plain Get would fetch the object and add a copy). Every loop is bounded
// in count and time.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <thread>

#include "etcd_process.h"
#include "kvstash/client/kv_client.h"
#include "kvstash/cluster/placement.h"
#include "kvstash/proto/convert.h"
#include "kvstash/v1/kvstash.grpc.pb.h"
#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using namespace ::kvstash::client;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr int kNodes = 4;
constexpr int kTtlS = 2;
constexpr int kHotThreshold = 5;

bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(100ms);
  }
  return cond();
}

struct Object {
  ObjectName name;
  ObjectInfo info;
  std::vector<uint8_t> payload;
};

Object MakeObject(uint64_t i) {
  Object o;
  o.name = TestName(i, "hot");
  o.payload = TestPayload(i, TestInfo(64).payload_bytes);
  o.info = WithCrc(TestInfo(64), o.payload);
  return o;
}

// The nodes' ids and equal capacities, as they register: the same placement the nodes compute.
cluster::Placement FourNodes() {
  std::vector<cluster::NodeRecord> nodes;
  for (int i = 0; i < kNodes; ++i) {
    cluster::NodeRecord n;
    n.id = "n" + std::to_string(i);
    n.capacity_bytes = (64ull + 256ull) << 20;
    nodes.push_back(n);
  }
  return cluster::Placement(nodes);
}

// The first object from `start` whose best owner is node 0, so that node 0 writing it leaves
// exactly R copies (R = 2) and the hot R makes exactly one more.
Object OwnedFirstByNode0(uint64_t start) {
  const cluster::Placement placement = FourNodes();
  for (uint64_t i = start; i < start + 1000; ++i) {
    Object o = MakeObject(i);
    if (placement.OwnerIds(o.name.storage_key, 1)[0] == "n0") return o;
  }
  ADD_FAILURE() << "no object owned by n0 first";
  return MakeObject(start);
}

class ClusterHotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto etcd = EtcdProcess::Start();
    if (!etcd.ok() && etcd.status().code() == absl::StatusCode::kFailedPrecondition) {
      GTEST_SKIP() << etcd.status();
    }
    ASSERT_THAT(etcd, IsOk());
    etcd_ = std::move(*etcd);
    secret_ = dirs_[0].path() + "/secret";
    std::ofstream(secret_) << "kvstash-hot-cluster-secret-0123456789\n";
    for (int i = 0; i < kNodes; ++i) ASSERT_NO_FATAL_FAILURE(StartNode(i));
    ASSERT_TRUE(AllSee(kNodes, 15s)) << "nodes did not see each other";
  }

  void StartNode(int i) {
    ServiceOptions o;
    o.tcp = true;
    o.metrics = true;
    o.extra_args = {"--etcd",
                    etcd_->endpoint(),
                    "--replicas",
                    "2",
                    "--hot-replicas",
                    "3",
                    "--hot-threshold",
                    std::to_string(kHotThreshold),
                    "--hot-scan-ms",
                    "200",
                    "--cluster-ttl-s",
                    std::to_string(kTtlS),
                    "--cluster-name",
                    "hot",
                    "--node-id",
                    "n" + std::to_string(i),
                    "--peer-secret-file",
                    secret_,
                    "--peer-timeout-ms",
                    "2000",
                    "--peer-retry-ms",
                    "300"};
    ASSERT_OK_AND_ASSIGN(nodes_[i], ServiceProcess::Start(dirs_[i].path(), o));
    ClientOptions c;
    c.use_shared_memory = false;
    c.rpc_timeout = 10s;
    ASSERT_OK_AND_ASSIGN(clients_[i], KvClient::Connect(nodes_[i]->target(), c));
    stubs_[i] = v1::KvStash::NewStub(
        grpc::CreateChannel(nodes_[i]->target(), grpc::InsecureChannelCredentials()));
  }

  double Metric(int i, const char* family) { return MetricSum(nodes_[i]->metrics_port(), family); }

  bool AllSee(int n, std::chrono::milliseconds limit, int skip = -1) {
    return WaitFor(
        [&] {
          for (int i = 0; i < kNodes; ++i) {
            if (i != skip && Metric(i, "kvstash_cluster_nodes") != n) return false;
          }
          return true;
        },
        limit);
  }

  // Whether node i holds the object itself (a local-scope Lookup does not ask its peers).
  bool Holds(int i, const Object& o) {
    v1::LookupRequest req;
    ToProto(o.name, req.add_keys());
    v1::LookupResponse resp;
    grpc::ClientContext ctx;
    ctx.AddMetadata("kvstash-scope", "local");
    ctx.set_deadline(std::chrono::system_clock::now() + 5s);
    if (!stubs_[i]->Lookup(&ctx, req, &resp).ok() || resp.results_size() != 1) return false;
    return resp.results(0).present();
  }

  int Copies(const Object& o, int skip = -1) {
    int n = 0;
    for (int i = 0; i < kNodes; ++i) n += i != skip && Holds(i, o);
    return n;
  }

  std::unique_ptr<EtcdProcess> etcd_;
  TempDir dirs_[kNodes];
  std::string secret_;
  std::unique_ptr<ServiceProcess> nodes_[kNodes];
  std::unique_ptr<KvClient> clients_[kNodes];
  std::unique_ptr<v1::KvStash::Stub> stubs_[kNodes];
};

TEST_F(ClusterHotTest, HotAndPinnedObjectsGetTheHotRAndKeepItAfterTheReaderDies) {
  const Object cold = OwnedFirstByNode0(0);
  const Object hot = OwnedFirstByNode0(2000);
  const Object pinned = OwnedFirstByNode0(4000);
  for (const Object* o : {&cold, &hot, &pinned}) {
    ASSERT_THAT(clients_[0]->Put(o->name, o->info, o->payload), IsOk());
  }
  ASSERT_TRUE(WaitFor([&] { return Copies(cold) == 2 && Copies(hot) == 2; }, 20s))
      << Copies(cold) << " " << Copies(hot);

  // Reads on node 0 make `hot` hot; a pin makes `pinned` hot without reads.
  for (int n = 0; n < 4 * kHotThreshold; ++n) {
    ASSERT_OK_AND_ASSIGN(GetReply got, clients_[0]->Get(hot.name));
    ASSERT_TRUE(got.payload == hot.payload);
  }
  ASSERT_OK_AND_ASSIGN(std::vector<Status> pins,
                       clients_[0]->Pin(std::span<const ObjectName>(&pinned.name, 1)));
  ASSERT_EQ(pins.size(), 1u);
  ASSERT_OK(pins[0]);
  EXPECT_TRUE(WaitFor([&] { return Copies(hot) == 3; }, 20s)) << Copies(hot);
  EXPECT_TRUE(WaitFor([&] { return Copies(pinned) == 3; }, 20s)) << Copies(pinned);
  EXPECT_GE(Metric(0, "kvstash_cluster_hot_objects"), 2);
  // The cold object stays on R = 2 nodes (a few scans later).
  std::this_thread::sleep_for(1s);
  EXPECT_EQ(Copies(cold), 2);

  // Node 0 saw the reads and held the pin; it dies. The survivors remember the hot R their
  // copies came with and bring both objects to three owners of the new view (all three of
  // them), while the cold object needs only two.
  nodes_[0]->Kill();
  ASSERT_TRUE(AllSee(kNodes - 1, std::chrono::seconds(kTtlS + 6), 0));
  EXPECT_TRUE(WaitFor([&] { return Copies(hot, 0) == 3; }, 30s)) << Copies(hot, 0);
  EXPECT_TRUE(WaitFor([&] { return Copies(pinned, 0) == 3; }, 30s)) << Copies(pinned, 0);
  EXPECT_TRUE(WaitFor([&] { return Copies(cold, 0) == 2; }, 30s)) << Copies(cold, 0);
  for (int i = 1; i < kNodes; ++i) {
    for (const Object* o : {&cold, &hot, &pinned}) {
      ASSERT_OK_AND_ASSIGN(GetReply got, clients_[i]->Get(o->name));
      EXPECT_TRUE(got.payload == o->payload) << "node " << i;
    }
  }
}

}  // namespace
}  // namespace kvstash::testing
