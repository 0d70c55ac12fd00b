// Encoded transfers (GetOptions::accept_encoding, docs/api.md "Encoded transfers"): a streaming
// Get that accepts CacheGen receives a container (CacheGen, or KVQ under a kvq policy) over TCP
// and decodes it to exactly what an SSD tier at the same level would serve; everything else still
// gets the stored bytes.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "kvstash/client/kv_client.h"
#include "kvstash/codec/cachegen.h"
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

GetOptions AcceptCacheGen(int level) {
  GetOptions o;
  o.accept_encoding = Encoding::kCacheGen;
  o.level = level;
  return o;
}

// The bytes a reader gets from CacheGen at `level`: the encoder's own reconstruction.
std::vector<uint8_t> Reconstruction(const ObjectInfo& info, const std::vector<uint8_t>& payload,
                                    int level) {
  std::vector<uint8_t> out(payload.size());
  codec::EncodeOptions options;
  options.level = level;
  options.reconstruction = std::span<uint8_t>(out);
  EXPECT_OK(codec::EncodeCacheGen(info.layout, payload, options));
  return out;
}

// The same for KVQ at `level`.
std::vector<uint8_t> KvqReconstruction(const ObjectInfo& info, const std::vector<uint8_t>& payload,
                                       int level) {
  std::vector<uint8_t> out(payload.size());
  codec::KvqOptions options;
  options.level = level;
  options.reconstruction = std::span<uint8_t>(out);
  EXPECT_OK(codec::EncodeKvq(info.layout, payload, options));
  return out;
}

class TransferEncodingTest : public ::testing::Test {
 protected:
  void StartService(std::vector<std::string> extra_args) {
    ServiceOptions options;
    options.tcp = true;  // as a client on another node: byte streams only
    options.extra_args = std::move(extra_args);
    auto svc = ServiceProcess::Start(dir_.path(), options);
    ASSERT_OK(svc);
    svc_ = std::move(*svc);
    auto kv = KvClient::Connect(svc_->target());
    ASSERT_OK(kv);
    kv_ = std::move(*kv);
  }
  void TearDown() override {
    if (svc_) {
      EXPECT_EQ(svc_->Terminate(), 0) << svc_->Log();
    }
  }

  TempDir dir_;
  std::unique_ptr<ServiceProcess> svc_;
  std::unique_ptr<KvClient> kv_;
};

TEST_F(TransferEncodingTest, AcceptedCacheGenArrivesSmallerAndDecodesToTheReconstruction) {
  ASSERT_NO_FATAL_FAILURE(StartService({}));  // default policy: cachegen, level 2
  const ObjectInfo info = SmolChunkInfo();
  const std::vector<uint8_t> payload = codec::SyntheticKv(info.layout);
  ASSERT_OK(kv_->Put(TestName(1), info, payload));

  // Not asked: the stored bytes, exactly.
  auto raw = kv_->Get(TestName(1));
  ASSERT_OK(raw);
  EXPECT_EQ(raw->payload, payload);
  EXPECT_FALSE(raw->info.lossy);
  EXPECT_EQ(raw->wire_bytes, info.payload_bytes);

  uint64_t wire_by_level[4] = {};
  for (int level : {0, 1, 2, 3}) {
    SCOPED_TRACE(level);
    auto got = kv_->Get(TestName(1), AcceptCacheGen(level));
    ASSERT_OK(got);
    EXPECT_TRUE(got->info.lossy);
    EXPECT_EQ(got->info.encoding, Encoding::kRaw);  // what the reader holds is decoded KV
    EXPECT_EQ(got->info.payload_bytes, info.payload_bytes);
    EXPECT_EQ(got->info.payload_crc32c, Crc32c(got->payload.data(), got->payload.size()));
    EXPECT_LT(got->wire_bytes * 2, info.payload_bytes);
    EXPECT_EQ(got->payload, Reconstruction(info, payload, level == 0 ? 2 : level));
    wire_by_level[level] = got->wire_bytes;
    std::vector<uint8_t> into(info.payload_bytes + 7);
    auto got_into = kv_->GetInto(TestName(1), into, AcceptCacheGen(level));
    ASSERT_OK(got_into);
    EXPECT_TRUE(std::equal(got->payload.begin(), got->payload.end(), into.begin()));
  }
  EXPECT_EQ(wire_by_level[0], wire_by_level[2]);  // level 0: the service's level
  EXPECT_LT(wire_by_level[1], wire_by_level[2]);  // coarser bins, fewer bytes
  EXPECT_LT(wire_by_level[2], wire_by_level[3]);

  // Bytes the codec does not take (random f16 bits hold NaN/Inf) go raw and exact.
  const std::vector<uint8_t> noise = TestPayload(2, info.payload_bytes);
  ASSERT_OK(kv_->Put(TestName(2), info, noise));
  auto got = kv_->Get(TestName(2), AcceptCacheGen(0));
  ASSERT_OK(got);
  EXPECT_EQ(got->payload, noise);
  EXPECT_FALSE(got->info.lossy);
  EXPECT_EQ(got->wire_bytes, info.payload_bytes);

  EXPECT_THAT(kv_->Get(TestName(1), AcceptCacheGen(4)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(kv_->Get(TestName(3), AcceptCacheGen(2)), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(TransferEncodingTest, ServiceChecksTheRequestAndHonoursARawPolicy) {
  ASSERT_NO_FATAL_FAILURE(StartService({"--transfer-encoding", "raw"}));
  const ObjectInfo info = SmolChunkInfo();
  const std::vector<uint8_t> payload = codec::SyntheticKv(info.layout);
  ASSERT_OK(kv_->Put(TestName(1), info, payload));
  auto got = kv_->Get(TestName(1), AcceptCacheGen(2));
  ASSERT_OK(got);
  EXPECT_EQ(got->payload, payload);
  EXPECT_FALSE(got->info.lossy);
  EXPECT_EQ(got->wire_bytes, info.payload_bytes);

  // What other clients could send: a level or an encoding the service does not know.
  auto channel = grpc::CreateChannel(svc_->target(), grpc::InsecureChannelCredentials());
  auto stub = v1::KvStash::NewStub(channel);
  for (auto [encoding, level] : {std::pair<int, uint32_t>{v1::ENCODING_CACHEGEN, 4}, {7, 0}}) {
    grpc::ClientContext ctx;
    v1::GetRequest req;
    ToProto(TestName(1), req.mutable_key());
    req.set_accept_encoding(static_cast<v1::Encoding>(encoding));
    req.set_accept_level(level);
    auto reader = stub->Get(&ctx, req);
    v1::GetChunk chunk;
    while (reader->Read(&chunk)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << encoding << " " << level;
  }
  // accept_level applies only to encoded transfers: a raw reader's is not looked at.
  grpc::ClientContext ctx;
  v1::GetRequest req;
  ToProto(TestName(1), req.mutable_key());
  req.set_accept_level(9);
  auto reader = stub->Get(&ctx, req);
  v1::GetChunk chunk;
  uint64_t bytes = 0;
  while (reader->Read(&chunk)) bytes += chunk.data().size();
  EXPECT_OK(reader->Finish());
  EXPECT_EQ(bytes, info.payload_bytes);
}

// --transfer-encoding kvq: clients that accept an encoded transfer get KVQ containers and decode
// them (KvClient tells the codecs apart by the container's magic).
TEST_F(TransferEncodingTest, KvqPolicySendsKvqThatDecodesToTheReconstruction) {
  ASSERT_NO_FATAL_FAILURE(
      StartService({"--transfer-encoding", "kvq", "--transfer-encoding-level", "3"}));
  const ObjectInfo info = SmolChunkInfo();
  const std::vector<uint8_t> payload = codec::SyntheticKv(info.layout);
  ASSERT_OK(kv_->Put(TestName(1), info, payload));
  for (int level : {0, 1, 3}) {
    SCOPED_TRACE(level);
    ASSERT_OK_AND_ASSIGN(auto got, kv_->Get(TestName(1), AcceptCacheGen(level)));
    EXPECT_TRUE(got.info.lossy);
    EXPECT_LT(got.wire_bytes * 2, info.payload_bytes);
    EXPECT_EQ(got.info.payload_crc32c, Crc32c(got.payload.data(), got.payload.size()));
    EXPECT_EQ(got.payload, KvqReconstruction(info, payload, level == 0 ? 3 : level));
  }
}

// The peers' metadata (cachesvc remote_tier.h kPeerCodecHeader) asks a cachegen-policy service for
// KVQ at a level; anything else in it is refused.
TEST_F(TransferEncodingTest, PeerCodecMetadataAsksForKvq) {
  ASSERT_NO_FATAL_FAILURE(StartService({}));
  const ObjectInfo info = SmolChunkInfo();
  const std::vector<uint8_t> payload = codec::SyntheticKv(info.layout);
  ASSERT_OK(kv_->Put(TestName(1), info, payload));
  auto channel = grpc::CreateChannel(svc_->target(), grpc::InsecureChannelCredentials());
  auto stub = v1::KvStash::NewStub(channel);
  auto fetch = [&](const std::string& codec, std::string* bytes) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("kvstash-peer-codec", codec);
    v1::GetRequest req;
    ToProto(TestName(1), req.mutable_key());
    req.set_accept_encoding(v1::ENCODING_CACHEGEN);
    auto reader = stub->Get(&ctx, req);
    v1::GetChunk chunk;
    while (reader->Read(&chunk)) bytes->append(chunk.data());
    return reader->Finish().error_code();
  };
  std::string container;
  ASSERT_EQ(fetch("kvq-4", &container), grpc::StatusCode::OK);
  const std::span<const uint8_t> c(reinterpret_cast<const uint8_t*>(container.data()),
                                   container.size());
  ASSERT_TRUE(codec::IsKvqContainer(c));
  ASSERT_OK_AND_ASSIGN(codec::KvqInfo kvq, codec::ParseKvq(c));
  EXPECT_EQ(kvq.level, 4);
  ASSERT_OK_AND_ASSIGN(std::vector<uint8_t> decoded, codec::DecodeKvq(c));
  EXPECT_EQ(decoded, KvqReconstruction(info, payload, 4));
  for (const char* bad : {"kvq-5", "kvq-0", "zstd", ""}) {
    std::string ignored;
    EXPECT_EQ(fetch(bad, &ignored), grpc::StatusCode::INVALID_ARGUMENT) << bad;
  }
}

}  // namespace
}  // namespace kvstash::testing
