// The GPU pool tier in the real daemon (--gpu-pool-capacity, label gpu): without a usable CUDA
// device start-up fails with a clear FailedPrecondition message (runs everywhere); with one, the
// pool is the store's lower tier, registered with UCX as CUDA memory when UCX supports it, and
// objects demoted into A's pool reach node B byte for byte, and a handoff lands in B's pool
// (skipped without a device).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "kvstash/client/kv_client.h"
#include "kvstash/storage/gpu_pool.h"
#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using ::testing::HasSubstr;
using namespace ::kvstash::client;
using namespace std::chrono_literals;

constexpr char kSecret[] = "kvstash-test-cluster-secret-0123456789";

std::string WriteSecret(const std::string& dir) {
  std::string path = dir + "/secret";
  std::ofstream(path) << kSecret << "\n";
  return path;
}

ClientOptions StreamOnly() {
  ClientOptions o;
  o.use_shared_memory = false;
  o.rpc_timeout = 30s;
  return o;
}

TEST(GpuPoolServiceTest, StartsWithAPoolOnlyWhereAGpuCanBeUsed) {
  TempDir dir;
  ServiceOptions options;
  options.extra_args = {"--gpu-pool-capacity", "16MiB"};
  Result<std::unique_ptr<ServiceProcess>> svc = ServiceProcess::Start(dir.path(), options);
  Status available = storage::GpuPoolAvailable(0);
  if (!available.ok()) {
    // The daemon refuses to start, saying which setting needs what.
    ASSERT_THAT(svc, StatusIs(absl::StatusCode::kUnavailable));
    const std::string message(svc.status().message());
    EXPECT_THAT(message, HasSubstr("storage.gpu_pool_capacity (--gpu-pool-capacity) is set but "
                                   "no GPU pool can be made here"));
    EXPECT_THAT(message, HasSubstr(std::string(available.message())));
    return;
  }
  ASSERT_OK(svc);
  EXPECT_THAT((*svc)->Log(), HasSubstr("event=gpu_pool device=0 bytes=16777216"));
  ASSERT_OK_AND_ASSIGN(auto client, KvClient::Connect((*svc)->target(), StreamOnly()));
  ASSERT_OK_AND_ASSIGN(ServiceStats stats, client->Stats());
  bool has_gpu = false;
  for (const TierStats& t : stats.tiers) has_gpu = has_gpu || t.tier == Tier::kGpu;
  EXPECT_TRUE(has_gpu) << "no gpu tier in Stats";
}

TEST(GpuPoolServiceTest, ObjectsDemotedIntoAPoolReachAPeerByteForByte) {
  Status available = storage::GpuPoolAvailable(0);
  if (!available.ok()) GTEST_SKIP() << "no usable CUDA device: " << available;
  TempDir dir_a, dir_b;
  // A: a 2 MiB arena over a 64 MiB pool and no SSD, so most of its objects live in the pool.
  ServiceOptions a_opts;
  a_opts.tcp = true;
  a_opts.cpu_capacity = "2MiB";
  a_opts.ssd_capacity = "0";
  a_opts.extra_args = {"--gpu-pool-capacity", "64MiB", "--peer-secret-file",
                       WriteSecret(dir_a.path())};
  ASSERT_OK_AND_ASSIGN(auto a, ServiceProcess::Start(dir_a.path(), a_opts));
  ServiceOptions b_opts;
  b_opts.tcp = true;
  b_opts.extra_args = {"--gpu-pool-capacity",     "64MiB",  "--peer-secret-file",
                       WriteSecret(dir_b.path()), "--peer", a->target(),
                       "--peer-timeout-ms",       "20000"};
  ASSERT_OK_AND_ASSIGN(auto b, ServiceProcess::Start(dir_b.path(), b_opts));
  for (auto* node : {a.get(), b.get()}) {
    // Registered as CUDA memory exactly when this UCX supports it; either way it says so.
    EXPECT_THAT(node->Log(), ::testing::AnyOf(HasSubstr("event=gpu_pool_registered"),
                                              HasSubstr("event=gpu_pool_not_registered")));
  }
  ASSERT_OK_AND_ASSIGN(auto client_a, KvClient::Connect(a->target(), StreamOnly()));
  ASSERT_OK_AND_ASSIGN(auto client_b, KvClient::Connect(b->target(), StreamOnly()));
  std::vector<ObjectName> names;
  std::vector<std::vector<uint8_t>> payloads;
  for (uint64_t i = 0; i < 12; ++i) {  // 12 x 256 KiB: 3 MiB, more than A's arena
    ObjectInfo info = TestInfo(1024);
    payloads.push_back(TestPayload(i, info.payload_bytes));
    names.push_back(TestName(i));
    ASSERT_OK(client_a->Put(names.back(), WithCrc(info, payloads.back()), payloads.back()));
  }
  for (size_t i = 0; i < names.size(); ++i) {
    ASSERT_OK_AND_ASSIGN(GetReply got, client_b->Get(names[i]));
    EXPECT_EQ(got.served_from, Tier::kRemote);
    EXPECT_TRUE(got.payload == payloads[i]) << "object " << i << " differs";
  }
}

// A prefill/decode handoff that lands in the decode node's GPU pool (FetchHandoff land_tier
// TIER_GPU): A stores (no SSD: its arena writes through into its pool) and offers; B fetches
// the handoff with one batch of UCX reads straight into CUDA memory of its pool (from A's
// arena), the store checks each landing's crc32c, and the objects are B's, in its GPU tier,
// byte for byte. Over UCX's default transports and over UCX_TLS=tcp,cuda_copy, where UCX
// stages the CUDA memory through host buffers (cuda_copy listed so UCX can recognise CUDA
// memory at all). Skips without a device, and with a UCX that has no CUDA memory support (then
// B says why in its log and in the call).
class GpuHandoffTest : public ::testing::TestWithParam<bool> {  // true: UCX_TLS=tcp,cuda_copy
 protected:
  void SetUp() override {
    if (GetParam()) {
      ::setenv("UCX_TLS", "tcp,cuda_copy", 1);
    } else {
      ::unsetenv("UCX_TLS");
    }
  }
  void TearDown() override { ::unsetenv("UCX_TLS"); }
};

TEST_P(GpuHandoffTest, AHandoffLandsInTheDecodeNodesGpuPool) {
  Status available = storage::GpuPoolAvailable(0);
  if (!available.ok()) GTEST_SKIP() << "no usable CUDA device: " << available;
  TempDir dir_a, dir_b;
  ServiceOptions a_opts;
  a_opts.tcp = true;
  a_opts.cpu_capacity = "8MiB";  // room for every leased object of the one batch
  a_opts.ssd_capacity = "0";
  a_opts.extra_args = {"--gpu-pool-capacity", "64MiB", "--peer-secret-file",
                       WriteSecret(dir_a.path())};
  ASSERT_OK_AND_ASSIGN(auto a, ServiceProcess::Start(dir_a.path(), a_opts));
  ServiceOptions b_opts;
  b_opts.tcp = true;
  b_opts.ssd_capacity = "0";
  b_opts.extra_args = {"--gpu-pool-capacity",     "64MiB",  "--peer-secret-file",
                       WriteSecret(dir_b.path()), "--peer", a->target(),
                       "--peer-timeout-ms",       "20000"};
  ASSERT_OK_AND_ASSIGN(auto b, ServiceProcess::Start(dir_b.path(), b_opts));
  ASSERT_OK_AND_ASSIGN(auto client_a, KvClient::Connect(a->target(), StreamOnly()));
  ASSERT_OK_AND_ASSIGN(auto client_b, KvClient::Connect(b->target(), StreamOnly()));
  std::vector<ObjectName> names;
  std::vector<std::vector<uint8_t>> payloads;
  for (uint64_t i = 0; i < 12; ++i) {  // 12 x 256 KiB
    ObjectInfo info = TestInfo(1024);
    payloads.push_back(TestPayload(700 + i, info.payload_bytes));
    names.push_back(TestName(700 + i));
    ASSERT_OK(client_a->Put(names.back(), WithCrc(info, payloads.back()), payloads.back()));
  }
  ASSERT_OK_AND_ASSIGN(Handoff h, client_a->Offer(names));
  ASSERT_EQ(h.names.size(), names.size());
  Result<HandoffFetch> fetched = client_b->FetchHandoff(h, /*all_or_nothing=*/true, Tier::kGpu);
  if (absl::IsFailedPrecondition(fetched.status()) &&
      b->Log().find("event=gpu_pool_not_registered") != std::string::npos) {
    GTEST_SKIP() << "B's GPU pool is not registered with UCX: " << fetched.status();
  }
  ASSERT_OK(fetched);
  EXPECT_EQ(fetched->fetched, names.size());
  EXPECT_EQ(fetched->fetched_bytes, names.size() * payloads[0].size());
  EXPECT_THAT(b->Log(), HasSubstr("land_tier=gpu"));
  // B holds them in its GPU tier only (nothing went through its arena) ...
  ASSERT_OK_AND_ASSIGN(LookupReply where, client_b->Lookup(names));
  for (const KeyPresence& k : where.results) {
    EXPECT_TRUE(k.present);
    EXPECT_EQ(k.tier, Tier::kGpu);
  }
  // ... and serves them byte for byte (promoted from the pool), with A's pins released.
  for (size_t i = 0; i < names.size(); ++i) {
    ASSERT_OK_AND_ASSIGN(GetReply got, client_b->Get(names[i]));
    EXPECT_TRUE(got.payload == payloads[i]) << "object " << i << " differs";
  }
  ASSERT_OK_AND_ASSIGN(ServiceStats a_stats, client_a->Stats());
  EXPECT_EQ(a_stats.pinned_objects, 0u);
}

INSTANTIATE_TEST_SUITE_P(Transports, GpuHandoffTest, ::testing::Values(false, true),
                         [](const auto& info) {
                           return std::string(info.param ? "UcxTcpStaging" : "UcxDefault");
                         });

}  // namespace
}  // namespace kvstash::testing
