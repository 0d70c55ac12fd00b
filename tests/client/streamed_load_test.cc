// A streamed Get at a chosen codec and level (GetOptions::codec, GetRequest.accept_codec) and the
// multi-chunk load that chooses per chunk with the streaming controller (StreamedLoad), against
// a real cachesvc over TCP. "Slow" is a link rate given to the controller (link_bytes_per_s),
// never a sleep, so what is asserted does not depend on this machine's speed.
#include "kvstash/client/streamed_load.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "kvstash/client/kv_client.h"
#include "kvstash/codec/cachegen.h"
#include "kvstash/codec/codec_choice.h"
#include "kvstash/codec/kvq.h"
#include "kvstash/codec/synthetic_kv.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/proto/convert.h"
#include "kvstash/v1/kvstash.grpc.pb.h"
#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using client::GetOptions;
using client::KvClient;
using client::StreamedLoad;
using client::StreamedLoadOptions;
using client::TransferCodec;

constexpr int kChunks = 3;

// The bytes a reader gets from `codec` at `level`: the encoder's own reconstruction.
std::vector<uint8_t> Reconstruction(const ObjectInfo& info, const std::vector<uint8_t>& payload,
                                    TransferCodec codec, int level) {
  std::vector<uint8_t> out(payload.size());
  if (codec == TransferCodec::kKvq) {
    codec::KvqOptions options;
    options.level = level;
    options.reconstruction = std::span<uint8_t>(out);
    EXPECT_OK(codec::EncodeKvq(info.layout, payload, options));
  } else {
    codec::EncodeOptions options;
    options.level = level;
    options.reconstruction = std::span<uint8_t>(out);
    EXPECT_OK(codec::EncodeCacheGen(info.layout, payload, options));
  }
  return out;
}

GetOptions Ask(TransferCodec codec, int level) {
  GetOptions o;
  o.codec = codec;
  o.level = level;
  return o;
}

class StreamedLoadTest : public ::testing::Test {
 protected:
  void StartService(std::vector<std::string> extra_args) {
    ServiceOptions options;
    options.tcp = true;  // as a client on another node: byte streams only
    options.extra_args = std::move(extra_args);
    ASSERT_OK_AND_ASSIGN(svc_, ServiceProcess::Start(dir_.path(), options));
    ASSERT_OK_AND_ASSIGN(kv_, KvClient::Connect(svc_->target()));
  }
  void PutChunks() {
    info_ = SmolChunkInfo();
    for (int i = 0; i < kChunks; ++i) {
      codec::SyntheticKvOptions o;
      o.seed = 11 + i;
      payloads_.push_back(codec::SyntheticKv(info_.layout, o));
      names_.push_back(TestName(100 + i));
      ASSERT_OK(kv_->Put(names_.back(), info_, payloads_.back()));
    }
  }
  void TearDown() override {
    if (svc_) {
      EXPECT_EQ(svc_->Terminate(), 0) << svc_->Log();
    }
  }
  // Every chunk arrived as chosen and decodes to exactly what that codec and level reconstruct
  // (the stored bytes for raw).
  void ExpectChunksDecode(const client::StreamedLoadReply& reply) {
    ASSERT_EQ(reply.chunks.size(), static_cast<size_t>(kChunks));
    for (int i = 0; i < kChunks; ++i) {
      SCOPED_TRACE(i);
      const client::StreamedChunk& c = reply.chunks[i];
      ASSERT_OK(c.status);
      EXPECT_FALSE(c.recompute);
      EXPECT_EQ(c.received, c.chosen);
      EXPECT_EQ(c.info.payload_crc32c, Crc32c(c.payload.data(), c.payload.size()));
      if (c.chosen == "raw") {
        EXPECT_FALSE(c.info.lossy);
        EXPECT_EQ(c.wire_bytes, info_.payload_bytes);
        EXPECT_EQ(c.payload, payloads_[i]);
        continue;
      }
      EXPECT_TRUE(c.info.lossy);
      EXPECT_LT(c.wire_bytes * 2, info_.payload_bytes);
      const bool kvq = c.chosen.rfind("kvq-l", 0) == 0;
      const int level = c.chosen.back() - '0';
      EXPECT_EQ(c.payload,
                Reconstruction(info_, payloads_[i],
                               kvq ? TransferCodec::kKvq : TransferCodec::kCacheGen, level));
    }
  }

  TempDir dir_;
  std::unique_ptr<ServiceProcess> svc_;
  std::unique_ptr<KvClient> kv_;
  ObjectInfo info_;
  std::vector<std::vector<uint8_t>> payloads_;
  std::vector<ObjectName> names_;
};

TEST_F(StreamedLoadTest, GetOptionsCodecAsksForACodecAtALevel) {
  ASSERT_NO_FATAL_FAILURE(StartService({}));  // policy: CacheGen level 2
  ASSERT_NO_FATAL_FAILURE(PutChunks());
  struct Case {
    TransferCodec codec;
    int level;
    std::string received;
  };
  for (const Case& k :
       {Case{TransferCodec::kKvq, 4, "kvq-l4"}, Case{TransferCodec::kKvq, 1, "kvq-l1"},
        Case{TransferCodec::kKvq, 0, "kvq-l2"},  // the service's level
        Case{TransferCodec::kCacheGen, 3, "cachegen-l3"}, Case{TransferCodec::kRaw, 0, "raw"}}) {
    SCOPED_TRACE(k.received);
    ASSERT_OK_AND_ASSIGN(client::GetReply got, kv_->Get(names_[0], Ask(k.codec, k.level)));
    EXPECT_EQ(client::TransferCodecName(got.wire_codec, got.wire_level), k.received);
    if (k.codec == TransferCodec::kRaw) {
      EXPECT_EQ(got.payload, payloads_[0]);
      EXPECT_EQ(got.encode_s, 0.0);  // nothing encoded
    } else {
      EXPECT_EQ(got.payload, Reconstruction(info_, payloads_[0], k.codec, got.wire_level));
      EXPECT_GT(got.encode_s, 0.0);  // the service's GetChunk.encode_micros
    }
    // GetInto reports the same, within the time to the last byte.
    std::vector<uint8_t> into(info_.payload_bytes);
    ASSERT_OK_AND_ASSIGN(client::GetIntoReply in,
                         kv_->GetInto(names_[0], into, Ask(k.codec, k.level)));
    if (k.codec == TransferCodec::kRaw) {
      EXPECT_EQ(in.encode_s, 0.0);
    } else {
      EXPECT_GT(in.encode_s, 0.0);
      EXPECT_LT(in.encode_s, in.stream_s);
    }
  }
  // Refused by the client before any call: a level outside the codec's range, a codec together
  // with accept_encoding, a level for raw.
  GetOptions both = Ask(TransferCodec::kKvq, 2);
  both.accept_encoding = Encoding::kCacheGen;
  for (const GetOptions& bad : {Ask(TransferCodec::kKvq, 5), Ask(TransferCodec::kCacheGen, 4),
                                Ask(TransferCodec::kKvq, -1), Ask(TransferCodec::kRaw, 1), both}) {
    EXPECT_THAT(kv_->Get(names_[0], bad), StatusIs(absl::StatusCode::kInvalidArgument));
  }
  // Refused by the service: what other clients could send.
  auto channel = grpc::CreateChannel(svc_->target(), grpc::InsecureChannelCredentials());
  auto stub = v1::KvStash::NewStub(channel);
  auto status_of = [&](int codec, uint32_t level, v1::Encoding encoding) {
    grpc::ClientContext ctx;
    v1::GetRequest req;
    ToProto(names_[0], req.mutable_key());
    req.set_accept_encoding(encoding);
    req.set_accept_codec(static_cast<v1::Codec>(codec));
    req.set_accept_level(level);
    auto reader = stub->Get(&ctx, req);
    v1::GetChunk chunk;
    while (reader->Read(&chunk)) {
    }
    return reader->Finish().error_code();
  };
  EXPECT_EQ(status_of(7, 0, v1::ENCODING_CACHEGEN), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status_of(v1::CODEC_KVQ, 5, v1::ENCODING_CACHEGEN), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status_of(v1::CODEC_CACHEGEN, 4, v1::ENCODING_CACHEGEN),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status_of(v1::CODEC_KVQ, 4, v1::ENCODING_CACHEGEN), grpc::StatusCode::OK);
  // A raw reader's codec is not looked at, as its level is not.
  EXPECT_EQ(status_of(7, 9, v1::ENCODING_RAW), grpc::StatusCode::OK);
}

// A kvq-policy service sends CacheGen when asked for it.
TEST_F(StreamedLoadTest, TheRequestsCodecOverridesThePolicys) {
  ASSERT_NO_FATAL_FAILURE(StartService({"--transfer-encoding", "kvq"}));
  ASSERT_NO_FATAL_FAILURE(PutChunks());
  ASSERT_OK_AND_ASSIGN(client::GetReply got, kv_->Get(names_[1], Ask(TransferCodec::kCacheGen, 1)));
  EXPECT_EQ(client::TransferCodecName(got.wire_codec, got.wire_level), "cachegen-l1");
  EXPECT_EQ(got.payload, Reconstruction(info_, payloads_[1], TransferCodec::kCacheGen, 1));
  GetOptions policy;
  policy.accept_encoding = Encoding::kCacheGen;
  ASSERT_OK_AND_ASSIGN(got, kv_->Get(names_[1], policy));
  EXPECT_EQ(got.wire_codec, TransferCodec::kKvq);
}

// A raw-policy service sends raw bytes whatever is asked.
TEST_F(StreamedLoadTest, ARawPolicySendsRawBytesWhateverIsAsked) {
  ASSERT_NO_FATAL_FAILURE(StartService({"--transfer-encoding", "raw"}));
  ASSERT_NO_FATAL_FAILURE(PutChunks());
  for (const GetOptions& ask : {Ask(TransferCodec::kKvq, 3), Ask(TransferCodec::kCacheGen, 0)}) {
    ASSERT_OK_AND_ASSIGN(client::GetReply got, kv_->Get(names_[1], ask));
    EXPECT_EQ(got.wire_codec, TransferCodec::kRaw);
    EXPECT_EQ(got.wire_level, 0);
    EXPECT_EQ(got.encode_s, 0.0);
    EXPECT_EQ(got.payload, payloads_[1]);
  }
}

TEST_F(StreamedLoadTest, AGenerousSloFetchesEveryChunkRawAndExact) {
  ASSERT_NO_FATAL_FAILURE(StartService({}));
  ASSERT_NO_FATAL_FAILURE(PutChunks());
  codec::CalibrationOptions calibration;
  calibration.reps = 1;
  ASSERT_OK_AND_ASSIGN(std::vector<codec::CodecRates> candidates,
                       codec::CalibrateCodecs(calibration));
  StreamedLoadOptions options;
  options.candidates = candidates;
  options.budget_s = 100;
  // Measured: the first chunk goes raw to measure the link, the others follow its throughput.
  ASSERT_OK_AND_ASSIGN(client::StreamedLoadReply measured, StreamedLoad(*kv_, names_, options));
  ExpectChunksDecode(measured);
  for (int i = 0; i < kChunks; ++i) EXPECT_EQ(measured.chunks[i].chosen, "raw") << i;
  EXPECT_EQ(measured.chunks[0].bandwidth_bps, 0.0);  // nothing measured yet
  EXPECT_GT(measured.chunks[1].bandwidth_bps, 0.0);
  // A 10 MB/s link (17.7 MB raw: 1.8 s) fits 100 s raw as well.
  options.link_bytes_per_s = 1e7;
  ASSERT_OK_AND_ASSIGN(client::StreamedLoadReply slow, StreamedLoad(*kv_, names_, options));
  ExpectChunksDecode(slow);
  for (int i = 0; i < kChunks; ++i) {
    EXPECT_EQ(slow.chunks[i].chosen, "raw") << i;
    EXPECT_EQ(slow.chunks[i].bandwidth_bps, 1e7);
  }
  EXPECT_TRUE(slow.within_budget);
}

// At 10 MB/s raw needs 0.59 s a chunk, so a 0.7 s budget for three chunks never lets a raw chunk
// in (the first two chunks' wire time alone, at any candidate's ratio, leaves less than 0.59 s),
// and when nothing fits the fastest candidate is an encoded one (raw would be 3x its wire time):
// every chunk goes encoded.
TEST_F(StreamedLoadTest, ATightSloOnASlowLinkPicksSmallerEncodings) {
  ASSERT_NO_FATAL_FAILURE(StartService({}));
  ASSERT_NO_FATAL_FAILURE(PutChunks());
  codec::CalibrationOptions calibration;
  calibration.reps = 1;
  ASSERT_OK_AND_ASSIGN(std::vector<codec::CodecRates> calibrated,
                       codec::CalibrateCodecs(calibration));
  std::vector<codec::CodecRates> cachegen;  // CacheGen levels 1..3 alone
  calibration.kvq = false;
  for (int level = 1; level <= 3; ++level) {
    calibration.cachegen_level = level;
    ASSERT_OK_AND_ASSIGN(std::vector<codec::CodecRates> one, codec::CalibrateCodecs(calibration));
    cachegen.push_back(one[0]);
  }
  for (const auto& candidates : {calibrated, cachegen}) {
    StreamedLoadOptions options;
    options.candidates = candidates;
    options.budget_s = 0.7;
    options.link_bytes_per_s = 1e7;
    ASSERT_OK_AND_ASSIGN(client::StreamedLoadReply reply, StreamedLoad(*kv_, names_, options));
    ExpectChunksDecode(reply);
    for (int i = 0; i < kChunks; ++i) {
      EXPECT_NE(reply.chunks[i].chosen, "raw") << i;
      EXPECT_EQ(reply.chunks[i].bandwidth_bps, 1e7);
      EXPECT_GT(reply.chunks[i].encode_s, 0.0) << i;  // reported by the service
      EXPECT_GT(reply.chunks[i].decode_s, 0.0) << i;
    }
  }
}

// The link sample's arithmetic, samples injected: the service's reported encode comes out of the
// time to the last byte; without one the calibrated prediction, at most half of it; raw keeps it.
TEST(StreamedLoadLinkTest, TheServicesEncodeTimeComesOutOfTheLinkSample) {
  client::GetIntoReply got;
  got.info.payload_bytes = 4'000'000;
  got.wire_bytes = 1'000'000;
  got.wire_codec = TransferCodec::kKvq;
  got.wire_level = 3;
  got.stream_s = 0.5;
  got.encode_s = 0.2;
  codec::CodecRates asked;
  asked.kind = codec::CodecKind::kKvq;
  asked.level = 3;
  asked.ratio = 4;
  asked.encode_bytes_per_s = 4e7;  // calibrated: 0.1 s for 4 MB
  asked.decode_bytes_per_s = 1e9;
  using codec::CostModel;
  // Reported: 0.5 - 0.2 = 0.3 s, whatever the calibration says and under either model.
  EXPECT_NEAR(client::LinkSeconds(got, asked, CostModel::kTransfer), 0.3, 1e-12);
  EXPECT_NEAR(client::LinkSeconds(got, asked, CostModel::kStored), 0.3, 1e-12);
  // Not reported (an older service): the calibrated 0.1 s, then at most half of 0.5 s.
  got.encode_s = 0;
  EXPECT_NEAR(client::LinkSeconds(got, asked, CostModel::kTransfer), 0.4, 1e-12);
  asked.encode_bytes_per_s = 4e6;  // 1 s predicted
  EXPECT_NEAR(client::LinkSeconds(got, asked, CostModel::kTransfer), 0.25, 1e-12);
  EXPECT_NEAR(client::LinkSeconds(got, asked, CostModel::kStored), 0.5, 1e-12);
  // A report that leaves no time in transit is not used.
  got.encode_s = 0.6;
  EXPECT_NEAR(client::LinkSeconds(got, asked, CostModel::kTransfer), 0.5, 1e-12);
  // Raw bytes: the whole time.
  got.wire_codec = TransferCodec::kRaw;
  got.encode_s = 0;
  EXPECT_NEAR(client::LinkSeconds(got, asked, CostModel::kTransfer), 0.5, 1e-12);
  // Fed to the controller, 1 MB over 0.3 s is the next chunk's bandwidth, and the reported
  // 0.2 s against the calibrated 0.1 s doubles its encode term.
  got.wire_codec = TransferCodec::kKvq;
  got.encode_s = 0.2;
  asked.encode_bytes_per_s = 4e7;
  const std::vector<codec::CodecRates> candidates = {asked};
  codec::CandidateController controller({}, candidates,
                                        std::vector<codec::CandidateChunk>(2, {4'000'000, 256}));
  controller.ReportEncode(1, got.info.payload_bytes, got.encode_s);
  controller.Report(got.wire_bytes, got.stream_s,
                    client::LinkSeconds(got, asked, CostModel::kTransfer));
  EXPECT_NEAR(controller.bandwidth_estimate_bps(), 1e6 / 0.3, 1e-6);
  EXPECT_NEAR(controller.encode_scale(), 2.0, 1e-12);
  // 4 MB at ratio 4 over 1/0.3 MB/s, decode 4 ms, encode 2 x 0.1 s.
  EXPECT_NEAR(controller.PredictSeconds({4'000'000, 256}, 1, 1e6 / 0.3), 0.3 + 0.004 + 0.2, 1e-9);
}

TEST_F(StreamedLoadTest, RefusesBadCandidatesAndReportsMissingChunks) {
  ASSERT_NO_FATAL_FAILURE(StartService({}));
  ASSERT_NO_FATAL_FAILURE(PutChunks());
  StreamedLoadOptions options;
  options.budget_s = 100;
  options.link_bytes_per_s = 1e7;
  codec::CodecRates bad;
  bad.kind = codec::CodecKind::kKvq;
  bad.level = 5;
  bad.ratio = 6;
  bad.encode_bytes_per_s = bad.decode_bytes_per_s = 1e9;
  options.candidates = {bad};
  EXPECT_THAT(StreamedLoad(*kv_, names_, options), StatusIs(absl::StatusCode::kInvalidArgument));
  bad.kind = static_cast<codec::CodecKind>(9);
  bad.level = 1;
  options.candidates = {bad};
  EXPECT_THAT(StreamedLoad(*kv_, names_, options), StatusIs(absl::StatusCode::kInvalidArgument));
  options.candidates = {};
  options.budget_s = 0;
  EXPECT_THAT(StreamedLoad(*kv_, names_, options), StatusIs(absl::StatusCode::kInvalidArgument));
  options.budget_s = 100;
  const std::vector<ObjectName> with_gap = {names_[0], TestName(999), names_[2]};
  ASSERT_OK_AND_ASSIGN(client::StreamedLoadReply reply, StreamedLoad(*kv_, with_gap, options));
  EXPECT_OK(reply.chunks[0].status);
  EXPECT_THAT(reply.chunks[1].status, StatusIs(absl::StatusCode::kNotFound));
  EXPECT_OK(reply.chunks[2].status);
  EXPECT_EQ(reply.chunks[2].payload, payloads_[2]);
}

}  // namespace
}  // namespace kvstash::testing
