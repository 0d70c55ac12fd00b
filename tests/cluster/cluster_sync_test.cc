// Synchronous replication (--replication-mode sync) with real cachesvc and etcd processes on
// loopback, R = 2: a commit is acknowledged only once both owners hold the object, so killing
// the writing node (kill -9) right after its acknowledged writes loses none of them; too few live
// nodes fail the commit with UNAVAILABLE, owners that do not answer with DEADLINE_EXCEEDED.
// Every loop is bounded in count and time.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <mutex>
#include <thread>

#include "etcd_process.h"
#include "kvstash/client/kv_client.h"
#include "kvstash/proto/arena_handshake.h"
#include "kvstash/proto/convert.h"
#include "kvstash/proto/status_mapping.h"
#include "kvstash/v1/kvstash.grpc.pb.h"
#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using namespace ::kvstash::client;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr int kMaxNodes = 3;

bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(50ms);
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
  o.name = TestName(i, "sync");
  o.payload = TestPayload(i, TestInfo(64).payload_bytes);  // 16 KiB
  o.info = WithCrc(TestInfo(64), o.payload);
  return o;
}

// Clients of the nodes' TCP listeners (a cluster member listens on TCP): without the arena, so
// their Puts are byte streams (a streaming Put commits on one of the service's stream threads).
ClientOptions StreamClient() {
  ClientOptions o;
  o.rpc_timeout = 15s;
  o.use_shared_memory = false;
  return o;
}

// The writer's side of a same-node batched put, by hand, since KvClient attaches the arena only
// for a unix target: maps the node's arena (from its arena socket), then ReserveMany, copies into
// the arena and CommitMany over the node's gRPC listener. One status per object, CommitMany's.
class ArenaWriter {
 public:
  static Result<std::unique_ptr<ArenaWriter>> Attach(const std::string& arena_socket,
                                                     const std::string& target) {
    KVSTASH_ASSIGN_OR_RETURN(ReceivedArena got, ReceiveArenaFd(arena_socket, 5000));
    auto w = std::unique_ptr<ArenaWriter>(new ArenaWriter());
    const int fd = got.writable_fd >= 0 ? got.writable_fd : got.fd;
    w->bytes_ = got.hello.arena_bytes;
    void* at = ::mmap(nullptr, w->bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (got.writable_fd >= 0) ::close(got.writable_fd);
    ::close(got.fd);
    if (at == MAP_FAILED) return absl::InternalError("mmap of the arena failed");
    w->base_ = static_cast<uint8_t*>(at);
    w->stub_ =
        v1::KvStash::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
    return w;
  }
  ~ArenaWriter() {
    if (base_ != nullptr) ::munmap(base_, bytes_);
  }

  Result<std::vector<Status>> PutMany(const std::vector<Object>& objects) {
    v1::ReserveManyRequest reserve;
    for (const Object& o : objects) {
      v1::ReserveRequest* item = reserve.add_items();
      ToProto(o.name, item->mutable_key());
      ToProto(o.info, item->mutable_info());
    }
    v1::ReserveManyResponse reserved;
    {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + 15s);
      KVSTASH_RETURN_IF_ERROR(FromGrpcStatus(stub_->ReserveMany(&ctx, reserve, &reserved)));
    }
    if (reserved.results_size() != static_cast<int>(objects.size())) {
      return absl::InternalError("ReserveMany answered with the wrong number of results");
    }
    v1::CommitManyRequest commit;
    for (size_t i = 0; i < objects.size(); ++i) {
      const v1::ReserveResult& r = reserved.results(static_cast<int>(i));
      if (r.status().code() != 0) return absl::InternalError(r.status().message());
      const uint64_t offset = r.reservation().arena_offset();
      if (offset > bytes_ || objects[i].payload.size() > bytes_ - offset) {
        return absl::InternalError("reservation outside the arena");
      }
      std::memcpy(base_ + offset, objects[i].payload.data(), objects[i].payload.size());
      v1::CommitRequest* item = commit.add_items();
      item->set_reservation_id(r.reservation().reservation_id());
      item->set_payload_crc32c(objects[i].info.payload_crc32c);
    }
    v1::CommitManyResponse committed;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 30s);
    KVSTASH_RETURN_IF_ERROR(FromGrpcStatus(stub_->CommitMany(&ctx, commit, &committed)));
    std::vector<Status> out;
    for (const v1::ItemStatus& item : committed.results()) {
      out.emplace_back(static_cast<absl::StatusCode>(item.code()), item.message());
    }
    return out;
  }

 private:
  ArenaWriter() = default;
  uint8_t* base_ = nullptr;
  uint64_t bytes_ = 0;
  std::unique_ptr<v1::KvStash::Stub> stub_;
};

class ClusterSyncTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto etcd = EtcdProcess::Start();
    if (!etcd.ok() && etcd.status().code() == absl::StatusCode::kFailedPrecondition) {
      GTEST_SKIP() << etcd.status();
    }
    ASSERT_THAT(etcd, IsOk());
    etcd_ = std::move(*etcd);
    secret_ = dirs_[0].path() + "/secret";
    std::ofstream(secret_) << "kvstash-cluster-test-secret-0123456789\n";
  }

  // Node i of cluster `cluster`, R = 2, synchronous replication.
  void StartNode(int i, int ttl_s, int sync_timeout_ms, const std::string& cluster = "s",
                 const std::vector<std::string>& extra = {}) {
    ServiceOptions o;
    o.tcp = true;
    o.metrics = true;
    o.extra_args = {"--etcd",
                    etcd_->endpoint(),
                    "--replicas",
                    "2",
                    "--replication-mode",
                    "sync",
                    "--sync-timeout-ms",
                    std::to_string(sync_timeout_ms),
                    "--cluster-ttl-s",
                    std::to_string(ttl_s),
                    "--cluster-name",
                    cluster,
                    "--node-id",
                    "n" + std::to_string(i),
                    "--peer-secret-file",
                    secret_,
                    "--peer-timeout-ms",
                    "2000",
                    "--peer-retry-ms",
                    "300"};
    o.extra_args.insert(o.extra_args.end(), extra.begin(), extra.end());
    ASSERT_OK_AND_ASSIGN(nodes_[i], ServiceProcess::Start(dirs_[i].path(), o));
    ASSERT_OK_AND_ASSIGN(clients_[i], KvClient::Connect(nodes_[i]->target(), StreamClient()));
  }

  double Metric(int i, const char* family) { return MetricSum(nodes_[i]->metrics_port(), family); }
  double MetricOfAll(const char* family) {
    double sum = 0;
    for (int i = 0; i < kMaxNodes; ++i) {
      if (nodes_[i] != nullptr) sum += Metric(i, family);
    }
    return sum;
  }

  // Until every started node but `skip` counts `n` live members.
  bool AllSee(int n, std::chrono::milliseconds limit, int skip = -1) {
    return WaitFor(
        [&] {
          for (int i = 0; i < kMaxNodes; ++i) {
            if (i == skip || nodes_[i] == nullptr) continue;
            if (Metric(i, "kvstash_cluster_nodes") != n) return false;
          }
          return true;
        },
        limit);
  }

  void ExpectReadable(int node, const Object& o) {
    Result<GetReply> got = absl::UnknownError("not tried");
    for (int t = 0; t < 30 && !got.ok(); ++t) {
      got = clients_[node]->Get(o.name);
      if (!got.ok()) std::this_thread::sleep_for(100ms);
    }
    ASSERT_THAT(got, IsOk()) << "node " << node;
    EXPECT_TRUE(got->payload == o.payload) << "node " << node << ": bytes differ";
  }

  std::unique_ptr<EtcdProcess> etcd_;
  TempDir dirs_[kMaxNodes];
  std::string secret_;
  std::unique_ptr<ServiceProcess> nodes_[kMaxNodes];
  std::unique_ptr<KvClient> clients_[kMaxNodes];
};

// Under both of gRPC's polling engines (the nodes inherit GRPC_POLL_STRATEGY; sync nodes default
// to epoll1). Under "poll" a streaming Put's commit holds a stream thread while the owners call
// back into the writer; when those calls' connections depended on that thread, every first commit
// ran into its deadline (cachesvc/src/async_streams.h, `listening`).
class ClusterSyncEngineTest : public ClusterSyncTest,
                              public ::testing::WithParamInterface<const char*> {
 protected:
  void SetUp() override {
    ::setenv("GRPC_POLL_STRATEGY", GetParam(), /*overwrite=*/1);
    ClusterSyncTest::SetUp();
  }
  void TearDown() override { ::unsetenv("GRPC_POLL_STRATEGY"); }
};

INSTANTIATE_TEST_SUITE_P(Engines, ClusterSyncEngineTest, ::testing::Values("epoll1", "poll"));

TEST_P(ClusterSyncEngineTest, KillingTheWriterRightAfterAcknowledgedWritesLosesNone) {
  constexpr int kTtlS = 2;
  for (int i = 0; i < kMaxNodes; ++i) ASSERT_NO_FATAL_FAILURE(StartNode(i, kTtlS, 5000));
  ASSERT_TRUE(AllSee(kMaxNodes, 10s)) << "nodes did not see each other";

  // Two writers on the victim; it is killed while they are still writing, so its last
  // acknowledged objects were acknowledged moments before the kill. No wait for any forward.
  constexpr int kVictim = 2;
  // The writers' Puts are byte streams: no arena without a unix target.
  ASSERT_FALSE(clients_[kVictim]->shared_memory_attached());
  std::mutex mu;
  std::vector<Object> acknowledged;
  std::atomic<uint64_t> next{0};
  std::atomic<bool> stop{false};
  std::atomic<int> failed{0};
  std::string first_failure;
  auto writer = [&] {
    for (int n = 0; n < 5'000 && !stop; ++n) {
      Object o = MakeObject(next++);
      Status s = clients_[kVictim]->Put(o.name, o.info, o.payload);
      std::lock_guard<std::mutex> lock(mu);
      if (s.ok()) {
        acknowledged.push_back(std::move(o));
      } else if (failed++ == 0) {
        first_failure = s.ToString();
      }
    }
  };
  std::thread w1(writer), w2(writer);
  ASSERT_TRUE(WaitFor(
      [&] {
        std::lock_guard<std::mutex> lock(mu);
        return acknowledged.size() >= 40;
      },
      30s));
  // Each of those went through the synchronous path (R = 2 of 3 nodes: every object has an
  // owner other than the victim), and none failed while all nodes were up.
  EXPECT_GE(Metric(kVictim, "kvstash_cluster_sync_commits_total"), 40);
  EXPECT_EQ(Metric(kVictim, "kvstash_cluster_sync_failures_total"), 0);
  nodes_[kVictim]->Kill();  // SIGKILL, writers still running
  stop = true;
  w1.join();
  w2.join();
  // Every acknowledged object is on the two survivors' side: readable byte for byte from each.
  for (int node : {0, 1}) {
    for (const Object& o : acknowledged) ASSERT_NO_FATAL_FAILURE(ExpectReadable(node, o));
  }
  std::printf("acknowledged by the killed writer: %zu; failed or cut by the kill: %d (first: %s)\n",
              acknowledged.size(), failed.load(), first_failure.c_str());
}

TEST_F(ClusterSyncTest, CommitManyReplicatesItsObjectsTogetherAndKillingTheWriterLosesNone) {
  // TTL 10 s: the writer's death is not what this test waits for.
  for (int i = 0; i < kMaxNodes; ++i) ASSERT_NO_FATAL_FAILURE(StartNode(i, 10, 5000));
  ASSERT_TRUE(AllSee(kMaxNodes, 15s)) << "nodes did not see each other";
  constexpr int kWriter = 2;
  ASSERT_OK_AND_ASSIGN(
      std::unique_ptr<ArenaWriter> writer,
      ArenaWriter::Attach(dirs_[kWriter].path() + "/arena.sock", nodes_[kWriter]->target()));
  // A first batch connects the owners to the writer (their Hello); the second one is counted.
  std::vector<Object> warm, batch;
  for (uint64_t i = 0; i < 8; ++i) warm.push_back(MakeObject(300 + i));
  ASSERT_OK_AND_ASSIGN(std::vector<Status> warmed, writer->PutMany(warm));
  for (const Status& s : warmed) ASSERT_OK(s);
  constexpr int kObjects = 24;
  for (uint64_t i = 0; i < kObjects; ++i) batch.push_back(MakeObject(400 + i));
  const double commits_before = Metric(kWriter, "kvstash_cluster_sync_commits_total");
  const double calls_before = Metric(kWriter, "kvstash_cluster_sync_replicate_calls_total");
  ASSERT_OK_AND_ASSIGN(std::vector<Status> results, writer->PutMany(batch));
  ASSERT_EQ(results.size(), batch.size());
  for (const Status& s : results) EXPECT_OK(s);
  // Each one acknowledged through the synchronous path...
  EXPECT_EQ(Metric(kWriter, "kvstash_cluster_sync_commits_total") - commits_before, kObjects);
  // ... in one Replicate per other owner (two here), not one per object: every object has an
  // owner other than the writer (R = 2 of 3), so object by object would take >= kObjects calls.
  const double calls = Metric(kWriter, "kvstash_cluster_sync_replicate_calls_total") - calls_before;
  EXPECT_GE(calls, 1);
  EXPECT_LT(calls, kObjects);
  std::printf("CommitMany of %d objects: %.0f Replicate calls\n", kObjects, calls);
  // Killed right after the acknowledgement: both survivors hold every object, byte for byte.
  nodes_[kWriter]->Kill();
  for (int node : {0, 1}) {
    for (const Object& o : batch) ASSERT_NO_FATAL_FAILURE(ExpectReadable(node, o));
  }
}

// The writer offers its owners leases on the objects (ReplicateRequest.offered): the owners read
// the bytes straight from its arena and never call back for a lease (Acquire) or its release.
// With --replicate-offers false they fetch as before, through Acquire. Counted on the owners.
class ClusterSyncOfferTest : public ClusterSyncTest, public ::testing::WithParamInterface<bool> {};

INSTANTIATE_TEST_SUITE_P(Offers, ClusterSyncOfferTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "Offered" : "NotOffered";
                         });

TEST_P(ClusterSyncOfferTest, OwnersReadOfferedLeasesWithoutCallingBack) {
  const bool offers = GetParam();
  for (int i = 0; i < kMaxNodes; ++i) {
    ASSERT_NO_FATAL_FAILURE(
        StartNode(i, 10, 5000, "o", {"--replicate-offers", offers ? "true" : "false"}));
  }
  ASSERT_TRUE(AllSee(kMaxNodes, 15s)) << "nodes did not see each other";
  constexpr int kWriter = 2;
  constexpr int kObjects = 12;
  std::vector<Object> written;
  for (uint64_t i = 0; i < kObjects; ++i) {
    written.push_back(MakeObject(700 + i));
    ASSERT_OK(
        clients_[kWriter]->Put(written.back().name, written.back().info, written.back().payload));
  }
  EXPECT_EQ(Metric(kWriter, "kvstash_cluster_sync_commits_total"), kObjects);
  // R = 2 of 3 nodes: every object has one or two owners besides the writer, each of which
  // read it once; nothing else replicated (no failure, no loss, no hot keys).
  const double offered = MetricOfAll("kvstash_cluster_replicate_offer_reads_total");
  const double acquired = MetricOfAll("kvstash_cluster_replicate_acquire_reads_total");
  std::printf("replicate reads: %.0f through offers, %.0f through Acquire\n", offered, acquired);
  if (offers) {
    EXPECT_EQ(Metric(kWriter, "kvstash_cluster_sync_offered_objects_total"), kObjects);
    EXPECT_GE(offered, kObjects);
    EXPECT_EQ(acquired, 0);
  } else {
    EXPECT_EQ(Metric(kWriter, "kvstash_cluster_sync_offered_objects_total"), 0);
    EXPECT_EQ(offered, 0);
    EXPECT_GE(acquired, kObjects);
  }
  // Either way the owners hold every object: readable byte for byte with the writer gone.
  nodes_[kWriter]->Kill();
  for (int node : {0, 1}) {
    for (const Object& o : written) ASSERT_NO_FATAL_FAILURE(ExpectReadable(node, o));
  }
}

TEST_F(ClusterSyncTest, TooFewLiveNodesFailsTheCommitWithUnavailable) {
  // A cluster of one node with R = 2: no commit can reach two owners.
  ASSERT_NO_FATAL_FAILURE(StartNode(0, 2, 5000, "solo"));
  ASSERT_TRUE(AllSee(1, 10s));
  const Object o = MakeObject(100);
  EXPECT_THAT(clients_[0]->Put(o.name, o.info, o.payload),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(Metric(0, "kvstash_cluster_sync_commits_total"), 0);
  // The object is still held here (and queued for forwarding), only not acknowledged.
  ASSERT_NO_FATAL_FAILURE(ExpectReadable(0, o));
}

TEST_F(ClusterSyncTest, OwnersThatDoNotAnswerFailTheCommitWithDeadlineExceeded) {
  // TTL 10 s: the stopped nodes stay in the view for the whole test.
  for (int i = 0; i < kMaxNodes; ++i) ASSERT_NO_FATAL_FAILURE(StartNode(i, 10, 4000));
  ASSERT_TRUE(AllSee(kMaxNodes, 15s));
  const Object before = MakeObject(200);
  ASSERT_THAT(clients_[0]->Put(before.name, before.info, before.payload), IsOk());
  EXPECT_EQ(Metric(0, "kvstash_cluster_sync_commits_total"), 1);
  // With 3 nodes and R = 2 every object has an owner other than node 0.
  nodes_[1]->Stop();
  nodes_[2]->Stop();
  const Object during = MakeObject(201);
  Status put = clients_[0]->Put(during.name, during.info, during.payload);
  nodes_[1]->Continue();
  nodes_[2]->Continue();
  EXPECT_THAT(put, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ(Metric(0, "kvstash_cluster_sync_failures_total"), 1);
  // Queued for the asynchronous forward, it reaches the owners once they answer again.
  for (int node = 0; node < kMaxNodes; ++node)
    ASSERT_NO_FATAL_FAILURE(ExpectReadable(node, during));
}

}  // namespace
}  // namespace kvstash::testing
