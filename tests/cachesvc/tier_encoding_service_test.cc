// The real cachesvc binary with a CacheGen-encoded SSD tier (--ssd-encoding cachegen): raw KV
// chunks put durably, the daemon restarted, read back from SSD through KvClient: the decoded KV is
// within the quantisation bound, flagged lossy, its crc32c matches the returned info, and the
// SSD tier reports far fewer bytes used than the objects hold; /metrics has the encoding series.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kv_bound.h"
#include "kvstash/client/kv_client.h"
#include "kvstash/codec/synthetic_kv.h"
#include "kvstash/common/crc32c.h"
#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using client::KvClient;
using ::testing::HasSubstr;

ObjectName ChunkName(uint64_t i) {
  return MakeObjectName("tier-encoding", Hash128{0x534d4f4cull, 2}, Hash128{i + 1, i * 31 + 5});
}

const client::TierStats* SsdTier(const client::ServiceStats& stats) {
  for (const auto& t : stats.tiers)
    if (t.tier == client::Tier::kSsd) return &t;
  return nullptr;
}

TEST(TierEncodingService, CompressedSsdSurvivesRestartAndServesDecodedKv) {
  TempDir dir;
  ServiceOptions options;
  options.metrics = true;
  options.extra_args = {"--ssd-encoding", "cachegen", "--ssd-encoding-level", "2"};
  const ObjectInfo info = SmolChunkInfo();  // 256 tokens of SmolLM2-135M, 5.9 MB
  std::vector<std::vector<uint8_t>> originals;
  for (uint64_t i = 0; i < 3; ++i) {
    codec::SyntheticKvOptions so;
    so.seed = 40 + i;
    originals.push_back(codec::SyntheticKv(info.layout, so));
  }
  {
    auto svc = ServiceProcess::Start(dir.path(), options);
    ASSERT_OK(svc);
    auto kv = KvClient::Connect((*svc)->target());
    ASSERT_OK(kv);
    client::PutOptions po;
    po.durable = true;
    for (uint64_t i = 0; i < originals.size(); ++i) {
      ASSERT_OK((*kv)->Put(ChunkName(i), info, originals[i], po));
    }
    std::string body;
    ASSERT_EQ(HttpGet((*svc)->metrics_port(), "/metrics", &body), 200);
    EXPECT_THAT(body, HasSubstr("kvstash_storage_ssd_encoded_bytes_total{stage=\"before\"} " +
                                std::to_string(3 * info.payload_bytes)));
    EXPECT_THAT(body, HasSubstr("kvstash_storage_ssd_encoding_ratio"));
    EXPECT_THAT(body, HasSubstr("op=\"ssd_encode\""));
    ASSERT_EQ((*svc)->Terminate(), 0);
  }
  auto svc = ServiceProcess::Start(dir.path(), options);
  ASSERT_OK(svc);
  auto kv = KvClient::Connect((*svc)->target());
  ASSERT_OK(kv);
  auto stats = (*kv)->Stats();
  ASSERT_OK(stats);
  const client::TierStats* ssd = SsdTier(*stats);
  ASSERT_NE(ssd, nullptr);
  EXPECT_EQ(ssd->objects, 3u);
  EXPECT_EQ(ssd->logical_bytes, 3 * info.payload_bytes);
  EXPECT_LT(ssd->used_bytes * 2, ssd->logical_bytes) << "level 2 should at least halve f16 KV";
  for (uint64_t i = 0; i < originals.size(); ++i) {
    auto got = (*kv)->Get(ChunkName(i));  // the client verifies the crc32c against the info
    ASSERT_OK(got);
    EXPECT_EQ(got->served_from, client::Tier::kSsd);
    EXPECT_TRUE(got->info.lossy);
    EXPECT_EQ(got->info.layout, info.layout);
    EXPECT_EQ(got->info.encoding, Encoding::kRaw);
    EXPECT_EQ(Crc32c(got->payload.data(), got->payload.size()), got->info.payload_crc32c);
    ExpectWithinQuantisationBound(info.layout, originals[i], got->payload, 2);
  }
  std::string body;
  ASSERT_EQ(HttpGet((*svc)->metrics_port(), "/metrics", &body), 200);
  EXPECT_THAT(body, HasSubstr("op=\"ssd_decode\""));
  EXPECT_THAT(body, HasSubstr("kvstash_storage_checksum_failures_total 0"));
  EXPECT_EQ((*svc)->Terminate(), 0);
}

}  // namespace
}  // namespace kvstash::testing
