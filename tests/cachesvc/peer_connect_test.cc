// Who starts the UCX wire-up between a reader and the node it reads (peers.ucx_connect): real
// cachesvc processes on loopback, over UCX's default transports and over UCX_TLS=tcp. With
// serving_first the reader sends its worker address in KvStashPeer.Hello and the serving node
// connects to it before it answers; a Hello naming the worker of a reader that already died is
// refused (UNAVAILABLE) and the serving node goes on serving; the endpoints it keeps stay bounded
// over many Hellos; reader_first (the protocol before) still works, and so do mixed pairs (a
// reader that sends no address, a serving node that connects to none). The reader-kill cases
// that serving_first is for are PeerTest.ADecodeNodeRestartedMidFetchFetchesAgain and
// PeerStagingTest.AReaderKilledMidFetchLeavesNothingStaged.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "kvstash/client/kv_client.h"
#include "kvstash/proto/status_mapping.h"
#include "kvstash/transport/ucx_transport.h"
#include "kvstash/v1/peer.grpc.pb.h"
#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using client::GetReply;
using client::KvClient;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

constexpr char kSecret[] = "kvstash-test-cluster-secret-0123456789";
// Set for ConnectReaderChild: the file it writes its UCX worker address to (hex).
constexpr char kChildEnv[] = "KVSTASH_TEST_CONNECT_CHILD";

std::string WriteSecret(const std::string& dir) {
  std::string path = dir + "/secret";
  std::ofstream(path) << kSecret << "\n";
  return path;
}

client::ClientOptions StreamOnly() {
  client::ClientOptions o;
  o.use_shared_memory = false;
  o.rpc_timeout = 60s;
  return o;
}

class PeerConnectTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (std::string(GetParam()) == "tcp") {
      setenv("UCX_TLS", "tcp", 1);
    } else {
      unsetenv("UCX_TLS");
    }
  }
  void TearDown() override { unsetenv("UCX_TLS"); }

  // A node with the UCX data plane and `connect` as its peers.ucx_connect; a peer of `serving`
  // when given.
  std::unique_ptr<ServiceProcess> StartNode(TempDir& dir, const std::string& connect,
                                            const ServiceProcess* serving = nullptr) {
    ServiceOptions o;
    o.tcp = true;
    o.metrics = true;
    o.extra_args = {"--peer-secret-file", WriteSecret(dir.path()),
                    "--peer-ucx-connect", connect,
                    "--peer-timeout-ms",  "20000"};
    if (serving != nullptr) o.extra_args.insert(o.extra_args.end(), {"--peer", serving->target()});
    auto node = ServiceProcess::Start(dir.path(), o);
    EXPECT_THAT(node, IsOk());
    return node.ok() ? std::move(*node) : nullptr;
  }

  // Puts an object on `serving`, has `reader` (its peer) fetch it, and checks the bytes and that
  // they came over UCX.
  void FetchOverUcx(ServiceProcess& serving, ServiceProcess& reader, uint64_t i) {
    ASSERT_OK_AND_ASSIGN(auto on_serving, KvClient::Connect(serving.target(), StreamOnly()));
    ASSERT_OK_AND_ASSIGN(auto on_reader, KvClient::Connect(reader.target(), StreamOnly()));
    const ObjectName name = TestName(900 + i);
    const std::vector<uint8_t> payload = TestPayload(900 + i, TestInfo(1024).payload_bytes);
    ASSERT_OK(on_serving->Put(name, WithCrc(TestInfo(1024), payload), payload));
    ASSERT_OK_AND_ASSIGN(GetReply got, on_reader->Get(name));
    EXPECT_TRUE(got.payload == payload);
    EXPECT_THAT(reader.Log(), HasSubstr("data_plane=ucx"));
  }

  // KvStashPeer.Hello to `serving` as a peer would, naming `worker_address` (empty: none).
  static Status Hello(const ServiceProcess& serving, const std::string& worker_address) {
    auto stub = v1::KvStashPeer::NewStub(
        grpc::CreateChannel(serving.target(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 30s);
    ctx.AddMetadata("kvstash-peer-token", kSecret);
    v1::PeerHelloRequest req;
    req.set_node_id("peer-connect-test");
    req.set_ucx_worker_address(worker_address);
    v1::PeerHelloResponse resp;
    return FromGrpcStatus(stub->Hello(&ctx, req, &resp));
  }

  static double ConnectBacks(const ServiceProcess& node) {
    return MetricSum(node.metrics_port(), "kvstash_peer_connect_backs_total");
  }
};

TEST_P(PeerConnectTest, AHelloFromAReaderThatDiedIsRefusedAndOthersAreStillServed) {
  TempDir dir_a, dir_b;
  auto a = StartNode(dir_a, "serving_first");
  ASSERT_NE(a, nullptr);
  // The dead reader: this binary run again (ConnectReaderChild), with a UCX worker of its own,
  // killed once it has written its worker address.
  const std::string address_file = dir_b.path() + "/worker";
  setenv(kChildEnv, address_file.c_str(), 1);
  auto child =
      ChildProcess::Start({"/proc/self/exe", "--gtest_filter=ConnectReaderChild.WaitsToBeKilled"});
  unsetenv(kChildEnv);
  ASSERT_OK(child.status());
  ASSERT_OK((*child)->WaitForLine("ready", 60'000));
  (*child)->Kill();
  std::stringstream hex;
  hex << std::ifstream(address_file).rdbuf();
  const std::string dead_worker = absl::HexStringToBytes(hex.str());
  ASSERT_FALSE(dead_worker.empty());

  Status refused = Hello(*a, dead_worker);
  EXPECT_THAT(refused, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(std::string(refused.message()), HasSubstr("could not connect back to the reader"));
  EXPECT_EQ(MetricSum(a->metrics_port(), "kvstash_peer_reader_endpoints"), 0);
  EXPECT_EQ(ConnectBacks(*a), 1);  // the failed one
  // A live reader is served as before, A connecting to it first.
  auto b = StartNode(dir_b, "serving_first", a.get());
  ASSERT_NE(b, nullptr);
  FetchOverUcx(*a, *b, 1);
  EXPECT_EQ(ConnectBacks(*a), 2);
  EXPECT_GT(MetricSum(a->metrics_port(), "kvstash_peer_reader_endpoints"), 0);
  EXPECT_THAT(a->Log(), HasSubstr("connect=serving_first"));
}

TEST_P(PeerConnectTest, ManyHellosFromOneReaderHoldABoundedNumberOfEndpoints) {
  TempDir dir_a, dir_b;
  auto a = StartNode(dir_a, "serving_first");
  ASSERT_NE(a, nullptr);
  ASSERT_OK_AND_ASSIGN(auto reader, transport::UcxTransport::Create({.name = "test-reader"}));
  // As a reader that reconnects again and again (each Hello: the arena's endpoint and the
  // staging region's). A keeps at most 4 Hellos' worth per reader.
  for (int i = 0; i < 12; ++i) {
    ASSERT_OK(Hello(*a, reader->worker_address())) << "Hello " << i;
    EXPECT_LE(MetricSum(a->metrics_port(), "kvstash_peer_reader_endpoints"), 8) << "Hello " << i;
  }
  EXPECT_EQ(ConnectBacks(*a), 12);
  // And another reader still gets in.
  auto b = StartNode(dir_b, "serving_first", a.get());
  ASSERT_NE(b, nullptr);
  FetchOverUcx(*a, *b, 2);
  EXPECT_EQ(ConnectBacks(*a), 13);
}

TEST_P(PeerConnectTest, ReaderFirstStillWorks) {
  TempDir dir_a, dir_b;
  auto a = StartNode(dir_a, "reader_first");
  ASSERT_NE(a, nullptr);
  auto b = StartNode(dir_b, "reader_first", a.get());
  ASSERT_NE(b, nullptr);
  FetchOverUcx(*a, *b, 3);
  EXPECT_EQ(ConnectBacks(*a), 0);
  EXPECT_THAT(a->Log(), HasSubstr("connect=reader_first"));
}

TEST_P(PeerConnectTest, MixedPairsWork) {
  // A reader that sends no address (reader_first, as a node from before serving_first): A serves
  // it without connecting back.
  TempDir dir_a, dir_b, dir_c, dir_d;
  auto a = StartNode(dir_a, "serving_first");
  ASSERT_NE(a, nullptr);
  auto b = StartNode(dir_b, "reader_first", a.get());
  ASSERT_NE(b, nullptr);
  FetchOverUcx(*a, *b, 4);
  EXPECT_EQ(ConnectBacks(*a), 0);
  // A serving node that connects to no reader (reader_first; an older node ignores the field)
  // serves a reader that sends its address.
  auto c = StartNode(dir_c, "reader_first");
  ASSERT_NE(c, nullptr);
  auto d = StartNode(dir_d, "serving_first", c.get());
  ASSERT_NE(d, nullptr);
  FetchOverUcx(*c, *d, 5);
  EXPECT_EQ(ConnectBacks(*c), 0);
}

INSTANTIATE_TEST_SUITE_P(Planes, PeerConnectTest, ::testing::Values("default", "tcp"),
                         [](const ::testing::TestParamInfo<const char*>& p) {
                           return std::string(p.param == std::string("tcp") ? "UcxTcp"
                                                                            : "UcxDefault");
                         });

// Not a test of its own: the reader AHelloFromAReaderThatDiedIsRefused... starts and kills.
TEST(ConnectReaderChild, WaitsToBeKilled) {
  const char* file = std::getenv(kChildEnv);
  if (file == nullptr) GTEST_SKIP() << "a helper process of PeerConnectTest";
  ASSERT_OK_AND_ASSIGN(auto reader, transport::UcxTransport::Create({.name = "doomed-reader"}));
  std::ofstream(file) << absl::BytesToHexString(reader->worker_address());
  std::printf("\nready\n");
  std::fflush(stdout);
  std::this_thread::sleep_for(60s);  // until killed
}

}  // namespace
}  // namespace kvstash::testing
