// Two cachesvc nodes in two network namespaces joined by a veth pair, with addresses that exist
// only inside them: an object put on node A through the CLI comes back byte for byte from node B
// (`kvstash get KEY FILE --target B`), carried by UCX over TCP across the link. Skips with a
// message where namespaces cannot be made (not root, no iproute2).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

constexpr char kIp[] = "/usr/sbin/ip";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class TwoNamespaces {
 public:
  TwoNamespaces() {
    const std::string tag = std::to_string(::getpid() % 100000);
    a_ = "kvst-" + tag + "-a";
    b_ = "kvst-" + tag + "-b";
    // 10.0.0.0/8 addresses private to these namespaces; a subnet per test process.
    const int subnet = 1 + static_cast<int>(::getpid() % 250);
    addr_a_ = absl::StrCat("10.231.", subnet, ".1");
    addr_b_ = absl::StrCat("10.231.", subnet, ".2");
    const std::string veth_a = "kva" + tag, veth_b = "kvb" + tag;
    const std::vector<std::vector<std::string>> steps = {
        {kIp, "netns", "add", a_},
        {kIp, "netns", "add", b_},
        {kIp, "link", "add", veth_a, "type", "veth", "peer", "name", veth_b},
        {kIp, "link", "set", veth_a, "netns", a_},
        {kIp, "link", "set", veth_b, "netns", b_},
        {kIp, "-n", a_, "addr", "add", addr_a_ + "/24", "dev", veth_a},
        {kIp, "-n", b_, "addr", "add", addr_b_ + "/24", "dev", veth_b},
        {kIp, "-n", a_, "link", "set", veth_a, "up"},
        {kIp, "-n", b_, "link", "set", veth_b, "up"},
        {kIp, "-n", a_, "link", "set", "lo", "up"},
        {kIp, "-n", b_, "link", "set", "lo", "up"},
    };
    for (const auto& step : steps) {
      std::string out;
      if (RunProgram(step, &out, 10'000) != 0) {
        error_ = absl::StrCat("'", absl::StrJoin(step, " "), "' failed: ", out);
        return;
      }
    }
  }
  ~TwoNamespaces() {
    std::string out;
    RunProgram({kIp, "netns", "del", a_}, &out, 10'000);  // removes the veth pair too
    RunProgram({kIp, "netns", "del", b_}, &out, 10'000);
  }
  const std::string& error() const { return error_; }
  std::vector<std::string> Exec(const std::string& ns) const { return {kIp, "netns", "exec", ns}; }
  const std::string& a() const { return a_; }
  const std::string& b() const { return b_; }
  const std::string& addr_a() const { return addr_a_; }
  const std::string& addr_b() const { return addr_b_; }

 private:
  std::string a_, b_, addr_a_, addr_b_, error_;
};

TEST(PeerNetnsTest, GetOnNodeBReturnsAnObjectPutOnNodeAAcrossAVethLink) {
  if (::geteuid() != 0 || ::access(kIp, X_OK) != 0) {
    GTEST_SKIP() << "needs root and iproute2 to make network namespaces";
  }
  TwoNamespaces net;
  if (!net.error().empty()) GTEST_SKIP() << "cannot make network namespaces: " << net.error();
  // UCX would otherwise pick shared memory, which crosses namespaces on one host.
  ::setenv("UCX_TLS", "tcp", 1);
  TempDir dir_a, dir_b, files;
  const std::string secret = files.path() + "/secret";
  std::ofstream(secret) << "netns-test-cluster-secret-000000\n";

  ServiceOptions a_opts;
  a_opts.listen = net.addr_a() + ":7300";
  a_opts.command_prefix = net.Exec(net.a());
  // Plain TCP between the namespaces (this test is about the data plane; mutual TLS between
  // nodes is cachesvc_security_test's).
  a_opts.extra_args = {"--peer-secret-file", secret, "--insecure-tcp"};
  ASSERT_OK_AND_ASSIGN(auto a, ServiceProcess::Start(dir_a.path(), a_opts));
  ServiceOptions b_opts;
  b_opts.listen = net.addr_b() + ":7300";
  b_opts.command_prefix = net.Exec(net.b());
  b_opts.extra_args = {"--peer-secret-file", secret, "--insecure-tcp", "--peer",
                       net.addr_a() + ":7300"};
  ASSERT_OK_AND_ASSIGN(auto b, ServiceProcess::Start(dir_b.path(), b_opts));

  const std::string in = files.path() + "/in.bin", out = files.path() + "/out.bin";
  {
    std::vector<uint8_t> payload = TestPayload(77, 3 << 20);
    std::ofstream(in, std::ios::binary)
        .write(reinterpret_cast<const char*>(payload.data()), payload.size());
  }
  auto cli = [&](const std::string& ns, std::vector<std::string> args) {
    std::vector<std::string> argv = net.Exec(ns);
    argv.push_back(BinaryPath("cli/kvstash"));
    argv.insert(argv.end(), args.begin(), args.end());
    std::string output;
    int rc = RunProgram(argv, &output, 60'000);
    return std::make_pair(rc, output);
  };
  auto [put_rc, put_out] = cli(net.a(), {"put", "netns-key", in, "--target", a->target()});
  ASSERT_EQ(put_rc, 0) << put_out;
  auto [get_rc, get_out] = cli(net.b(), {"get", "netns-key", out, "--target", b->target()});
  ASSERT_EQ(get_rc, 0) << get_out << "\nnode B:\n" << b->Log();
  EXPECT_TRUE(ReadFile(in) == ReadFile(out)) << "the object differs after crossing the link";
  EXPECT_THAT(b->Log(), ::testing::HasSubstr("data_plane=ucx"));
  // B holds it now; A is no longer needed.
  a->Kill();
  auto [again_rc, again_out] = cli(net.b(), {"get", "netns-key", out, "--target", b->target()});
  EXPECT_EQ(again_rc, 0) << again_out;
  ::unsetenv("UCX_TLS");
}

}  // namespace
}  // namespace kvstash::testing
