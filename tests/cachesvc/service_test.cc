// The kvstash.v1 contract of the real cachesvc binary, spoken through raw gRPC stubs: every RPC,
// malformed and oversized requests, unknown keys, wrong checksums, double commit, expired
// reservations, health and reflection, /metrics and /healthz, TCP loopback, SIGTERM.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <thread>

#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "kvstash/proto/arena_handshake.h"
#include "kvstash/proto/convert.h"
#include "kvstash/proto/status_mapping.h"
#include "kvstash/v1/kvstash.grpc.pb.h"
#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<v1::KvStash::Stub> StubFor(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(64 << 20);
  args.SetMaxReceiveMessageSize(64 << 20);
  return v1::KvStash::NewStub(
      grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
}

void Deadline(grpc::ClientContext* ctx, int ms = 10'000) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
}

v1::ObjectKey KeyProto(uint64_t i) {
  v1::ObjectKey key;
  ToProto(TestName(i), &key);
  return key;
}

// Streams a whole object with a raw Put call.
grpc::Status StreamPut(v1::KvStash::Stub& stub, uint64_t i, const ObjectInfo& info,
                       const std::vector<uint8_t>& payload, bool overwrite = false,
                       size_t chunk = 1 << 20) {
  grpc::ClientContext ctx;
  Deadline(&ctx);
  v1::PutResponse resp;
  auto writer = stub.Put(&ctx, &resp);
  v1::PutChunk msg;
  *msg.mutable_header()->mutable_key() = KeyProto(i);
  ToProto(info, msg.mutable_header()->mutable_info());
  msg.mutable_header()->set_overwrite(overwrite);
  size_t off = 0;
  do {
    size_t n = std::min(chunk, payload.size() - off);
    msg.set_data(payload.data() + off, n);
    if (!writer->Write(msg)) break;
    off += n;
    msg.Clear();
  } while (off < payload.size());
  writer->WritesDone();
  return writer->Finish();
}

Result<std::vector<uint8_t>> StreamGet(v1::KvStash::Stub& stub, uint64_t i) {
  grpc::ClientContext ctx;
  Deadline(&ctx);
  v1::GetRequest req;
  *req.mutable_key() = KeyProto(i);
  auto reader = stub.Get(&ctx, req);
  std::vector<uint8_t> out;
  v1::GetChunk chunk;
  while (reader->Read(&chunk)) out.insert(out.end(), chunk.data().begin(), chunk.data().end());
  KVSTASH_RETURN_IF_ERROR(FromGrpcStatus(reader->Finish()));
  return out;
}

class ServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    ServiceOptions options;
    options.metrics = true;
    auto svc = ServiceProcess::Start(dir_->path(), options);
    ASSERT_OK(svc);
    svc_ = svc->release();
  }
  static void TearDownTestSuite() {
    if (svc_ != nullptr) {
      EXPECT_EQ(svc_->Terminate(), 0) << svc_->Log();
    }
    delete svc_;
    delete dir_;
    svc_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(svc_, nullptr);
    stub_ = StubFor(svc_->target());
  }

  static TempDir* dir_;
  static ServiceProcess* svc_;
  std::unique_ptr<v1::KvStash::Stub> stub_;
};
TempDir* ServiceTest::dir_ = nullptr;
ServiceProcess* ServiceTest::svc_ = nullptr;

TEST_F(ServiceTest, StreamPutGetLookupDeletePinListStats) {
  ObjectInfo info = TestInfo(4096);  // 1 MiB
  auto payload = TestPayload(1, info.payload_bytes);
  info = WithCrc(info, payload);
  ASSERT_OK(StreamPut(*stub_, 100, info, payload, false, 300'000));

  auto back = StreamGet(*stub_, 100);
  ASSERT_OK(back);
  EXPECT_EQ(*back, payload);

  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    v1::LookupRequest req;
    *req.add_keys() = KeyProto(100);
    *req.add_keys() = KeyProto(101);
    *req.add_keys() = KeyProto(100);
    v1::LookupResponse resp;
    ASSERT_OK(stub_->Lookup(&ctx, req, &resp));
    ASSERT_EQ(resp.results_size(), 3);
    EXPECT_TRUE(resp.results(0).present());
    EXPECT_EQ(resp.results(0).payload_bytes(), info.payload_bytes);
    EXPECT_EQ(resp.results(0).tier(), v1::TIER_CPU);
    EXPECT_EQ(*FromProto(resp.results(0).info()), info);
    EXPECT_FALSE(resp.results(1).present());
    EXPECT_TRUE(resp.results(2).present());
    EXPECT_EQ(resp.longest_prefix(), 1u);
  }
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    v1::KeysRequest req;
    *req.add_keys() = KeyProto(100);
    *req.add_keys() = KeyProto(101);
    v1::KeysResponse resp;
    ASSERT_OK(stub_->Pin(&ctx, req, &resp));
    ASSERT_EQ(resp.results_size(), 2);
    EXPECT_EQ(resp.results(0).code(), 0);
    EXPECT_EQ(resp.results(1).code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    v1::ListRequest req;
    req.set_namespace_("test");
    v1::ListResponse resp;
    ASSERT_OK(stub_->List(&ctx, req, &resp));
    bool found = false;
    for (const auto& o : resp.objects()) {
      if (o.storage_key() ==
          std::string(reinterpret_cast<const char*>(TestName(100).storage_key.Bytes().data()),
                      16)) {
        found = true;
        EXPECT_TRUE(o.pinned());
        EXPECT_EQ(o.key().namespace_(), "test");
        EXPECT_EQ(o.info().payload_bytes(), info.payload_bytes);
      }
    }
    EXPECT_TRUE(found);
    // Another tenant sees none of it.
    grpc::ClientContext ctx2;
    Deadline(&ctx2);
    req.set_namespace_("someone-else");
    ASSERT_OK(stub_->List(&ctx2, req, &resp));
    EXPECT_EQ(resp.objects_size(), 0);
  }
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    v1::StatsResponse resp;
    ASSERT_OK(stub_->Stats(&ctx, v1::StatsRequest(), &resp));
    EXPECT_FALSE(resp.version().empty());
    EXPECT_GE(resp.pinned_objects(), 1u);
    EXPECT_GE(resp.tiers_size(), 1);
  }
  using KeysRpc = grpc::Status (v1::KvStash::Stub::*)(grpc::ClientContext*, const v1::KeysRequest&,
                                                      v1::KeysResponse*);
  for (KeysRpc rpc : std::vector<KeysRpc>{&v1::KvStash::Stub::Unpin, &v1::KvStash::Stub::Delete}) {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    v1::KeysRequest req;
    *req.add_keys() = KeyProto(100);
    v1::KeysResponse resp;
    ASSERT_OK(((*stub_).*rpc)(&ctx, req, &resp));
    EXPECT_EQ(resp.results(0).code(), 0) << resp.results(0).message();
  }
  EXPECT_THAT(StreamGet(*stub_, 100), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(ServiceTest, SharedMemoryReserveCommitAcquireRelease) {
  grpc::ClientContext ictx;
  Deadline(&ictx);
  v1::ArenaInfoResponse arena;
  ASSERT_OK(stub_->ArenaInfo(&ictx, v1::ArenaInfoRequest(), &arena));
  auto received = ReceiveArenaFd(arena.fd_socket_path(), 5000);
  ASSERT_OK(received);
  EXPECT_EQ(received->hello.arena_bytes, arena.arena_bytes());
  EXPECT_EQ(received->hello.arena_generation, arena.arena_generation());
  auto* base = static_cast<uint8_t*>(
      ::mmap(nullptr, arena.arena_bytes(), PROT_READ | PROT_WRITE, MAP_SHARED, received->fd, 0));
  ::close(received->fd);
  ASSERT_NE(base, MAP_FAILED);

  ObjectInfo info = TestInfo(1024);
  auto payload = TestPayload(2, info.payload_bytes);
  grpc::ClientContext rctx;
  Deadline(&rctx);
  v1::ReserveRequest rreq;
  *rreq.mutable_key() = KeyProto(200);
  ToProto(info, rreq.mutable_info());
  v1::ReserveResponse r;
  ASSERT_OK(stub_->Reserve(&rctx, rreq, &r));
  EXPECT_EQ(r.arena_generation(), arena.arena_generation());
  ASSERT_LE(r.arena_offset() + info.payload_bytes, arena.arena_bytes());
  std::memcpy(base + r.arena_offset(), payload.data(), payload.size());

  grpc::ClientContext cctx;
  Deadline(&cctx);
  v1::CommitRequest creq;
  creq.set_reservation_id(r.reservation_id());
  creq.set_payload_crc32c(Crc32c(payload.data(), payload.size()));
  v1::CommitResponse cresp;
  ASSERT_OK(stub_->Commit(&cctx, creq, &cresp));

  // Double commit is a wrong-state error, not a second object.
  grpc::ClientContext c2;
  Deadline(&c2);
  grpc::Status again = stub_->Commit(&c2, creq, &cresp);
  EXPECT_TRUE(again.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
              again.error_code() == grpc::StatusCode::NOT_FOUND)
      << again.error_code() << " " << again.error_message();

  grpc::ClientContext actx;
  Deadline(&actx);
  v1::AcquireRequest areq;
  *areq.add_keys() = KeyProto(200);
  *areq.add_keys() = KeyProto(201);
  v1::AcquireResponse aresp;
  ASSERT_OK(stub_->Acquire(&actx, areq, &aresp));
  ASSERT_EQ(aresp.results_size(), 2);
  ASSERT_EQ(aresp.results(0).status().code(), 0);
  EXPECT_EQ(aresp.results(1).status().code(), grpc::StatusCode::NOT_FOUND);
  const auto& lease = aresp.results(0);
  ASSERT_LE(lease.arena_offset() + info.payload_bytes, arena.arena_bytes());
  EXPECT_EQ(std::memcmp(base + lease.arena_offset(), payload.data(), payload.size()), 0);
  EXPECT_GT(aresp.expires_in_ms(), 0u);

  grpc::ClientContext lctx;
  Deadline(&lctx);
  v1::ReleaseRequest lreq;
  lreq.add_lease_ids(lease.lease_id());
  lreq.add_lease_ids(lease.lease_id());  // second time: unknown
  lreq.add_lease_ids(987654321);
  v1::ReleaseResponse lresp;
  ASSERT_OK(stub_->Release(&lctx, lreq, &lresp));
  ASSERT_EQ(lresp.results_size(), 3);
  EXPECT_EQ(lresp.results(0).code(), 0);
  EXPECT_EQ(lresp.results(1).code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(lresp.results(2).code(), grpc::StatusCode::NOT_FOUND);

  // A reservation that is aborted leaves nothing behind.
  grpc::ClientContext r2;
  Deadline(&r2);
  *rreq.mutable_key() = KeyProto(202);
  ASSERT_OK(stub_->Reserve(&r2, rreq, &r));
  grpc::ClientContext ab;
  Deadline(&ab);
  v1::AbortRequest abreq;
  abreq.set_reservation_id(r.reservation_id());
  v1::AbortResponse abresp;
  ASSERT_OK(stub_->Abort(&ab, abreq, &abresp));
  grpc::ClientContext ab2;
  Deadline(&ab2);
  EXPECT_EQ(stub_->Abort(&ab2, abreq, &abresp).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(StreamGet(*stub_, 202), StatusIs(absl::StatusCode::kNotFound));
  ::munmap(base, arena.arena_bytes());
}

// ReserveMany / CommitMany: per-item results in order, each with Reserve's and Commit's contract
// (a bad item does not stop the others; an item committed with a wrong crc32c is accepted and
// then never served).
TEST_F(ServiceTest, BatchedReserveAndCommitAnswerPerItem) {
  grpc::ClientContext ictx;
  Deadline(&ictx);
  v1::ArenaInfoResponse arena;
  ASSERT_OK(stub_->ArenaInfo(&ictx, v1::ArenaInfoRequest(), &arena));
  auto received = ReceiveArenaFd(arena.fd_socket_path(), 5000);
  ASSERT_OK(received);
  auto* base = static_cast<uint8_t*>(
      ::mmap(nullptr, arena.arena_bytes(), PROT_READ | PROT_WRITE, MAP_SHARED, received->fd, 0));
  ::close(received->fd);
  ASSERT_NE(base, MAP_FAILED);

  ObjectInfo info = TestInfo(256);
  ASSERT_TRUE(StreamPut(*stub_, 250, WithCrc(info, TestPayload(250, info.payload_bytes)),
                        TestPayload(250, info.payload_bytes))
                  .ok());
  // Items: 251 ok, 250 exists (no overwrite), a malformed key, 252 ok (committed with a wrong
  // crc32c below: the service checks it after Commit and removes it), 253 ok.
  grpc::ClientContext rctx;
  Deadline(&rctx);
  v1::ReserveManyRequest rreq;
  for (uint64_t key : {251, 250, 0, 252, 253}) {
    v1::ReserveRequest* item = rreq.add_items();
    *item->mutable_key() = KeyProto(key);
    if (key == 0) item->mutable_key()->set_token_hash("short");
    ToProto(info, item->mutable_info());
  }
  v1::ReserveManyResponse rresp;
  ASSERT_OK(stub_->ReserveMany(&rctx, rreq, &rresp));
  ASSERT_EQ(rresp.results_size(), 5);
  EXPECT_EQ(rresp.results(1).status().code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(rresp.results(2).status().code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_FALSE(rresp.results(1).has_reservation());
  grpc::ClientContext cctx;
  Deadline(&cctx);
  v1::CommitManyRequest creq;
  std::vector<std::vector<uint8_t>> payloads;
  for (int k : {0, 3, 4}) {
    ASSERT_EQ(rresp.results(k).status().code(), 0) << rresp.results(k).status().message();
    const v1::ReserveResponse& r = rresp.results(k).reservation();
    EXPECT_EQ(r.arena_generation(), arena.arena_generation());
    ASSERT_LE(r.arena_offset() + info.payload_bytes, arena.arena_bytes());
    payloads.push_back(TestPayload(260 + k, info.payload_bytes));
    std::memcpy(base + r.arena_offset(), payloads.back().data(), info.payload_bytes);
    v1::CommitRequest* commit = creq.add_items();
    commit->set_reservation_id(r.reservation_id());
    commit->set_payload_crc32c(Crc32c(payloads.back().data(), info.payload_bytes) ^ (k == 3));
  }
  creq.add_items()->set_reservation_id(987654321);  // unknown
  v1::CommitManyResponse cresp;
  ASSERT_OK(stub_->CommitMany(&cctx, creq, &cresp));
  ASSERT_EQ(cresp.results_size(), 4);
  EXPECT_EQ(cresp.results(0).code(), 0);
  EXPECT_EQ(cresp.results(1).code(), 0);
  EXPECT_EQ(cresp.results(2).code(), 0);
  EXPECT_EQ(cresp.results(3).code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(*StreamGet(*stub_, 251), payloads[0]);
  EXPECT_THAT(StreamGet(*stub_, 252), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(*StreamGet(*stub_, 253), payloads[2]);
  ::munmap(base, arena.arena_bytes());
}

TEST_F(ServiceTest, WrongChecksumIsRejectedAndNothingBecomesVisible) {
  ObjectInfo info = TestInfo(512);
  auto payload = TestPayload(3, info.payload_bytes);
  info = WithCrc(info, payload);
  info.payload_crc32c ^= 0x1;
  grpc::Status s = StreamPut(*stub_, 300, info, payload);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_THAT(StreamGet(*stub_, 300), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(ServiceTest, ExistingKeysNeedOverwrite) {
  ObjectInfo info = TestInfo(64);
  auto one = TestPayload(4, info.payload_bytes);
  auto two = TestPayload(5, info.payload_bytes);
  ASSERT_OK(StreamPut(*stub_, 400, WithCrc(info, one), one));
  EXPECT_EQ(StreamPut(*stub_, 400, WithCrc(info, two), two).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(*StreamGet(*stub_, 400), one);
  ASSERT_OK(StreamPut(*stub_, 400, WithCrc(info, two), two, /*overwrite=*/true));
  EXPECT_EQ(*StreamGet(*stub_, 400), two);
}

TEST_F(ServiceTest, MalformedRequestsGetPreciseInvalidArgument) {
  auto expect_invalid = [](const grpc::Status& s, const std::string& fragment) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(fragment));
  };
  {  // bad key lengths
    grpc::ClientContext ctx;
    Deadline(&ctx);
    v1::LookupRequest req;
    *req.add_keys() = KeyProto(1);
    v1::ObjectKey* bad = req.add_keys();
    *bad = KeyProto(2);
    bad->set_token_hash(std::string(15, 'x'));
    v1::LookupResponse resp;
    expect_invalid(stub_->Lookup(&ctx, req, &resp), "keys[1]: token_hash must be 16 bytes");
  }
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    v1::KeysRequest req;
    v1::ObjectKey* bad = req.add_keys();
    *bad = KeyProto(2);
    bad->set_model_fingerprint("short");
    v1::KeysResponse resp;
    expect_invalid(stub_->Delete(&ctx, req, &resp), "keys[0]: model_fingerprint must be 16");
  }
  {  // namespace too long
    grpc::ClientContext ctx;
    Deadline(&ctx);
    v1::AcquireRequest req;
    v1::ObjectKey* bad = req.add_keys();
    *bad = KeyProto(2);
    bad->set_namespace_(std::string(300, 'n'));
    v1::AcquireResponse resp;
    expect_invalid(stub_->Acquire(&ctx, req, &resp), "namespace longer than 256");
  }
  {  // invalid layouts
    struct Case {
      std::function<void(ObjectInfo&)> mutate;
      std::string fragment;
    };
    std::vector<Case> cases = {
        {[](ObjectInfo& i) { i.layout.head_end = 2; }, "head range exceeds total_kv_heads"},
        {[](ObjectInfo& i) { i.layout.num_layers = 0; }, "num_layers out of range"},
        {[](ObjectInfo& i) { i.payload_bytes += 2; }, "raw payload is"},
        {[](ObjectInfo& i) { i.layout.head_dim = 5000; }, "head_dim out of range"},
    };
    for (const Case& c : cases) {
      ObjectInfo info = TestInfo(16);
      c.mutate(info);
      grpc::ClientContext ctx;
      Deadline(&ctx);
      v1::ReserveRequest req;
      *req.mutable_key() = KeyProto(3);
      ToProto(info, req.mutable_info());
      v1::ReserveResponse resp;
      expect_invalid(stub_->Reserve(&ctx, req, &resp), c.fragment);
    }
    grpc::ClientContext ctx;
    Deadline(&ctx);
    v1::ReserveRequest req;
    *req.mutable_key() = KeyProto(3);
    v1::ReserveResponse resp;
    expect_invalid(stub_->Reserve(&ctx, req, &resp), "info: missing");
    grpc::ClientContext ctx2;
    Deadline(&ctx2);
    ToProto(TestInfo(16), req.mutable_info());
    req.mutable_info()->set_encoding(static_cast<v1::Encoding>(9));
    expect_invalid(stub_->Reserve(&ctx2, req, &resp), "unknown encoding");
  }
  {  // too many keys in one request
    grpc::ClientContext ctx;
    Deadline(&ctx);
    v1::LookupRequest req;
    for (int i = 0; i < 4097; ++i) *req.add_keys() = KeyProto(i);
    v1::LookupResponse resp;
    expect_invalid(stub_->Lookup(&ctx, req, &resp), "the limit is 4096");
  }
}

TEST_F(ServiceTest, MalformedPutStreams) {
  ObjectInfo info = TestInfo(1024);
  auto payload = TestPayload(6, info.payload_bytes);
  info = WithCrc(info, payload);
  auto run = [&](const std::function<void(grpc::ClientWriter<v1::PutChunk>&)>& body) {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    v1::PutResponse resp;
    auto writer = stub_->Put(&ctx, &resp);
    body(*writer);
    writer->WritesDone();
    return writer->Finish();
  };
  v1::PutChunk header;
  *header.mutable_header()->mutable_key() = KeyProto(600);
  ToProto(info, header.mutable_header()->mutable_info());

  grpc::Status s = run([](auto&) {});
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("ended before its header"));

  s = run([](auto& w) {
    v1::PutChunk data_only;
    data_only.set_data("abc");
    w.Write(data_only);
  });
  EXPECT_THAT(s.error_message(), HasSubstr("first PutChunk must carry the header"));

  s = run([&](auto& w) {
    v1::PutChunk c = header;
    c.set_data(payload.data(), payload.size() / 2);
    w.Write(c);
  });
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("ended after 131072 of 262144 bytes"));

  s = run([&](auto& w) {
    v1::PutChunk c = header;
    c.set_data(payload.data(), payload.size());
    w.Write(c);
    v1::PutChunk extra;
    extra.set_data("x");
    w.Write(extra);
  });
  EXPECT_THAT(s.error_message(), HasSubstr("more than payload_bytes"));

  s = run([&](auto& w) {
    w.Write(header);
    w.Write(header);
  });
  EXPECT_THAT(s.error_message(), HasSubstr("PutChunk #1 repeats the header"));

  // Bigger than the per-chunk limit (4 MiB) but within the transport limit (16 MiB).
  ObjectInfo big = TestInfo(32768);  // 8 MiB
  auto big_payload = TestPayload(7, big.payload_bytes);
  s = StreamPut(*stub_, 601, WithCrc(big, big_payload), big_payload, false, 6 << 20);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("the limit is 4194304"));

  // Above the transport limit gRPC itself refuses the message.
  ObjectInfo huge = TestInfo(81920);  // 20 MiB
  auto huge_payload = TestPayload(8, huge.payload_bytes);
  s = StreamPut(*stub_, 602, WithCrc(huge, huge_payload), huge_payload, false, 20 << 20);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();

  // None of these left an object or a reservation behind, and the daemon still serves.
  for (uint64_t k : {600, 601, 602}) {
    EXPECT_THAT(StreamGet(*stub_, k), StatusIs(absl::StatusCode::kNotFound));
  }
  ASSERT_OK(StreamPut(*stub_, 600, info, payload));
  EXPECT_EQ(*StreamGet(*stub_, 600), payload);
}

TEST_F(ServiceTest, UnknownIdsAndKeys) {
  grpc::ClientContext c1;
  Deadline(&c1);
  v1::CommitRequest commit;
  commit.set_reservation_id(424242);
  v1::CommitResponse cresp;
  EXPECT_EQ(stub_->Commit(&c1, commit, &cresp).error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::ClientContext c2;
  Deadline(&c2);
  v1::AbortRequest abort;
  abort.set_reservation_id(424242);
  v1::AbortResponse aresp;
  EXPECT_EQ(stub_->Abort(&c2, abort, &aresp).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(StreamGet(*stub_, 999), StatusIs(absl::StatusCode::kNotFound));
  grpc::ClientContext c3;
  Deadline(&c3);
  v1::KeysRequest keys;
  *keys.add_keys() = KeyProto(999);
  v1::KeysResponse kresp;
  ASSERT_OK(stub_->Unpin(&c3, keys, &kresp));
  EXPECT_EQ(kresp.results(0).code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServiceTest, CommitAfterReservationExpiry) {
  ObjectInfo info = TestInfo(64);
  grpc::ClientContext rctx;
  Deadline(&rctx);
  v1::ReserveRequest req;
  *req.mutable_key() = KeyProto(700);
  ToProto(info, req.mutable_info());
  req.set_lease_ms(50);
  v1::ReserveResponse r;
  ASSERT_OK(stub_->Reserve(&rctx, req, &r));
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  grpc::ClientContext cctx;
  Deadline(&cctx);
  v1::CommitRequest commit;
  commit.set_reservation_id(r.reservation_id());
  v1::CommitResponse cresp;
  grpc::Status s = stub_->Commit(&cctx, commit, &cresp);
  // Expired and reclaimed: the service may already have forgotten the id.
  EXPECT_TRUE(s.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
              s.error_code() == grpc::StatusCode::NOT_FOUND)
      << s.error_code() << " " << s.error_message();
  EXPECT_THAT(StreamGet(*stub_, 700), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(ServiceTest, HealthAndReflection) {
  auto channel = grpc::CreateChannel(svc_->target(), grpc::InsecureChannelCredentials());
  auto health = grpc::health::v1::Health::NewStub(channel);
  for (const char* service : {"", "kvstash.v1.KvStash"}) {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    grpc::health::v1::HealthCheckResponse resp;
    ASSERT_OK(health->Check(&ctx, req, &resp)) << service;
    EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING) << service;
  }
  auto reflection = grpc::reflection::v1alpha::ServerReflection::NewStub(channel);
  grpc::ClientContext ctx;
  Deadline(&ctx);
  auto stream = reflection->ServerReflectionInfo(&ctx);
  grpc::reflection::v1alpha::ServerReflectionRequest req;
  req.set_list_services("");
  ASSERT_TRUE(stream->Write(req));
  grpc::reflection::v1alpha::ServerReflectionResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  std::vector<std::string> names;
  for (const auto& s : resp.list_services_response().service()) names.push_back(s.name());
  EXPECT_THAT(names, ::testing::Contains("kvstash.v1.KvStash"));
  EXPECT_THAT(names, ::testing::Contains("grpc.health.v1.Health"));
  req.set_file_containing_symbol("kvstash.v1.KvStash");
  ASSERT_TRUE(stream->Write(req));
  ASSERT_TRUE(stream->Read(&resp));
  ASSERT_EQ(resp.file_descriptor_response().file_descriptor_proto_size(), 1);
  EXPECT_THAT(resp.file_descriptor_response().file_descriptor_proto(0),
              HasSubstr("kvstash/v1/kvstash.proto"));
  stream->WritesDone();
  EXPECT_OK(stream->Finish());
}

TEST_F(ServiceTest, MetricsAndHealthzOverHttp) {
  ASSERT_GT(svc_->metrics_port(), 0);
  // Make sure at least one Lookup happened.
  grpc::ClientContext ctx;
  Deadline(&ctx);
  v1::LookupRequest req;
  *req.add_keys() = KeyProto(1);
  v1::LookupResponse resp;
  ASSERT_OK(stub_->Lookup(&ctx, req, &resp));

  std::string body;
  ASSERT_EQ(HttpGet(svc_->metrics_port(), "/healthz", &body), 200);
  EXPECT_EQ(body, "ok\n");
  ASSERT_EQ(HttpGet(svc_->metrics_port(), "/metrics", &body), 200);
  EXPECT_THAT(body, HasSubstr("# TYPE kvstash_rpc_requests_total counter"));
  EXPECT_THAT(body, HasSubstr("kvstash_rpc_requests_total{method=\"Lookup\",code=\"OK\"}"));
  EXPECT_THAT(body, HasSubstr("# TYPE kvstash_rpc_duration_seconds histogram"));
  EXPECT_THAT(body, HasSubstr("kvstash_rpc_duration_seconds_bucket{method=\"Lookup\",le="));
  EXPECT_THAT(body, HasSubstr("kvstash_grpc_received_bytes_total{method=\"Lookup\"}"));
}

// ---- tests with a daemon of their own -----------------------------------------------------

TEST(ServiceProcessTest, TcpLoopbackServesEveryDataRpc) {
  TempDir dir;
  ServiceOptions options;
  options.tcp = true;
  auto svc = ServiceProcess::Start(dir.path(), options);
  ASSERT_OK(svc);
  EXPECT_THAT((*svc)->target(), HasSubstr("127.0.0.1:"));
  auto stub = StubFor((*svc)->target());
  ObjectInfo info = TestInfo(8192);  // 2 MiB
  auto payload = TestPayload(9, info.payload_bytes);
  ASSERT_OK(StreamPut(*stub, 1, WithCrc(info, payload), payload));
  auto back = StreamGet(*stub, 1);
  ASSERT_OK(back);
  EXPECT_EQ(*back, payload);
  grpc::ClientContext ctx;
  Deadline(&ctx);
  v1::ArenaInfoResponse arena;
  ASSERT_OK(stub->ArenaInfo(&ctx, v1::ArenaInfoRequest(), &arena));
  EXPECT_EQ(arena.fd_socket_path(), dir.path() + "/arena.sock");
  EXPECT_EQ((*svc)->Terminate(), 0);
}

// With TCP and no SSD tier nothing else creates the data dir, where the default arena socket
// goes; the daemon must create it rather than fail to bind.
TEST(ServiceProcessTest, TcpWithoutSsdCreatesTheDataDirForTheArenaSocket) {
  TempDir dir;
  ServiceOptions options;
  options.tcp = true;
  options.ssd_capacity = "0";
  options.default_arena_socket = true;
  auto svc = ServiceProcess::Start(dir.path(), options);
  ASSERT_OK(svc);
  auto stub = StubFor((*svc)->target());
  grpc::ClientContext ctx;
  Deadline(&ctx);
  v1::ArenaInfoResponse arena;
  ASSERT_OK(stub->ArenaInfo(&ctx, v1::ArenaInfoRequest(), &arena));
  EXPECT_EQ(arena.fd_socket_path(), (*svc)->data_dir() + "/arena.sock");
  EXPECT_TRUE(std::filesystem::exists((*svc)->data_dir() + "/arena.sock"));
  EXPECT_EQ((*svc)->Terminate(), 0);
}

TEST(ServiceProcessTest, SigtermLetsInFlightPutFinishAndFlushes) {
  TempDir dir;
  auto svc = ServiceProcess::Start(dir.path());
  ASSERT_OK(svc);
  auto stub = StubFor((*svc)->target());
  ObjectInfo info = TestInfo(32768);  // 8 MiB in 8 chunks
  auto payload = TestPayload(10, info.payload_bytes);
  info = WithCrc(info, payload);

  grpc::ClientContext ctx;
  Deadline(&ctx, 30'000);
  v1::PutResponse resp;
  auto writer = stub->Put(&ctx, &resp);
  v1::PutChunk msg;
  *msg.mutable_header()->mutable_key() = KeyProto(1);
  ToProto(info, msg.mutable_header()->mutable_info());
  const size_t chunk = 1 << 20;
  for (size_t off = 0; off < payload.size(); off += chunk) {
    msg.set_data(payload.data() + off, chunk);
    ASSERT_TRUE(writer->Write(msg));
    msg.Clear();
    if (off == 3 * chunk) ::kill((*svc)->pid(), SIGTERM);  // mid-stream
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  writer->WritesDone();
  grpc::Status put = writer->Finish();
  EXPECT_OK(put);
  int code = (*svc)->Terminate();  // already terminating: just waits
  EXPECT_EQ(code, 0) << (*svc)->Log();
  EXPECT_THAT((*svc)->Log(), HasSubstr("event=shutdown_done store_close=ok"));
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/svc.sock"));

  // Close() flushed the SSD tier: a fresh daemon on the same data dir serves the object.
  auto again = ServiceProcess::Start(dir.path());
  ASSERT_OK(again);
  auto stub2 = StubFor((*again)->target());
  auto back = StreamGet(*stub2, 1);
  ASSERT_OK(back);
  EXPECT_EQ(*back, payload);
}

TEST(ServiceProcessTest, RefusesASocketInUseAndBadConfig) {
  TempDir dir;
  auto first = ServiceProcess::Start(dir.path());
  ASSERT_OK(first);
  TempDir other;
  std::string out;
  int code = RunProgram(
      {BinaryPath("cachesvc/cachesvc"), "--listen", (*first)->target(), "--data-dir",
       other.path() + "/data", "--arena-socket", other.path() + "/a.sock", "--metrics-port", "0"},
      &out);
  EXPECT_EQ(code, 1);
  EXPECT_THAT(out, HasSubstr("in use by a running process"));
  // The first daemon is unharmed.
  auto stub = StubFor((*first)->target());
  EXPECT_THAT(StreamGet(*stub, 5), StatusIs(absl::StatusCode::kNotFound));

  code = RunProgram({BinaryPath("cachesvc/cachesvc"), "--ssd-capacity", "huge"}, &out);
  EXPECT_EQ(code, 2);
  EXPECT_THAT(out, HasSubstr("--ssd-capacity: 'huge' is not a byte size"));
}

}  // namespace
}  // namespace kvstash::testing
