// The real cachesvc binary with --ssd-encoding auto (docs/storage.md "Per-tier encoding"): at a
// given slow SSD read rate it chooses an encoding, at a fast one raw, each as ChooseEncoding
// (kStored) predicts from the candidates the daemon logged; objects written under one choice
// read back after a restart under the other (lossy ones exactly as the chosen codec's encoder
// reconstructs them, within the quality floor; raw ones byte for byte). Without a rate the daemon
// measures one in its data dir.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "kv_bound.h"
#include "kvstash/client/kv_client.h"
#include "kvstash/codec/cachegen.h"
#include "kvstash/codec/codec_choice.h"
#include "kvstash/codec/kvq.h"
#include "kvstash/codec/synthetic_kv.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/common/half.h"
#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using client::KvClient;
using ::testing::HasSubstr;

constexpr int kFloorLevel = 2;
constexpr uint32_t kSlowMbps = 100;         // 12.5 MB/s: reading dominates, encoding pays
constexpr uint32_t kFastMbps = 10'000'000;  // 1.25 TB/s: no decoder keeps up, raw wins

ObjectName ChunkName(uint64_t i) {
  return MakeObjectName("ssd-auto", Hash128{0x534d4f4cull, 7}, Hash128{i + 1, i * 13 + 7});
}

// The value of `key` on the daemon's last event=ssd_encoding log line ("" if absent): the log
// file of a data dir keeps the lines of earlier runs.
std::string SsdEncodingField(const std::string& log, const std::string& key) {
  const size_t line = log.rfind("event=ssd_encoding ");
  if (line == std::string::npos) return "";
  const size_t eol = log.find('\n', line);
  const std::string text = log.substr(line, eol == std::string::npos ? eol : eol - line);
  const size_t at = text.find(" " + key + "=");
  if (at == std::string::npos) return "";
  const size_t begin = at + key.size() + 2;
  const size_t end = text.find(' ', begin);
  return text.substr(begin, end == std::string::npos ? end : end - begin);
}

double NumberAfter(const std::string& item, const std::string& key) {
  const size_t at = item.find(":" + key + "=");
  if (at == std::string::npos) return -1;
  return std::strtod(item.c_str() + at + key.size() + 2, nullptr);
}

// The logged candidates back as CodecRates (name, ratio, decode rate: what kStored reads).
std::vector<codec::CodecRates> ParseCandidates(const std::string& text) {
  std::vector<codec::CodecRates> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find(',', pos);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(pos, end - pos);
    pos = end + 1;
    codec::CodecRates r;
    const std::string name = item.substr(0, item.find(':'));
    if (name.rfind("cachegen-l", 0) == 0) {
      r.kind = codec::CodecKind::kCacheGen;
      r.level = std::atoi(name.c_str() + 10);
    } else if (name.rfind("kvq-l", 0) == 0) {
      r.kind = codec::CodecKind::kKvq;
      r.level = std::atoi(name.c_str() + 5);
    } else {
      ADD_FAILURE() << "unknown candidate " << item;
      continue;
    }
    r.ratio = NumberAfter(item, "ratio");
    r.encode_bytes_per_s = NumberAfter(item, "encode_mbps") * 1e6 / 8;
    r.decode_bytes_per_s = NumberAfter(item, "decode_mbps") * 1e6 / 8;
    r.rel_error = NumberAfter(item, "rel_error");
    EXPECT_EQ(codec::CodecRatesName(r), name);
    EXPECT_GT(r.ratio, 1) << item;
    EXPECT_GT(r.decode_bytes_per_s, 0) << item;
    out.push_back(r);
  }
  return out;
}

// What the daemon logged it chose, checked against ChooseEncoding over what it logged measuring.
std::string CheckedChoice(const ServiceProcess& svc, uint32_t read_mbps) {
  const std::string log = svc.Log();
  const std::vector<codec::CodecRates> candidates =
      ParseCandidates(SsdEncodingField(log, "candidates"));
  EXPECT_FALSE(candidates.empty()) << log;
  EXPECT_EQ(candidates.front().kind, codec::CodecKind::kCacheGen) << "the floor comes first";
  for (const codec::CodecRates& c : candidates) EXPECT_LE(c.level, 3) << "a tier level";
  std::string choice = SsdEncodingField(log, "choice");  // returned, so not const: moved
  EXPECT_EQ(SsdEncodingField(log, "read_method"), "configured");
  EXPECT_EQ(SsdEncodingField(log, "read_mbps"), std::to_string(read_mbps));
  EXPECT_EQ(choice, codec::CodecRatesName(codec::ChooseEncoding(candidates, read_mbps * 1e6 / 8,
                                                                codec::CostModel::kStored)))
      << log;
  std::string body;
  EXPECT_EQ(HttpGet(svc.metrics_port(), "/metrics", &body), 200);
  EXPECT_THAT(body, HasSubstr("kvstash_cachesvc_ssd_encoding{policy=\"auto\",encoding=\"" + choice +
                              "\"} 1"));
  EXPECT_THAT(body, HasSubstr("kvstash_cachesvc_ssd_read_bytes_per_second"));
  return choice;
}

ServiceOptions AutoAt(uint32_t read_mbps) {
  ServiceOptions o;
  o.metrics = true;
  o.extra_args = {"--ssd-encoding",       "auto",
                  "--ssd-encoding-level", std::to_string(kFloorLevel),
                  "--ssd-read-mbps",      std::to_string(read_mbps)};
  return o;
}

// What the SSD tier's codec ("cachegen-l2", "kvq-l3") reconstructs from `original`.
std::vector<uint8_t> Reconstruction(const std::string& choice, const KvLayout& layout,
                                    const std::vector<uint8_t>& original) {
  std::vector<uint8_t> out(original.size());
  if (choice.rfind("kvq-l", 0) == 0) {
    codec::KvqOptions o;
    o.level = std::atoi(choice.c_str() + 5);
    o.reconstruction = std::span<uint8_t>(out);
    EXPECT_OK(codec::EncodeKvq(layout, original, o));
  } else {
    EXPECT_EQ(choice.rfind("cachegen-l", 0), 0u) << choice;
    codec::EncodeOptions o;
    o.level = std::atoi(choice.c_str() + 10);
    o.reconstruction = std::span<uint8_t>(out);
    EXPECT_OK(codec::EncodeCacheGen(layout, original, o));
  }
  return out;
}

// sum (x - x^)^2 / sum x^2 over f16 KV.
double RelError(const std::vector<uint8_t>& original, const std::vector<uint8_t>& decoded) {
  double num = 0, den = 0;
  for (size_t i = 0; i + 1 < original.size(); i += 2) {
    const double x = F16ToF32(static_cast<uint16_t>(original[i] | original[i + 1] << 8));
    const double y = F16ToF32(static_cast<uint16_t>(decoded[i] | decoded[i + 1] << 8));
    num += (x - y) * (x - y);
    den += x * x;
  }
  return den > 0 ? num / den : 0;
}

TEST(SsdEncodingAuto, ChoosesByReadRateAndARestartUnderTheOtherChoiceReadsBoth) {
  TempDir dir;
  const ObjectInfo info = SmolChunkInfo();  // 256 tokens of SmolLM2-135M, 5.9 MB of f16 KV
  std::vector<std::vector<uint8_t>> originals;
  for (uint64_t i = 0; i < 3; ++i) {
    codec::SyntheticKvOptions so;
    so.seed = 70 + i;
    originals.push_back(codec::SyntheticKv(info.layout, so));
  }
  client::PutOptions durable;
  durable.durable = true;

  // A slow SSD: an encoding wins. Chunks 0 and 1 go to SSD encoded with it.
  std::string slow_choice;
  {
    ASSERT_OK_AND_ASSIGN(auto svc, ServiceProcess::Start(dir.path(), AutoAt(kSlowMbps)));
    slow_choice = CheckedChoice(*svc, kSlowMbps);
    ASSERT_NE(slow_choice, "raw") << svc->Log();
    ASSERT_OK_AND_ASSIGN(auto kv, KvClient::Connect(svc->target()));
    for (uint64_t i = 0; i < 2; ++i) ASSERT_OK(kv->Put(ChunkName(i), info, originals[i], durable));
    std::string body;
    ASSERT_EQ(HttpGet(svc->metrics_port(), "/metrics", &body), 200);
    EXPECT_THAT(body, HasSubstr("kvstash_storage_ssd_encoded_bytes_total{stage=\"before\"} " +
                                std::to_string(2 * info.payload_bytes)));
    ASSERT_EQ(svc->Terminate(), 0);
  }
  // A fast SSD: raw. The encoded chunks still decode (the tier codec reads by magic); chunk 2 is
  // written raw.
  {
    ASSERT_OK_AND_ASSIGN(auto svc, ServiceProcess::Start(dir.path(), AutoAt(kFastMbps)));
    EXPECT_EQ(CheckedChoice(*svc, kFastMbps), "raw") << svc->Log();
    ASSERT_OK_AND_ASSIGN(auto kv, KvClient::Connect(svc->target()));
    for (uint64_t i = 0; i < 2; ++i) {
      ASSERT_OK_AND_ASSIGN(client::GetReply got, kv->Get(ChunkName(i)));  // crc32c checked
      EXPECT_EQ(got.served_from, client::Tier::kSsd);
      EXPECT_TRUE(got.info.lossy);
      EXPECT_EQ(got.info.encoding, Encoding::kRaw);
      EXPECT_EQ(Crc32c(got.payload.data(), got.payload.size()), got.info.payload_crc32c);
      // Exactly the chosen encoder's reconstruction, and at least as exact as the floor.
      EXPECT_TRUE(got.payload == Reconstruction(slow_choice, info.layout, originals[i]))
          << slow_choice;
      const std::vector<uint8_t> floor =
          Reconstruction("cachegen-l" + std::to_string(kFloorLevel), info.layout, originals[i]);
      EXPECT_LE(RelError(originals[i], got.payload), RelError(originals[i], floor) * (1 + 1e-9));
      if (slow_choice.rfind("cachegen-l", 0) == 0) {
        ExpectWithinQuantisationBound(info.layout, originals[i], got.payload, kFloorLevel);
      }
    }
    ASSERT_OK(kv->Put(ChunkName(2), info, originals[2], durable));
    std::string body;
    ASSERT_EQ(HttpGet(svc->metrics_port(), "/metrics", &body), 200);
    EXPECT_THAT(body, HasSubstr("kvstash_storage_ssd_encoded_bytes_total{stage=\"before\"} 0"));
    ASSERT_EQ(svc->Terminate(), 0);
  }
  // The slow SSD again: the raw chunk comes back byte for byte, the encoded ones as before. (The
  // choice may differ from the first run's: KVQ levels close in cost swap places with the decode
  // rates measured under the machine's load.)
  ASSERT_OK_AND_ASSIGN(auto svc, ServiceProcess::Start(dir.path(), AutoAt(kSlowMbps)));
  EXPECT_NE(CheckedChoice(*svc, kSlowMbps), "raw");
  ASSERT_OK_AND_ASSIGN(auto kv, KvClient::Connect(svc->target()));
  ASSERT_OK_AND_ASSIGN(client::GetReply raw, kv->Get(ChunkName(2)));
  EXPECT_EQ(raw.served_from, client::Tier::kSsd);
  EXPECT_FALSE(raw.info.lossy);
  EXPECT_TRUE(raw.payload == originals[2]) << "raw SSD copies are exact";
  ASSERT_OK_AND_ASSIGN(client::GetReply old, kv->Get(ChunkName(0)));
  EXPECT_TRUE(old.info.lossy);
  EXPECT_TRUE(old.payload == Reconstruction(slow_choice, info.layout, originals[0]));
  std::string body;
  ASSERT_EQ(HttpGet(svc->metrics_port(), "/metrics", &body), 200);
  EXPECT_THAT(body, HasSubstr("kvstash_storage_checksum_failures_total 0"));
  EXPECT_EQ(svc->Terminate(), 0);
}

TEST(SsdEncodingAuto, MeasuresTheReadRateInTheDataDirWhenNoneIsGiven) {
  TempDir dir;
  ServiceOptions o;
  o.metrics = true;
  o.extra_args = {"--ssd-encoding", "auto"};
  ASSERT_OK_AND_ASSIGN(auto svc, ServiceProcess::Start(dir.path(), o));
  const std::string log = svc->Log();
  EXPECT_THAT(SsdEncodingField(log, "read_method"), ::testing::AnyOf("direct", "buffered")) << log;
  EXPECT_GT(std::atoll(SsdEncodingField(log, "read_mbps").c_str()), 0) << log;
  const std::string choice = SsdEncodingField(log, "choice");
  EXPECT_FALSE(choice.empty()) << log;
  EXPECT_THAT(log, HasSubstr("ssd_encoding=" + choice)) << "the serving line names the tier codec";
  EXPECT_FALSE(std::filesystem::exists(svc->data_dir() + "/ssd/.read_rate_probe"));
  std::string body;
  ASSERT_EQ(HttpGet(svc->metrics_port(), "/metrics", &body), 200);
  EXPECT_THAT(body, HasSubstr("kvstash_cachesvc_ssd_encoding{policy=\"auto\",encoding=\"" + choice +
                              "\"} 1"));
  EXPECT_EQ(svc->Terminate(), 0);
}

TEST(SsdEncodingAuto, AConfiguredEncodingIsReportedAndNotMeasured) {
  TempDir dir;
  ServiceOptions o;
  o.metrics = true;
  o.extra_args = {"--ssd-encoding", "kvq", "--ssd-encoding-level", "3"};
  ASSERT_OK_AND_ASSIGN(auto svc, ServiceProcess::Start(dir.path(), o));
  EXPECT_THAT(svc->Log(), ::testing::Not(HasSubstr("event=ssd_encoding ")));
  std::string body;
  ASSERT_EQ(HttpGet(svc->metrics_port(), "/metrics", &body), 200);
  EXPECT_THAT(
      body,
      HasSubstr("kvstash_cachesvc_ssd_encoding{policy=\"configured\",encoding=\"kvq-l3\"} 1"));
  EXPECT_THAT(body, ::testing::Not(HasSubstr("kvstash_cachesvc_ssd_read_bytes_per_second")));
  EXPECT_EQ(svc->Terminate(), 0);
}

}  // namespace
}  // namespace kvstash::testing
