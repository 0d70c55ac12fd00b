// Encoded peer fetches (--peer-transfer-encoding, docs/benchmarks-transfer.md "Slow links"): two
// real cachesvc processes, node B fetching KV that lives only on node A. With cachegen or kvq (or
// auto on a link configured slower than a codec's measured break-even rate) B commits exactly the
// reconstruction A's encoder computed (the bytes a client of A accepting that codec decodes),
// flagged lossy, with the crc32c of what was committed; with raw (the default) or auto on a fast
// link, the stored bytes arrive unchanged. Only auto calibrates the codecs at start-up
// (kvstash_peer_codec_calibrations_total).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "kvstash/client/kv_client.h"
#include "kvstash/codec/kvq.h"
#include "kvstash/codec/synthetic_kv.h"
#include "kvstash/common/crc32c.h"
#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using client::GetOptions;
using client::GetReply;
using client::KvClient;
using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;

constexpr char kSecret[] = "kvstash-test-cluster-secret-0123456789";

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

// What B's log says auto chose for a configured link: "cachegen-l2", "kvq-l3", "raw".
std::string LoggedChoice(const std::string& log) {
  const std::string key = "choice=";
  const size_t at = log.find(key);
  if (at == std::string::npos) return "";
  const size_t end = log.find(' ', at);
  return log.substr(at + key.size(), end == std::string::npos ? end : end - at - key.size());
}

// B's start-up codec calibrations (only auto runs one), from its /metrics. The family is there on
// every node with peers, so 0 is a scraped zero, not a missing metric.
double Calibrations(const ServiceProcess& b) {
  std::string body;
  EXPECT_EQ(HttpGet(b.metrics_port(), "/metrics", &body), 200);
  EXPECT_THAT(body, HasSubstr("\nkvstash_peer_codec_calibrations_total "));
  return MetricSum(b.metrics_port(), "kvstash_peer_codec_calibrations_total");
}

ObjectName ChunkName(uint64_t i) {
  return MakeObjectName("peer-encoding", Hash128{0x534d4f4cull, 3}, Hash128{i + 1, i * 17 + 3});
}

class PeerEncodingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServiceOptions a_opts;
    a_opts.tcp = true;
    a_opts.extra_args = {"--peer-secret-file", WriteSecret(dir_a_.path())};
    ASSERT_OK_AND_ASSIGN(a_, ServiceProcess::Start(dir_a_.path(), a_opts));
    ASSERT_OK_AND_ASSIGN(client_a_, KvClient::Connect(a_->target(), StreamOnly()));
    info_ = SmolChunkInfo();  // 5.9 MB of f16 KV, which CacheGen takes
    codec::SyntheticKvOptions so;
    so.seed = 91;
    original_ = codec::SyntheticKv(info_.layout, so);
    info_.payload_crc32c = Crc32c(original_.data(), original_.size());
    ASSERT_OK(client_a_->Put(ChunkName(0), info_, original_));
    // What A's encoder makes of it: the reconstruction a CacheGen-accepting client decodes.
    GetOptions cachegen;
    cachegen.accept_encoding = Encoding::kCacheGen;
    ASSERT_OK_AND_ASSIGN(reconstruction_, client_a_->Get(ChunkName(0), cachegen));
    ASSERT_TRUE(reconstruction_.info.lossy);
    ASSERT_LT(reconstruction_.wire_bytes, info_.payload_bytes);
    ASSERT_NE(reconstruction_.payload, original_);
  }

  // A node B with A as its peer and `extra` flags (UCX over TCP, the network path).
  std::unique_ptr<ServiceProcess> StartB(TempDir& dir, std::vector<std::string> extra) {
    ServiceOptions o;
    o.tcp = true;
    o.metrics = true;
    o.extra_args = {"--peer-secret-file", WriteSecret(dir.path()), "--peer",
                    a_->target(),         "--peer-timeout-ms",     "30000"};
    o.extra_args.insert(o.extra_args.end(), extra.begin(), extra.end());
    auto b = ServiceProcess::Start(dir.path(), o);
    EXPECT_THAT(b, IsOk());
    return b.ok() ? std::move(*b) : nullptr;
  }

  // What A's KVQ encoder at `level` makes of the chunk (A's transfer codec takes KvqOptions'
  // defaults at that level).
  std::vector<uint8_t> KvqReconstruction(int level) {
    std::vector<uint8_t> out(original_.size());
    codec::KvqOptions o;
    o.level = level;
    o.reconstruction = std::span<uint8_t>(out);
    EXPECT_OK(codec::EncodeKvq(info_.layout, original_, o));
    return out;
  }

  TempDir dir_a_;
  std::unique_ptr<ServiceProcess> a_;
  std::unique_ptr<KvClient> client_a_;
  ObjectInfo info_;
  std::vector<uint8_t> original_;
  GetReply reconstruction_;
};

TEST_F(PeerEncodingTest, CacheGenFetchCommitsThePeersReconstruction) {
  TempDir dir_b;
  auto b = StartB(dir_b, {"--peer-transfer-encoding", "cachegen"});
  ASSERT_NE(b, nullptr);
  ASSERT_OK_AND_ASSIGN(auto client_b, KvClient::Connect(b->target(), StreamOnly()));
  ASSERT_OK_AND_ASSIGN(GetReply got, client_b->Get(ChunkName(0)));  // crc32c checked by client
  EXPECT_TRUE(got.info.lossy);
  EXPECT_EQ(got.info.payload_bytes, info_.payload_bytes);
  EXPECT_EQ(got.info.payload_crc32c, reconstruction_.info.payload_crc32c);
  EXPECT_EQ(Crc32c(got.payload.data(), got.payload.size()), got.info.payload_crc32c);
  EXPECT_TRUE(got.payload == reconstruction_.payload) << "B committed other bytes than A encoded";
  EXPECT_EQ(MetricSum(b->metrics_port(), "kvstash_peer_encoded_objects_total"), 1);
  EXPECT_EQ(MetricSum(b->metrics_port(), "kvstash_peer_encoded_wire_bytes_total"),
            static_cast<double>(reconstruction_.wire_bytes));
  EXPECT_EQ(Calibrations(*b), 0) << "a fixed encoding needs no measured rates";
  // Kept in B's CPU tier as what it is: the lossy reconstruction, served again without A.
  a_->Kill();
  ASSERT_OK_AND_ASSIGN(GetReply again, client_b->Get(ChunkName(0)));
  EXPECT_TRUE(again.payload == reconstruction_.payload);
  EXPECT_TRUE(again.info.lossy);
}

TEST_F(PeerEncodingTest, KvqFetchCommitsThePeersKvqReconstruction) {
  TempDir dir_b;
  auto b = StartB(dir_b, {"--peer-transfer-encoding", "kvq"});
  ASSERT_NE(b, nullptr);
  ASSERT_OK_AND_ASSIGN(auto client_b, KvClient::Connect(b->target(), StreamOnly()));
  ASSERT_OK_AND_ASSIGN(GetReply got, client_b->Get(ChunkName(0)));
  EXPECT_TRUE(got.info.lossy);
  EXPECT_EQ(Crc32c(got.payload.data(), got.payload.size()), got.info.payload_crc32c);
  // A's transfer level (the default, 2), as KVQ.
  EXPECT_TRUE(got.payload == KvqReconstruction(2)) << "B committed other bytes than A encoded";
  EXPECT_EQ(MetricSum(b->metrics_port(), "kvstash_peer_encoded_objects_total"), 1);
  EXPECT_LT(MetricSum(b->metrics_port(), "kvstash_peer_encoded_wire_bytes_total") * 2,
            static_cast<double>(info_.payload_bytes));
}

TEST_F(PeerEncodingTest, AutoEncodesOnASlowConfiguredLinkOnly) {
  TempDir dir_slow, dir_fast;
  auto slow = StartB(dir_slow, {"--peer-transfer-encoding", "auto", "--peer-link-mbps", "1"});
  auto fast =
      StartB(dir_fast, {"--peer-transfer-encoding", "auto", "--peer-link-mbps", "10000000"});
  ASSERT_NE(slow, nullptr);
  ASSERT_NE(fast, nullptr);
  EXPECT_THAT(slow->Log(), HasSubstr("event=peer_transfer_encoding policy=auto"));
  ASSERT_OK_AND_ASSIGN(auto client_slow, KvClient::Connect(slow->target(), StreamOnly()));
  ASSERT_OK_AND_ASSIGN(auto client_fast, KvClient::Connect(fast->target(), StreamOnly()));

  // At 1 Mbit/s the link dominates: the candidate with the best measured ratio, CacheGen at the
  // floor level or a KVQ level at least as exact (which one is this host's measurement).
  const std::string choice = LoggedChoice(slow->Log());
  EXPECT_THAT(slow->Log(), HasSubstr("candidates=cachegen-l2:ratio="));
  ASSERT_OK_AND_ASSIGN(GetReply over_slow, client_slow->Get(ChunkName(0)));
  EXPECT_TRUE(over_slow.info.lossy);
  if (choice == "cachegen-l2") {
    EXPECT_TRUE(over_slow.payload == reconstruction_.payload);
  } else {
    ASSERT_EQ(choice.substr(0, 5), "kvq-l") << slow->Log();
    EXPECT_TRUE(over_slow.payload == KvqReconstruction(choice[5] - '0')) << choice;
  }
  EXPECT_EQ(LoggedChoice(fast->Log()), "raw");
  EXPECT_EQ(Calibrations(*slow), 1);
  EXPECT_EQ(Calibrations(*fast), 1);
  EXPECT_EQ(MetricSum(slow->metrics_port(), "kvstash_peer_encoded_objects_total"), 1);

  ASSERT_OK_AND_ASSIGN(GetReply over_fast, client_fast->Get(ChunkName(0)));
  EXPECT_FALSE(over_fast.info.lossy);
  EXPECT_TRUE(over_fast.payload == original_);
  EXPECT_EQ(MetricSum(fast->metrics_port(), "kvstash_peer_encoded_objects_total"), 0);
}

TEST_F(PeerEncodingTest, AutoWithoutAMeasurementAndRawByDefaultMoveTheStoredBytes) {
  TempDir dir_auto, dir_raw;
  // auto with a measured link: the first fetch has no measurement yet and goes raw.
  auto measured = StartB(dir_auto, {"--peer-transfer-encoding", "auto"});
  auto raw = StartB(dir_raw, {});
  ASSERT_NE(measured, nullptr);
  ASSERT_NE(raw, nullptr);
  for (ServiceProcess* b : {measured.get(), raw.get()}) {
    ASSERT_OK_AND_ASSIGN(auto client_b, KvClient::Connect(b->target(), StreamOnly()));
    ASSERT_OK_AND_ASSIGN(GetReply got, client_b->Get(ChunkName(0)));
    EXPECT_FALSE(got.info.lossy);
    EXPECT_TRUE(got.payload == original_);
    EXPECT_EQ(MetricSum(b->metrics_port(), "kvstash_peer_encoded_objects_total"), 0);
  }
  // Only auto calibrates the codecs at start-up; raw, the default, does not.
  EXPECT_EQ(Calibrations(*measured), 1);
  EXPECT_EQ(Calibrations(*raw), 0);
  EXPECT_THAT(raw->Log(), Not(HasSubstr("event=peer_transfer_encoding")));
}

}  // namespace
}  // namespace kvstash::testing
