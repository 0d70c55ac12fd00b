// Tenant arenas and SIGHUP reloads of the tokens file (real processes): a tenant a reload gives a
// cpu quota gets an arena of its own without a restart (its own memfd and offset range in the
// reserve after the start-up arenas), its clients attach it and put and read through shared
// memory, its puts evict only its own objects, the other tenants' arenas and objects are as they
// were, and a peer that connected before the reload reads the new arena's objects over UCX with
// the registration it already had. A resize waits for a restart, a tenant the reserve has no
// room for stays in the shared arena, and a removed tenant's tokens stop working while its arena
// stays: each logged and counted. Objects a tenant stored (or peers fetched for it) before a
// reload gave it its arena move into that arena when its client Acquires them, or, with no room
// there, reach it over the byte stream: either way with their bytes and no error.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "kvstash/client/kv_client.h"
#include "kvstash/proto/arena_handshake.h"
#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using namespace ::kvstash::client;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr char kAlpha[] = "alpha-reload-token-0123456789";
constexpr char kDelta[] = "delta-reload-token-0123456789";
constexpr char kEpsilon[] = "epsilon-reload-token-0123456789";
constexpr char kDeltaRo[] = "delta-read-only-token-0123456789";
constexpr uint64_t kMiB = 1 << 20;
constexpr double kMiBs = 1 << 20;       // the same, for metric values
constexpr uint32_t kTokens256K = 1024;  // TestInfo(1024): 1024 tokens of 256 bytes

class ArenaReloadTest : public ::testing::Test {
 protected:
  void SetUp() override { ::setenv("UCX_TLS", "tcp", 1); }  // the network path, as peer_test
  void TearDown() override { ::unsetenv("UCX_TLS"); }

  // A: shared 64 MiB, alpha 1 MiB from the start, 3 MiB of reserve; no SSD, so an eviction is
  // a removal the test can see.
  void StartA(const std::string& tokens, bool with_peer_secret,
              const std::vector<std::string>& extra = {}) {
    // TCP for the peer, a unix socket beside it for same-node clients (which attach arenas).
    ServiceOptions o;
    o.tcp = true;
    o.local_listen = true;
    o.metrics = true;
    o.ssd_capacity = "0";
    o.extra_args = {"--tokens-file", tokens_, "--tenant-arena-reserve", "3MiB"};
    if (with_peer_secret) o.extra_args.insert(o.extra_args.end(), {"--peer-secret-file", secret_});
    o.extra_args.insert(o.extra_args.end(), extra.begin(), extra.end());
    std::ofstream(tokens_) << tokens;
    ASSERT_OK_AND_ASSIGN(a_, ServiceProcess::Start(dir_a_.path(), o));
  }

  // Rewrites A's tokens file, sends SIGHUP and waits (bounded) for the reload's log line.
  void Reload(const std::string& tokens) {
    std::ofstream(tokens_) << tokens;
    const size_t before = Count(a_->Log(), "event=tenants_reloaded");
    ::kill(a_->pid(), SIGHUP);
    const auto deadline = Clock::now() + 10s;
    while (Count(a_->Log(), "event=tenants_reloaded") == before && Clock::now() < deadline) {
      std::this_thread::sleep_for(20ms);
    }
    ASSERT_GT(Count(a_->Log(), "event=tenants_reloaded"), before);
  }

  static size_t Count(const std::string& text, const std::string& what) {
    size_t n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
  }

  static Result<std::unique_ptr<KvClient>> As(const std::string& target, const char* token,
                                              bool read_only = false) {
    ClientOptions o;
    o.connect_timeout = 5s;
    o.bearer_token = token;
    o.attach_read_only = read_only;
    return KvClient::Connect(target, o);
  }

  // The arena socket's answer to an attach with `token`: handshake and the read-only fd's inode
  // (the fds are closed).
  Result<std::pair<ArenaHandshake, ino_t>> Attach(const char* token) {
    KVSTASH_ASSIGN_OR_RETURN(ReceivedArena got,
                             ReceiveArenaFd(dir_a_.path() + "/arena.sock", 5000, false,
                                            ArenaAttachRequest{/*writable=*/false, token}));
    struct stat st;
    const int rc = ::fstat(got.fd, &st);
    ::close(got.fd);
    if (got.writable_fd >= 0) ::close(got.writable_fd);
    if (rc != 0) return absl::InternalError("fstat of the arena fd failed");
    return std::make_pair(got.hello, st.st_ino);
  }

  double Metric(const std::string& series) const { return MetricSum(a_->metrics_port(), series); }

  TempDir dir_a_, dir_b_;
  std::string tokens_ = dir_a_.path() + "/tokens.txt";
  std::string secret_ = dir_a_.path() + "/secret";
  std::unique_ptr<ServiceProcess> a_;
};

// Built before main: an exception here (bad_alloc) ends the test binary before any test runs,
// which is all a test needs (tests/.clang-tidy turns cert-err58-cpp off for that reason).
const std::string kStartTokens = absl::StrCat("token ", kAlpha, " alpha\nquota alpha cpu=1MiB\n");
const std::string kWithDelta =
    absl::StrCat(kStartTokens, "token ", kDelta, " delta\nquota delta cpu=1MiB\n");

TEST_F(ArenaReloadTest, AReloadGivesAnAddedTenantItsOwnArenaThatPeersRead) {
  std::ofstream(secret_) << "kvstash-test-cluster-secret-0123456789\n";
  StartA(kStartTokens, /*with_peer_secret=*/true);
  // B: a peer of A; delta and alpha are tenants there too (no arenas: they read over streams).
  const std::string b_tokens = dir_b_.path() + "/tokens.txt";
  std::ofstream(b_tokens) << "token " << kAlpha << " alpha\ntoken " << kDelta << " delta\n";
  ServiceOptions bo;
  bo.tcp = true;
  bo.metrics = true;
  bo.extra_args = {"--tokens-file", b_tokens,     "--peer-secret-file", secret_,
                   "--peer",        a_->target(), "--peer-timeout-ms",  "20000"};
  ASSERT_OK_AND_ASSIGN(auto b, ServiceProcess::Start(dir_b_.path(), bo));
  EXPECT_EQ(Count(a_->Log(), "event=arena_reserve_not_registered"), 0u);

  // Before the reload: alpha's object on A, read from B (B says Hello to A now, once).
  ASSERT_OK_AND_ASSIGN(auto alpha, As(a_->local_target(), kAlpha));
  ASSERT_TRUE(alpha->shared_memory_attached()) << alpha->shared_memory_status();
  const std::vector<uint8_t> kept = TestPayload(1, 256 << 10);
  ASSERT_THAT(alpha->Put(TestName(1, ""), WithCrc(TestInfo(kTokens256K), kept), kept,
                         {.path = DataPath::kSharedMemory}),
              IsOk());
  ASSERT_OK_AND_ASSIGN(auto alpha_b, As(b->target(), kAlpha));
  ASSERT_OK_AND_ASSIGN(GetReply via_b, alpha_b->Get(TestName(1, "")));
  EXPECT_EQ(via_b.payload, kept);
  ASSERT_EQ(Count(b->Log(), "event=peer_connected"), 1u);
  const std::string b_log = b->Log();
  const size_t connected = b_log.find("event=peer_connected");
  EXPECT_NE(b_log.substr(connected, b_log.find('\n', connected) - connected).find("data_plane=ucx"),
            std::string::npos);
  ASSERT_OK_AND_ASSIGN(auto alpha_before, Attach(kAlpha));
  EXPECT_THAT(Attach(kDelta), StatusIs(absl::StatusCode::kUnauthenticated));  // not a tenant yet

  Reload(kWithDelta);
  EXPECT_EQ(Count(a_->Log(), "event=tenant_arena_added tenant=delta"), 1u);
  EXPECT_EQ(Metric("kvstash_tenant_arena_reloads_total{outcome=\"added\"}"), 1);
  EXPECT_EQ(Metric("kvstash_storage_arena_capacity_bytes{arena=\"tenant:delta\"}"), kMiBs);
  EXPECT_EQ(Metric("kvstash_storage_arena_spare_bytes"), 2 * kMiBs);

  // delta attaches its own arena: another inode, the range right after alpha's.
  ASSERT_OK_AND_ASSIGN(auto delta_arena, Attach(kDelta));
  ASSERT_OK_AND_ASSIGN(auto alpha_after, Attach(kAlpha));
  EXPECT_EQ(delta_arena.first.arena_offset, 65 * kMiB);
  EXPECT_EQ(delta_arena.first.arena_bytes, kMiB);
  EXPECT_NE(delta_arena.second, alpha_after.second);
  EXPECT_EQ(delta_arena.first.arena_generation, alpha_after.first.arena_generation);
  // alpha's arena is what it was.
  EXPECT_EQ(alpha_after.first.arena_offset, alpha_before.first.arena_offset);
  EXPECT_EQ(alpha_after.first.arena_bytes, alpha_before.first.arena_bytes);
  EXPECT_EQ(alpha_after.second, alpha_before.second);

  // delta writes and reads through shared memory: six 256 KiB objects through its 1 MiB arena
  // evict its own oldest, and nothing of alpha's.
  ASSERT_OK_AND_ASSIGN(auto delta, As(a_->local_target(), kDelta));
  ASSERT_TRUE(delta->shared_memory_attached()) << delta->shared_memory_status();
  std::vector<std::vector<uint8_t>> mine;
  for (uint64_t i = 0; i < 6; ++i) {
    mine.push_back(TestPayload(100 + i, 256 << 10));
    ASSERT_THAT(delta->Put(TestName(100 + i, ""), WithCrc(TestInfo(kTokens256K), mine[i]), mine[i],
                           {.path = DataPath::kSharedMemory}),
                IsOk())
        << i;
  }
  const ObjectName newest = TestName(105, "");
  ASSERT_OK_AND_ASSIGN(auto leases, delta->AcquireMany(std::span(&newest, 1)));
  ASSERT_EQ(leases.size(), 1u);
  ASSERT_OK(leases[0].status());
  const std::span<const uint8_t> leased = leases[0]->data();  // its own mapping, no copy
  EXPECT_TRUE(std::equal(leased.begin(), leased.end(), mine[5].begin(), mine[5].end()));
  leases.clear();
  // At most four of the six fit in delta's 1 MiB, so its own puts evicted at least two of its
  // objects (which ones is the eviction policy's choice: the put order alone does not decide it,
  // the oldest was still present in 2 of 6 runs).
  std::vector<ObjectName> delta_names;
  for (uint64_t i = 0; i < 6; ++i) delta_names.push_back(TestName(100 + i, ""));
  ASSERT_OK_AND_ASSIGN(LookupReply found, delta->Lookup(delta_names));
  ASSERT_EQ(found.results.size(), 6u);
  std::string present;
  for (const auto& r : found.results) present += r.present ? '1' : '0';
  EXPECT_LE(std::count(present.begin(), present.end(), '1'), 4) << present;
  EXPECT_EQ(present.back(), '1') << present;  // the newest, leased above
  EXPECT_LE(Metric("kvstash_storage_arena_used_bytes{arena=\"tenant:delta\"}"), kMiBs);
  EXPECT_EQ(Metric("kvstash_storage_arena_used_bytes{arena=\"tenant:alpha\"}"), 256 << 10);
  ASSERT_OK_AND_ASSIGN(GetReply still, alpha->Get(TestName(1, "")));
  EXPECT_EQ(still.payload, kept);
  EXPECT_EQ(still.served_from, Tier::kCpu);

  // B reads delta's newest object out of A's new arena over the UCX link it opened before the
  // reload (no second Hello).
  ASSERT_OK_AND_ASSIGN(auto delta_b, As(b->target(), kDelta));
  ASSERT_OK_AND_ASSIGN(GetReply fetched, delta_b->Get(TestName(105, "")));
  EXPECT_EQ(fetched.payload, mine[5]);
  EXPECT_EQ(Count(b->Log(), "event=peer_connected"), 1u);
  EXPECT_GE(MetricSum(b->metrics_port(), "kvstash_peer_fetched_objects_total"), 2);
}

TEST_F(ArenaReloadTest, ResizesWaitForARestartAndAFullReserveFallsBackToTheSharedArena) {
  StartA(kWithDelta, /*with_peer_secret=*/false);
  ASSERT_OK_AND_ASSIGN(auto delta_start, Attach(kDelta));
  EXPECT_EQ(delta_start.first.arena_bytes, kMiB);
  // delta grows to 2 MiB (deferred); epsilon wants 4 MiB, more than the 3 MiB reserve.
  Reload(absl::StrCat(kStartTokens, "token ", kDelta, " delta\nquota delta cpu=2MiB\n", "token ",
                      kEpsilon, " epsilon\nquota epsilon cpu=4MiB\n"));
  EXPECT_EQ(Count(a_->Log(), "event=tenant_arena_resize_deferred tenant=delta"), 1u);
  EXPECT_EQ(Count(a_->Log(), "event=tenant_arena_refused tenant=epsilon"), 1u);
  EXPECT_EQ(Count(a_->Log(), "reason=reserve_exhausted"), 1u);
  EXPECT_EQ(Metric("kvstash_tenant_arena_reloads_total{outcome=\"resize_deferred\"}"), 1);
  EXPECT_EQ(Metric("kvstash_tenant_arena_reloads_total{outcome=\"reserve_exhausted\"}"), 1);
  EXPECT_EQ(Metric("kvstash_storage_arena_spare_bytes"), 3 * kMiBs);  // nothing was taken
  ASSERT_OK_AND_ASSIGN(auto delta_now, Attach(kDelta));
  EXPECT_EQ(delta_now.first.arena_bytes, kMiB);
  EXPECT_EQ(delta_now.second, delta_start.second);
  // epsilon has no arena: no fd, its client uses the byte streams into the shared arena, and
  // its cpu quota is counted there.
  EXPECT_THAT(Attach(kEpsilon), StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_OK_AND_ASSIGN(auto epsilon, As(a_->local_target(), kEpsilon));
  EXPECT_FALSE(epsilon->shared_memory_attached());
  const std::vector<uint8_t> payload = TestPayload(7, 256 << 10);
  ASSERT_THAT(epsilon->Put(TestName(7, ""), WithCrc(TestInfo(kTokens256K), payload), payload),
              IsOk());
  ASSERT_OK_AND_ASSIGN(GetReply back, epsilon->Get(TestName(7, "")));
  EXPECT_EQ(back.payload, payload);
  EXPECT_EQ(Metric("kvstash_storage_arena_used_bytes{arena=\"shared\"}"), 256 << 10);

  // delta removed: its token stops working (gRPC and the arena socket), its arena stays.
  ASSERT_OK_AND_ASSIGN(auto delta, As(a_->local_target(), kDelta));
  Reload(kStartTokens);
  EXPECT_EQ(Count(a_->Log(), "event=tenant_arena_kept tenant=delta"), 1u);
  EXPECT_EQ(Metric("kvstash_tenant_arena_reloads_total{outcome=\"kept\"}"), 1);
  EXPECT_THAT(Attach(kDelta), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(delta->Lookup(std::vector{TestName(1, "")}).status(),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_EQ(Metric("kvstash_storage_arena_capacity_bytes{arena=\"tenant:delta\"}"), kMiBs);
  // And a tenant added after that still finds room: epsilon at 2 MiB fills the reserve.
  Reload(absl::StrCat(kStartTokens, "token ", kEpsilon, " epsilon\nquota epsilon cpu=2MiB\n"));
  EXPECT_EQ(Count(a_->Log(), "event=tenant_arena_added tenant=epsilon"), 1u);
  ASSERT_OK_AND_ASSIGN(auto epsilon_arena, Attach(kEpsilon));
  EXPECT_EQ(epsilon_arena.first.arena_offset, 66 * kMiB);
  EXPECT_EQ(epsilon_arena.first.arena_bytes, 2 * kMiB);
}

// delta is a tenant without a cpu quota first (no arena: its objects, put over the byte stream
// or fetched from a peer for it, are in A's shared arena); the reload gives it 1 MiB. Built
// before main, as kStartTokens.
const std::string kDeltaNoArena =
    absl::StrCat(kStartTokens, "token ", kDelta, " delta\ntoken ", kDeltaRo, " delta ro\n");
const std::string kDeltaWithArena = absl::StrCat(kDeltaNoArena, "quota delta cpu=1MiB\n");
constexpr uint64_t k128K = 128 << 10;

// Whether `lease` holds `bytes` (read through the client's own mapping when its lease_id is not
// 0, else its streamed copy).
bool Holds(const ReadLease& lease, const std::vector<uint8_t>& bytes) {
  return std::equal(lease.data().begin(), lease.data().end(), bytes.begin(), bytes.end());
}

TEST_F(ArenaReloadTest, ObjectsStoredBeforeTheReloadMoveIntoTheNewArenaOnAcquire) {
  // B: a peer holding one of delta's objects, which A fetches for delta before the reload.
  std::ofstream(secret_) << "kvstash-test-cluster-secret-0123456789\n";
  const std::string b_tokens = dir_b_.path() + "/tokens.txt";
  std::ofstream(b_tokens) << "token " << kAlpha << " alpha\ntoken " << kDelta << " delta\n";
  ServiceOptions bo;
  bo.tcp = true;
  bo.extra_args = {"--tokens-file", b_tokens, "--peer-secret-file", secret_};
  ASSERT_OK_AND_ASSIGN(auto b, ServiceProcess::Start(dir_b_.path(), bo));
  StartA(kDeltaNoArena, /*with_peer_secret=*/true,
         {"--peer", b->target(), "--peer-timeout-ms", "20000"});

  std::vector<std::vector<uint8_t>> early;
  std::vector<ObjectName> names;
  for (uint64_t i = 0; i < 4; ++i) {
    early.push_back(TestPayload(200 + i, k128K));
    names.push_back(TestName(200 + i, ""));
  }
  {
    ASSERT_OK_AND_ASSIGN(auto delta, As(a_->local_target(), kDelta));
    ASSERT_FALSE(delta->shared_memory_attached());  // no arena yet: byte streams
    for (uint64_t i = 0; i < 3; ++i) {
      ASSERT_THAT(delta->Put(names[i], WithCrc(TestInfo(512), early[i]), early[i]), IsOk()) << i;
    }
    ASSERT_OK_AND_ASSIGN(std::vector<Status> pinned, delta->Pin(std::span(&names[1], 1)));
    ASSERT_OK(pinned[0]);
    // The fourth is on B only; A's Get fetches it from B into A's shared arena (and keeps it).
    ASSERT_OK_AND_ASSIGN(auto delta_b, As(b->target(), kDelta));
    ASSERT_THAT(delta_b->Put(names[3], WithCrc(TestInfo(512), early[3]), early[3]), IsOk());
    ASSERT_OK_AND_ASSIGN(GetReply fetched, delta->Get(names[3]));
    EXPECT_EQ(fetched.payload, early[3]);
    EXPECT_EQ(fetched.served_from, Tier::kRemote);
  }
  EXPECT_EQ(Metric("kvstash_storage_arena_used_bytes{arena=\"shared\"}"), 4.0 * k128K);

  Reload(kDeltaWithArena);
  ASSERT_EQ(Count(a_->Log(), "event=tenant_arena_added tenant=delta"), 1u);
  // The read-only identity's client reads one first: the move is the service's, not a write.
  ASSERT_OK_AND_ASSIGN(auto reader, As(a_->local_target(), kDeltaRo, /*read_only=*/true));
  ASSERT_TRUE(reader->shared_memory_attached()) << reader->shared_memory_status();
  {
    ASSERT_OK_AND_ASSIGN(ReadLease lease, reader->Acquire(names[2]));
    EXPECT_NE(lease.lease_id(), 0u);  // a lease in its mapping, not a streamed copy
    EXPECT_TRUE(Holds(lease, early[2]));
  }
  EXPECT_EQ(Metric("kvstash_storage_arena_migrations_total{outcome=\"moved\"}"), 1);
  // delta's client, mapped to the new arena, reads all four zero-copy: the pinned one, the
  // fetched one and the one the reader moved already included.
  ASSERT_OK_AND_ASSIGN(auto delta, As(a_->local_target(), kDelta));
  ASSERT_TRUE(delta->shared_memory_attached()) << delta->shared_memory_status();
  ASSERT_OK_AND_ASSIGN(auto leases, delta->AcquireMany(names));
  ASSERT_EQ(leases.size(), names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    ASSERT_OK(leases[i].status()) << i;
    EXPECT_NE(leases[i]->lease_id(), 0u) << i;
    EXPECT_TRUE(Holds(*leases[i], early[i])) << i;
  }
  EXPECT_EQ(Metric("kvstash_storage_arena_migrations_total{outcome=\"moved\"}"), 4);
  EXPECT_EQ(Metric("kvstash_storage_arena_migrations_total{outcome=\"no_room\"}"), 0);
  // The old copies were freed as the moves ended; delta's arena holds the four.
  EXPECT_EQ(Metric("kvstash_storage_arena_used_bytes{arena=\"shared\"}"), 0);
  EXPECT_EQ(Metric("kvstash_storage_arena_used_bytes{arena=\"tenant:delta\"}"), 4.0 * k128K);
  EXPECT_EQ(Count(a_->Log(), "event=arena_object_migrated"), 1u);  // once, not per object
  leases.clear();
  // Read again: nothing more moves. The pin moved with its object.
  ASSERT_OK_AND_ASSIGN(auto again, delta->AcquireMany(names));
  for (size_t i = 0; i < names.size(); ++i) {
    EXPECT_TRUE(again[i].ok() && Holds(*again[i], early[i])) << i;
  }
  again.clear();
  EXPECT_EQ(Metric("kvstash_storage_arena_migrations_total{outcome=\"moved\"}"), 4);
  ASSERT_OK_AND_ASSIGN(std::vector<Status> unpinned, delta->Unpin(std::span(&names[1], 1)));
  EXPECT_THAT(unpinned[0], IsOk());
  ASSERT_OK_AND_ASSIGN(unpinned, delta->Unpin(std::span(&names[1], 1)));
  EXPECT_THAT(unpinned[0], StatusIs(absl::StatusCode::kFailedPrecondition));  // not pinned now
  ASSERT_OK_AND_ASSIGN(GetReply streamed, delta->Get(names[0]));
  EXPECT_EQ(streamed.payload, early[0]);

  // alpha sees nothing of them: its names are its own namespace's, its arena is unchanged.
  ASSERT_OK_AND_ASSIGN(auto alpha, As(a_->local_target(), kAlpha));
  ASSERT_TRUE(alpha->shared_memory_attached()) << alpha->shared_memory_status();
  ASSERT_OK_AND_ASSIGN(LookupReply seen, alpha->Lookup(names));
  for (const auto& r : seen.results) EXPECT_FALSE(r.present);
  ASSERT_OK_AND_ASSIGN(auto alpha_leases, alpha->AcquireMany(names));
  for (const auto& l : alpha_leases) EXPECT_THAT(l.status(), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(Metric("kvstash_storage_arena_used_bytes{arena=\"tenant:alpha\"}"), 0);
}

TEST_F(ArenaReloadTest, AnEarlierObjectWithNoRoomInTheNewArenaComesOverTheStreamIntact) {
  StartA(kDeltaNoArena, /*with_peer_secret=*/false);
  const std::vector<uint8_t> early = TestPayload(300, 512 << 10);
  const ObjectName early_name = TestName(300, "");
  {
    ASSERT_OK_AND_ASSIGN(auto delta, As(a_->local_target(), kDelta));
    ASSERT_THAT(delta->Put(early_name, WithCrc(TestInfo(2048), early), early), IsOk());
  }
  Reload(kDeltaWithArena);
  ASSERT_OK_AND_ASSIGN(auto delta, As(a_->local_target(), kDelta));
  ASSERT_TRUE(delta->shared_memory_attached()) << delta->shared_memory_status();
  // Two leased 384 KiB objects leave 256 KiB of delta's 1 MiB, none of it evictable.
  std::vector<ReadLease> held;
  for (uint64_t i = 0; i < 2; ++i) {
    const std::vector<uint8_t> payload = TestPayload(310 + i, 384 << 10);
    ASSERT_THAT(delta->Put(TestName(310 + i, ""), WithCrc(TestInfo(1536), payload), payload,
                           {.path = DataPath::kSharedMemory}),
                IsOk());
    ASSERT_OK_AND_ASSIGN(ReadLease l, delta->Acquire(TestName(310 + i, "")));
    held.push_back(std::move(l));
  }
  // The 512 KiB object cannot move: the client gets it over the byte stream, crc32c checked.
  ASSERT_OK_AND_ASSIGN(ReadLease copy, delta->Acquire(early_name));
  EXPECT_EQ(copy.lease_id(), 0u);  // a streamed copy, no lease in the service
  EXPECT_EQ(copy.info().payload_bytes, early.size());
  EXPECT_TRUE(Holds(copy, early));
  EXPECT_OK(copy.Release());  // nothing to send
  EXPECT_EQ(Metric("kvstash_storage_arena_migrations_total{outcome=\"no_room\"}"), 1);
  EXPECT_EQ(Metric("kvstash_storage_arena_migrations_total{outcome=\"moved\"}"), 0);
  EXPECT_EQ(Count(a_->Log(), "event=arena_migration_fallback"), 1u);
  EXPECT_EQ(Metric("kvstash_storage_arena_used_bytes{arena=\"shared\"}"), 512 << 10);
  // Released (and waited for), delta's objects make room: the next read moves it.
  for (ReadLease& l : held) ASSERT_OK(l.Release());
  ASSERT_OK_AND_ASSIGN(ReadLease moved, delta->Acquire(early_name));
  EXPECT_NE(moved.lease_id(), 0u);
  EXPECT_TRUE(Holds(moved, early));
  EXPECT_EQ(Metric("kvstash_storage_arena_migrations_total{outcome=\"moved\"}"), 1);
  EXPECT_EQ(Metric("kvstash_storage_arena_used_bytes{arena=\"shared\"}"), 0);
}

}  // namespace
}  // namespace kvstash::testing
