// Two real cachesvc processes: objects put on node A are found and fetched by node B (the remote
// tier), over UCX's default transports, over UCX_TLS=tcp and over gRPC streams; and what happens
// when A is killed, stopped, restarted, lies about offsets, or its bytes are corrupted.
#include <dirent.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>

#include "kvstash/client/kv_client.h"
#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using ::testing::AnyOf;
using namespace ::kvstash::client;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr char kSecret[] = "kvstash-test-cluster-secret-0123456789";

std::string WriteSecret(const std::string& dir, const std::string& secret = kSecret) {
  std::string path = dir + "/secret";
  std::ofstream(path) << secret << "\n";
  return path;
}

ClientOptions StreamOnly() {
  ClientOptions o;
  o.use_shared_memory = false;
  o.rpc_timeout = 30s;
  return o;
}

struct Object {
  ObjectName name;
  ObjectInfo info;
  std::vector<uint8_t> payload;
};

Object MakeObject(uint64_t i, uint32_t tokens) {
  Object o;
  o.name = TestName(i);
  o.payload = TestPayload(i, TestInfo(tokens).payload_bytes);
  o.info = WithCrc(TestInfo(tokens), o.payload);
  return o;
}

uint64_t RemoteHits(KvClient& client) {
  auto stats = client.Stats();
  if (!stats.ok()) return 0;
  for (const TierStats& t : stats->tiers) {
    if (t.tier == Tier::kRemote) return t.hits;
  }
  return 0;
}

// Get until it succeeds: at most 100 tries, 100 ms apart (a peer coming back is retried after
// peers.retry_ms).
Result<GetReply> GetWithRetries(KvClient& client, const ObjectName& name) {
  Result<GetReply> got = absl::UnknownError("not tried");
  for (int i = 0; i < 100 && !got.ok(); ++i) {
    got = client.Get(name);
    if (!got.ok()) std::this_thread::sleep_for(100ms);
  }
  return got;
}

// The data plane under test: UCX with its own choice of transports, UCX over TCP only (the
// network path), or gRPC streams.
// kUcxDefault runs --peer-ucx-fetch's default (auto: the serving node sends the bytes,
// UcxTransport::Fetch, on UCX >= 1.14; the reading node gets them on older UCX); kUcxTcp sends
// (true), kUcxTcpGet gets (false), kUcxTcpInPlace sends and UCX receives into place (inplace:
// FetchInPlace, what GPU-pool landings use, here into the host arena).
enum class Plane { kUcxDefault, kUcxTcp, kUcxTcpGet, kUcxTcpInPlace, kGrpc };

class PeerTest : public ::testing::TestWithParam<Plane> {
 protected:
  void SetUp() override {
    if (GetParam() == Plane::kUcxTcp || GetParam() == Plane::kUcxTcpGet ||
        GetParam() == Plane::kUcxTcpInPlace) {
      ::setenv("UCX_TLS", "tcp", 1);
    } else {
      ::unsetenv("UCX_TLS");
    }
  }
  void TearDown() override { ::unsetenv("UCX_TLS"); }

  // KVSTASH_TEST_PEER_UCX_CONNECT (e.g. reader_first): every node's --peer-ucx-connect, to
  // measure the aborts serving_first avoids (docs/deploy.md "Which UCX"); unset: auto.
  std::vector<std::string> PeerArgs(const std::string& dir) const {
    const char* connect = std::getenv("KVSTASH_TEST_PEER_UCX_CONNECT");
    return {"--peer-secret-file",
            WriteSecret(dir),
            "--peer-data-plane",
            GetParam() == Plane::kGrpc ? "grpc" : "ucx",
            "--peer-ucx-connect",
            connect != nullptr ? connect : "auto",
            "--peer-ucx-fetch",
            GetParam() == Plane::kUcxTcp          ? "true"
            : GetParam() == Plane::kUcxTcpGet     ? "false"
            : GetParam() == Plane::kUcxTcpInPlace ? "inplace"
                                                  : "auto"};
  }

  // Node A serves peers; node B has A as its peer.
  void StartNodes(std::vector<std::string> b_extra = {}, bool b_unix = false) {
    ServiceOptions a_opts;
    a_opts.tcp = true;
    a_opts.metrics = true;
    a_opts.extra_args = PeerArgs(dir_a_.path());
    ASSERT_OK_AND_ASSIGN(a_, ServiceProcess::Start(dir_a_.path(), a_opts));
    ServiceOptions b_opts;
    b_opts.tcp = !b_unix;
    b_opts.metrics = true;
    b_opts.extra_args = PeerArgs(dir_b_.path());
    b_opts.extra_args.insert(b_opts.extra_args.end(), {"--peer", a_->target()});
    // Generous unless a test is about timeouts: sanitizer builds on two busy cores are slow.
    if (std::find(b_extra.begin(), b_extra.end(), "--peer-timeout-ms") == b_extra.end()) {
      b_extra.insert(b_extra.end(), {"--peer-timeout-ms", "20000"});
    }
    b_opts.extra_args.insert(b_opts.extra_args.end(), b_extra.begin(), b_extra.end());
    ASSERT_OK_AND_ASSIGN(b_, ServiceProcess::Start(dir_b_.path(), b_opts));
    ASSERT_OK_AND_ASSIGN(client_a_, KvClient::Connect(a_->target(), StreamOnly()));
    ASSERT_OK_AND_ASSIGN(client_b_, KvClient::Connect(b_->target(), StreamOnly()));
  }

  void PutOnA(const Object& o) { ASSERT_THAT(client_a_->Put(o.name, o.info, o.payload), IsOk()); }

  TempDir dir_a_, dir_b_;
  std::unique_ptr<ServiceProcess> a_, b_;
  std::unique_ptr<KvClient> client_a_, client_b_;
};

TEST_P(PeerTest, GetOnOneNodeReturnsWhatWasPutOnAnother) {
  StartNodes();
  // 64 KiB, 1 MiB and 4 MiB objects.
  std::vector<Object> objects = {MakeObject(1, 256), MakeObject(2, 4096), MakeObject(3, 16384)};
  for (const Object& o : objects) PutOnA(o);

  // Lookup on B reports them as held by a peer; the longest prefix counts them.
  std::vector<ObjectName> names;
  names.reserve(objects.size());
  for (const Object& o : objects) names.push_back(o.name);
  names.push_back(TestName(99));  // nowhere
  ASSERT_OK_AND_ASSIGN(LookupReply lookup, client_b_->Lookup(names));
  ASSERT_EQ(lookup.results.size(), 4u);
  for (size_t i = 0; i < objects.size(); ++i) {
    EXPECT_TRUE(lookup.results[i].present);
    EXPECT_EQ(lookup.results[i].tier, Tier::kRemote);
    EXPECT_EQ(lookup.results[i].payload_bytes, objects[i].payload.size());
  }
  EXPECT_FALSE(lookup.results[3].present);
  EXPECT_EQ(lookup.longest_prefix, 3u);

  for (const Object& o : objects) {
    ASSERT_OK_AND_ASSIGN(GetReply got, client_b_->Get(o.name));
    EXPECT_EQ(got.served_from, Tier::kRemote);
    EXPECT_EQ(got.info.payload_crc32c, o.info.payload_crc32c);
    EXPECT_TRUE(got.payload == o.payload) << "payload differs";
  }
  EXPECT_THAT(client_b_->Get(TestName(99)), StatusIs(absl::StatusCode::kNotFound));

  // Promoted: B now holds them itself.
  ASSERT_OK_AND_ASSIGN(LookupReply again, client_b_->Lookup(names));
  for (size_t i = 0; i < objects.size(); ++i) EXPECT_EQ(again.results[i].tier, Tier::kCpu);
  ASSERT_OK_AND_ASSIGN(GetReply local, client_b_->Get(objects[0].name));
  EXPECT_EQ(local.served_from, Tier::kCpu);

  EXPECT_EQ(RemoteHits(*client_b_), objects.size());
  EXPECT_EQ(MetricSum(b_->metrics_port(), "kvstash_peer_fetched_objects_total"), 3);
  EXPECT_EQ(MetricSum(b_->metrics_port(), "kvstash_peer_fetched_bytes_total"),
            (64 << 10) + (1 << 20) + (4 << 20));
  // Every lease A gave out for the transfers is released (by notification, or gRPC).
  for (int i = 0; i < 200; ++i) {
    auto stats = client_a_->Stats();
    ASSERT_THAT(stats, IsOk());
    if (stats->leases_active == 0) break;
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_OK_AND_ASSIGN(ServiceStats a_stats, client_a_->Stats());
  EXPECT_EQ(a_stats.leases_active, 0u);
}

TEST_P(PeerTest, BatchedAcquireOverSharedMemoryFetchesMissesFromThePeer) {
  StartNodes({}, /*b_unix=*/true);
  ClientOptions shm;
  ASSERT_OK_AND_ASSIGN(auto engine, KvClient::Connect(b_->target(), shm));
  ASSERT_TRUE(engine->shared_memory_attached()) << engine->shared_memory_status();
  std::vector<Object> objects;
  for (uint64_t i = 0; i < 16; ++i) objects.push_back(MakeObject(100 + i, 1024));  // 256 KiB
  for (const Object& o : objects) PutOnA(o);
  // One object is local to B already.
  Object local = MakeObject(500, 512);
  ASSERT_THAT(engine->Put(local.name, local.info, local.payload), IsOk());

  std::vector<ObjectName> names = {local.name};
  for (const Object& o : objects) names.push_back(o.name);
  names.push_back(TestName(501));  // nowhere
  ASSERT_OK_AND_ASSIGN(auto leases, engine->AcquireMany(names));
  ASSERT_EQ(leases.size(), names.size());
  ASSERT_THAT(leases[0], IsOk());
  EXPECT_EQ(leases[0]->served_from(), Tier::kCpu);
  for (size_t i = 0; i < objects.size(); ++i) {
    ASSERT_THAT(leases[i + 1], IsOk());
    EXPECT_EQ(leases[i + 1]->served_from(), Tier::kRemote);
    ASSERT_EQ(leases[i + 1]->data().size(), objects[i].payload.size());
    EXPECT_EQ(0, std::memcmp(leases[i + 1]->data().data(), objects[i].payload.data(),
                             objects[i].payload.size()));
  }
  EXPECT_THAT(leases.back(), StatusIs(absl::StatusCode::kNotFound));
}

TEST_P(PeerTest, WithoutPromotionFetchedObjectsAreServedOnceAndNotKept) {
  StartNodes({"--remote-promote", "false"});
  Object o = MakeObject(7, 4096);
  PutOnA(o);
  ASSERT_OK_AND_ASSIGN(GetReply got, client_b_->Get(o.name));
  EXPECT_EQ(got.served_from, Tier::kRemote);
  EXPECT_TRUE(got.payload == o.payload);
  std::vector<ObjectName> names = {o.name};
  ASSERT_OK_AND_ASSIGN(LookupReply lookup, client_b_->Lookup(names));
  EXPECT_EQ(lookup.results[0].tier, Tier::kRemote);  // still only on A
  ASSERT_OK_AND_ASSIGN(GetReply second, client_b_->Get(o.name));
  EXPECT_EQ(second.served_from, Tier::kRemote);
  EXPECT_EQ(RemoteHits(*client_b_), 2u);
}

TEST_P(PeerTest, APeerKilledMidTransferFailsCleanlyAndNeverServesWrongBytes) {
  StartNodes();
  std::vector<Object> objects;
  for (uint64_t i = 0; i < 6; ++i) objects.push_back(MakeObject(200 + i, 32768));  // 8 MiB each
  for (const Object& o : objects) PutOnA(o);
  Object local = MakeObject(300, 256);
  ASSERT_THAT(client_b_->Put(local.name, local.info, local.payload), IsOk());

  std::vector<Result<GetReply>> got(objects.size(), absl::UnknownError("not run"));
  std::thread reader([&] {
    for (size_t i = 0; i < objects.size(); ++i) got[i] = client_b_->Get(objects[i].name);
  });
  std::this_thread::sleep_for(30ms);
  a_->Kill();
  reader.join();
  for (size_t i = 0; i < objects.size(); ++i) {
    if (got[i].ok()) {
      EXPECT_TRUE(got[i]->payload == objects[i].payload) << "object " << i << " differs";
    } else {
      EXPECT_THAT(got[i], AnyOf(StatusIs(absl::StatusCode::kUnavailable),
                                StatusIs(absl::StatusCode::kNotFound)));
    }
  }
  // B keeps serving what it holds, and answers for the dead peer's objects.
  // A reader node must outlive the peer it reads from; its log says why if it did not.
  Result<GetReply> mine = client_b_->Get(local.name);
  ASSERT_THAT(mine, IsOk()) << "node B's log:\n" << b_->Log();
  EXPECT_TRUE(mine->payload == local.payload);
  EXPECT_THAT(client_b_->Get(TestName(999)), AnyOf(StatusIs(absl::StatusCode::kUnavailable),
                                                   StatusIs(absl::StatusCode::kNotFound)));
  ASSERT_OK_AND_ASSIGN(ServiceStats stats, client_b_->Stats());
  EXPECT_EQ(stats.reservations_active, 0u);  // aborted transfers leave nothing behind
}

TEST_P(PeerTest, AStoppedPeerTimesOutThenIsUsedAgainWhenItResumes) {
  StartNodes({"--peer-timeout-ms", "1000", "--peer-retry-ms", "500"});
  Object o = MakeObject(11, 4096);
  PutOnA(o);
  a_->Stop();
  EXPECT_THAT(client_b_->Get(o.name), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_GE(MetricSum(b_->metrics_port(), "kvstash_peer_failures_total"), 1);
  a_->Continue();
  // Bounded: the peer is tried again after retry_ms.
  Result<GetReply> got = GetWithRetries(*client_b_, o.name);
  ASSERT_THAT(got, IsOk());
  EXPECT_TRUE(got->payload == o.payload);
}

TEST_P(PeerTest, APeerRestartedOnItsSsdIsReconnected) {
  StartNodes({"--peer-retry-ms", "200"});
  Object first = MakeObject(21, 1024), second = MakeObject(22, 1024);
  PutOnA(first);
  ASSERT_OK_AND_ASSIGN(GetReply got, client_b_->Get(first.name));
  ASSERT_THAT(client_a_->Put(second.name, second.info, second.payload, {.durable = true}), IsOk());
  client_a_.reset();
  // Same port, same data dir: a new arena (new generation, new rkey), the SSD tier recovered.
  const std::string target = a_->target();
  ASSERT_EQ(a_->Terminate(), 0);
  ServiceOptions opts;
  opts.listen = target;
  opts.extra_args = PeerArgs(dir_a_.path());
  ASSERT_OK_AND_ASSIGN(a_, ServiceProcess::Start(dir_a_.path(), opts));
  Result<GetReply> again = GetWithRetries(*client_b_, second.name);
  ASSERT_THAT(again, IsOk());
  EXPECT_TRUE(again->payload == second.payload);
}

TEST_P(PeerTest, AWrongClusterSecretGetsNothing) {
  ServiceOptions a_opts;
  a_opts.tcp = true;
  a_opts.metrics = true;
  a_opts.extra_args = PeerArgs(dir_a_.path());
  ASSERT_OK_AND_ASSIGN(a_, ServiceProcess::Start(dir_a_.path(), a_opts));
  ServiceOptions b_opts;
  b_opts.tcp = true;
  b_opts.extra_args = {"--peer-secret-file",
                       WriteSecret(dir_b_.path(), "a-different-secret-of-enough-bytes"), "--peer",
                       a_->target()};
  ASSERT_OK_AND_ASSIGN(b_, ServiceProcess::Start(dir_b_.path(), b_opts));
  ASSERT_OK_AND_ASSIGN(client_a_, KvClient::Connect(a_->target(), StreamOnly()));
  ASSERT_OK_AND_ASSIGN(client_b_, KvClient::Connect(b_->target(), StreamOnly()));
  Object o = MakeObject(31, 256);
  PutOnA(o);
  if (GetParam() == Plane::kGrpc) GTEST_SKIP() << "the secret guards the UCX rkey handout";
  EXPECT_THAT(client_b_->Get(o.name), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_GE(MetricSum(a_->metrics_port(), "kvstash_peer_hello_refused_total"), 1);
}

// ---- prefill/decode handoff -------------------------------------------------------------------

uint64_t PinnedOn(KvClient& client) {
  auto stats = client.Stats();
  return stats.ok() ? stats->pinned_objects : ~0ull;
}

TEST_P(PeerTest, HandoffPinsOnPrefillPullsToDecodeAndReleases) {
  StartNodes();
  std::vector<Object> objects;
  for (uint64_t i = 0; i < 4; ++i) objects.push_back(MakeObject(600 + i, 4096));
  for (const Object& o : objects) PutOnA(o);
  std::vector<ObjectName> names;
  names.reserve(objects.size());
  for (const Object& o : objects) names.push_back(o.name);
  names.push_back(TestName(699));  // not stored on A: left out of the handoff
  ASSERT_OK_AND_ASSIGN(Handoff offered, client_a_->Offer(names));
  EXPECT_EQ(offered.node, a_->target());
  ASSERT_EQ(offered.names.size(), objects.size());
  EXPECT_EQ(PinnedOn(*client_a_), objects.size());
  // The descriptor travels between engines as bytes.
  ASSERT_OK_AND_ASSIGN(Handoff received, Handoff::Parse(offered.Serialize()));
  EXPECT_EQ(received.id, offered.id);

  // The decode node already holds one of them.
  ASSERT_THAT(client_b_->Put(objects[1].name, objects[1].info, objects[1].payload), IsOk());
  ASSERT_OK_AND_ASSIGN(HandoffFetch fetched, client_b_->FetchHandoff(received));
  EXPECT_EQ(fetched.fetched, 3u);
  EXPECT_EQ(fetched.already_local, 1u);
  EXPECT_EQ(fetched.longest_prefix, 4u);
  EXPECT_EQ(fetched.fetched_bytes, 3u * objects[0].payload.size());
  for (const Status& r : fetched.results) EXPECT_THAT(r, IsOk());
  for (const Object& o : objects) {
    ASSERT_OK_AND_ASSIGN(GetReply got, client_b_->Get(o.name));
    EXPECT_EQ(got.served_from, Tier::kCpu);  // local now
    EXPECT_TRUE(got.payload == o.payload);
  }
  // The prefill node let go of its pins.
  EXPECT_EQ(PinnedOn(*client_a_), 0u);
  EXPECT_THAT(client_b_->HeartbeatHandoff(received), StatusIs(absl::StatusCode::kNotFound));
}

// FetchHandoff's land tier (proto land_tier) without a GPU pool: kCpu, asked for explicitly, is
// the default path; kGpu is refused up front, before anything is fetched or released, so the
// prefill node's pins stay for a retry into the arena; tiers nothing lands in are refused by the
// client. The GPU pool as a landing target itself: gpu_pool_service_test.cc (label gpu).
TEST_P(PeerTest, AHandoffLandsInTheArenaAndTheGpuTierNeedsAPool) {
  StartNodes();
  std::vector<Object> objects;
  for (uint64_t i = 0; i < 3; ++i) objects.push_back(MakeObject(640 + i, 1024));
  for (const Object& o : objects) PutOnA(o);
  std::vector<ObjectName> names;
  names.reserve(objects.size());
  for (const Object& o : objects) names.push_back(o.name);
  ASSERT_OK_AND_ASSIGN(Handoff h, client_a_->Offer(names));

  Result<HandoffFetch> gpu = client_b_->FetchHandoff(h, /*all_or_nothing=*/false, Tier::kGpu);
  EXPECT_THAT(gpu, StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(std::string(gpu.status().message()), ::testing::HasSubstr("--gpu-pool-capacity"));
  EXPECT_EQ(PinnedOn(*client_a_), objects.size());  // nothing released
  ASSERT_OK_AND_ASSIGN(LookupReply none, client_b_->Lookup(names));
  for (const KeyPresence& k : none.results) EXPECT_EQ(k.tier, Tier::kRemote);  // A's only
  EXPECT_THAT(client_b_->FetchHandoff(h, false, Tier::kSsd),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(client_b_->FetchHandoff(h, false, Tier::kRemote),
              StatusIs(absl::StatusCode::kInvalidArgument));

  ASSERT_OK_AND_ASSIGN(HandoffFetch fetched,
                       client_b_->FetchHandoff(h, /*all_or_nothing=*/true, Tier::kCpu));
  EXPECT_EQ(fetched.fetched, objects.size());
  EXPECT_EQ(fetched.longest_prefix, objects.size());
  ASSERT_OK_AND_ASSIGN(LookupReply here, client_b_->Lookup(names));
  for (const KeyPresence& k : here.results) EXPECT_EQ(k.tier, Tier::kCpu);
  for (const Object& o : objects) {
    ASSERT_OK_AND_ASSIGN(GetReply got, client_b_->Get(o.name));
    EXPECT_EQ(got.served_from, Tier::kCpu);
    EXPECT_TRUE(got.payload == o.payload);
  }
  EXPECT_EQ(PinnedOn(*client_a_), 0u);
}

TEST_P(PeerTest, AnExpiredHandoffUnpinsAndAHeartbeatKeepsOneAlive) {
  StartNodes();
  Object o1 = MakeObject(610, 1024), o2 = MakeObject(611, 1024);
  PutOnA(o1);
  PutOnA(o2);
  ASSERT_OK_AND_ASSIGN(Handoff short_lived,
                       client_a_->Offer(std::vector<ObjectName>{o1.name}, 200));
  ASSERT_OK_AND_ASSIGN(Handoff kept, client_a_->Offer(std::vector<ObjectName>{o2.name}, 600));
  EXPECT_EQ(PinnedOn(*client_a_), 2u);
  // Heartbeats go to the decode node, which forwards them to the prefill node. Each leaves
  // 500 ms of slack; together they outlast the first lifetime 2.5 times.
  for (int i = 0; i < 15; ++i) {
    ASSERT_OK_AND_ASSIGN(uint64_t ms, client_b_->HeartbeatHandoff(kept, 600));
    EXPECT_EQ(ms, 600u);
    std::this_thread::sleep_for(100ms);
  }
  // The short one expired (bounded wait), the one kept alive did not.
  for (int i = 0; i < 100 && PinnedOn(*client_a_) != 1; ++i) std::this_thread::sleep_for(50ms);
  EXPECT_EQ(PinnedOn(*client_a_), 1u);
  EXPECT_THAT(client_b_->HeartbeatHandoff(short_lived), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(client_b_->ReleaseHandoff(kept), IsOk());
  EXPECT_EQ(PinnedOn(*client_a_), 0u);
  EXPECT_GE(MetricSum(a_->metrics_port(), "kvstash_handoffs_expired_total"), 1);
}

TEST_P(PeerTest, HandoffFailurePolicies) {
  StartNodes();
  Object o = MakeObject(620, 1024);
  PutOnA(o);
  std::vector<ObjectName> names = {o.name};
  ASSERT_OK_AND_ASSIGN(Handoff h, client_a_->Offer(names));
  // A descriptor that also names an object the prefill node never had (a lying or stale one).
  Handoff bad = h;
  bad.names.push_back(TestName(629));
  bad.payload_bytes.push_back(4096);
  EXPECT_THAT(client_b_->FetchHandoff(bad, /*all_or_nothing=*/true),
              StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK_AND_ASSIGN(Handoff again, client_a_->Offer(names));
  bad.id = again.id;
  ASSERT_OK_AND_ASSIGN(HandoffFetch partial, client_b_->FetchHandoff(bad, false));
  EXPECT_THAT(partial.results[0], IsOk());
  EXPECT_THAT(partial.results[1], StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(partial.longest_prefix, 1u);  // the engine recomputes from there

  // A node that is not a peer of the decode node is refused, not dialled.
  Handoff elsewhere = h;
  elsewhere.node = "127.0.0.1:1";
  elsewhere.names = {TestName(630)};
  elsewhere.payload_bytes = {4096};
  EXPECT_THAT(client_b_->FetchHandoff(elsewhere), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(Handoff::Parse("not a handoff at all"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(client_a_->Offer(std::vector<ObjectName>{TestName(631)}),
              StatusIs(absl::StatusCode::kResourceExhausted));
}

// Debian's UCX 1.13 (built with assertions) can abort a serving process when the reader it
// serves dies mid-transfer: its lane to the dead reader fails, UCX purges a pending wire-up
// message and trips `ucp_request.c:684 Assertion ... got REP message` (removed in UCX 1.14,
// openucx/ucx#8175), or reports `Fatal: unexpected error: Endpoint timeout`
// (docs/benchmarks-transfer.md; tests/transport/ucx_reader_death_test.cc reproduces it). Seen in
// a few percent of runs on a loaded 2-core VM. True when `node` runs with such a risk (it logs
// event=ucx_aborts_on_reader_death at start: UCX < 1.14 with peers.ucx_connect reader_first, or
// readers using gets) and its log ends in one of those, so a test can report the known upstream
// abort as a skip that names it instead of a pass; any other failure, and any abort where the
// node logged no risk (serving_first with Fetch on 1.13; Fetch on UCX >= 1.14),
// still fails.
bool AbortedInsideUcx(const ServiceProcess& node) {
  const std::string log = node.Log();
  return log.find("event=ucx_aborts_on_reader_death") != std::string::npos &&
         (log.find("got REP message") != std::string::npos ||
          log.find("Fatal: unexpected error: Endpoint timeout") != std::string::npos);
}

TEST_P(PeerTest, ADecodeNodeRestartedMidFetchFetchesAgain) {
  StartNodes();
  std::vector<Object> objects;
  for (uint64_t i = 0; i < 4; ++i) objects.push_back(MakeObject(640 + i, 32768));  // 8 MiB
  std::vector<ObjectName> names;
  for (const Object& o : objects) {
    PutOnA(o);
    names.push_back(o.name);
  }
  ASSERT_OK_AND_ASSIGN(Handoff h, client_a_->Offer(names, 60'000));
  std::thread fetch([&] { (void)client_b_->FetchHandoff(h); });
  std::this_thread::sleep_for(20ms);
  const std::string b_target = b_->target();
  b_->Kill();
  fetch.join();
  client_b_.reset();
  ServiceOptions opts;
  opts.listen = b_target;
  opts.extra_args = PeerArgs(dir_b_.path());
  opts.extra_args.insert(opts.extra_args.end(),
                         {"--peer", a_->target(), "--peer-timeout-ms", "20000"});
  ASSERT_OK_AND_ASSIGN(b_, ServiceProcess::Start(dir_b_.path(), opts));
  ASSERT_OK_AND_ASSIGN(client_b_, KvClient::Connect(b_->target(), StreamOnly()));
  // Whatever the killed fetch left (nothing uncommitted is ever visible), fetching again
  // completes the handoff: the prefill node kept its pins.
  Result<HandoffFetch> again = client_b_->FetchHandoff(h, /*all_or_nothing=*/true);
  if (!again.ok() && GetParam() != Plane::kGrpc && AbortedInsideUcx(*a_)) {
    GTEST_SKIP() << "the serving node aborted inside UCX < 1.14 when its reader was killed "
                    "(openucx/ucx#8175, fixed in 1.14; issue 15, docs/deploy.md \"Which UCX\"): "
                 << again.status();
  }
  // An abort where the node logged no risk (serving_first with Fetch on 1.13) fails, with its log.
  ASSERT_THAT(again, IsOk()) << "the serving node's log:\n" << a_->Log();
  const HandoffFetch& fetched = *again;
  EXPECT_EQ(fetched.longest_prefix, objects.size());
  for (const Object& o : objects) {
    ASSERT_OK_AND_ASSIGN(GetReply got, client_b_->Get(o.name));
    EXPECT_TRUE(got.payload == o.payload);
  }
  EXPECT_EQ(PinnedOn(*client_a_), 0u);
}

INSTANTIATE_TEST_SUITE_P(Planes, PeerTest,
                         ::testing::Values(Plane::kUcxDefault, Plane::kUcxTcp, Plane::kUcxTcpGet,
                                           Plane::kUcxTcpInPlace, Plane::kGrpc),
                         [](const auto& info) {
                           switch (info.param) {
                             case Plane::kUcxDefault:
                               return std::string("UcxDefault");
                             case Plane::kUcxTcp:
                               return std::string("UcxTcp");
                             case Plane::kUcxTcpGet:
                               return std::string("UcxTcpGet");
                             case Plane::kUcxTcpInPlace:
                               return std::string("UcxTcpInPlace");
                             case Plane::kGrpc:
                               return std::string("Grpc");
                           }
                           return std::string("unknown");
                         });

// ---- bytes corrupted after the serving node checked them --------------------------------------

// Opens the serving process's arena memfd through /proc and maps it.
struct ForeignArena {
  uint8_t* base = nullptr;
  size_t bytes = 0;
  ~ForeignArena() {
    if (base != nullptr) ::munmap(base, bytes);
  }
};

bool MapArenaOf(pid_t pid, ForeignArena* out) {
  std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return false;
  bool found = false;
  while (dirent* e = ::readdir(d)) {
    std::string path = dir + "/" + e->d_name;
    char link[256] = {0};
    if (::readlink(path.c_str(), link, sizeof link - 1) <= 0) continue;
    if (std::strstr(link, "memfd:kvstash-arena") == nullptr) continue;
    int fd = ::open(path.c_str(), O_RDWR);
    if (fd < 0) break;
    struct stat st;
    if (::fstat(fd, &st) == 0 && st.st_size > 0) {
      void* p = ::mmap(nullptr, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      if (p != MAP_FAILED) {
        out->base = static_cast<uint8_t*>(p);
        out->bytes = st.st_size;
        found = true;
      }
    }
    ::close(fd);
    break;
  }
  ::closedir(d);
  return found;
}

TEST(PeerCorruptionTest, BytesCorruptedInFlightAreCaughtByCrcAndNeverServed) {
  TempDir dir_a, dir_b;
  ServiceOptions a_opts;
  a_opts.tcp = true;
  a_opts.extra_args = {"--peer-secret-file", WriteSecret(dir_a.path())};
  ASSERT_OK_AND_ASSIGN(auto a, ServiceProcess::Start(dir_a.path(), a_opts));
  ServiceOptions b_opts;
  b_opts.tcp = true;
  b_opts.metrics = true;
  b_opts.extra_args = {"--peer-secret-file", WriteSecret(dir_b.path()), "--peer", a->target()};
  ASSERT_OK_AND_ASSIGN(auto b, ServiceProcess::Start(dir_b.path(), b_opts));
  ASSERT_OK_AND_ASSIGN(auto client_a, KvClient::Connect(a->target(), StreamOnly()));
  ASSERT_OK_AND_ASSIGN(auto client_b, KvClient::Connect(b->target(), StreamOnly()));

  Object o = MakeObject(41, 4096);
  ASSERT_THAT(client_a->Put(o.name, o.info, o.payload), IsOk());
  ASSERT_OK_AND_ASSIGN(GetReply checked, client_a->Get(o.name));  // A has checked its bytes
  ASSERT_TRUE(checked.payload == o.payload);

  // Flip one byte of A's copy behind A's back: to B it looks like corruption on the way.
  ForeignArena arena;
  if (!MapArenaOf(a->pid(), &arena)) GTEST_SKIP() << "cannot open the peer's arena via /proc";
  uint8_t* at = static_cast<uint8_t*>(::memmem(arena.base, arena.bytes, o.payload.data(), 4096));
  ASSERT_NE(at, nullptr) << "payload not found in the peer's arena";
  at[1000] ^= 0x40;

  EXPECT_THAT(client_b->Get(o.name), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_EQ(MetricSum(b->metrics_port(), "kvstash_peer_failures_total"), 1);
  std::vector<ObjectName> names = {o.name};
  ASSERT_OK_AND_ASSIGN(LookupReply lookup, client_b->Lookup(names));
  EXPECT_NE(lookup.results[0].tier, Tier::kCpu);  // nothing corrupt was kept
  ASSERT_OK_AND_ASSIGN(ServiceStats stats, client_b->Stats());
  EXPECT_EQ(stats.reservations_active, 0u);
}

}  // namespace
}  // namespace kvstash::testing
