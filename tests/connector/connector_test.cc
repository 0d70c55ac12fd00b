// The connector against a real cachesvc (tests/cachesvc/service_process.h) with stories260K:
// every way a cached prefix can be served or fail must give the tokens of a run without cache.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "connector_test_util.h"
#include "kvstash/client/kv_client.h"
#include "service_process.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::connector {
namespace {

using kvstash::testing::ServiceOptions;
using kvstash::testing::ServiceProcess;
using kvstash::testing::TempDir;
using testing::CachedGeneration;
using testing::ExpectSameGeneration;
using testing::GenerateCached;
using testing::GenerateUncached;
using testing::Generation;

constexpr uint32_t kChunk = 32;  // stories260K's context is 512 tokens: small chunks
constexpr int kNewTokens = 16;

class ConnectorTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto model = engine::Model::Load(std::string(KVSTASH_SHARED_DATA) + "/models/stories260K.bin");
    ASSERT_OK(model);
    model_ = new std::shared_ptr<const engine::Model>(*model);
    auto tok = engine::LoadLlama2cTokenizer(std::string(KVSTASH_SHARED_DATA) + "/models/tok512.bin",
                                            (*model)->config().vocab_size);
    ASSERT_OK(tok);
    const std::string text = testing::ReadText("tinystories_sample.txt");
    // Prompt A: 200 tokens (6 full chunks + an 8-token tail); prompt B shares A's first 100
    // tokens, then continues with text from elsewhere.
    std::vector<int32_t> all = (*tok)->Encode(text.substr(0, 4000), true);
    ASSERT_GT(all.size(), 400u);
    prompt_a_ = new std::vector<int32_t>(all.begin(), all.begin() + 200);
    prompt_b_ = new std::vector<int32_t>(all.begin(), all.begin() + 100);
    prompt_b_->insert(prompt_b_->end(), all.begin() + 300, all.begin() + 400);
  }
  static void TearDownTestSuite() {
    delete model_;
    delete prompt_a_;
    delete prompt_b_;
  }

  void SetUp() override {
    engine::EngineOptions opts;
    opts.num_threads = 2;
    auto e = engine::Engine::Create(*model_, opts);
    ASSERT_OK(e);
    engine_ = std::move(*e);
  }

  void StartService(const ServiceOptions& options = {}) {
    auto svc = ServiceProcess::Start(dir_.path(), options);
    ASSERT_OK(svc);
    svc_ = std::move(*svc);
  }

  ConnectorOptions Options() const {
    ConnectorOptions o;
    o.chunk_tokens = kChunk;
    o.name_space = "connector-test";
    return o;
  }

  std::unique_ptr<KvConnector> Connect(const ConnectorOptions& options) {
    auto c = KvConnector::Create(svc_->target(), EngineCacheSpec(*engine_), options);
    EXPECT_OK(c);
    return c.ok() ? std::move(*c) : nullptr;
  }

  Generation Reference(const std::vector<int32_t>& prompt) {
    return GenerateUncached(*engine_, prompt, kNewTokens);
  }

  // Stores prompt A's chunks through a cold pass and checks it.
  void Warm(KvConnector& c) {
    CachedGeneration cold = GenerateCached(*engine_, c, *prompt_a_, kNewTokens);
    EXPECT_EQ(cold.prefill.hit_tokens, 0u);
    EXPECT_EQ(cold.prefill.computed_tokens, 200u);
    EXPECT_EQ(cold.prefill.store->chunks_stored(), 6u) << cold.prefill.store->status();
    ExpectSameGeneration(Reference(*prompt_a_), cold.gen);
  }

  static std::shared_ptr<const engine::Model>* model_;
  static std::vector<int32_t>* prompt_a_;
  static std::vector<int32_t>* prompt_b_;
  TempDir dir_;
  std::unique_ptr<ServiceProcess> svc_;
  std::unique_ptr<engine::Engine> engine_;
};

std::shared_ptr<const engine::Model>* ConnectorTest::model_ = nullptr;
std::vector<int32_t>* ConnectorTest::prompt_a_ = nullptr;
std::vector<int32_t>* ConnectorTest::prompt_b_ = nullptr;

TEST_F(ConnectorTest, FullPrefixHitFromCpuTier) {
  StartService();
  auto c = Connect(Options());
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->shared_memory());
  Warm(*c);
  CachedGeneration warm = GenerateCached(*engine_, *c, *prompt_a_, kNewTokens);
  EXPECT_OK(warm.prefill.load_failure);
  EXPECT_EQ(warm.prefill.hit_tokens, 192u);
  EXPECT_EQ(warm.prefill.cpu_hit_tokens, 192u);
  EXPECT_EQ(warm.prefill.computed_tokens, 8u);
  EXPECT_EQ(warm.prefill.load.layers_loaded, 5u);
  EXPECT_EQ(warm.prefill.store->chunks_stored(), 0u);  // nothing new
  ExpectSameGeneration(Reference(*prompt_a_), warm.gen);
  ConnectorStats s = c->Stats();
  EXPECT_EQ(s.chunks_stored, 6u);
  EXPECT_EQ(s.hit_tokens_cpu, 192u);
  EXPECT_EQ(s.corrupt_chunks + s.missing_chunks + s.load_timeouts + s.leases_lost, 0u);
}

TEST_F(ConnectorTest, WholePromptCachedStillComputesTheLastToken) {
  StartService();
  auto c = Connect(Options());
  ASSERT_NE(c, nullptr);
  const std::vector<int32_t> exact(prompt_a_->begin(), prompt_a_->begin() + 6 * kChunk);
  GenerateCached(*engine_, *c, exact, kNewTokens);
  CachedGeneration warm = GenerateCached(*engine_, *c, exact, kNewTokens);
  EXPECT_EQ(warm.prefill.hit_tokens, 192u);
  EXPECT_EQ(warm.prefill.computed_tokens, 1u);
  ExpectSameGeneration(Reference(exact), warm.gen);
}

TEST_F(ConnectorTest, PartialPrefixHit) {
  StartService();
  auto c = Connect(Options());
  ASSERT_NE(c, nullptr);
  Warm(*c);
  CachedGeneration b = GenerateCached(*engine_, *c, *prompt_b_, kNewTokens);
  EXPECT_EQ(b.prefill.hit_tokens, 96u);  // chunks 0-2; chunk 3 holds the divergence
  EXPECT_EQ(b.prefill.computed_tokens, 104u);
  EXPECT_EQ(b.prefill.store->chunks_stored(), 3u);  // B's own chunks 3-5
  ExpectSameGeneration(Reference(*prompt_b_), b.gen);
}

TEST_F(ConnectorTest, HitServedFromSsdAfterRestart) {
  StartService();
  {
    auto c = Connect(Options());
    ASSERT_NE(c, nullptr);
    Warm(*c);
  }
  ASSERT_EQ(svc_->Terminate(), 0);  // flushes SSD writes; the new arena is empty
  StartService();
  auto c = Connect(Options());
  ASSERT_NE(c, nullptr);
  PrefixLookup lookup = c->Lookup(*prompt_a_);
  ASSERT_EQ(lookup.hit_chunks, 6u);
  EXPECT_EQ(lookup.tiers[0], client::Tier::kSsd);
  CachedGeneration ssd = GenerateCached(*engine_, *c, *prompt_a_, kNewTokens);
  EXPECT_EQ(ssd.prefill.hit_tokens, 192u);
  EXPECT_EQ(ssd.prefill.ssd_hit_tokens, 192u);
  ExpectSameGeneration(Reference(*prompt_a_), ssd.gen);
  // Promoted: the next hit comes from the CPU tier.
  CachedGeneration cpu = GenerateCached(*engine_, *c, *prompt_a_, kNewTokens);
  EXPECT_EQ(cpu.prefill.cpu_hit_tokens, 192u);
  ExpectSameGeneration(ssd.gen, cpu.gen);
  EXPECT_EQ(c->Stats().hit_tokens_ssd, 192u);
}

// Flips one payload byte of the SSD file holding `name` (found by its storage key in the
// file's name block).
bool CorruptSsdObject(const std::string& data_dir, const ObjectName& name) {
  const auto key = name.storage_key.Bytes();
  for (const auto& entry : std::filesystem::directory_iterator(data_dir + "/ssd/objects")) {
    if (entry.path().extension() != ".kvo") continue;
    std::fstream f(entry.path(), std::ios::in | std::ios::out | std::ios::binary);
    std::vector<uint8_t> head(4096);
    f.read(reinterpret_cast<char*>(head.data()), head.size());
    auto it = std::search(head.begin() + 64, head.end(), key.begin(), key.end());
    if (it == head.end()) continue;
    f.seekg(4096 + 1000);
    char b = 0;
    f.read(&b, 1);
    b = static_cast<char>(b ^ 0x40);
    f.seekp(4096 + 1000);
    f.write(&b, 1);
    return f.good();
  }
  return false;
}

TEST_F(ConnectorTest, CorruptSsdObjectShrinksTheHit) {
  StartService();
  {
    auto c = Connect(Options());
    ASSERT_NE(c, nullptr);
    Warm(*c);
    ASSERT_EQ(svc_->Terminate(), 0);
    ASSERT_TRUE(CorruptSsdObject(svc_->data_dir(), c->Lookup(*prompt_a_).plan.names[2]));
  }
  StartService();
  auto c = Connect(Options());
  ASSERT_NE(c, nullptr);
  CachedGeneration got = GenerateCached(*engine_, *c, *prompt_a_, kNewTokens);
  // The service verifies SSD reads: chunk 2 fails and is a miss; chunks 0-1 are used.
  EXPECT_EQ(got.prefill.load.looked_up_chunks, 6u);
  EXPECT_EQ(got.prefill.hit_tokens, 64u);
  EXPECT_EQ(got.prefill.load.missing_chunks, 1u);
  EXPECT_EQ(got.prefill.store->chunks_stored(), 1u);  // chunk 2 again; 3-5 are still there
  ExpectSameGeneration(Reference(*prompt_a_), got.gen);
  CachedGeneration healed = GenerateCached(*engine_, *c, *prompt_a_, kNewTokens);
  EXPECT_EQ(healed.prefill.hit_tokens, 192u);
  ExpectSameGeneration(got.gen, healed.gen);
}

TEST_F(ConnectorTest, CorruptArenaBytesAreCaughtByTheConnector) {
  StartService();
  auto c = Connect(Options());
  ASSERT_NE(c, nullptr);
  Warm(*c);
  {  // Anyone who can map the arena can scribble on it: flip a byte of chunk 3 in place.
    auto other = client::KvClient::Connect(svc_->target());
    ASSERT_OK(other);
    auto lease = (*other)->Acquire(c->Lookup(*prompt_a_).plan.names[3]);
    ASSERT_OK(lease);
    auto* bytes = const_cast<uint8_t*>(lease->data().data());
    bytes[777] ^= 0x01;
  }
  CachedGeneration got = GenerateCached(*engine_, *c, *prompt_a_, kNewTokens);
  EXPECT_EQ(got.prefill.hit_tokens, 96u);
  EXPECT_EQ(got.prefill.load.corrupt_chunks, 1u);
  EXPECT_EQ(c->Stats().corrupt_chunks, 1u);
  ExpectSameGeneration(Reference(*prompt_a_), got.gen);
  // The corrupt object was deleted and stored again from fresh KV.
  EXPECT_EQ(got.prefill.store->chunks_stored(), 1u) << got.prefill.store->status();
  CachedGeneration healed = GenerateCached(*engine_, *c, *prompt_a_, kNewTokens);
  EXPECT_EQ(healed.prefill.hit_tokens, 192u);
  EXPECT_EQ(healed.prefill.load.corrupt_chunks, 0u);
  ExpectSameGeneration(got.gen, healed.gen);
}

TEST_F(ConnectorTest, LateLoadFallsBackToRecompute) {
  StartService();
  std::atomic<bool> release{false};
  ConnectorOptions o = Options();
  o.layer_timeout = std::chrono::milliseconds(100);
  std::atomic<bool> block{false};
  o.before_scatter_layer = [&](uint32_t layer) {
    while (block.load() && layer == 2 && !release.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  };
  auto c = Connect(o);
  ASSERT_NE(c, nullptr);
  Warm(*c);
  block = true;  // the loader stalls before layer 2: compute must not wait for it
  CachedGeneration got = GenerateCached(*engine_, *c, *prompt_a_, kNewTokens);
  release = true;
  EXPECT_THAT(got.prefill.load_failure, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ(got.prefill.hit_tokens, 0u);
  EXPECT_EQ(got.prefill.computed_tokens, 200u);
  EXPECT_EQ(got.prefill.load.layers_loaded, 2u);
  EXPECT_EQ(c->Stats().load_timeouts, 1u);
  ExpectSameGeneration(Reference(*prompt_a_), got.gen);
}

TEST_F(ConnectorTest, LeaseLostMidLoadFallsBackToRecompute) {
  StartService();
  ConnectorOptions o = Options();
  o.client.lease_ms = 300;
  o.lease_margin = std::chrono::milliseconds(100);
  o.layer_timeout = std::chrono::milliseconds(10'000);
  std::atomic<bool> slow{false};
  o.before_scatter_layer = [&](uint32_t layer) {
    if (slow.load() && layer == 1) std::this_thread::sleep_for(std::chrono::milliseconds(400));
  };
  auto c = Connect(o);
  ASSERT_NE(c, nullptr);
  Warm(*c);
  slow = true;
  CachedGeneration got = GenerateCached(*engine_, *c, *prompt_a_, kNewTokens);
  EXPECT_THAT(got.prefill.load_failure, StatusIs(absl::StatusCode::kAborted));
  EXPECT_EQ(got.prefill.computed_tokens, 200u);
  EXPECT_EQ(c->Stats().leases_lost, 1u);
  ExpectSameGeneration(Reference(*prompt_a_), got.gen);
}

TEST_F(ConnectorTest, ServiceNeverStartedIsAMiss) {
  TempDir nowhere;
  ConnectorOptions o = Options();
  auto c = KvConnector::Create("unix://" + nowhere.path() + "/absent.sock",
                               EngineCacheSpec(*engine_), o);
  ASSERT_OK(c);
  // An unreachable service is Unavailable (kv_client.h).
  EXPECT_THAT((*c)->client_status(), StatusIs(absl::StatusCode::kUnavailable));
  CachedGeneration got = GenerateCached(*engine_, **c, *prompt_a_, kNewTokens);
  EXPECT_EQ(got.prefill.hit_tokens, 0u);
  EXPECT_THAT(got.prefill.lookup_status, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(got.prefill.store->chunks_stored(), 0u);
  ExpectSameGeneration(Reference(*prompt_a_), got.gen);
}

TEST_F(ConnectorTest, ServiceKilledOrStalledIsAMiss) {
  StartService();
  ConnectorOptions o = Options();
  o.client.rpc_timeout = std::chrono::milliseconds(300);
  // No pause after a deadline: the lookup after the kill then reaches the dead service (within a
  // pause it would report the stall's DeadlineExceeded without trying).
  o.reconnect_interval = std::chrono::milliseconds(0);
  auto c = Connect(o);
  ASSERT_NE(c, nullptr);
  Warm(*c);
  const Generation ref = Reference(*prompt_a_);
  svc_->Stop();  // SIGSTOP: every RPC runs into its deadline
  CachedGeneration stalled = GenerateCached(*engine_, *c, *prompt_a_, kNewTokens);
  EXPECT_EQ(stalled.prefill.hit_tokens, 0u);
  EXPECT_THAT(stalled.prefill.lookup_status, StatusIs(absl::StatusCode::kDeadlineExceeded));
  ExpectSameGeneration(ref, stalled.gen);
  svc_->Kill();  // SIGKILL: the socket is dead
  CachedGeneration killed = GenerateCached(*engine_, *c, *prompt_a_, kNewTokens);
  EXPECT_EQ(killed.prefill.hit_tokens, 0u);
  EXPECT_THAT(killed.prefill.lookup_status, StatusIs(absl::StatusCode::kUnavailable));
  ExpectSameGeneration(ref, killed.gen);
  EXPECT_GE(c->Stats().lookup_failures, 2u);
}

TEST_F(ConnectorTest, StreamPathOverTcp) {
  ServiceOptions so;
  so.tcp = true;
  StartService(so);
  auto c = Connect(Options());
  ASSERT_NE(c, nullptr);
  EXPECT_FALSE(c->shared_memory());
  Warm(*c);
  CachedGeneration warm = GenerateCached(*engine_, *c, *prompt_a_, kNewTokens);
  EXPECT_EQ(warm.prefill.hit_tokens, 192u);
  ExpectSameGeneration(Reference(*prompt_a_), warm.gen);
}

TEST_F(ConnectorTest, NamespaceAndKvDtypeSeparateKeys) {
  StartService();
  auto c = Connect(Options());
  ASSERT_NE(c, nullptr);
  Warm(*c);
  ConnectorOptions other_ns = Options();
  other_ns.name_space = "someone-else";
  auto c2 = Connect(other_ns);
  ASSERT_NE(c2, nullptr);
  EXPECT_EQ(c2->Lookup(*prompt_a_).hit_chunks, 0u);
  // An engine with f32 KV must not load f16 chunks.
  engine::EngineOptions f32;
  f32.num_threads = 2;
  f32.kv.dtype = DType::kF32;
  auto e32 = engine::Engine::Create(*model_, f32);
  ASSERT_OK(e32);
  auto c3 = KvConnector::Create(svc_->target(), EngineCacheSpec(**e32), Options());
  ASSERT_OK(c3);
  EXPECT_EQ((*c3)->Lookup(*prompt_a_).hit_chunks, 0u);
  CachedGeneration got = GenerateCached(**e32, **c3, *prompt_a_, kNewTokens);
  ExpectSameGeneration(GenerateUncached(**e32, *prompt_a_, kNewTokens), got.gen);
  EXPECT_EQ(got.prefill.store->chunks_stored(), 6u);
  // A mismatched paged view is refused, not scattered into.
  PrefixLookup lookup = c->Lookup(*prompt_a_);
  auto seq = (*e32)->NewSequence();
  ASSERT_OK(seq->Resize(200));
  EXPECT_THAT(c->StartLoad(lookup, (*e32)->kv_cache().View(), seq->block_table()).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(ConnectorTest, ReconnectsAfterServiceRestart) {
  StartService();
  ConnectorOptions o = Options();
  o.reconnect_interval = std::chrono::milliseconds(0);
  auto c = Connect(o);
  ASSERT_NE(c, nullptr);
  Warm(*c);
  ASSERT_EQ(svc_->Terminate(), 0);
  // Fails fast while the service is down, and drops the dead client.
  EXPECT_THAT(c->Lookup(*prompt_a_).status, StatusIs(absl::StatusCode::kUnavailable));
  StartService();
  // The reconnect runs in the background: lookups miss until it is through.
  PrefixLookup lookup;
  for (int i = 0; i < 200 && lookup.hit_chunks == 0; ++i) {
    lookup = c->Lookup(*prompt_a_);
    if (lookup.hit_chunks == 0) std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  EXPECT_EQ(lookup.hit_chunks, 6u) << lookup.status;
  CachedGeneration got = GenerateCached(*engine_, *c, *prompt_a_, kNewTokens);
  EXPECT_EQ(got.prefill.hit_tokens, 192u);
  ExpectSameGeneration(Reference(*prompt_a_), got.gen);
}

}  // namespace
}  // namespace kvstash::connector
