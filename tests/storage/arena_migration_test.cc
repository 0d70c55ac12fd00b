// Objects a namespace stored before it got an arena of its own (AddTenantArena), moved into that
// arena when a reader that maps only it acquires them (ObjectStore::AcquireInOwnArena): the
// lease is in the namespace's arena with the same bytes, leases on the old copy stay valid until
// released, pins, hits and SSD copies go with the object, a namespace without an arena and an
// object already in place are untouched, no room is FailedPrecondition with nothing changed, and
// readers racing on the same objects each move an object once.
#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "kvstash/common/metrics.h"
#include "store_test_util.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::storage {
namespace {

using testing::CpuOnlyOptions;
using testing::MakeObject;
using testing::OpenOrDie;
using testing::Put;
using testing::ReadsBack;
using testing::TempDir;
using testing::TestObject;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t k256K = 256 * 1024;

bool InSegment(const ArenaSegment& seg, uint64_t offset, uint64_t bytes) {
  return offset >= seg.offset && offset + bytes <= seg.offset + seg.bytes;
}

bool SameBytes(const ObjectStore& store, const Lease& lease, const TestObject& o) {
  return lease.info.payload_bytes == o.payload.size() &&
         std::memcmp(store.arena_base() + lease.arena_offset, o.payload.data(), o.payload.size()) ==
             0;
}

class ArenaMigrationTest : public ::testing::Test {
 protected:
  // Shared 1 MiB, no tenant arena at first, `reserve` for added ones.
  StoreOptions Options(uint64_t reserve = 4 * kMiB) {
    StoreOptions o = CpuOnlyOptions(kMiB);
    o.tenant_arena_reserve_bytes = reserve;
    o.metrics = &registry_;
    return o;
  }
  uint64_t Moves(const char* outcome) {
    return registry_
        .GetCounter("kvstash_storage_arena_migrations_total", "", {{"outcome", outcome}})
        ->Value();
  }
  double Used(const char* arena) {
    return registry_.GetGauge("kvstash_storage_arena_used_bytes", "", {{"arena", arena}})->Value();
  }

  MetricsRegistry registry_;
};

TEST_F(ArenaMigrationTest, AnEarlierObjectMovesIntoItsNamespacesArenaAndOldLeasesStayValid) {
  auto store = OpenOrDie(Options());
  ASSERT_NE(store, nullptr);
  const ArenaSegment shared = store->arena_segment("");
  TestObject a = MakeObject("gamma", 1, k256K);
  TestObject b = MakeObject("gamma", 2, 100'000);
  TestObject other = MakeObject("omega", 1, k256K);  // a namespace that never gets an arena
  ASSERT_OK(Put(*store, a));
  ASSERT_OK(Put(*store, b));
  ASSERT_OK(Put(*store, other));
  ASSERT_OK(store->Pin(b.name.storage_key));
  // A reader of a's old copy, holding its lease through the move.
  ASSERT_OK_AND_ASSIGN(Lease old_lease, store->Acquire(a.name.storage_key, 0));
  EXPECT_TRUE(InSegment(shared, old_lease.arena_offset, a.payload.size()));
  ASSERT_OK_AND_ASSIGN(ArenaSegment gamma, store->AddTenantArena({"gamma", kMiB}));

  ASSERT_OK_AND_ASSIGN(Lease moved, store->AcquireInOwnArena(a.name.storage_key, 0));
  EXPECT_TRUE(InSegment(gamma, moved.arena_offset, a.payload.size()));
  EXPECT_TRUE(SameBytes(*store, moved, a));
  EXPECT_EQ(moved.info.payload_crc32c, a.info.payload_crc32c);
  EXPECT_EQ(moved.served_from, Tier::kCpu);
  EXPECT_EQ(Moves("moved"), 1u);
  // The old copy is still the old reader's, unchanged, and counts in the shared arena until
  // released; then only the moved copy is left.
  EXPECT_TRUE(SameBytes(*store, old_lease, a));
  EXPECT_EQ(Used("shared"), static_cast<double>(2 * k256K + 102'400));
  ASSERT_OK(store->Release(old_lease.id));
  EXPECT_EQ(Used("shared"), static_cast<double>(k256K + 102'400));
  EXPECT_EQ(Used("tenant:gamma"), static_cast<double>(k256K));
  ASSERT_OK(store->Release(moved.id));
  // A plain Acquire now finds it in gamma's arena too; a second AcquireInOwnArena moves nothing.
  ASSERT_OK_AND_ASSIGN(Lease again, store->Acquire(a.name.storage_key, 0));
  EXPECT_EQ(again.arena_offset, moved.arena_offset);
  ASSERT_OK(store->Release(again.id));
  ASSERT_OK_AND_ASSIGN(Lease in_place, store->AcquireInOwnArena(a.name.storage_key, 0));
  EXPECT_EQ(in_place.arena_offset, moved.arena_offset);
  ASSERT_OK(store->Release(in_place.id));
  EXPECT_EQ(Moves("moved"), 1u);

  // A pinned object moves with its pin: one Unpin undoes it, a second finds it unpinned.
  ASSERT_OK_AND_ASSIGN(Lease pinned, store->AcquireInOwnArena(b.name.storage_key, 0));
  EXPECT_TRUE(InSegment(gamma, pinned.arena_offset, b.payload.size()));
  EXPECT_TRUE(SameBytes(*store, pinned, b));
  ASSERT_OK(store->Release(pinned.id));
  ASSERT_OK(store->Unpin(b.name.storage_key));
  EXPECT_THAT(store->Unpin(b.name.storage_key), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(Moves("moved"), 2u);

  // A namespace without an arena of its own is read where it is, as by Acquire.
  ASSERT_OK_AND_ASSIGN(Lease shared_lease, store->AcquireInOwnArena(other.name.storage_key, 0));
  EXPECT_TRUE(InSegment(shared, shared_lease.arena_offset, other.payload.size()));
  ASSERT_OK(store->Release(shared_lease.id));
  EXPECT_EQ(Moves("moved"), 2u);
  EXPECT_EQ(store->Stats().leases_active, 0u);
  EXPECT_THAT(store->AcquireInOwnArena(MakeObject("gamma", 9, 4096).name.storage_key, 0),
              StatusIs(absl::StatusCode::kNotFound));
  // Deleted after the move: gone from gamma's arena too.
  ASSERT_OK(store->Delete(a.name.storage_key));
  EXPECT_FALSE(store->Lookup(a.name.storage_key).present);
  EXPECT_EQ(Used("tenant:gamma"), static_cast<double>(102'400));
}

TEST_F(ArenaMigrationTest, TheSsdCopyGoesWithTheMovedObject) {
  TempDir dir;
  StoreOptions o = Options();
  o.data_dir = dir.path();
  o.ssd_capacity_bytes = 16 * kMiB;
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  TestObject a = MakeObject("gamma", 1, k256K);
  ASSERT_OK(Put(*store, a, /*durable=*/true));  // its SSD copy is written before the move
  ASSERT_OK_AND_ASSIGN(ArenaSegment gamma, store->AddTenantArena({"gamma", kMiB}));
  ASSERT_OK_AND_ASSIGN(Lease moved, store->AcquireInOwnArena(a.name.storage_key, 0));
  EXPECT_TRUE(InSegment(gamma, moved.arena_offset, a.payload.size()));
  ASSERT_OK(store->Release(moved.id));
  ASSERT_OK(store->Flush());
  // gamma's newer objects push it out of gamma's arena (demoted: it has its SSD copy already);
  // it is then read back from SSD, into gamma's arena, with its bytes.
  for (uint64_t i = 10; i < 16; ++i) ASSERT_OK(Put(*store, MakeObject("gamma", i, k256K)));
  ASSERT_TRUE(testing::Eventually([&] {
    LookupEntry e = store->Lookup(a.name.storage_key);
    return e.present && e.tier == Tier::kSsd;
  }));
  Tier from = Tier::kCpu;
  EXPECT_TRUE(ReadsBack(*store, a, &from));
  EXPECT_EQ(from, Tier::kSsd);
  ASSERT_OK_AND_ASSIGN(Lease back, store->AcquireInOwnArena(a.name.storage_key, 0));
  EXPECT_TRUE(InSegment(gamma, back.arena_offset, a.payload.size()));
  ASSERT_OK(store->Release(back.id));
  EXPECT_EQ(Moves("moved"), 1u);
  EXPECT_GT(store->Usage("gamma").ssd_bytes, 0u);
}

TEST_F(ArenaMigrationTest, NoRoomInTheOwnArenaIsFailedPreconditionAndChangesNothing) {
  auto store = OpenOrDie(Options());
  ASSERT_NE(store, nullptr);
  const ArenaSegment shared = store->arena_segment("");
  TestObject early = MakeObject("gamma", 1, 512 * 1024);
  ASSERT_OK(Put(*store, early));
  ASSERT_OK_AND_ASSIGN(ArenaSegment gamma, store->AddTenantArena({"gamma", kMiB}));
  // Two leased 384 KiB objects leave 256 KiB of gamma's 1 MiB, and nothing there is evictable.
  std::vector<Lease> held;
  for (uint64_t i = 2; i < 4; ++i) {
    TestObject o = MakeObject("gamma", i, 384 * 1024);
    ASSERT_OK(Put(*store, o));
    ASSERT_OK_AND_ASSIGN(Lease l, store->Acquire(o.name.storage_key, 0));
    held.push_back(l);
  }
  EXPECT_THAT(store->AcquireInOwnArena(early.name.storage_key, 0),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(Moves("no_room"), 1u);
  EXPECT_EQ(Moves("moved"), 0u);
  EXPECT_EQ(store->Stats().leases_active, 2u);  // none left behind
  // Still where it was, whole, for Acquire (and so for a stream read).
  ASSERT_OK_AND_ASSIGN(Lease where, store->Acquire(early.name.storage_key, 0));
  EXPECT_TRUE(InSegment(shared, where.arena_offset, early.payload.size()));
  EXPECT_TRUE(SameBytes(*store, where, early));
  ASSERT_OK(store->Release(where.id));
  // Once gamma's objects are released, the next read moves it (evicting one of them).
  for (const Lease& l : held) ASSERT_OK(store->Release(l.id));
  ASSERT_OK_AND_ASSIGN(Lease moved, store->AcquireInOwnArena(early.name.storage_key, 0));
  EXPECT_TRUE(InSegment(gamma, moved.arena_offset, early.payload.size()));
  EXPECT_TRUE(SameBytes(*store, moved, early));
  ASSERT_OK(store->Release(moved.id));
  EXPECT_EQ(Moves("moved"), 1u);
  EXPECT_EQ(Used("shared"), 0.0);
}

TEST_F(ArenaMigrationTest, ReadersRacingOnTheSameObjectsMoveEachOnce) {
  // Eight early objects, read by three threads at once, each object several times (bounded):
  // every lease is in gamma's arena with the object's bytes, and each object moved exactly once
  // (a reader that loses the race frees its copy and leases the winner's).
  auto store = OpenOrDie(Options());
  ASSERT_NE(store, nullptr);
  std::vector<TestObject> objects;
  for (uint64_t i = 0; i < 8; ++i) {
    objects.push_back(MakeObject("gamma", i, 64 * 1024 + i * 4096));
    ASSERT_OK(Put(*store, objects.back()));
  }
  ASSERT_OK_AND_ASSIGN(ArenaSegment gamma, store->AddTenantArena({"gamma", 2 * kMiB}));
  std::atomic<int> bad{0};
  auto reader = [&](uint64_t seed) {
    for (uint64_t round = 0; round < 40; ++round) {
      const TestObject& o = objects[(seed + round) % objects.size()];
      Result<Lease> l = store->AcquireInOwnArena(o.name.storage_key, 0);
      if (!l.ok() || !InSegment(gamma, l->arena_offset, o.payload.size()) ||
          !SameBytes(*store, *l, o)) {
        bad.fetch_add(1);
      }
      if (l.ok() && !store->Release(l->id).ok()) bad.fetch_add(1);
    }
  };
  std::vector<std::thread> readers;
  for (uint64_t t = 0; t < 3; ++t) readers.emplace_back(reader, t);
  for (std::thread& t : readers) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(Moves("moved"), objects.size());
  EXPECT_EQ(Used("shared"), 0.0);
  EXPECT_EQ(store->Stats().leases_active, 0u);
}

}  // namespace
}  // namespace kvstash::storage
