// The byte-stream Put and Get as raw ByteBuffers on both sides (client/src/raw_call.h, cachesvc's
// RawPut/RawGet): bytes that are not messages, a reader that stops reading, and typed and raw
// peers agreeing on the wire.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kvstash/client/kv_client.h"
#include "kvstash/proto/convert.h"
#include "kvstash/proto/status_mapping.h"
#include "kvstash/v1/kvstash.grpc.pb.h"
#include "raw_call.h"
#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using client::KvClient;
using ::testing::HasSubstr;

std::shared_ptr<grpc::Channel> ChannelTo(const ServiceProcess& svc) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(svc.target(), grpc::InsecureChannelCredentials(), args);
}

grpc::ByteBuffer Bytes(const std::string& s) {
  grpc::Slice slice(s);
  return grpc::ByteBuffer(&slice, 1);
}

// Sends `message` as the only message of `method` and returns the call's status.
Status SendRaw(grpc::GenericStub* stub, const std::string& method, const std::string& message) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  client::internal::RawCall call(stub, &ctx, method, client::ClientOptions{}.stream_poll);
  (void)call.Write(Bytes(message), /*last=*/true);
  v1::GetChunk rest;
  BytesFieldView data;
  Result<bool> more = true;
  while (more.ok() && *more) more = call.Read(0, &rest, &data);
  return call.Finish();
}

TEST(RawStreamTest, BytesThatAreNotMessagesGetInvalidArgumentAndTheServiceKeepsServing) {
  TempDir dir;
  auto svc = ServiceProcess::Start(dir.path(), ServiceOptions());
  ASSERT_OK(svc);
  grpc::GenericStub stub(ChannelTo(**svc));

  // A PutChunk whose header claims 255 bytes that never come.
  Status put = SendRaw(&stub, "Put", std::string("\x0a\xff\x01", 3));
  EXPECT_THAT(put, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(put.message()), HasSubstr("kvstash.v1.PutChunk"));
  // A GetRequest that does not parse.
  Status get = SendRaw(&stub, "Get", std::string("\xff\xff", 2));
  EXPECT_THAT(get, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(get.message()), HasSubstr("not a GetRequest"));

  auto kv = KvClient::Connect((*svc)->target());
  ASSERT_OK(kv);
  ObjectInfo info = TestInfo(64);
  auto payload = TestPayload(3, info.payload_bytes);
  client::PutOptions stream;
  stream.path = client::DataPath::kStream;
  ASSERT_OK((*kv)->Put(TestName(1), info, payload, stream));
  auto back = (*kv)->Get(TestName(1));
  ASSERT_OK(back);
  EXPECT_EQ(back->payload, payload);
  EXPECT_EQ((*svc)->Terminate(), 0);
}

TEST(RawStreamTest, TypedPeersAndRawPeersAgreeOnTheWire) {
  TempDir dir;
  auto svc = ServiceProcess::Start(dir.path(), ServiceOptions());
  ASSERT_OK(svc);
  auto stub = v1::KvStash::NewStub(ChannelTo(**svc));
  // Written by the raw client in 3 chunks, read back by a typed gRPC stub.
  client::ClientOptions options;
  options.stream_chunk_bytes = 100'000;
  auto kv = KvClient::Connect((*svc)->target(), options);
  ASSERT_OK(kv);
  ObjectInfo info = TestInfo(1024);  // 256 KiB
  auto payload = TestPayload(4, info.payload_bytes);
  client::PutOptions stream;
  stream.path = client::DataPath::kStream;
  ASSERT_OK((*kv)->Put(TestName(2), info, payload, stream));

  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::GetRequest req;
  ToProto(TestName(2), req.mutable_key());
  auto reader = stub->Get(&ctx, req);
  v1::GetChunk chunk;
  std::vector<uint8_t> back;
  int messages = 0;
  while (reader->Read(&chunk)) {
    if (messages++ == 0) {
      EXPECT_EQ(chunk.info().payload_bytes(), info.payload_bytes);
      EXPECT_EQ(chunk.served_from(), v1::TIER_CPU);
    } else {
      EXPECT_FALSE(chunk.has_info());
    }
    back.insert(back.end(), chunk.data().begin(), chunk.data().end());
  }
  ASSERT_OK(reader->Finish());
  EXPECT_EQ(back, payload);
  EXPECT_EQ(messages, 1);  // the service's chunk (1 MiB) holds the whole object
  EXPECT_EQ((*svc)->Terminate(), 0);
}

// Start() runs a service (192 MiB arena, no SSD tier, `extra_args`) holding one 48 MiB object,
// more than gRPC buffers for a reader, and a Get of it whose reader takes one reply and stops.
class StalledGet {
 public:
  // Call inside ASSERT_NO_FATAL_FAILURE.
  void Start(std::vector<std::string> extra_args) {
    ServiceOptions options;
    options.metrics = true;
    options.cpu_capacity = "192MiB";
    options.ssd_capacity = "0";
    options.extra_args = std::move(extra_args);
    auto svc = ServiceProcess::Start(dir_.path(), options);
    ASSERT_OK(svc);
    svc_ = std::move(*svc);
    auto kv = KvClient::Connect(svc_->target());
    ASSERT_OK(kv);
    kv_ = std::move(*kv);
    const ObjectInfo info = TestInfo(196608);
    payload_ = TestPayload(5, info.payload_bytes);
    ASSERT_OK(kv_->Put(TestName(3), info, payload_));
    stub_ = v1::KvStash::NewStub(ChannelTo(*svc_));
    ctx_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    v1::GetRequest req;
    ToProto(TestName(3), req.mutable_key());
    reader_ = stub_->Get(&ctx_, req);
    v1::GetChunk chunk;
    ASSERT_TRUE(reader_->Read(&chunk));
  }
  // Reads what is left of the stalled Get; false when it did not end in an error.
  bool EndsInError() {
    v1::GetChunk chunk;
    while (reader_->Read(&chunk)) {
    }
    return !reader_->Finish().ok();
  }

  ServiceProcess& svc() { return *svc_; }
  KvClient& kv() { return *kv_; }
  const std::vector<uint8_t>& payload() const { return payload_; }

 private:
  TempDir dir_;
  std::unique_ptr<ServiceProcess> svc_;
  std::unique_ptr<KvClient> kv_;
  std::vector<uint8_t> payload_;
  std::unique_ptr<v1::KvStash::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReader<v1::GetChunk>> reader_;
};

// The service sends a Get's payload as slices of the arena and holds the object's lease until
// gRPC drops them. A client that stops reading must not keep it: the call is cancelled at the
// service's stream deadline, and the lease is released, not left to expire.
TEST(RawStreamTest, GetWhoseReaderStopsIsCancelledAtTheDeadlineAndReleasesItsLease) {
  StalledGet stalled;
  // The deadline counts from the call's start and must leave room for the first 1 MiB reply
  // to reach the reader: 2 s was not enough once under ASan on a 2-core VM at load 10 (the
  // first Read failed). 6 s costs the test 4 s.
  ASSERT_NO_FATAL_FAILURE(stalled.Start({"--stream-timeout-ms", "6000"}));
  // The lease goes once the service gives up on the call (about 6 s in).
  uint64_t leases = 1;
  for (int i = 0; i < 600 && leases != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto stats = stalled.kv().Stats();
    ASSERT_OK(stats);
    leases = stats->leases_active;
  }
  EXPECT_EQ(leases, 0u);
  EXPECT_EQ(MetricSum(stalled.svc().metrics_port(), "kvstash_storage_leases_expired_total"), 0.0);
  EXPECT_TRUE(stalled.EndsInError());

  auto back = stalled.kv().Get(TestName(3));
  ASSERT_OK(back);
  EXPECT_EQ(back->payload, stalled.payload());
  EXPECT_EQ(stalled.svc().Terminate(), 0);
}

// SIGTERM while a Get's reader has stopped reading: the service gives the call its shutdown grace,
// cancels it, releases the lease and exits cleanly (the stream threads drain before the store
// closes).
TEST(RawStreamTest, SigtermWithAStalledGetReaderEndsAfterTheGrace) {
  StalledGet stalled;
  ASSERT_NO_FATAL_FAILURE(stalled.Start({"--shutdown-grace-ms", "1000"}));
  ASSERT_EQ(stalled.kv().Stats()->leases_active, 1u);
  EXPECT_EQ(stalled.svc().Terminate(), 0) << stalled.svc().Log();
  EXPECT_THAT(stalled.svc().Log(), ::testing::HasSubstr("event=shutdown_done store_close=ok"));
  EXPECT_TRUE(stalled.EndsInError());
}

}  // namespace
}  // namespace kvstash::testing
