// KvClient against the real cachesvc binary: both data paths, the zero-copy handles, deadlines,
// thread safety, clients vanishing mid-put, and a restarting service.
#include "kvstash/client/kv_client.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <regex>
#include <sstream>
#include <thread>

#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using client::DataPath;
using client::KvClient;

// A counter family's sum (tests/cachesvc/service_process.h); UINT64_MAX when unreadable.
uint64_t CounterSum(int port, const std::string& family) {
  const double sum = MetricSum(port, family);
  return sum < 0 ? UINT64_MAX : static_cast<uint64_t>(sum);
}

Result<std::unique_ptr<KvClient>> ConnectTo(const ServiceProcess& svc,
                                            const client::ClientOptions& options = {}) {
  return KvClient::Connect(svc.target(), options);
}

// A client whose control calls go over the local control channel, or over gRPC when
// `local_control` is false.
Result<std::unique_ptr<KvClient>> ConnectWithControl(const ServiceProcess& svc,
                                                     bool local_control) {
  client::ClientOptions options;
  options.local_control = local_control;
  return ConnectTo(svc, options);
}

// Whether the service's active leases drop to zero within 2.5 s: a dropped lease's Release is
// sent without waiting for its answer.
bool NoLeaseActiveSoon(KvClient& kv) {
  uint64_t active = 1;
  for (int i = 0; i < 500 && active != 0; ++i) {
    active = kv.Stats()->leases_active;
    if (active != 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return active == 0;
}

class KvClientTest : public ::testing::Test {
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
    auto kv = ConnectTo(*svc_);
    ASSERT_OK(kv);
    kv_ = std::move(*kv);
    ASSERT_TRUE(kv_->shared_memory_attached()) << kv_->shared_memory_status();
  }

  static TempDir* dir_;
  static ServiceProcess* svc_;
  std::unique_ptr<KvClient> kv_;
};
TempDir* KvClientTest::dir_ = nullptr;
ServiceProcess* KvClientTest::svc_ = nullptr;

TEST_F(KvClientTest, SharedMemoryPathMovesNoPayloadOverGrpc) {
  const int port = svc_->metrics_port();
  ObjectInfo info = SmolChunkInfo();  // 5.9 MB
  std::vector<std::vector<uint8_t>> payloads;
  payloads.reserve(4);
  for (int i = 0; i < 4; ++i) payloads.push_back(TestPayload(1000 + i, info.payload_bytes));

  uint64_t in_before = CounterSum(port, "kvstash_grpc_received_bytes_total");
  uint64_t out_before = CounterSum(port, "kvstash_grpc_sent_bytes_total");
  for (int i = 0; i < 4; ++i) {
    client::PutOptions options;
    options.path = DataPath::kSharedMemory;
    ASSERT_OK(kv_->Put(TestName(1000 + i), info, payloads[i], options));
  }
  for (int i = 0; i < 4; ++i) {
    auto lease = kv_->Acquire(TestName(1000 + i));
    ASSERT_OK(lease);
    ASSERT_EQ(lease->data().size(), info.payload_bytes);
    EXPECT_TRUE(std::equal(lease->data().begin(), lease->data().end(), payloads[i].begin()));
    EXPECT_EQ(lease->info().payload_crc32c, Crc32c(payloads[i].data(), payloads[i].size()));
    EXPECT_EQ(lease->served_from(), client::Tier::kCpu);
  }
  uint64_t in_delta = CounterSum(port, "kvstash_grpc_received_bytes_total") - in_before;
  uint64_t out_delta = CounterSum(port, "kvstash_grpc_sent_bytes_total") - out_before;
  const uint64_t moved = 4 * info.payload_bytes;  // 23.6 MB each way
  EXPECT_LT(in_delta, 16u << 10) << "request bytes for " << moved << " payload bytes";
  EXPECT_LT(out_delta, 16u << 10) << "response bytes for " << moved << " payload bytes";

  // Control: the same counters do see payload on the stream path.
  client::PutOptions stream;
  stream.path = DataPath::kStream;
  ASSERT_OK(kv_->Put(TestName(1010), info, payloads[0], stream));
  auto got = kv_->Get(TestName(1010));
  ASSERT_OK(got);
  EXPECT_EQ(got->payload, payloads[0]);
  EXPECT_GE(CounterSum(port, "kvstash_grpc_received_bytes_total") - in_before - in_delta,
            info.payload_bytes);
  EXPECT_GE(CounterSum(port, "kvstash_grpc_sent_bytes_total") - out_before - out_delta,
            info.payload_bytes);
}

TEST_F(KvClientTest, ZeroCopyHandles) {
  ObjectInfo info = TestInfo(2048);
  auto payload = TestPayload(20, info.payload_bytes);
  {
    auto w = kv_->Reserve(TestName(20), info);
    ASSERT_OK(w);
    ASSERT_EQ(w->data().size(), payload.size());
    std::memcpy(w->data().data(), payload.data(), payload.size());
    ASSERT_OK(w->Commit());
    EXPECT_THAT(w->Commit(), StatusIs(absl::StatusCode::kFailedPrecondition));  // handle is spent
  }
  {
    auto abandoned = kv_->Reserve(TestName(21), info);  // destroyed without commit: aborted
    ASSERT_OK(abandoned);
    std::memset(abandoned->data().data(), 0xAB, 100);
  }
  auto w = kv_->Reserve(TestName(22), info);
  ASSERT_OK(w);
  ASSERT_OK(w->Abort());

  auto stats = kv_->Stats();
  ASSERT_OK(stats);
  EXPECT_EQ(stats->reservations_active, 0u);
  std::vector<ObjectName> names = {TestName(20), TestName(21), TestName(22)};
  auto lookup = kv_->Lookup(names);
  ASSERT_OK(lookup);
  EXPECT_TRUE(lookup->results[0].present);
  EXPECT_FALSE(lookup->results[1].present);
  EXPECT_FALSE(lookup->results[2].present);

  {
    auto lease = kv_->Acquire(TestName(20));
    ASSERT_OK(lease);
    EXPECT_TRUE(std::equal(lease->data().begin(), lease->data().end(), payload.begin()));
    ASSERT_OK(kv_->Stats());
    EXPECT_GE(kv_->Stats()->leases_active, 1u);
    client::ReadLease moved = std::move(*lease);  // ownership moves, one release
    EXPECT_EQ(lease->data().size(), 0u);
    ASSERT_OK(moved.Release());
    EXPECT_THAT(moved.Release(), StatusIs(absl::StatusCode::kFailedPrecondition));
  }
  { auto scoped = kv_->Acquire(TestName(20)); }  // the destructor sends the Release, unawaited
  EXPECT_TRUE(NoLeaseActiveSoon(*kv_));
  EXPECT_THAT(kv_->Acquire(TestName(21)), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(KvClientTest, LookupPrefixPinDeleteListStats) {
  ObjectInfo info = TestInfo(256);
  for (uint64_t i : {30, 31, 33}) {
    auto p = TestPayload(i, info.payload_bytes);
    ASSERT_OK(kv_->Put(TestName(i), info, p));
  }
  std::vector<ObjectName> chain;
  for (uint64_t i = 30; i < 35; ++i) chain.push_back(TestName(i));
  auto lookup = kv_->Lookup(chain);
  ASSERT_OK(lookup);
  EXPECT_EQ(lookup->longest_prefix, 2u);
  EXPECT_TRUE(lookup->results[3].present);
  EXPECT_FALSE(lookup->results[4].present);
  EXPECT_EQ(lookup->results[0].payload_bytes, info.payload_bytes);
  EXPECT_EQ(lookup->results[0].tier, client::Tier::kCpu);

  auto pinned = kv_->Pin(chain);
  ASSERT_OK(pinned);
  EXPECT_OK((*pinned)[0]);
  EXPECT_THAT((*pinned)[2], StatusIs(absl::StatusCode::kNotFound));
  auto list = kv_->List("test", 0);
  ASSERT_OK(list);
  int seen_pinned = 0;
  for (const auto& o : list->objects) {
    if (o.storage_key == TestName(30).storage_key) {
      EXPECT_TRUE(o.pinned);
      EXPECT_EQ(o.name.token_hash, TestName(30).token_hash);
      ++seen_pinned;
    }
  }
  EXPECT_EQ(seen_pinned, 1);
  EXPECT_GE(kv_->Stats()->pinned_objects, 3u);
  ASSERT_OK(kv_->Unpin(chain));
  auto deleted = kv_->Delete(chain);
  ASSERT_OK(deleted);
  EXPECT_OK((*deleted)[0]);
  EXPECT_THAT((*deleted)[4], StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(kv_->Lookup(chain)->longest_prefix, 0u);

  // Paging walks every object exactly once.
  for (uint64_t i = 40; i < 47; ++i) {
    auto p = TestPayload(i, info.payload_bytes);
    ASSERT_OK(kv_->Put(TestName(i, "paging"), info, p));
  }
  std::string token;
  size_t total = 0;
  do {
    auto page = kv_->List("paging", 3, token);
    ASSERT_OK(page);
    EXPECT_LE(page->objects.size(), 3u);
    total += page->objects.size();
    token = page->next_page_token;
  } while (!token.empty());
  EXPECT_EQ(total, 7u);
}

// The same shared-memory calls with the local control channel (replies polled for, and read by
// blocking at once) and with gRPC control: same outcomes, same statuses; and the channel's
// connections go away with the client.
TEST_F(KvClientTest, LocalControlChannelAndGrpcControlAgree) {
  const int port = svc_->metrics_port();
  EXPECT_TRUE(kv_->local_control_active());
  auto other = ConnectWithControl(*svc_, /*local_control=*/false);
  ASSERT_OK(other);
  ASSERT_TRUE((*other)->shared_memory_attached());
  EXPECT_FALSE((*other)->local_control_active());
  client::ClientOptions no_poll;
  no_poll.local_control_poll = std::chrono::microseconds{0};
  auto blocking = ConnectTo(*svc_, no_poll);
  ASSERT_OK(blocking);
  EXPECT_TRUE((*blocking)->local_control_active());

  ObjectInfo info = TestInfo(4096);  // 1 MiB
  int index = 7000;                  // keys 7000-7299: unused by the other tests of this suite
  const std::vector<std::pair<KvClient*, const char*>> clients = {
      {kv_.get(), "local control"},
      {other->get(), "gRPC control"},
      {blocking->get(), "local control, blocking reads"}};
  for (const auto& [c, label] : clients) {
    SCOPED_TRACE(label);
    const int base = index;
    index += 100;
    // Single and batched puts, then leases on what they wrote.
    auto payload = TestPayload(base, info.payload_bytes);
    ASSERT_OK(c->Put(TestName(base), WithCrc(info, payload), payload));
    std::vector<std::vector<uint8_t>> payloads;
    std::vector<client::PutItem> items;
    for (int i = 1; i <= 5; ++i) payloads.push_back(TestPayload(base + i, info.payload_bytes));
    for (int i = 1; i <= 5; ++i) items.push_back({TestName(base + i), info, payloads[i - 1]});
    client::PutOptions batched;
    batched.max_batch = 2;  // three batches: the pipelined path
    for (const Status& s : c->PutMany(items, batched)) EXPECT_OK(s);
    std::vector<ObjectName> names;
    for (int i = 0; i <= 5; ++i) names.push_back(TestName(base + i));
    names.push_back(TestName(base + 99));  // absent
    auto leases = c->AcquireMany(names);
    ASSERT_OK(leases);
    for (int i = 0; i <= 5; ++i) {
      ASSERT_OK((*leases)[i]);
      const auto& want = i == 0 ? payload : payloads[i - 1];
      EXPECT_TRUE(std::equal(want.begin(), want.end(), (*leases)[i]->data().begin()));
    }
    EXPECT_THAT((*leases)[6], StatusIs(absl::StatusCode::kNotFound));
    auto lookup = c->Lookup(names);
    ASSERT_OK(lookup);
    EXPECT_EQ(lookup->longest_prefix, 6u);
    // The same errors: a wrong declared checksum, an existing key; an aborted reservation.
    ObjectInfo wrong = WithCrc(info, payload);
    wrong.payload_crc32c ^= 1;
    EXPECT_THAT(c->Put(TestName(base + 50), wrong, payload),
                StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(c->Put(TestName(base), info, payload), StatusIs(absl::StatusCode::kAlreadyExists));
    auto reservation = c->Reserve(TestName(base + 51), info);
    ASSERT_OK(reservation);
    EXPECT_OK(reservation->Abort());
    EXPECT_FALSE(c->Lookup(std::vector<ObjectName>{TestName(base + 51)})->results[0].present);
  }
  EXPECT_GE(CounterSum(port, "kvstash_local_control_connections"), 1u);
  // Every lease and reservation above was settled by its client, not left for the channel.
  uint64_t active = 1;
  for (int i = 0; i < 500 && active != 0; ++i) {
    active = kv_->Stats()->reservations_active;
    if (active != 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(active, 0u);
}

// The byte-stream path with ClientOptions::stream_poll off, at its default, and long enough
// that every wait ends inside the poll window: the same bytes and the same errors.
TEST_F(KvClientTest, StreamPathAnswersWithAndWithoutPolling) {
  ObjectInfo info = TestInfo(4096);  // 1 MiB
  int index = 7400;                  // keys 7400-7699: unused by the other tests of this suite
  for (const auto poll : {std::chrono::microseconds{0}, client::ClientOptions{}.stream_poll,
                          std::chrono::microseconds{200'000}}) {
    SCOPED_TRACE(::testing::Message() << "stream_poll " << poll.count() << " us");
    client::ClientOptions options;
    options.stream_poll = poll;
    options.stream_chunk_bytes = 64 << 10;  // 16 messages per object: many waits
    auto c = ConnectTo(*svc_, options);
    ASSERT_OK(c);
    const int base = index;
    index += 100;
    client::PutOptions stream;
    stream.path = DataPath::kStream;
    for (int i = 0; i < 3; ++i) {
      auto payload = TestPayload(base + i, info.payload_bytes);
      ASSERT_OK((*c)->Put(TestName(base + i), WithCrc(info, payload), payload, stream));
    }
    std::vector<uint8_t> out(info.payload_bytes);
    for (int i = 0; i < 3; ++i) {
      auto got = (*c)->GetInto(TestName(base + i), out);
      ASSERT_OK(got);
      EXPECT_EQ(got->info.payload_bytes, info.payload_bytes);
      EXPECT_EQ(out, TestPayload(base + i, info.payload_bytes));
    }
    EXPECT_THAT((*c)->GetInto(TestName(base + 99), out), StatusIs(absl::StatusCode::kNotFound));
    auto payload = TestPayload(base + 50, info.payload_bytes);
    ObjectInfo wrong = WithCrc(info, payload);
    wrong.payload_crc32c ^= 1;
    EXPECT_THAT((*c)->Put(TestName(base + 50), wrong, payload, stream),
                StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT((*c)->Put(TestName(base), info, payload, stream),
                StatusIs(absl::StatusCode::kAlreadyExists));
  }
}

TEST_F(KvClientTest, ChecksumsAreVerifiedOnBothPaths) {
  ObjectInfo info = TestInfo(128);
  auto payload = TestPayload(50, info.payload_bytes);
  ObjectInfo wrong = WithCrc(info, payload);
  wrong.payload_crc32c ^= 0xFF;
  for (DataPath path : {DataPath::kSharedMemory, DataPath::kStream}) {
    client::PutOptions options;
    options.path = path;
    Status s = kv_->Put(TestName(50), wrong, payload, options);
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_FALSE(kv_->Lookup(std::vector<ObjectName>{TestName(50)})->results[0].present);
  }
  EXPECT_EQ(kv_->Stats()->reservations_active, 0u);
}

// PutMany batches and pipelines the two-phase puts; each item keeps Put's contract and its own
// status, whatever the batching, and whichever channel carries the control calls.
TEST_F(KvClientTest, PutManyPipelinesPutsWithPerItemStatuses) {
  ASSERT_TRUE(kv_->Put(TestName(90), TestInfo(64), TestPayload(90, TestInfo(64).payload_bytes))
                  .ok());  // already present: AlreadyExists inside the batch
  const std::vector<uint32_t> tokens = {64, 2048, 8, 1024, 64, 512, 4096, 128, 64, 256};
  std::vector<ObjectInfo> infos;
  std::vector<std::vector<uint8_t>> payloads;
  for (size_t i = 0; i < tokens.size(); ++i) {
    infos.push_back(TestInfo(tokens[i]));
    payloads.push_back(TestPayload(100 + i, infos.back().payload_bytes));
  }
  infos[3] = WithCrc(infos[3], payloads[3]);  // a caller-supplied crc32c, correct
  infos[5] = WithCrc(infos[5], payloads[5]);
  infos[5].payload_crc32c ^= 0x1;  // ... and a wrong one
  auto grpc_kv = ConnectWithControl(*svc_, /*local_control=*/false);
  ASSERT_OK(grpc_kv);
  ASSERT_TRUE((*grpc_kv)->shared_memory_attached());
  ASSERT_FALSE((*grpc_kv)->local_control_active());
  for (KvClient* kv : {kv_.get(), grpc_kv->get()}) {
    SCOPED_TRACE(kv == kv_.get() ? "local control channel" : "gRPC control calls");
    for (DataPath path : {DataPath::kSharedMemory, DataPath::kStream}) {
      // (objects, bytes) per batch: one object each, three each, and split by bytes.
      for (auto [max_batch, max_batch_bytes] :
           {std::pair<uint32_t, uint64_t>{1, 64 << 20}, {3, 64 << 20}, {8, 1 << 20}}) {
        const uint64_t base = 1000 * (path == DataPath::kStream ? 2 : 1) + 100 * max_batch +
                              (kv == kv_.get() ? 0 : 20000);
        std::vector<client::PutItem> items;
        for (size_t i = 0; i < tokens.size(); ++i) {
          items.push_back({TestName(base + i), infos[i], payloads[i]});
        }
        items[7].payload = std::span<const uint8_t>(payloads[7]).first(10);  // size mismatch
        items[8].name = TestName(90);
        client::PutOptions options;
        options.path = path;
        options.max_batch = max_batch;
        options.max_batch_bytes = max_batch_bytes;
        std::vector<Status> statuses = kv->PutMany(items, options);
        ASSERT_EQ(statuses.size(), items.size());
        for (size_t i = 0; i < items.size(); ++i) {
          SCOPED_TRACE(::testing::Message() << "item " << i << " batch " << max_batch);
          absl::StatusCode want = absl::StatusCode::kOk;
          if (i == 5 || i == 7) want = absl::StatusCode::kInvalidArgument;
          if (i == 8) want = absl::StatusCode::kAlreadyExists;
          EXPECT_EQ(statuses[i].code(), want) << statuses[i];
          if (want != absl::StatusCode::kOk) {
            if (i != 8) {
              EXPECT_THAT(kv->Acquire(items[i].name), StatusIs(absl::StatusCode::kNotFound));
            }
            continue;
          }
          auto got = kv->Get(items[i].name);
          ASSERT_OK(got);
          EXPECT_EQ(got->payload, payloads[i]);
        }
      }
    }
    EXPECT_EQ(kv->Stats()->reservations_active, 0u);
    EXPECT_TRUE(kv->PutMany({}).empty());
  }
}

// A PutItem given as a gather list stores the concatenation of its segments, on both paths, with
// a caller's crc32c checked over the whole; a wrong total size or a payload beside segments is
// InvalidArgument for that item only.
TEST_F(KvClientTest, PutManyGathersSegments) {
  const ObjectInfo info = TestInfo(1024);  // large enough for the streaming-store copy
  const std::vector<uint8_t> whole = TestPayload(3000, info.payload_bytes);
  const std::span<const uint8_t> all(whole);
  const size_t half = whole.size() / 2;
  for (DataPath path : {DataPath::kSharedMemory, DataPath::kStream}) {
    SCOPED_TRACE(path == DataPath::kStream ? "stream" : "shared memory");
    // Names of their own: the service is shared by the suite (DroppingManyLeases uses 3000..3039).
    const uint64_t base = path == DataPath::kStream ? 3600 : 3500;
    std::vector<client::PutItem> items(5);
    for (size_t i = 0; i < items.size(); ++i) {
      items[i].name = TestName(base + i);
      items[i].info = info;
    }
    items[0].segments = {all.first(half), all.subspan(half)};
    items[1].segments = {all.first(7), all.subspan(7, 100), all.subspan(107)};  // unaligned
    items[1].info = WithCrc(info, whole);
    items[2].segments = {all.first(half), all.subspan(half + 1)};  // one byte short
    items[3].segments = {all};
    items[3].payload = all;  // both
    items[4].segments = {all.first(half), all.subspan(half)};
    items[4].info = WithCrc(info, whole);
    items[4].info.payload_crc32c ^= 1;  // wrong crc32c
    client::PutOptions options;
    options.path = path;
    std::vector<Status> st = kv_->PutMany(items, options);
    ASSERT_EQ(st.size(), items.size());
    EXPECT_OK(st[0]);
    EXPECT_OK(st[1]);
    EXPECT_THAT(st[2], StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(st[3], StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(st[4], StatusIs(absl::StatusCode::kInvalidArgument));
    for (size_t i : {0, 1}) {
      auto got = kv_->Get(items[i].name);
      ASSERT_OK(got);
      EXPECT_EQ(got->payload, whole);
      EXPECT_EQ(got->info.payload_crc32c, Crc32c(whole.data(), whole.size()));
    }
    EXPECT_THAT(kv_->Acquire(items[4].name), StatusIs(absl::StatusCode::kNotFound));
  }
}

// Leases dropped while a fire-and-forget Release is out queue up and go in the next call; all of
// them end, over the local control channel and over gRPC. A client destroyed right after
// dropping leases still sends their releases first.
TEST_F(KvClientTest, DroppingManyLeasesReleasesThemAll) {
  ObjectInfo info = TestInfo(16);
  std::vector<ObjectName> names;
  for (uint64_t k = 3000; k < 3040; ++k) {
    names.push_back(TestName(k));
    ASSERT_OK(kv_->Put(names.back(), info, TestPayload(k, info.payload_bytes)));
  }
  for (bool local_control : {true, false}) {
    SCOPED_TRACE(local_control ? "local control channel" : "gRPC control calls");
    auto kv = ConnectWithControl(*svc_, local_control);
    ASSERT_OK(kv);
    ASSERT_EQ((*kv)->local_control_active(), local_control);
    for (int round = 0; round < 3; ++round) {
      auto leases = (*kv)->AcquireMany(names);
      ASSERT_OK(leases);
      for (auto& lease : *leases) ASSERT_OK(lease);
      EXPECT_GE(kv_->Stats()->leases_active, names.size());
    }  // each round's 40 leases are dropped together
    EXPECT_TRUE(NoLeaseActiveSoon(*kv_));
    {
      auto dropped = (*kv)->AcquireMany(names);
      ASSERT_OK(dropped);
      auto held = (*kv)->AcquireMany(names);
      ASSERT_OK(held);
      dropped->clear();  // one Release call out, the rest queued behind it
      kv->reset();       // the client goes; the last lease of `held` takes its core down
    }
    EXPECT_TRUE(NoLeaseActiveSoon(*kv_));
  }
}

// Threads sharing one client, with its control calls over the local channel and over gRPC:
// every put, lease and batched put on its own, and every dropped lease released in the end.
TEST_F(KvClientTest, ManyThreadsShareOneClient) {
  ObjectInfo info = TestInfo(1024);
  for (bool local_control : {true, false}) {
    SCOPED_TRACE(local_control ? "local control channel" : "gRPC control calls");
    auto kv = ConnectWithControl(*svc_, local_control);
    ASSERT_OK(kv);
    ASSERT_EQ((*kv)->local_control_active(), local_control);
    const uint64_t base = local_control ? 5000 : 25000;
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    threads.reserve(4);
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < 12; ++i) {
          uint64_t k = base + t * 100 + i;
          auto p = TestPayload(k, info.payload_bytes);
          client::PutOptions options;
          options.path = (i % 3 == 0) ? DataPath::kStream : DataPath::kAuto;
          if (!(*kv)->Put(TestName(k), info, p, options).ok()) ++failures;
          auto lease = (*kv)->Acquire(TestName(k));
          if (!lease.ok() || !std::equal(lease->data().begin(), lease->data().end(), p.begin())) {
            ++failures;
          }
          auto got = (*kv)->Get(TestName(k));
          if (!got.ok() || got->payload != p) ++failures;
        }
        // Three objects per PutMany, pipelined while the other threads' calls run.
        const ObjectInfo small = TestInfo(16);
        std::vector<std::vector<uint8_t>> payloads;
        payloads.reserve(6);  // items point into it
        std::vector<client::PutItem> items;
        for (int i = 0; i < 6; ++i) {
          const uint64_t k = base + t * 100 + 50 + i;
          payloads.push_back(TestPayload(k, small.payload_bytes));
          items.push_back({TestName(k), small, payloads.back()});
        }
        client::PutOptions options;
        options.max_batch = 3;
        for (const Status& s : (*kv)->PutMany(items, options)) {
          if (!s.ok()) ++failures;
        }
        for (int i = 0; i < 6; ++i) {
          auto got = (*kv)->Get(items[i].name);
          if (!got.ok() || got->payload != payloads[i]) ++failures;
        }
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(failures.load(), 0);
    kv->reset();  // waits for its last Releases
    EXPECT_TRUE(NoLeaseActiveSoon(*kv_));
    EXPECT_EQ(kv_->Stats()->reservations_active, 0u);
  }
}

TEST_F(KvClientTest, VanishingStreamClientAbortsItsReservation) {
  auto helper = ChildProcess::Start(
      {BinaryPath("tests/client/vanishing_client"), svc_->target(), "stream", "60"});
  ASSERT_OK(helper);
  ASSERT_OK((*helper)->WaitForLine("MIDWAY"));
  // A returned Write means gRPC took the message, not that the service has read it yet: wait
  // (bounded) for the reservation the stream's header opens.
  uint64_t opened = 0;
  for (int i = 0; i < 500 && opened == 0; ++i) {
    opened = kv_->Stats()->reservations_active;
    if (opened == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_GE(opened, 1u);
  (*helper)->Kill();
  // The service sees the stream break, aborts the reservation and keeps serving.
  uint64_t active = 1;
  for (int i = 0; i < 500 && active != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    active = kv_->Stats()->reservations_active;
  }
  EXPECT_EQ(active, 0u);
  EXPECT_FALSE(kv_->Lookup(std::vector<ObjectName>{TestName(60)})->results[0].present);
  ObjectInfo info = WithCrc(TestInfo(32768), TestPayload(60, 32768 * 256));
  ASSERT_OK(kv_->Put(TestName(60), info, TestPayload(60, info.payload_bytes)));
}

TEST_F(KvClientTest, VanishingSharedMemoryClientsReservationIsAbortedWhenItsConnectionsClose) {
  uint64_t expired_before = kv_->Stats()->reservations_expired;
  auto helper = ChildProcess::Start(
      {BinaryPath("tests/client/vanishing_client"), svc_->target(), "shm", "62"});
  ASSERT_OK(helper);
  ASSERT_OK((*helper)->WaitForLine("MIDWAY"));
  EXPECT_GE(kv_->Stats()->reservations_active, 1u);
  (*helper)->Kill();
  // Its lease is 120 s: only the closed local control connections can free it this soon.
  uint64_t active = 1;
  for (int i = 0; i < 500 && active != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    active = kv_->Stats()->reservations_active;
  }
  EXPECT_EQ(active, 0u);
  EXPECT_EQ(kv_->Stats()->reservations_expired, expired_before);
  EXPECT_FALSE(kv_->Lookup(std::vector<ObjectName>{TestName(62)})->results[0].present);
  ObjectInfo info = WithCrc(TestInfo(32768), TestPayload(62, 32768 * 256));
  ASSERT_OK(kv_->Put(TestName(62), info, TestPayload(62, info.payload_bytes)));
}

TEST_F(KvClientTest, VanishingSharedMemoryClientsReservationExpires) {
  uint64_t expired_before = kv_->Stats()->reservations_expired;
  auto helper = ChildProcess::Start(
      {BinaryPath("tests/client/vanishing_client"), svc_->target(), "shm-grpc", "61"});
  ASSERT_OK(helper);
  ASSERT_OK((*helper)->WaitForLine("MIDWAY"));
  (*helper)->Kill();
  uint64_t active = 1;
  for (int i = 0; i < 500 && active != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    active = kv_->Stats()->reservations_active;
  }
  EXPECT_EQ(active, 0u);
  EXPECT_GT(kv_->Stats()->reservations_expired, expired_before);
  EXPECT_FALSE(kv_->Lookup(std::vector<ObjectName>{TestName(61)})->results[0].present);
}

TEST_F(KvClientTest, DeadlinesKeepAStuckServiceFromWedgingCalls) {
  client::ClientOptions options;
  options.rpc_timeout = std::chrono::milliseconds(300);
  options.stream_timeout = std::chrono::milliseconds(500);
  auto kv = ConnectTo(*svc_, options);
  ASSERT_OK(kv);
  ObjectInfo info = TestInfo(64);
  auto payload = TestPayload(70, info.payload_bytes);
  svc_->Stop();
  auto lookup = (*kv)->Lookup(std::vector<ObjectName>{TestName(70)});
  Status put = (*kv)->Put(TestName(70), info, payload);
  auto get = (*kv)->Get(TestName(70));
  svc_->Continue();
  EXPECT_THAT(lookup, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_THAT(put, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_THAT(get, StatusIs(absl::StatusCode::kDeadlineExceeded));
  // After the stall everything works again (a Reserve that timed out expires on its own).
  EXPECT_OK((*kv)->Put(TestName(71), info, payload));
}

TEST(KvClientConnect, TcpTargetUsesStreamsAndUnreachableTargetsFailFast) {
  TempDir dir;
  ServiceOptions options;
  options.tcp = true;
  auto svc = ServiceProcess::Start(dir.path(), options);
  ASSERT_OK(svc);
  auto kv = ConnectTo(**svc);
  ASSERT_OK(kv);
  EXPECT_FALSE((*kv)->shared_memory_attached());
  ObjectInfo info = TestInfo(8192);
  auto payload = TestPayload(80, info.payload_bytes);
  ASSERT_OK((*kv)->Put(TestName(80), info, payload));
  EXPECT_EQ((*kv)->Get(TestName(80))->payload, payload);
  EXPECT_THAT((*kv)->Reserve(TestName(81), info), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT((*kv)->Acquire(TestName(80)), StatusIs(absl::StatusCode::kFailedPrecondition));

  client::ClientOptions quick;
  quick.connect_timeout = std::chrono::milliseconds(300);
  auto nowhere = KvClient::Connect("unix://" + dir.path() + "/nothing.sock", quick);
  EXPECT_THAT(nowhere, StatusIs(absl::StatusCode::kUnavailable));

  client::ClientOptions no_shm;
  no_shm.use_shared_memory = false;
  TempDir unix_dir;
  auto unix_svc = ServiceProcess::Start(unix_dir.path());
  ASSERT_OK(unix_svc);
  auto plain = ConnectTo(**unix_svc, no_shm);
  ASSERT_OK(plain);
  EXPECT_FALSE((*plain)->shared_memory_attached());
  ASSERT_OK((*plain)->Put(TestName(82), info, payload));
}

// Streaming Puts and Gets from a service whose stream threads never poll, one thread for every
// call: the same bytes and statuses as the default, with calls from several client threads at
// once.
TEST(KvClientConnect, StreamPutsAndGetsFromOneThreadThatNeverPolls) {
  TempDir dir;
  ServiceOptions options;
  options.extra_args = {"--stream-poll-us", "0", "--stream-threads", "1"};
  auto svc = ServiceProcess::Start(dir.path(), options);
  ASSERT_OK(svc);
  client::ClientOptions small_chunks;
  small_chunks.stream_chunk_bytes = 64 << 10;
  auto kv = ConnectTo(**svc, small_chunks);
  ASSERT_OK(kv);
  ObjectInfo info = TestInfo(2048);  // 512 KiB
  client::PutOptions stream;
  stream.path = DataPath::kStream;
  std::atomic<int> good{0};
  std::vector<std::thread> clients;
  clients.reserve(4);
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&, t] {
      auto payload = TestPayload(90 + t, info.payload_bytes);
      if (!(*kv)->Put(TestName(90 + t), WithCrc(info, payload), payload, stream).ok()) return;
      std::vector<uint8_t> out(info.payload_bytes);
      for (int round = 0; round < 5; ++round) {
        auto got = (*kv)->GetInto(TestName(90 + t), out);
        if (got.ok() && out == payload) ++good;
      }
    });
  }
  for (auto& c : clients) c.join();
  EXPECT_EQ(good.load(), 20);
  EXPECT_THAT((*kv)->Get(TestName(99)), StatusIs(absl::StatusCode::kNotFound));
  auto payload = TestPayload(98, info.payload_bytes);
  ObjectInfo wrong = WithCrc(info, payload);
  wrong.payload_crc32c ^= 1;
  EXPECT_THAT((*kv)->Put(TestName(98), wrong, payload, stream),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ((*kv)->Stats()->reservations_active, 0u);
  EXPECT_EQ((*svc)->Terminate(), 0) << (*svc)->Log();
}

// A service out of local control connections: clients carry on over gRPC, call by call.
TEST(KvClientConnect, ClientsFallBackToGrpcWhenTheServiceHasNoConnectionToSpare) {
  TempDir dir;
  ServiceOptions options;
  options.extra_args = {"--local-control-connections", "1"};
  auto svc = ServiceProcess::Start(dir.path(), options);
  ASSERT_OK(svc);
  auto first = ConnectTo(**svc);  // its anchor takes the only connection
  auto second = ConnectTo(**svc);
  ASSERT_OK(first);
  ASSERT_OK(second);
  EXPECT_TRUE((*first)->local_control_active());
  EXPECT_FALSE((*second)->local_control_active());  // its attach came without the feature
  ObjectInfo info = TestInfo(4096);
  int key = 90;
  for (KvClient* c : {first->get(), second->get()}) {
    auto payload = TestPayload(key, info.payload_bytes);
    ASSERT_TRUE(c->shared_memory_attached());
    ASSERT_OK(c->Put(TestName(key), info, payload));
    std::vector<client::PutItem> items = {{TestName(key + 1), info, payload},
                                          {TestName(key + 2), info, payload}};
    for (const Status& s : c->PutMany(items)) EXPECT_OK(s);
    for (int k = key; k < key + 3; ++k) {
      auto lease = c->Acquire(TestName(k));
      ASSERT_OK(lease);
      EXPECT_TRUE(std::equal(payload.begin(), payload.end(), lease->data().begin()));
    }
    key += 10;
  }
}

}  // namespace
}  // namespace kvstash::testing
