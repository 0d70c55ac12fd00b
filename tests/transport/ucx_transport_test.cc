#include "kvstash/transport/ucx_transport.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "testing/status_matchers.h"

namespace kvstash::transport {
namespace {

using ::kvstash::testing::IsOk;
using ::kvstash::testing::StatusIs;
using namespace std::chrono_literals;

// Each test runs over UCX's own choice of transports (shared memory, CMA on one host) and over
// TCP alone, the path between nodes: a server transport serving served_, a client landing in
// landing_.
class UcxTestBase : public ::testing::Test {
 protected:
  // "" for UCX's own choice, else the UCX_TLS value.
  virtual std::string Tls() const = 0;

  void SetUp() override {
    if (Tls().empty()) {
      ::unsetenv("UCX_TLS");
    } else {
      ::setenv("UCX_TLS", Tls().c_str(), 1);
    }
    ASSERT_OK_AND_ASSIGN(server_, UcxTransport::Create({.name = "server"}));
    ASSERT_OK_AND_ASSIGN(client_, UcxTransport::Create({.name = "client"}));
    served_.resize(kServedBytes);
    for (size_t i = 0; i < served_.size(); ++i) served_[i] = static_cast<uint8_t>(i * 131 + 7);
    ASSERT_OK_AND_ASSIGN(region_, server_->RegisterRegion(served_.data(), served_.size()));
    landing_.assign(kServedBytes, 0);
    ASSERT_THAT(client_->RegisterRegion(landing_.data(), landing_.size()), IsOk());
  }
  void TearDown() override { ::unsetenv("UCX_TLS"); }

  static constexpr size_t kServedBytes = 8 << 20;
  // Declared before the transports, so destroyed after them: a server's progress thread may
  // still be sending from served_ when a test body ends (ASan saw a heap-use-after-free in
  // StartServe's ucp_am_send_nbx while the fixture freed served_ before server_).
  std::vector<uint8_t> served_;
  std::vector<uint8_t> landing_;
  std::unique_ptr<UcxTransport> server_;
  std::unique_ptr<UcxTransport> client_;
  RemoteRegion region_;
};

std::string PlaneName(const std::string& tls) { return tls.empty() ? "default" : tls; }

class UcxTransportTest : public UcxTestBase, public ::testing::WithParamInterface<std::string> {
 protected:
  std::string Tls() const override { return GetParam(); }
};

TEST_P(UcxTransportTest, ReadsBatchesOfRangesByteForByte) {
  ASSERT_OK_AND_ASSIGN(PeerId peer,
                       client_->Connect(server_->worker_address(), region_, Clock::now() + 20s));
  EXPECT_TRUE(client_->Healthy(peer));
  // Ranges of several sizes, unaligned, some landing in an unregistered buffer.
  std::vector<uint8_t> unregistered(100'000, 0);
  std::vector<ReadOp> ops = {
      {.remote_offset = 0, .local = landing_.data(), .length = 64 << 10},
      {.remote_offset = 12345, .local = landing_.data() + (1 << 20), .length = 3 << 20},
      {.remote_offset = kServedBytes - 777, .local = landing_.data() + (5 << 20), .length = 777},
      {.remote_offset = 99, .local = unregistered.data(), .length = unregistered.size()},
  };
  ASSERT_THAT(client_->Read(peer, ops, Clock::now() + 20s), IsOk());
  for (const ReadOp& op : ops) {
    EXPECT_EQ(0, std::memcmp(op.local, served_.data() + op.remote_offset, op.length))
        << "range at " << op.remote_offset;
  }
  TransportStats stats = client_->Stats();
  EXPECT_EQ(stats.reads, ops.size());
  EXPECT_EQ(stats.bytes_read, (64u << 10) + (3u << 20) + 777 + unregistered.size());
}

TEST_P(UcxTransportTest, ConcurrentReadersLandByteForByte) {
  // Several threads read at once: some drive the worker themselves, the others' calls go
  // through the progress thread (or the thread driving the worker runs them); every byte lands.
  ASSERT_OK_AND_ASSIGN(PeerId peer,
                       client_->Connect(server_->worker_address(), region_, Clock::now() + 20s));
  const TransportStats before = client_->Stats();
  constexpr int kThreads = 4, kCallsPerThread = 25;
  constexpr uint64_t kSlice = kServedBytes / kThreads;
  std::vector<Status> failures(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kCallsPerThread; ++i) {
        // Three ranges of this thread's slice, shifted per call, so each call lands new bytes.
        const uint64_t base = t * kSlice;
        const uint64_t shift = (static_cast<uint64_t>(i) * 4099 + t * 17) % (kSlice / 4);
        std::vector<ReadOp> ops = {
            {.remote_offset = (base + shift + 1000) % kServedBytes,
             .local = landing_.data() + base,
             .length = kSlice / 4},
            {.remote_offset = (base + 3 * shift) % (kServedBytes - 5000),
             .local = landing_.data() + base + kSlice / 4,
             .length = 5000},
            {.remote_offset = 7 * shift % (kServedBytes - kSlice / 2),
             .local = landing_.data() + base + kSlice / 2,
             .length = kSlice / 2},
        };
        Status s = client_->Read(peer, ops, Clock::now() + 20s);
        if (!s.ok()) {
          failures[t] = s;
          return;
        }
        for (const ReadOp& op : ops) {
          if (std::memcmp(op.local, served_.data() + op.remote_offset, op.length) != 0) {
            failures[t] = absl::DataLossError(absl::StrCat("thread ", t, " call ", i));
            return;
          }
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (const Status& s : failures) EXPECT_THAT(s, IsOk());
  const TransportStats after = client_->Stats();
  EXPECT_EQ(after.reads - before.reads, 3u * kThreads * kCallsPerThread);
  // Every call was either driven by its caller or queued.
  EXPECT_EQ((after.caller_driven_calls + after.queued_calls) -
                (before.caller_driven_calls + before.queued_calls),
            static_cast<uint64_t>(kThreads * kCallsPerThread));
}

TEST_P(UcxTransportTest, WithoutCallerProgressEveryCallGoesThroughTheProgressThread) {
  ASSERT_OK_AND_ASSIGN(auto queued,
                       UcxTransport::Create({.name = "queued", .caller_progress = false}));
  ASSERT_OK_AND_ASSIGN(PeerId peer,
                       queued->Connect(server_->worker_address(), region_, Clock::now() + 20s));
  std::vector<uint8_t> dst(1 << 20, 0);
  std::vector<ReadOp> ops = {{.remote_offset = 333, .local = dst.data(), .length = dst.size()}};
  ASSERT_THAT(queued->Read(peer, ops, Clock::now() + 20s), IsOk());
  EXPECT_EQ(0, std::memcmp(dst.data(), served_.data() + 333, dst.size()));
  const TransportStats stats = queued->Stats();
  EXPECT_EQ(stats.caller_driven_calls, 0u);
  EXPECT_EQ(stats.queued_calls, 2u);  // Connect's flush and the read
}

TEST_P(UcxTransportTest, RefusesRangesOutsideTheRegionBeforeSendingAnything) {
  ASSERT_OK_AND_ASSIGN(PeerId peer,
                       client_->Connect(server_->worker_address(), region_, Clock::now() + 20s));
  const std::vector<std::vector<ReadOp>> bad = {
      {{.remote_offset = kServedBytes, .local = landing_.data(), .length = 1}},
      {{.remote_offset = kServedBytes - 10, .local = landing_.data(), .length = 11}},
      {{.remote_offset = ~0ull - 5, .local = landing_.data(), .length = 10}},  // wraps around
      {{.remote_offset = 0, .local = landing_.data(), .length = 0}},
      {{.remote_offset = 0, .local = nullptr, .length = 10}},
      // One bad op fails the whole batch.
      {{.remote_offset = 0, .local = landing_.data(), .length = 10},
       {.remote_offset = 1ull << 40, .local = landing_.data(), .length = 10}},
  };
  for (const auto& ops : bad) {
    EXPECT_THAT(client_->Read(peer, ops, Clock::now() + 5s),
                StatusIs(absl::StatusCode::kInvalidArgument));
  }
  EXPECT_EQ(client_->Stats().reads, 0u);
  EXPECT_TRUE(client_->Healthy(peer));  // refusing is not a peer failure
}

TEST_P(UcxTransportTest, DeliversNotificationsAfterReads) {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> received;
  ASSERT_THAT(server_->SetNotificationHandler(3,
                                              [&](std::string_view payload) {
                                                std::lock_guard<std::mutex> lock(mu);
                                                received.emplace_back(payload);
                                                cv.notify_all();
                                              }),
              IsOk());
  ASSERT_OK_AND_ASSIGN(PeerId peer,
                       client_->Connect(server_->worker_address(), region_, Clock::now() + 20s));
  std::vector<ReadOp> ops = {{.remote_offset = 4096, .local = landing_.data(), .length = 4096}};
  ASSERT_THAT(client_->Read(peer, ops, Clock::now() + 20s), IsOk());
  std::string big(20'000, 'x');
  ASSERT_THAT(client_->Notify(peer, 3, "release 1 2 3", Clock::now() + 20s), IsOk());
  ASSERT_THAT(client_->Notify(peer, 3, big, Clock::now() + 20s), IsOk());
  std::unique_lock<std::mutex> lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, 20s, [&] { return received.size() == 2; }))
      << "notifications received: " << received.size();
  EXPECT_EQ(received[0], "release 1 2 3");
  EXPECT_EQ(received[1], big);
  EXPECT_EQ(server_->Stats().notifications_received, 2u);
  EXPECT_EQ(client_->Stats().notifications_sent, 2u);
}

TEST_P(UcxTransportTest, UnknownOrDisconnectedPeersAreUnavailable) {
  std::vector<ReadOp> ops = {{.remote_offset = 0, .local = landing_.data(), .length = 10}};
  EXPECT_THAT(client_->Read(12345, ops, Clock::now() + 5s),
              StatusIs(absl::StatusCode::kUnavailable));
  ASSERT_OK_AND_ASSIGN(PeerId peer,
                       client_->Connect(server_->worker_address(), region_, Clock::now() + 20s));
  client_->Disconnect(peer);
  EXPECT_FALSE(client_->Healthy(peer));
  EXPECT_THAT(client_->Read(peer, ops, Clock::now() + 5s),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(client_->Notify(peer, 1, "x", Clock::now() + 5s),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST_P(UcxTransportTest, AnEndpointWithoutARegionWiresUpAndNotifiesButReadsNothing) {
  // The serving side connects to the reader first (ConnectWorker), then the reader connects and
  // reads as usual.
  ASSERT_OK_AND_ASSIGN(PeerId back,
                       server_->ConnectWorker(client_->worker_address(), Clock::now() + 20s));
  EXPECT_TRUE(server_->Healthy(back));
  std::vector<ReadOp> ops = {{.remote_offset = 0, .local = served_.data(), .length = 16}};
  EXPECT_THAT(server_->Read(back, ops, Clock::now() + 5s),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(server_->Fetch(back, ops, Clock::now() + 5s),
              StatusIs(absl::StatusCode::kInvalidArgument));
  std::mutex mu;
  std::condition_variable cv;
  int received = 0;
  ASSERT_THAT(client_->SetNotificationHandler(4,
                                              [&](std::string_view) {
                                                std::lock_guard<std::mutex> lock(mu);
                                                ++received;
                                                cv.notify_all();
                                              }),
              IsOk());
  ASSERT_THAT(server_->Notify(back, 4, "hello", Clock::now() + 20s), IsOk());
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, 20s, [&] { return received == 1; }));
  }
  ASSERT_OK_AND_ASSIGN(PeerId peer,
                       client_->Connect(server_->worker_address(), region_, Clock::now() + 20s));
  std::vector<ReadOp> read = {{.remote_offset = 4096, .local = landing_.data(), .length = 4096}};
  ASSERT_THAT(client_->Fetch(peer, read, Clock::now() + 20s), IsOk());
  EXPECT_TRUE(std::equal(landing_.begin(), landing_.begin() + 4096, served_.begin() + 4096));
  EXPECT_THAT(server_->ConnectWorker("", Clock::now() + 5s),
              StatusIs(absl::StatusCode::kInvalidArgument));
  client_->Disconnect(peer);
  server_->Disconnect(back);
}

TEST_P(UcxTransportTest, ConnectingToAWorkerThatIsGoneIsUnavailable) {
  const std::string gone = client_->worker_address();
  client_.reset();  // closes the reader's worker, as a reader that exits would
  Result<PeerId> back = server_->ConnectWorker(gone, Clock::now() + 5s);
  if (GetParam() == "tcp") {
    EXPECT_THAT(back, StatusIs(absl::StatusCode::kUnavailable));
  }
  // Over shared memory in one process the worker's memory may still be mapped; either way the
  // call returned (within its deadline; no timing is asserted).
}

TEST_P(UcxTransportTest, RejectsMalformedPeerDescriptions) {
  EXPECT_THAT(client_->Connect("", region_, Clock::now() + 5s),
              StatusIs(absl::StatusCode::kInvalidArgument));
  RemoteRegion no_rkey = region_;
  no_rkey.packed_rkey.clear();
  EXPECT_THAT(client_->Connect(server_->worker_address(), no_rkey, Clock::now() + 5s),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(client_->RegisterRegion(nullptr, 10), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_P(UcxTransportTest, CudaRegionsNeedACudaEnabledUcx) {
  if (client_->SupportsCuda()) GTEST_SKIP() << "this UCX has CUDA; covered by the gpu tests";
  EXPECT_THAT(client_->RegisterRegion(landing_.data(), 4096, MemoryKind::kCuda),
              StatusIs(absl::StatusCode::kUnimplemented));
}

TEST_P(UcxTransportTest, AServerThatGoesAwayFailsReadsInsteadOfHanging) {
  ASSERT_OK_AND_ASSIGN(PeerId peer,
                       client_->Connect(server_->worker_address(), region_, Clock::now() + 20s));
  std::vector<ReadOp> ops = {{.remote_offset = 0, .local = landing_.data(), .length = 1 << 20}};
  ASSERT_THAT(client_->Read(peer, ops, Clock::now() + 20s), IsOk());
  server_.reset();  // closes the server's worker, as a node that exits would
  // Whatever UCX notices first (the peer's error or our deadline), the read ends with an error
  // (and within its deadline plus the cancel grace; no timing is asserted).
  Status s = client_->Read(peer, ops, Clock::now() + 3s);
  if (GetParam() == "tcp") {
    EXPECT_THAT(s, ::testing::AnyOf(StatusIs(absl::StatusCode::kUnavailable),
                                    StatusIs(absl::StatusCode::kDeadlineExceeded)));
    EXPECT_FALSE(client_->Healthy(peer));
  }
  // Over shared memory in one process the bytes may still be mapped, so a read may succeed;
  // either way the call returned.
}

// The two calls in which the serving side sends the ranges: Fetch (eager fragments, copied into
// place) and FetchInPlace (one rendezvous message per range, received into place). They make the
// same promises (docs in ucx_transport.h), so each test below runs for both.
enum class Sender : uint8_t { kFetch, kFetchInPlace };

class UcxFetchTest : public UcxTestBase,
                     public ::testing::WithParamInterface<std::tuple<std::string, Sender>> {
 protected:
  std::string Tls() const override { return std::get<0>(GetParam()); }
  // The call under test.
  Status Send(PeerId peer, std::span<const ReadOp> ops, Clock::time_point deadline) {
    return std::get<1>(GetParam()) == Sender::kFetch ? client_->Fetch(peer, ops, deadline)
                                                     : client_->FetchInPlace(peer, ops, deadline);
  }
};

TEST_P(UcxFetchTest, SendsBatchesOfRangesByteForByteIntoRegisteredMemory) {
  // Into two landing regions of the client.
  std::vector<uint8_t> second(1 << 20, 0);
  ASSERT_THAT(client_->RegisterRegion(second.data(), second.size()), IsOk());
  ASSERT_OK_AND_ASSIGN(PeerId peer,
                       client_->Connect(server_->worker_address(), region_, Clock::now() + 20s));
  std::vector<ReadOp> ops = {
      {.remote_offset = 0, .local = landing_.data(), .length = 64 << 10},
      {.remote_offset = 12345, .local = landing_.data() + (1 << 20), .length = 3 << 20},
      {.remote_offset = kServedBytes - 777, .local = landing_.data() + (5 << 20), .length = 777},
      {.remote_offset = 99, .local = second.data() + 5, .length = second.size() - 5},
  };
  ASSERT_THAT(Send(peer, ops, Clock::now() + 20s), IsOk());
  for (const ReadOp& op : ops) {
    EXPECT_EQ(0, std::memcmp(op.local, served_.data() + op.remote_offset, op.length))
        << "range at " << op.remote_offset;
  }
  const uint64_t bytes = (64u << 10) + (3u << 20) + 777 + second.size() - 5;
  EXPECT_EQ(client_->Stats().reads, ops.size());
  EXPECT_EQ(client_->Stats().bytes_read, bytes);
  const TransportStats served = server_->Stats();
  EXPECT_EQ(served.fetches_served, 1u);
  EXPECT_EQ(served.fetch_ops_served, ops.size());
  EXPECT_EQ(served.fetch_bytes_served, bytes);
  EXPECT_EQ(served.fetches_refused, 0u);
}

TEST_P(UcxFetchTest, MixesWithTheOtherCallsOnOneEndpointFromSeveralThreads) {
  // Each thread rotates through the call under test, the other sending call and Read.
  ASSERT_OK_AND_ASSIGN(PeerId peer,
                       client_->Connect(server_->worker_address(), region_, Clock::now() + 20s));
  constexpr int kThreads = 4, kCalls = 9;
  constexpr uint64_t kSlice = kServedBytes / kThreads;
  std::vector<Status> failures(kThreads);
  std::atomic<uint64_t> sent{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kCalls; ++i) {
        const uint64_t offset = (static_cast<uint64_t>(i) * 65537 + t * 4099) % (kSlice / 2);
        std::vector<ReadOp> one = {
            {.remote_offset = offset, .local = landing_.data() + t * kSlice, .length = kSlice}};
        const auto deadline = Clock::now() + 20s;
        Status s;
        switch ((i + t) % 3) {
          case 0:
            s = Send(peer, one, deadline);
            break;
          case 1:
            s = std::get<1>(GetParam()) == Sender::kFetch
                    ? client_->FetchInPlace(peer, one, deadline)
                    : client_->Fetch(peer, one, deadline);
            break;
          default:
            s = client_->Read(peer, one, deadline);
            break;
        }
        if ((i + t) % 3 != 2) sent.fetch_add(1);
        if (s.ok() && std::memcmp(one[0].local, served_.data() + offset, kSlice) != 0) {
          s = absl::DataLossError(absl::StrCat("thread ", t, " call ", i));
        }
        if (!s.ok()) {
          failures[t] = s;
          return;
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (const Status& s : failures) EXPECT_THAT(s, IsOk());
  EXPECT_EQ(server_->Stats().fetches_served, sent.load());
}

TEST_P(UcxFetchTest, RefusesBadRangesAndUnregisteredDestinationsBeforeSending) {
  ASSERT_OK_AND_ASSIGN(PeerId peer,
                       client_->Connect(server_->worker_address(), region_, Clock::now() + 20s));
  std::vector<uint8_t> unregistered(4096, 0);
  const std::vector<std::vector<ReadOp>> bad = {
      {{.remote_offset = kServedBytes - 10, .local = landing_.data(), .length = 11}},
      {{.remote_offset = ~0ull - 5, .local = landing_.data(), .length = 10}},
      {{.remote_offset = 0, .local = unregistered.data(), .length = unregistered.size()}},
      // Starts inside the landing region and runs past its end.
      {{.remote_offset = 0, .local = landing_.data() + kServedBytes - 10, .length = 11}},
  };
  for (const auto& ops : bad) {
    EXPECT_THAT(Send(peer, ops, Clock::now() + 5s), StatusIs(absl::StatusCode::kInvalidArgument));
  }
  EXPECT_EQ(server_->Stats().fetches_served + server_->Stats().fetches_refused, 0u);
  EXPECT_TRUE(client_->Healthy(peer));
}

TEST_P(UcxFetchTest, TheServingSideRefusesARequestWithoutTheRegionsToken) {
  // A peer that knows the worker address and UCX's rkey but not the token: the server refuses,
  // and writes nothing.
  RemoteRegion forged = region_;
  forged.packed_rkey[0] = static_cast<char>(forged.packed_rkey[0] ^ 0x5a);
  ASSERT_OK_AND_ASSIGN(PeerId peer,
                       client_->Connect(server_->worker_address(), forged, Clock::now() + 20s));
  std::vector<ReadOp> ops = {{.remote_offset = 0, .local = landing_.data(), .length = 4096}};
  EXPECT_THAT(Send(peer, ops, Clock::now() + 20s), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(server_->Stats().fetches_refused, 1u);
  EXPECT_EQ(server_->Stats().fetches_served, 0u);
  EXPECT_TRUE(
      std::all_of(landing_.begin(), landing_.begin() + 4096, [](uint8_t b) { return b == 0; }));
  // The refusal is an answer, not a failure of the link: the right token still works.
  ASSERT_OK_AND_ASSIGN(PeerId good,
                       client_->Connect(server_->worker_address(), region_, Clock::now() + 20s));
  EXPECT_THAT(Send(good, ops, Clock::now() + 20s), IsOk());
  EXPECT_EQ(0, std::memcmp(landing_.data(), served_.data(), 4096));
}

TEST_P(UcxFetchTest, TheServingSideRefusesARequestItsRangeGuardRejects) {
  // A second region whose guard admits only [64 KiB, 128 KiB): the server checks every range of
  // a request against it and refuses the request, writing nothing, when one falls outside.
  std::vector<uint8_t> guarded(256 << 10);
  for (size_t i = 0; i < guarded.size(); ++i) guarded[i] = static_cast<uint8_t>(i * 7 + 1);
  ASSERT_OK_AND_ASSIGN(RemoteRegion region,
                       server_->RegisterRegion(guarded.data(), guarded.size(), MemoryKind::kHost,
                                               [](uint64_t offset, uint64_t length) {
                                                 return offset >= (64 << 10) &&
                                                        offset + length <= (128 << 10);
                                               }));
  ASSERT_OK_AND_ASSIGN(PeerId peer,
                       client_->Connect(server_->worker_address(), region, Clock::now() + 20s));
  const std::vector<std::vector<ReadOp>> refused = {
      {{.remote_offset = 0, .local = landing_.data(), .length = 4096}},
      {{.remote_offset = (128 << 10) - 10, .local = landing_.data(), .length = 11}},
      // One good range and one bad: the whole request is refused.
      {{.remote_offset = 64 << 10, .local = landing_.data(), .length = 4096},
       {.remote_offset = 200 << 10, .local = landing_.data() + 4096, .length = 4096}},
  };
  for (const auto& ops : refused) {
    EXPECT_THAT(Send(peer, ops, Clock::now() + 20s), StatusIs(absl::StatusCode::kInvalidArgument));
  }
  EXPECT_EQ(server_->Stats().fetches_refused, refused.size());
  EXPECT_EQ(server_->Stats().fetches_served, 0u);
  EXPECT_TRUE(
      std::all_of(landing_.begin(), landing_.begin() + 8192, [](uint8_t b) { return b == 0; }));
  // The refusals were answers: the same endpoint still reads.
  std::vector<ReadOp> inside = {
      {.remote_offset = 64 << 10, .local = landing_.data(), .length = 64 << 10}};
  ASSERT_THAT(Send(peer, inside, Clock::now() + 20s), IsOk());
  EXPECT_EQ(0, std::memcmp(landing_.data(), guarded.data() + (64 << 10), 64 << 10));
  client_->Disconnect(peer);
  client_.reset();  // before `guarded`, which the server may still be sending from
  server_.reset();
}

TEST_P(UcxFetchTest, AServerThatGoesAwayFailsTheCallInsteadOfHanging) {
  ASSERT_OK_AND_ASSIGN(PeerId peer,
                       client_->Connect(server_->worker_address(), region_, Clock::now() + 20s));
  std::vector<ReadOp> ops = {{.remote_offset = 0, .local = landing_.data(), .length = 1 << 20}};
  ASSERT_THAT(Send(peer, ops, Clock::now() + 20s), IsOk());
  server_.reset();
  Status s = Send(peer, ops, Clock::now() + 3s);
  // No answer can come: the call ends with the peer's error or at its deadline.
  EXPECT_THAT(s, ::testing::AnyOf(StatusIs(absl::StatusCode::kUnavailable),
                                  StatusIs(absl::StatusCode::kDeadlineExceeded)));
  EXPECT_FALSE(client_->Healthy(peer));
}

TEST_P(UcxFetchTest, ACallThatOutlivesItsDeadlineLandsNothingAfterItReturns) {
  // The serving side's guard holds its progress thread for 1.5 s (bounded) on the first request,
  // so the reader's 300 ms deadline passes before anything is sent; the server then serves the
  // request to a reader whose call has returned, which must not land any of it.
  std::atomic<int> guarded_calls{0};
  std::vector<uint8_t> slow(1 << 20);
  for (size_t i = 0; i < slow.size(); ++i) slow[i] = static_cast<uint8_t>(i * 13 + 5);
  ASSERT_OK_AND_ASSIGN(RemoteRegion region,
                       server_->RegisterRegion(slow.data(), slow.size(), MemoryKind::kHost,
                                               [&guarded_calls](uint64_t, uint64_t) {
                                                 if (guarded_calls.fetch_add(1) == 0) {
                                                   std::this_thread::sleep_for(1500ms);
                                                 }
                                                 return true;
                                               }));
  ASSERT_OK_AND_ASSIGN(PeerId peer,
                       client_->Connect(server_->worker_address(), region, Clock::now() + 20s));
  std::vector<ReadOp> ops = {{.remote_offset = 0, .local = landing_.data(), .length = 1 << 20}};
  EXPECT_THAT(Send(peer, ops, Clock::now() + 300ms), StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_FALSE(client_->Healthy(peer));
  // Bounded wait until the server has served (or failed) the late request, then some more.
  for (int i = 0; i < 100 && guarded_calls.load() == 0; ++i) std::this_thread::sleep_for(20ms);
  std::this_thread::sleep_for(2s);
  EXPECT_TRUE(std::all_of(landing_.begin(), landing_.begin() + (1 << 20),
                          [](uint8_t b) { return b == 0; }));
  // The same reader connects again and reads (over TCP an in-place read hung here until the
  // serving side sent on the request's own endpoint instead of its cached one to the reader).
  ASSERT_OK_AND_ASSIGN(PeerId again,
                       client_->Connect(server_->worker_address(), region, Clock::now() + 20s));
  ASSERT_THAT(Send(again, ops, Clock::now() + 20s), IsOk());
  EXPECT_EQ(0, std::memcmp(landing_.data(), slow.data(), slow.size()));
  client_.reset();  // before `slow`
  server_.reset();
}

TEST_P(UcxTransportTest, NotificationIdsOfTheTransportAreReserved) {
  EXPECT_THAT(client_->SetNotificationHandler(UcxTransport::kFirstReservedMessageId,
                                              [](std::string_view) {}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(client_->SetNotificationHandler(UcxTransport::kFirstReservedMessageId - 1,
                                              [](std::string_view) {}),
              IsOk());
}

INSTANTIATE_TEST_SUITE_P(Transports, UcxTransportTest, ::testing::Values("", "tcp"),
                         [](const auto& info) { return PlaneName(info.param); });

INSTANTIATE_TEST_SUITE_P(Transports, UcxFetchTest,
                         ::testing::Combine(::testing::Values("", "tcp"),
                                            ::testing::Values(Sender::kFetch,
                                                              Sender::kFetchInPlace)),
                         [](const auto& info) {
                           return PlaneName(std::get<0>(info.param)) +
                                  (std::get<1>(info.param) == Sender::kFetch ? "_fetch"
                                                                             : "_inplace");
                         });

}  // namespace
}  // namespace kvstash::transport
