// Membership against a real etcd: registration, the view of other nodes, lease expiry and the
// fence, re-registration, and a watch that resumes after etcd restarts. Short TTLs (2 s) keep
// the test quick; every wait is bounded.
#include "kvstash/cluster/membership.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <thread>

#include "etcd_process.h"
#include "kvstash/cluster/etcd_client.h"
#include "testing/status_matchers.h"

namespace kvstash::cluster {
namespace {

using ::kvstash::testing::EtcdProcess;
using ::kvstash::testing::IsOk;
using ::kvstash::testing::StatusIs;
using Clock = std::chrono::steady_clock;

bool WaitFor(const std::function<bool()>& cond, int timeout_ms) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (Clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return cond();
}

std::vector<std::string> Ids(const MemberView& v) {
  std::vector<std::string> ids;
  for (const auto& n : v.nodes) ids.push_back(n.id);
  return ids;
}

MembershipOptions Options(const std::string& id, uint32_t ttl_s = 2) {
  MembershipOptions o;
  o.cluster = "t";
  o.self.id = id;
  o.self.grpc_address = "127.0.0.1:7" + std::to_string(id.size());
  o.self.capacity_bytes = 1 << 30;
  o.ttl_s = ttl_s;
  return o;
}

class MembershipTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto etcd = EtcdProcess::Start();
    if (!etcd.ok() && etcd.status().code() == absl::StatusCode::kFailedPrecondition) {
      GTEST_SKIP() << etcd.status();
    }
    ASSERT_THAT(etcd, IsOk());
    etcd_ = std::move(*etcd);
    ASSERT_OK_AND_ASSIGN(client_,
                         EtcdClient::Create({.endpoints = {etcd_->endpoint()}, .timeout_ms = 500}));
  }

  std::unique_ptr<EtcdProcess> etcd_;
  std::unique_ptr<EtcdClient> client_;
};

TEST_F(MembershipTest, EtcdClientPutsGetsDeletesAndLeases) {
  ASSERT_OK_AND_ASSIGN(int64_t rev, client_->Put("/p/a", "1"));
  EXPECT_GT(rev, 0);
  ASSERT_THAT(client_->Put("/p/b", "2"), IsOk());
  ASSERT_THAT(client_->Put("/q", "3"), IsOk());
  ASSERT_OK_AND_ASSIGN(RangeResult r, client_->GetPrefix("/p/"));
  ASSERT_EQ(r.kvs.size(), 2u);
  EXPECT_EQ(r.kvs[0].value, "1");
  EXPECT_EQ(r.kvs[1].key, "/p/b");
  ASSERT_OK_AND_ASSIGN(int64_t deleted, client_->Delete("/p/a"));
  EXPECT_EQ(deleted, 1);
  ASSERT_OK_AND_ASSIGN(int64_t lease, client_->LeaseGrant(5));
  ASSERT_THAT(client_->Put("/p/leased", "x", lease), IsOk());
  ASSERT_OK_AND_ASSIGN(int64_t ttl, client_->LeaseKeepAliveOnce(lease));
  EXPECT_GT(ttl, 0);
  ASSERT_THAT(client_->LeaseRevoke(lease), IsOk());
  ASSERT_OK_AND_ASSIGN(RangeResult after, client_->Get("/p/leased"));
  EXPECT_TRUE(after.kvs.empty());  // revoking the lease deleted its key
  EXPECT_THAT(client_->LeaseKeepAliveOnce(lease), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(PrefixRangeEnd("/a/"), "/a0");
}

TEST_F(MembershipTest, EtcdClientReportsAnUnreachableEndpointAsUnavailable) {
  etcd_->Kill();
  EXPECT_THAT(client_->Put("/p/a", "1"), StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(MembershipTest, NodesRegisterAndSeeEachOtherAndALeaveAtOnce) {
  ASSERT_OK_AND_ASSIGN(auto a, Membership::Start(client_.get(), Options("node-a"), nullptr));
  ASSERT_OK_AND_ASSIGN(auto b, Membership::Start(client_.get(), Options("node-b"), nullptr));
  EXPECT_FALSE(a->fenced());
  ASSERT_TRUE(WaitFor([&] { return a->view().nodes.size() == 2; }, 5000)) << a->view().nodes.size();
  ASSERT_TRUE(WaitFor([&] { return b->view().nodes.size() == 2; }, 5000));
  EXPECT_THAT(Ids(a->view()), ::testing::ElementsAre("node-a", "node-b"));
  ASSERT_OK_AND_ASSIGN(RangeResult r, client_->GetPrefix(NodesPrefix("t")));
  ASSERT_EQ(r.kvs.size(), 2u);
  ASSERT_OK_AND_ASSIGN(NodeRecord rec, DecodeNodeRecord(r.kvs[0].value));
  EXPECT_EQ(rec.id, "node-a");
  EXPECT_GT(rec.epoch, 0u);
  EXPECT_NE(r.kvs[0].lease, 0);
  b->Stop();  // revokes its lease: gone well before its TTL
  ASSERT_TRUE(WaitFor([&] { return a->view().nodes.size() == 1; }, 1500));
  EXPECT_THAT(Ids(a->view()), ::testing::ElementsAre("node-a"));
}

TEST_F(MembershipTest, ANodeThatCannotRenewFencesItselfAndReRegistersWhenEtcdReturns) {
  std::atomic<int> fenced_calls{0};
  ASSERT_OK_AND_ASSIGN(
      auto a, Membership::Start(client_.get(), Options("node-a"), [&](const MemberView& v) {
        if (v.fenced) ++fenced_calls;
      }));
  ASSERT_FALSE(a->fenced());
  const uint64_t epoch_before = a->view().nodes.at(0).epoch;
  etcd_->Pause();  // no renewal is acknowledged from now on
  ASSERT_TRUE(WaitFor([&] { return a->fenced(); }, 2000 + 1500));
  EXPECT_TRUE(a->view().fenced);
  EXPECT_TRUE(Ids(a->view()).empty());  // a fenced node leaves itself out of its own view
  ASSERT_TRUE(WaitFor([&] { return fenced_calls.load() > 0; }, 1500));
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));  // past the lease's TTL
  etcd_->Resume();
  // etcd expires the lease it saw no renewal for (or keeps it); either way the fence lifts.
  ASSERT_TRUE(WaitFor([&] { return !a->fenced(); }, 8000));
  ASSERT_TRUE(WaitFor([&] { return a->view().nodes.size() == 1; }, 5000));
  MemberView v = a->view();
  if (v.registrations > 1) {
    EXPECT_GT(v.nodes.at(0).epoch, epoch_before);
  }
  ASSERT_OK_AND_ASSIGN(RangeResult r, client_->GetPrefix(NodesPrefix("t")));
  EXPECT_EQ(r.kvs.size(), 1u);
}

TEST_F(MembershipTest, AnExpiredLeaseRemovesTheNodeFromOthersAndItRegistersAgain) {
  ASSERT_OK_AND_ASSIGN(auto a, Membership::Start(client_.get(), Options("node-a"), nullptr));
  ASSERT_OK_AND_ASSIGN(auto b, Membership::Start(client_.get(), Options("node-b"), nullptr));
  ASSERT_TRUE(WaitFor([&] { return a->view().nodes.size() == 2; }, 5000));
  // Revoke b's lease behind its back: etcd deletes its record, as when its TTL runs out.
  ASSERT_OK_AND_ASSIGN(RangeResult r, client_->Get(NodesPrefix("t") + "node-b"));
  ASSERT_EQ(r.kvs.size(), 1u);
  ASSERT_THAT(client_->LeaseRevoke(r.kvs[0].lease), IsOk());
  // b notices at its next renewal (TTL / 3) and registers anew.
  ASSERT_TRUE(WaitFor([&] { return b->view().registrations >= 2; }, 5000));
  ASSERT_TRUE(WaitFor([&] { return a->view().nodes.size() == 2; }, 5000));
  ASSERT_OK_AND_ASSIGN(RangeResult again, client_->Get(NodesPrefix("t") + "node-b"));
  ASSERT_EQ(again.kvs.size(), 1u);
  EXPECT_NE(again.kvs[0].lease, r.kvs[0].lease);
}

TEST_F(MembershipTest, TheWatchResumesAfterEtcdRestartsWithoutLosingEvents) {
  std::mutex mu;
  std::vector<std::string> seen;
  ASSERT_THAT(client_->Put("/w/0", "0"), IsOk());
  ASSERT_OK_AND_ASSIGN(RangeResult start, client_->GetPrefix("/w/"));
  ASSERT_OK_AND_ASSIGN(auto watcher, client_->WatchPrefix(
                                         "/w/", start.revision + 1,
                                         [&](const std::vector<WatchEvent>& events, int64_t) {
                                           std::lock_guard<std::mutex> lock(mu);
                                           for (const auto& e : events) seen.push_back(e.kv.key);
                                         },
                                         [] { return int64_t{0}; }));
  ASSERT_THAT(client_->Put("/w/1", "1"), IsOk());
  ASSERT_TRUE(WaitFor(
      [&] {
        std::lock_guard<std::mutex> lock(mu);
        return seen.size() == 1;
      },
      5000));
  ASSERT_THAT(etcd_->Restart(), IsOk());  // SIGKILL, then the same data directory and port
  // Written while the watcher is still reconnecting: delivered once it resumes.
  ASSERT_TRUE(WaitFor([&] { return client_->Put("/w/2", "2").ok(); }, 5000));
  ASSERT_THAT(client_->Put("/w/3", "3"), IsOk());
  ASSERT_TRUE(WaitFor(
      [&] {
        std::lock_guard<std::mutex> lock(mu);
        return seen.size() >= 3;
      },
      10'000));
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_THAT(seen, ::testing::ElementsAre("/w/1", "/w/2", "/w/3"));
  EXPECT_GE(watcher->streams_opened(), 2u);
}

}  // namespace
}  // namespace kvstash::cluster
