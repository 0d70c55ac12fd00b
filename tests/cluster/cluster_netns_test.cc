// A node cut off by its link and back: three real cachesvc nodes and one real etcd, each in a
// network namespace the test creates, joined by veths to a bridge in the test's own (unshared)
// network namespace; addresses 10.213.9.0/24 exist only inside these namespaces. R = 2, TTL 2 s,
// UCX over TCP. Cutting node 1's link (`ip link set ... down` on its bridge port): the others
// route around it, every committed object stays readable from them byte for byte, and the cut
// node fences itself; the link back up: it registers again and serves every object. Skips with a
// message where namespaces cannot be made (not root, no iproute2, no bridge). Every loop is
// bounded in count and time.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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

constexpr char kIp[] = "/usr/sbin/ip";
constexpr int kNodes = 3;
constexpr int kTtlS = 2;
constexpr char kNetnsPrefix[] = "kvcl-";

bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(50ms);
  }
  return cond();
}

std::string NodeAddress(int i) { return absl::StrCat("10.213.9.", i + 1); }
constexpr char kEtcdAddress[] = "10.213.9.10";
constexpr char kHubAddress[] = "10.213.9.254";

// Named namespaces of earlier runs of this test whose process is gone (a crash skips the
// destructor): removed, so they do not pile up in /var/run/netns.
void RemoveStaleNamespaces() {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/var/run/netns", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(kNetnsPrefix, 0) != 0) continue;
    const pid_t owner = static_cast<pid_t>(std::atoi(name.c_str() + sizeof(kNetnsPrefix) - 1));
    if (owner <= 0 || (::kill(owner, 0) != 0 && errno == ESRCH)) {
      std::string out;
      RunProgram({kIp, "netns", "del", name}, &out, 10'000);
    }
  }
}

// The test process moves into a network namespace of its own (so the bridge and its address
// live only there and vanish with the process), then makes one named namespace per etcd and
// node, each with a veth whose other end is a port of the bridge.
class ClusterNet {
 public:
  ClusterNet() {
    if (::unshare(CLONE_NEWNET) != 0) {
      error_ = absl::StrCat("unshare(CLONE_NEWNET): ", std::strerror(errno));
      return;
    }
    RemoveStaleNamespaces();
    const std::string tag = std::to_string(::getpid());
    std::vector<std::vector<std::string>> steps = {
        {kIp, "link", "set", "lo", "up"},
        {kIp, "link", "add", "kvbr", "type", "bridge"},
        {kIp, "addr", "add", std::string(kHubAddress) + "/24", "dev", "kvbr"},
        {kIp, "link", "set", "kvbr", "up"},
    };
    auto member = [&](const std::string& suffix, const std::string& address) {
      const std::string ns = kNetnsPrefix + tag + "-" + suffix;
      const std::string host_end = "kvh" + suffix, ns_end = "kvn" + suffix;
      namespaces_.push_back(ns);
      steps.push_back({kIp, "netns", "add", ns});
      steps.push_back({kIp, "link", "add", host_end, "type", "veth", "peer", "name", ns_end});
      steps.push_back({kIp, "link", "set", ns_end, "netns", ns});
      steps.push_back({kIp, "-n", ns, "addr", "add", address + "/24", "dev", ns_end});
      steps.push_back({kIp, "-n", ns, "link", "set", ns_end, "up"});
      steps.push_back({kIp, "-n", ns, "link", "set", "lo", "up"});
      steps.push_back({kIp, "link", "set", host_end, "master", "kvbr"});
      steps.push_back({kIp, "link", "set", host_end, "up"});
    };
    for (int i = 0; i < kNodes; ++i) member(std::to_string(i), NodeAddress(i));
    member("e", kEtcdAddress);
    for (const auto& step : steps) {
      std::string out;
      if (RunProgram(step, &out, 10'000) != 0) {
        error_ = absl::StrCat("'", absl::StrJoin(step, " "), "' failed: ", out);
        return;
      }
    }
  }
  ~ClusterNet() {
    for (const std::string& ns : namespaces_) {
      std::string out;
      RunProgram({kIp, "netns", "del", ns}, &out, 10'000);  // removes its veth pair too
    }
  }

  const std::string& error() const { return error_; }
  std::vector<std::string> Exec(int node) const {
    return {kIp, "netns", "exec", namespaces_[static_cast<size_t>(node)]};
  }
  std::vector<std::string> ExecEtcd() const { return {kIp, "netns", "exec", namespaces_.back()}; }
  // The node's bridge port up or down: its only link to the others.
  Status SetLink(int node, bool up) {
    std::string out;
    const std::vector<std::string> argv = {kIp, "link", "set", "kvh" + std::to_string(node),
                                           up ? "up" : "down"};
    if (RunProgram(argv, &out, 10'000) != 0) {
      return absl::InternalError(absl::StrCat(absl::StrJoin(argv, " "), ": ", out));
    }
    return OkStatus();
  }

 private:
  std::vector<std::string> namespaces_;
  std::string error_;
};

struct Object {
  ObjectName name;
  ObjectInfo info;
  std::vector<uint8_t> payload;
};

Object MakeObject(uint64_t i) {
  Object o;
  o.name = TestName(i, "netns-cluster");
  o.payload = TestPayload(i, TestInfo(64).payload_bytes);  // 16 KiB
  o.info = WithCrc(TestInfo(64), o.payload);
  return o;
}

ClientOptions StreamOnly() {
  ClientOptions o;
  o.use_shared_memory = false;
  o.rpc_timeout = 10s;
  return o;
}

class ClusterNetnsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0 || ::access(kIp, X_OK) != 0) {
      GTEST_SKIP() << "needs root and iproute2 to make network namespaces";
    }
    if (::access("/usr/bin/etcd", X_OK) != 0) {
      GTEST_SKIP() << "/usr/bin/etcd not installed (Debian etcd-server)";
    }
    net_ = std::make_unique<ClusterNet>();
    if (!net_->error().empty()) GTEST_SKIP() << "cannot make network namespaces: " << net_->error();
    // UCX would otherwise pick shared memory, which crosses namespaces on one host.
    ::setenv("UCX_TLS", "tcp", 1);
    ASSERT_OK_AND_ASSIGN(etcd_, EtcdProcess::Start(kEtcdAddress, net_->ExecEtcd()));
    secret_ = dirs_[0].path() + "/secret";
    std::ofstream(secret_) << "kvstash-netns-cluster-secret-0123456789\n";
    for (int i = 0; i < kNodes; ++i) ASSERT_NO_FATAL_FAILURE(StartNode(i));
    ASSERT_TRUE(AllSee(kNodes, 15s)) << "nodes did not see each other";
  }

  void TearDown() override {
    for (auto& c : clients_) c.reset();
    for (auto& n : nodes_) n.reset();
    etcd_.reset();
    net_.reset();
    ::unsetenv("UCX_TLS");
  }

  void StartNode(int i) {
    ServiceOptions o;
    o.listen = NodeAddress(i) + ":7300";
    o.metrics = true;
    o.metrics_address = NodeAddress(i);
    o.command_prefix = net_->Exec(i);
    o.extra_args = {"--etcd",
                    etcd_->endpoint(),
                    "--replicas",
                    "2",
                    "--cluster-ttl-s",
                    std::to_string(kTtlS),
                    "--cluster-name",
                    "netns",
                    "--node-id",
                    "n" + std::to_string(i),
                    "--peer-secret-file",
                    secret_,
                    "--insecure-tcp",
                    "--peer-timeout-ms",
                    "2000",
                    "--peer-retry-ms",
                    "300"};
    ASSERT_OK_AND_ASSIGN(nodes_[i], ServiceProcess::Start(dirs_[i].path(), o));
    ASSERT_OK_AND_ASSIGN(clients_[i], KvClient::Connect(nodes_[i]->target(), StreamOnly()));
  }

  double Metric(int i, const char* family) {
    return MetricSum(NodeAddress(i), nodes_[i]->metrics_port(), family);
  }

  bool AllSee(int n, std::chrono::milliseconds limit, int skip = -1) {
    return WaitFor(
        [&] {
          for (int i = 0; i < kNodes; ++i) {
            if (i == skip) continue;
            if (Metric(i, "kvstash_cluster_nodes") != n) return false;
          }
          return true;
        },
        limit);
  }

  // Until no node (but `skip`) has forwards queued, twice 300 ms apart (a batch taken off the
  // queue is still in flight).
  bool Settled(std::chrono::milliseconds limit, int skip = -1) {
    auto idle = [&] {
      for (int i = 0; i < kNodes; ++i) {
        if (i != skip && Metric(i, "kvstash_cluster_replication_pending") != 0) return false;
      }
      return true;
    };
    return WaitFor(
        [&] {
          if (!idle()) return false;
          std::this_thread::sleep_for(300ms);
          return idle();
        },
        limit);
  }

  uint64_t UnderReplicated(int node) {
    auto status = clients_[node]->ClusterStatus();
    if (!status.ok()) return ~0ull;
    uint64_t sum = 0;
    for (const auto& line : status->nodes) sum += line.under_replicated;
    return sum;
  }

  void ExpectReadable(int node, const Object& o) {
    Result<GetReply> got = absl::UnknownError("not tried");
    for (int t = 0; t < 20 && !got.ok(); ++t) {
      got = clients_[node]->Get(o.name);
      if (!got.ok()) std::this_thread::sleep_for(100ms);
    }
    ASSERT_THAT(got, IsOk()) << "node " << node;
    EXPECT_TRUE(got->payload == o.payload) << "node " << node << ": bytes differ";
  }

  std::unique_ptr<ClusterNet> net_;  // destroyed last (TearDown resets it after the processes)
  std::unique_ptr<EtcdProcess> etcd_;
  TempDir dirs_[kNodes];
  std::string secret_;
  std::unique_ptr<ServiceProcess> nodes_[kNodes];
  std::unique_ptr<KvClient> clients_[kNodes];
};

TEST_F(ClusterNetnsTest, ANodeCutOffByItsLinkIsRoutedAroundFencesAndRejoins) {
  constexpr int kCut = 1;
  // Objects put on every node (the cut node included), forwarded to their owners.
  std::vector<Object> before;
  for (uint64_t i = 0; i < 60; ++i) {
    before.push_back(MakeObject(i));
    const Object& o = before.back();
    ASSERT_THAT(clients_[i % kNodes]->Put(o.name, o.info, o.payload), IsOk());
  }
  ASSERT_TRUE(Settled(20s));

  const auto cut_at = Clock::now();
  ASSERT_OK(net_->SetLink(kCut, false));
  // The others drop it from their view once its lease expires. TTL + 1 s is the goal (measured
  // in bench/cluster); the bound leaves room for a loaded machine.
  ASSERT_TRUE(AllSee(2, std::chrono::seconds(kTtlS + 6), kCut));
  const double detect_s = std::chrono::duration<double>(Clock::now() - cut_at).count();
  std::printf("the others routed around the cut node after %.2f s (TTL %d s)\n", detect_s, kTtlS);
  // It fences itself: no renewal can reach etcd.
  ASSERT_TRUE(
      WaitFor([&] { return nodes_[kCut]->Log().find("event=cluster_fenced") != std::string::npos; },
              std::chrono::seconds(kTtlS + 6)))
      << nodes_[kCut]->Log();

  // Writes go on at the survivors while the node is away.
  std::vector<Object> during;
  for (uint64_t i = 100; i < 140; ++i) {
    during.push_back(MakeObject(i));
    const Object& o = during.back();
    ASSERT_THAT(clients_[i % 2 == 0 ? 0 : 2]->Put(o.name, o.info, o.payload), IsOk());
  }
  ASSERT_TRUE(Settled(30s, kCut));
  for (int node : {0, 2}) {
    for (const Object& o : before) ASSERT_NO_FATAL_FAILURE(ExpectReadable(node, o));
    for (const Object& o : during) ASSERT_NO_FATAL_FAILURE(ExpectReadable(node, o));
  }
  // Everything the survivors hold is again on min(R, live) = 2 live nodes.
  EXPECT_TRUE(WaitFor([&] { return UnderReplicated(0) == 0; }, 20s)) << UnderReplicated(0);

  // The link back up: the node registers again (a new lease, a larger epoch) and the fence lifts.
  ASSERT_OK(net_->SetLink(kCut, true));
  ASSERT_TRUE(AllSee(3, 40s)) << nodes_[kCut]->Log();
  EXPECT_TRUE(WaitFor([&] { return Metric(kCut, "kvstash_cluster_fenced") == 0; }, 10s));
  EXPECT_THAT(nodes_[kCut]->Log(), ::testing::HasSubstr("event=cluster_unfenced"));
  // It serves every object: its own, and those written while it was away (from their owners).
  for (const Object& o : before) ASSERT_NO_FATAL_FAILURE(ExpectReadable(kCut, o));
  for (const Object& o : during) ASSERT_NO_FATAL_FAILURE(ExpectReadable(kCut, o));
  // And takes writes again, forwarded to their owners.
  const double forwarded = Metric(kCut, "kvstash_cluster_replicated_objects_total");
  std::vector<Object> after;
  for (uint64_t i = 200; i < 220; ++i) {
    after.push_back(MakeObject(i));
    const Object& o = after.back();
    ASSERT_THAT(clients_[kCut]->Put(o.name, o.info, o.payload), IsOk());
  }
  ASSERT_TRUE(Settled(20s));
  EXPECT_GT(Metric(kCut, "kvstash_cluster_replicated_objects_total"), forwarded);
  for (const Object& o : after) ASSERT_NO_FATAL_FAILURE(ExpectReadable(0, o));
}

}  // namespace
}  // namespace kvstash::testing
