// Encoded peer fetches over UCX (KvStashPeer.StageEncoded, cachesvc/src/peer_staging.h): node A
// stages the codec container in its registered staging pool and node B pulls it over UCX,
// checks it and commits the same reconstruction the gRPC stream path gives. Real cachesvc
// processes on loopback, over UCX's default transports and over UCX_TLS=tcp. A's staging pool
// (kvstash_peer_staging_bytes) returns to 0 after a fetch, after refused requests, after a reader
// that never says done, and after readers killed at several points; a Fetch of the staging
// region outside what A staged is refused by A's transport.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kvstash/client/kv_client.h"
#include "kvstash/codec/synthetic_kv.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/proto/convert.h"
#include "kvstash/transport/ucx_transport.h"
#include "kvstash/v1/peer.grpc.pb.h"
#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using client::GetOptions;
using client::GetReply;
using client::KvClient;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

constexpr char kSecret[] = "kvstash-test-cluster-secret-0123456789";
// Set for the reader child of AKilledReaderLeavesNothingStaged: the serving node's target.
constexpr char kChildEnv[] = "KVSTASH_TEST_STAGING_CHILD";

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

ObjectName ChunkName(uint64_t i) {
  return MakeObjectName("peer-staging", Hash128{0x5354414eull, 7}, Hash128{i + 1, i * 13 + 5});
}

// The value of one series of `family` whose labels contain `label` (e.g. plane="ucx"); summed
// over the matching series, 0 when none matches.
double MetricWith(int port, const std::string& family, const std::string& label) {
  std::string body;
  EXPECT_EQ(HttpGet(port, "/metrics", &body), 200);
  double sum = 0;
  size_t at = 0;
  while ((at = body.find("\n" + family + "{", at)) != std::string::npos) {
    const size_t end = body.find('\n', at + 1);
    const std::string line = body.substr(at + 1, end - at - 1);
    at = end;
    if (line.find(label) == std::string::npos) continue;
    sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

// UCX 1.13 can abort a serving process whose reader dies (docs/deploy.md "Which UCX"); a node
// where that risk remains (peers.ucx_connect reader_first there, or gets) says so at start.
bool AbortedInsideUcx(const ServiceProcess& node) {
  const std::string log = node.Log();
  return log.find("event=ucx_aborts_on_reader_death") != std::string::npos &&
         (log.find("got REP message") != std::string::npos ||
          log.find("Fatal: unexpected error: Endpoint timeout") != std::string::npos ||
          log.find("Assertion") != std::string::npos);
}

// KVSTASH_TEST_PEER_UCX_CONNECT (e.g. reader_first): both nodes' --peer-ucx-connect, to measure
// the aborts serving_first avoids (docs/deploy.md "Which UCX"); unset: auto.
std::string UcxConnect() {
  const char* connect = std::getenv("KVSTASH_TEST_PEER_UCX_CONNECT");
  return connect != nullptr ? connect : "auto";
}

class PeerStagingTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    // The UCX transports every process of the test picks (children inherit it).
    if (std::string(GetParam()) == "tcp") {
      setenv("UCX_TLS", "tcp", 1);
    } else {
      unsetenv("UCX_TLS");
    }
    ServiceOptions a_opts;
    a_opts.tcp = true;
    a_opts.metrics = true;
    a_opts.extra_args = {"--peer-secret-file", WriteSecret(dir_a_.path()), "--peer-ucx-connect",
                         UcxConnect()};
    ASSERT_OK_AND_ASSIGN(a_, ServiceProcess::Start(dir_a_.path(), a_opts));
    ASSERT_OK_AND_ASSIGN(client_a_, KvClient::Connect(a_->target(), StreamOnly()));
    info_ = SmolChunkInfo();
    codec::SyntheticKvOptions so;
    so.seed = 57;
    original_ = codec::SyntheticKv(info_.layout, so);
    info_.payload_crc32c = Crc32c(original_.data(), original_.size());
    ASSERT_OK(client_a_->Put(ChunkName(0), info_, original_));
    GetOptions cachegen;
    cachegen.accept_encoding = Encoding::kCacheGen;
    ASSERT_OK_AND_ASSIGN(reconstruction_, client_a_->Get(ChunkName(0), cachegen));
    ASSERT_TRUE(reconstruction_.info.lossy);
  }

  void TearDown() override { unsetenv("UCX_TLS"); }

  std::unique_ptr<ServiceProcess> StartB(TempDir& dir, std::vector<std::string> extra) {
    ServiceOptions o;
    o.tcp = true;
    o.metrics = true;
    o.extra_args = {"--peer-secret-file",
                    WriteSecret(dir.path()),
                    "--peer",
                    a_->target(),
                    "--peer-timeout-ms",
                    "30000",
                    "--peer-transfer-encoding",
                    "cachegen",
                    "--peer-ucx-connect",
                    UcxConnect()};
    o.extra_args.insert(o.extra_args.end(), extra.begin(), extra.end());
    auto b = ServiceProcess::Start(dir.path(), o);
    EXPECT_THAT(b, IsOk());
    return b.ok() ? std::move(*b) : nullptr;
  }

  double StagingBytes() { return MetricSum(a_->metrics_port(), "kvstash_peer_staging_bytes"); }

  // Waits (at most 15 s) for A's staging pool to be empty; returns what it last read.
  double WaitForEmptyStaging() {
    double bytes = StagingBytes();
    for (int i = 0; i < 150 && bytes != 0; ++i) {
      std::this_thread::sleep_for(100ms);
      bytes = StagingBytes();
    }
    return bytes;
  }

  // A peer's call to A, made by the test itself.
  std::unique_ptr<v1::KvStashPeer::Stub> PeerStub() {
    return v1::KvStashPeer::NewStub(
        grpc::CreateChannel(a_->target(), grpc::InsecureChannelCredentials()));
  }
  static void AsPeer(grpc::ClientContext* ctx, std::chrono::milliseconds deadline = 20s) {
    ctx->set_deadline(std::chrono::system_clock::now() + deadline);
    ctx->AddMetadata("kvstash-peer-token", kSecret);
    ctx->AddMetadata("kvstash-scope", "local");
  }
  v1::StageEncodedRequest StageRequest() {
    v1::StageEncodedRequest req;
    ToProto(ChunkName(0), req.add_keys());
    req.mutable_encoding()->set_accept_encoding(v1::ENCODING_CACHEGEN);
    return req;
  }

  TempDir dir_a_;
  std::unique_ptr<ServiceProcess> a_;
  std::unique_ptr<KvClient> client_a_;
  ObjectInfo info_;
  std::vector<uint8_t> original_;
  GetReply reconstruction_;
};

TEST_P(PeerStagingTest, AnEncodedFetchComesOverUcxWithTheStreamPathsBytes) {
  TempDir dir_ucx, dir_grpc;
  auto over_ucx = StartB(dir_ucx, {});
  auto over_grpc = StartB(dir_grpc, {"--peer-data-plane", "grpc"});
  ASSERT_NE(over_ucx, nullptr);
  ASSERT_NE(over_grpc, nullptr);
  ASSERT_OK_AND_ASSIGN(auto client_ucx, KvClient::Connect(over_ucx->target(), StreamOnly()));
  ASSERT_OK_AND_ASSIGN(auto client_grpc, KvClient::Connect(over_grpc->target(), StreamOnly()));
  ASSERT_OK_AND_ASSIGN(GetReply via_ucx, client_ucx->Get(ChunkName(0)));
  ASSERT_OK_AND_ASSIGN(GetReply via_grpc, client_grpc->Get(ChunkName(0)));
  EXPECT_TRUE(via_ucx.info.lossy);
  EXPECT_EQ(via_ucx.info.payload_crc32c, reconstruction_.info.payload_crc32c);
  EXPECT_TRUE(via_ucx.payload == reconstruction_.payload) << "not A's reconstruction";
  EXPECT_TRUE(via_ucx.payload == via_grpc.payload) << "UCX and gRPC paths committed other bytes";
  const std::string ucx = "plane=\"ucx\"", grpc = "plane=\"grpc\"";
  EXPECT_EQ(MetricWith(over_ucx->metrics_port(), "kvstash_peer_encoded_fetches_total", ucx), 1);
  EXPECT_EQ(MetricWith(over_ucx->metrics_port(), "kvstash_peer_encoded_fetches_total", grpc), 0);
  EXPECT_EQ(MetricWith(over_grpc->metrics_port(), "kvstash_peer_encoded_fetches_total", grpc), 1);
  EXPECT_EQ(MetricSum(over_ucx->metrics_port(), "kvstash_peer_encoded_wire_bytes_total"),
            static_cast<double>(reconstruction_.wire_bytes));
  EXPECT_THAT(over_ucx->Log(), HasSubstr("event=peer_encoded_plane"));
  EXPECT_EQ(WaitForEmptyStaging(), 0);
  EXPECT_EQ(MetricWith(a_->metrics_port(), "kvstash_peer_staged_calls_total", "\"done\""), 1);
}

TEST_P(PeerStagingTest, AFullPoolSendsTheObjectOverAStream) {
  // A second serving node whose 1 MiB pool cannot take the chunk's container.
  TempDir dir_small, dir_b;
  ServiceOptions o;
  o.tcp = true;
  o.metrics = true;
  o.extra_args = {"--peer-secret-file", WriteSecret(dir_small.path()), "--peer-staging-mib", "1"};
  ASSERT_OK_AND_ASSIGN(auto small, ServiceProcess::Start(dir_small.path(), o));
  ASSERT_OK_AND_ASSIGN(auto client_small, KvClient::Connect(small->target(), StreamOnly()));
  ASSERT_OK(client_small->Put(ChunkName(0), info_, original_));
  ASSERT_GT(reconstruction_.wire_bytes, 1u << 20) << "the container fits 1 MiB: no full pool";
  ServiceOptions ob;
  ob.tcp = true;
  ob.metrics = true;
  ob.extra_args = {"--peer-secret-file",
                   WriteSecret(dir_b.path()),
                   "--peer",
                   small->target(),
                   "--peer-timeout-ms",
                   "30000",
                   "--peer-transfer-encoding",
                   "cachegen"};
  ASSERT_OK_AND_ASSIGN(auto b, ServiceProcess::Start(dir_b.path(), ob));
  ASSERT_OK_AND_ASSIGN(auto client_b, KvClient::Connect(b->target(), StreamOnly()));
  ASSERT_OK_AND_ASSIGN(GetReply got, client_b->Get(ChunkName(0)));
  EXPECT_TRUE(got.payload == reconstruction_.payload);
  EXPECT_EQ(MetricWith(b->metrics_port(), "kvstash_peer_encoded_fetches_total", "\"grpc\""), 1);
  EXPECT_EQ(MetricSum(small->metrics_port(), "kvstash_peer_staging_full_total"), 1);
  EXPECT_EQ(MetricSum(small->metrics_port(), "kvstash_peer_staging_bytes"), 0);
  EXPECT_THAT(b->Log(), HasSubstr("staging pool is full"));
}

TEST_P(PeerStagingTest, RefusedCallsAndRangesOutsideTheStagedBytesLeaveNothingStaged) {
  auto stub = PeerStub();
  {  // without the cluster secret
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 20s);
    auto stream = stub->StageEncoded(&ctx);
    (void)stream->Write(StageRequest());
    (void)stream->WritesDone();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {  // a codec level that does not exist
    grpc::ClientContext ctx;
    AsPeer(&ctx);
    ctx.AddMetadata("kvstash-peer-codec", "kvq-9");
    auto stream = stub->StageEncoded(&ctx);
    (void)stream->Write(StageRequest());
    (void)stream->WritesDone();
    grpc::Status s = stream->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  }
  {  // `done` first
    grpc::ClientContext ctx;
    AsPeer(&ctx);
    auto stream = stub->StageEncoded(&ctx);
    v1::StageEncodedRequest req = StageRequest();
    req.set_done(true);
    (void)stream->Write(req);
    (void)stream->WritesDone();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  EXPECT_EQ(StagingBytes(), 0);
  EXPECT_EQ(MetricWith(a_->metrics_port(), "kvstash_peer_staged_calls_total", "\"refused\""), 2);

  // A real pull by the test as a peer: Hello, StageEncoded, then UCX against the staging region.
  grpc::ClientContext hello_ctx;
  AsPeer(&hello_ctx);
  v1::PeerHelloRequest hello;
  v1::PeerHelloResponse region;
  ASSERT_OK(stub->Hello(&hello_ctx, hello, &region));
  ASSERT_GT(region.staging_bytes(), 0u);
  grpc::ClientContext ctx;
  AsPeer(&ctx);
  auto stream = stub->StageEncoded(&ctx);
  ASSERT_TRUE(stream->Write(StageRequest()));
  v1::StageEncodedResponse staged;
  ASSERT_TRUE(stream->Read(&staged));
  ASSERT_EQ(staged.objects_size(), 1);
  const v1::StagedObject& o = staged.objects(0);
  ASSERT_EQ(o.status().code(), 0) << o.status().message();
  ASSERT_TRUE(o.has_wire_info());
  EXPECT_EQ(o.staging_bytes(), reconstruction_.wire_bytes);
  EXPECT_GE(StagingBytes(), static_cast<double>(o.staging_bytes()));

  ASSERT_OK_AND_ASSIGN(auto reader, transport::UcxTransport::Create({.name = "test-reader"}));
  std::vector<uint8_t> landing(o.staging_bytes() + (64 << 10));
  ASSERT_OK(reader->RegisterRegion(landing.data(), landing.size()).status());
  transport::RemoteRegion remote{region.staging_address(), region.staging_bytes(),
                                 region.staging_rkey()};
  ASSERT_OK_AND_ASSIGN(transport::PeerId peer, reader->Connect(region.ucx_worker_address(), remote,
                                                               transport::Clock::now() + 20s));
  const transport::ReadOp inside{o.staging_offset(), landing.data(), o.staging_bytes()};
  ASSERT_OK(reader->Fetch(peer, {&inside, 1}, transport::Clock::now() + 20s));
  EXPECT_EQ(Crc32c(landing.data(), o.staging_bytes()), o.wire_info().payload_crc32c());
  // Past the end of what was staged (still inside the registered pool): refused by A.
  const uint64_t past = (o.staging_offset() + o.staging_bytes() + 4095) / 4096 * 4096;
  ASSERT_LT(past + 4096, region.staging_bytes());
  const transport::ReadOp outside{past, landing.data(), 4096};
  const Status refused = reader->Fetch(peer, {&outside, 1}, transport::Clock::now() + 20s);
  EXPECT_THAT(refused, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(refused.message()), HasSubstr("outside what the serving node offers"));
  const transport::ReadOp straddling{o.staging_offset(), landing.data(), o.staging_bytes() + 8192};
  EXPECT_THAT(reader->Fetch(peer, {&straddling, 1}, transport::Clock::now() + 20s),
              StatusIs(absl::StatusCode::kInvalidArgument));
  v1::StageEncodedRequest done;
  done.set_done(true);
  ASSERT_TRUE(stream->Write(done));
  ASSERT_TRUE(stream->WritesDone());
  EXPECT_OK(stream->Finish());
  EXPECT_EQ(StagingBytes(), 0);
  reader->Disconnect(peer);
}

TEST_P(PeerStagingTest, AReaderThatNeverSaysDoneIsFreedAtItsDeadline) {
  auto stub = PeerStub();
  grpc::ClientContext ctx;
  AsPeer(&ctx, 1500ms);
  auto stream = stub->StageEncoded(&ctx);
  ASSERT_TRUE(stream->Write(StageRequest()));
  v1::StageEncodedResponse staged;
  ASSERT_TRUE(stream->Read(&staged));
  ASSERT_EQ(staged.objects_size(), 1);
  EXPECT_GT(StagingBytes(), 0);
  // No done: the call's deadline ends it, and A frees what it staged.
  EXPECT_EQ(WaitForEmptyStaging(), 0);
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(MetricWith(a_->metrics_port(), "kvstash_peer_staged_calls_total", "reader_gone"), 1);
}

TEST_P(PeerStagingTest, AKilledReaderLeavesNothingStaged) {
  // The reader is this binary run again (StagingReaderChild): it stages the chunk on A and waits;
  // killed, its gRPC connection drops and A frees the staging. It never touches UCX, so this runs
  // on every UCX release (a reader killed mid-UCX: the next test).
  setenv(kChildEnv, a_->target().c_str(), 1);
  auto child =
      ChildProcess::Start({"/proc/self/exe", "--gtest_filter=StagingReaderChild.StagesAndWaits"});
  unsetenv(kChildEnv);
  ASSERT_OK(child.status());
  ASSERT_OK((*child)->WaitForLine("staged", 60'000));
  EXPECT_GT(StagingBytes(), 0);
  (*child)->Kill();
  EXPECT_EQ(WaitForEmptyStaging(), 0);
  EXPECT_EQ(MetricWith(a_->metrics_port(), "kvstash_peer_staged_calls_total", "reader_gone"), 1);
  ASSERT_OK_AND_ASSIGN(GetReply still, client_a_->Get(ChunkName(0)));
  EXPECT_TRUE(still.payload == original_);
}

TEST_P(PeerStagingTest, AReaderKilledMidFetchLeavesNothingStaged) {
  if (a_->Log().find("event=ucx_aborts_on_reader_death") != std::string::npos &&
      std::getenv("KVSTASH_TEST_UCX_DEATH_ANYWAY") == nullptr) {
    GTEST_SKIP() << "UCX " << transport::UcxTransport::UcxVersion()
                 << " with this node's peers.ucx_connect / ucx_fetch can abort a serving node "
                    "whose reader dies mid-connect or mid-read (docs/deploy.md \"Which UCX\"); "
                    "KVSTASH_TEST_UCX_DEATH_ANYWAY=1 runs it";
  }
  // B is killed at several points of its fetch (before, during and after A's encode and the
  // pull); each time A's pool empties and A goes on serving.
  for (int delay_ms : {0, 20, 60, 150, 400}) {
    TempDir dir_b;
    auto b = StartB(dir_b, {});
    ASSERT_NE(b, nullptr);
    ASSERT_OK_AND_ASSIGN(auto client_b, KvClient::Connect(b->target(), StreamOnly()));
    std::thread fetch([&client_b]() { (void)client_b->Get(ChunkName(0)); });
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    b->Kill();
    fetch.join();
    if (::kill(a_->pid(), 0) != 0 || HttpGet(a_->metrics_port(), "/healthz", nullptr) != 200) {
      if (AbortedInsideUcx(*a_)) {
        GTEST_SKIP() << "serving node aborted inside UCX < 1.14 when its reader died (known, "
                        "docs/deploy.md \"Which UCX\"), after a kill at "
                     << delay_ms << " ms";
      }
      FAIL() << "A died after B was killed at " << delay_ms << " ms:\n" << a_->Log();
    }
    EXPECT_EQ(WaitForEmptyStaging(), 0) << "after a kill at " << delay_ms << " ms";
  }
  ASSERT_OK_AND_ASSIGN(GetReply still, client_a_->Get(ChunkName(0)));
  EXPECT_TRUE(still.payload == original_);
  // A fresh reader is served over UCX as before.
  TempDir dir_b;
  auto b = StartB(dir_b, {});
  ASSERT_NE(b, nullptr);
  ASSERT_OK_AND_ASSIGN(auto client_b, KvClient::Connect(b->target(), StreamOnly()));
  ASSERT_OK_AND_ASSIGN(GetReply got, client_b->Get(ChunkName(0)));
  EXPECT_TRUE(got.payload == reconstruction_.payload);
  EXPECT_EQ(MetricWith(b->metrics_port(), "kvstash_peer_encoded_fetches_total", "\"ucx\""), 1);
  EXPECT_EQ(WaitForEmptyStaging(), 0);
}

// Not a test of its own: the reader AKilledReaderLeavesNothingStaged starts and kills.
TEST(StagingReaderChild, StagesAndWaits) {
  const char* target = std::getenv(kChildEnv);
  if (target == nullptr) GTEST_SKIP() << "a helper process of AKilledReaderLeavesNothingStaged";
  auto stub =
      v1::KvStashPeer::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 60s);
  ctx.AddMetadata("kvstash-peer-token", kSecret);
  auto stream = stub->StageEncoded(&ctx);
  v1::StageEncodedRequest req;
  ToProto(ChunkName(0), req.add_keys());
  req.mutable_encoding()->set_accept_encoding(v1::ENCODING_CACHEGEN);
  ASSERT_TRUE(stream->Write(req));
  v1::StageEncodedResponse staged;
  ASSERT_TRUE(stream->Read(&staged));
  std::printf("\nstaged\n");
  std::fflush(stdout);
  std::this_thread::sleep_for(60s);  // until killed
}

INSTANTIATE_TEST_SUITE_P(Planes, PeerStagingTest, ::testing::Values("default", "tcp"),
                         [](const ::testing::TestParamInfo<const char*>& p) {
                           return std::string(p.param == std::string("tcp") ? "UcxTcp"
                                                                            : "UcxDefault");
                         });

}  // namespace
}  // namespace kvstash::testing
