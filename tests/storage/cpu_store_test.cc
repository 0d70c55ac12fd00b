// ObjectStore with the CPU tier only (ssd_capacity_bytes = 0).
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <random>
#include <thread>

#include "store_test_util.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::storage {
namespace {

using testing::CpuOnlyOptions;
using testing::Eventually;
using testing::MakeObject;
using testing::OpenOrDie;
using testing::Put;
using testing::ReadsBack;
using testing::TestObject;

constexpr uint64_t kMiB = 1 << 20;

TierStats CpuStats(ObjectStore& store) { return store.Stats().tiers.at(0); }

TEST(CpuStoreTest, PutThenGetRoundTrips) {
  auto store = OpenOrDie(CpuOnlyOptions(8 * kMiB));
  ASSERT_NE(store, nullptr);
  EXPECT_GE(store->arena_fd(), 0);
  EXPECT_EQ(store->arena_bytes(), 8 * kMiB);
  EXPECT_NE(store->arena_generation(), 0u);
  TestObject o = MakeObject("ns", 1, 100'000);
  ASSERT_OK(Put(*store, o));
  LookupEntry e = store->Lookup(o.name.storage_key);
  EXPECT_TRUE(e.present);
  EXPECT_EQ(e.tier, Tier::kCpu);
  EXPECT_EQ(e.info, o.info);
  Tier from;
  EXPECT_TRUE(ReadsBack(*store, o, &from));
  EXPECT_EQ(from, Tier::kCpu);
  StoreStats s = store->Stats();
  ASSERT_EQ(s.tiers.size(), 1u);
  EXPECT_EQ(s.tiers[0].objects, 1u);
  EXPECT_EQ(s.tiers[0].hits, 1u);
  EXPECT_EQ(s.tiers[0].used_bytes, 25 * 4096u);  // 100'000 bytes -> 25 pages
  EXPECT_FALSE(store->Lookup(MakeObject("ns", 2, 10).name.storage_key).present);
}

TEST(CpuStoreTest, ArenaIsASharedMemfdWithAFreshGeneration) {
  auto a = OpenOrDie(CpuOnlyOptions(kMiB));
  auto b = OpenOrDie(CpuOnlyOptions(kMiB));
  EXPECT_NE(a->arena_generation(), b->arena_generation());
  // A second mapping of a dup of the fd (what a client does) sees the same bytes.
  int fd = dup(a->arena_fd());
  ASSERT_GE(fd, 0);
  void* m = mmap(nullptr, kMiB, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ASSERT_NE(m, MAP_FAILED);
  TestObject o = MakeObject("ns", 3, 5000);
  auto r = a->Reserve(o.name, o.info, 0, false);
  ASSERT_OK(r);
  std::memcpy(static_cast<uint8_t*>(m) + r->arena_offset, o.payload.data(), o.payload.size());
  EXPECT_OK(a->Commit(r->id, o.info.payload_crc32c, false));
  EXPECT_TRUE(ReadsBack(*a, o));
  munmap(m, kMiB);
  close(fd);
}

TEST(CpuStoreTest, PrefaultedArenaWorksTheSame) {
  StoreOptions options = CpuOnlyOptions(4 * kMiB);
  options.prefault_arena = true;
  auto store = OpenOrDie(options);
  TestObject o = MakeObject("ns", 1, 3 * kMiB);
  ASSERT_OK(Put(*store, o));
  EXPECT_TRUE(ReadsBack(*store, o));
}

TEST(CpuStoreTest, CommitErrorCodes) {
  auto store = OpenOrDie(CpuOnlyOptions(4 * kMiB));
  TestObject o = MakeObject("ns", 1, 10'000);
  EXPECT_THAT(store->Commit(12345, 0, false), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store->Abort(12345), StatusIs(absl::StatusCode::kNotFound));

  auto r = store->Reserve(o.name, o.info, 0, false);
  ASSERT_OK(r);
  EXPECT_EQ(r->arena_offset % 4096, 0u);
  std::memcpy(store->arena_base() + r->arena_offset, o.payload.data(), o.payload.size());
  // Durable needs the SSD tier; the reservation stays usable.
  EXPECT_THAT(store->Commit(r->id, o.info.payload_crc32c, true),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_OK(store->Commit(r->id, o.info.payload_crc32c, false));
  EXPECT_THAT(store->Commit(r->id, o.info.payload_crc32c, false),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(store->Abort(r->id), StatusIs(absl::StatusCode::kFailedPrecondition));

  // Checksum mismatch: the commit is accepted (bytes are checked after it), but the object is
  // never served; it is removed and its bytes freed (commit_check_test.cc has the details).
  TestObject p = MakeObject("ns", 2, 10'000);
  uint64_t used_before = CpuStats(*store).used_bytes;
  auto r2 = store->Reserve(p.name, p.info, 0, false);
  ASSERT_OK(r2);
  std::memcpy(store->arena_base() + r2->arena_offset, p.payload.data(), p.payload.size());
  store->arena_base()[r2->arena_offset + 77] ^= 1;
  EXPECT_OK(store->Commit(r2->id, p.info.payload_crc32c, false));
  EXPECT_THAT(store->Commit(r2->id, p.info.payload_crc32c, false),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(store->Acquire(p.name.storage_key, 0), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_TRUE(Eventually([&] {
    return !store->Lookup(p.name.storage_key).present && CpuStats(*store).used_bytes == used_before;
  }));
  EXPECT_EQ(store->Stats().checksum_failures, 1u);

  // Abort frees; a later commit is refused.
  auto r3 = store->Reserve(p.name, p.info, 0, false);
  ASSERT_OK(r3);
  EXPECT_OK(store->Abort(r3->id));
  EXPECT_THAT(store->Commit(r3->id, p.info.payload_crc32c, false),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(CpuStats(*store).used_bytes, used_before);
}

TEST(CpuStoreTest, ReserveValidates) {
  auto store = OpenOrDie(CpuOnlyOptions(kMiB));
  TestObject o = MakeObject("ns", 1, 1000);
  ObjectInfo bad = o.info;
  bad.layout.head_end = 99;
  EXPECT_THAT(store->Reserve(o.name, bad, 0, false), StatusIs(absl::StatusCode::kInvalidArgument));
  TestObject big = MakeObject("ns", 2, 2 * kMiB);
  EXPECT_THAT(store->Reserve(big.name, big.info, 0, false),
              StatusIs(absl::StatusCode::kResourceExhausted));
  ASSERT_OK(Put(*store, o));
  EXPECT_THAT(store->Reserve(o.name, o.info, 0, false), StatusIs(absl::StatusCode::kAlreadyExists));
}

TEST(CpuStoreTest, ReservationExpires) {
  auto store = OpenOrDie(CpuOnlyOptions(kMiB));
  TestObject o = MakeObject("ns", 1, 8192);
  auto r = store->Reserve(o.name, o.info, /*lease_ms=*/20, false);
  ASSERT_OK(r);
  EXPECT_EQ(r->expires_in_ms, 20u);
  ASSERT_TRUE(Eventually([&] { return store->Stats().reservations_expired == 1; }));
  Status s = store->Commit(r->id, o.info.payload_crc32c, false);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_NE(std::string(s.message()).find("expired"), std::string::npos) << s;
  EXPECT_EQ(CpuStats(*store).used_bytes, 0u);
  EXPECT_EQ(store->Stats().reservations_active, 0u);
}

TEST(CpuStoreTest, OverwriteReplacesWhileOldLeaseKeepsOldBytes) {
  auto store = OpenOrDie(CpuOnlyOptions(4 * kMiB));
  TestObject v1 = MakeObject("ns", 1, 50'000);
  TestObject v2 = MakeObject("ns", 99, 60'000);
  v2.name = v1.name;  // same key, different content
  ASSERT_OK(Put(*store, v1));
  auto old_lease = store->Acquire(v1.name.storage_key, 0);
  ASSERT_OK(old_lease);
  EXPECT_THAT(Put(*store, v2), StatusIs(absl::StatusCode::kAlreadyExists));
  ASSERT_OK(Put(*store, v2, false, /*overwrite=*/true));
  EXPECT_TRUE(ReadsBack(*store, v2));
  EXPECT_EQ(std::memcmp(store->arena_base() + old_lease->arena_offset, v1.payload.data(),
                        v1.payload.size()),
            0);
  EXPECT_OK(store->Release(old_lease->id));
  EXPECT_EQ(CpuStats(*store).used_bytes, 15 * 4096u);  // only v2 (60000 bytes) remains
}

TEST(CpuStoreTest, DeleteWhileLeasedHidesAtOnceFreesAfterRelease) {
  auto store = OpenOrDie(CpuOnlyOptions(4 * kMiB));
  TestObject o = MakeObject("ns", 1, 40'000);
  ASSERT_OK(Put(*store, o));
  auto lease = store->Acquire(o.name.storage_key, 0);
  ASSERT_OK(lease);
  EXPECT_OK(store->Delete(o.name.storage_key));
  EXPECT_FALSE(store->Lookup(o.name.storage_key).present);
  EXPECT_THAT(store->Acquire(o.name.storage_key, 0), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store->Delete(o.name.storage_key), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_GT(CpuStats(*store).used_bytes, 0u);  // the reader still holds the bytes
  EXPECT_EQ(
      std::memcmp(store->arena_base() + lease->arena_offset, o.payload.data(), o.payload.size()),
      0);
  EXPECT_OK(store->Release(lease->id));
  EXPECT_EQ(CpuStats(*store).used_bytes, 0u);
  EXPECT_THAT(store->Release(lease->id), StatusIs(absl::StatusCode::kNotFound));
}

TEST(CpuStoreTest, LeaseExpiresAndThenReleaseIsNotFound) {
  auto store = OpenOrDie(CpuOnlyOptions(kMiB));
  TestObject o = MakeObject("ns", 1, 4096);
  ASSERT_OK(Put(*store, o));
  auto lease = store->Acquire(o.name.storage_key, /*lease_ms=*/10);
  ASSERT_OK(lease);
  ASSERT_TRUE(Eventually([&] { return store->Stats().leases_active == 0; }));
  EXPECT_THAT(store->Release(lease->id), StatusIs(absl::StatusCode::kNotFound));
}

StoreOptions NoBackgroundEviction(uint64_t bytes) {
  StoreOptions o = CpuOnlyOptions(bytes);
  o.high_watermark = 1.0;  // only Reserve evicts, synchronously, so the test is deterministic
  o.low_watermark = 1.0;
  return o;
}

TEST(CpuStoreTest, LruEvictsLeastRecentlyUsed) {
  const uint64_t obj = 64 * 1024;
  auto store = OpenOrDie(NoBackgroundEviction(4 * obj));
  std::vector<TestObject> objs;
  for (int i = 0; i < 5; ++i) objs.push_back(MakeObject("ns", i, obj));
  for (int i = 0; i < 4; ++i) ASSERT_OK(Put(*store, objs[i]));
  EXPECT_TRUE(ReadsBack(*store, objs[0]));  // 0 is now more recent than 1
  ASSERT_OK(Put(*store, objs[4]));
  EXPECT_TRUE(store->Lookup(objs[0].name.storage_key).present);
  EXPECT_FALSE(store->Lookup(objs[1].name.storage_key).present);
  for (int i : {2, 3, 4}) EXPECT_TRUE(ReadsBack(*store, objs[i]));
  EXPECT_EQ(CpuStats(*store).evictions, 1u);
}

TEST(CpuStoreTest, LeasedObjectSurvivesEvictionPressure) {
  const uint64_t obj = 64 * 1024;
  auto store = OpenOrDie(NoBackgroundEviction(8 * obj));
  TestObject held = MakeObject("ns", 1000, obj);
  ASSERT_OK(Put(*store, held));
  auto lease = store->Acquire(held.name.storage_key, 60'000);
  ASSERT_OK(lease);
  for (int i = 0; i < 50; ++i) ASSERT_OK(Put(*store, MakeObject("ns", i, obj)));
  EXPECT_TRUE(store->Lookup(held.name.storage_key).present);
  EXPECT_EQ(std::memcmp(store->arena_base() + lease->arena_offset, held.payload.data(), obj), 0);
  ASSERT_OK(store->Release(lease->id));
  for (int i = 50; i < 100; ++i) ASSERT_OK(Put(*store, MakeObject("ns", i, obj)));
  EXPECT_FALSE(store->Lookup(held.name.storage_key).present);  // evictable once released
}

TEST(CpuStoreTest, PinnedObjectsAreNeverEvicted) {
  const uint64_t obj = 64 * 1024;
  auto store = OpenOrDie(NoBackgroundEviction(4 * obj));
  TestObject a = MakeObject("ns", 1, obj), b = MakeObject("ns", 2, obj);
  ASSERT_OK(Put(*store, a));
  ASSERT_OK(Put(*store, b));
  ASSERT_OK(store->Pin(a.name.storage_key));
  ASSERT_OK(store->Pin(a.name.storage_key));  // pins count
  ASSERT_OK(store->Pin(b.name.storage_key));
  EXPECT_EQ(store->Stats().pinned_objects, 2u);
  for (int i = 10; i < 30; ++i) ASSERT_OK(Put(*store, MakeObject("ns", i, obj)));
  EXPECT_TRUE(ReadsBack(*store, a));
  EXPECT_TRUE(ReadsBack(*store, b));
  // Everything pinned: no room for a third object.
  TestObject c = MakeObject("ns", 3, 2 * obj + 1);
  EXPECT_THAT(Put(*store, c), StatusIs(absl::StatusCode::kResourceExhausted));
  ASSERT_OK(store->Unpin(a.name.storage_key));
  Status put40 = Put(*store, MakeObject("ns", 40, obj));
  ASSERT_OK(put40);
  EXPECT_TRUE(store->Lookup(a.name.storage_key).present);  // still pinned once
  ASSERT_OK(store->Unpin(a.name.storage_key));
  EXPECT_THAT(store->Unpin(a.name.storage_key), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(store->Pin(c.name.storage_key), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store->Unpin(c.name.storage_key), StatusIs(absl::StatusCode::kNotFound));
  // a is evictable again and the least recently used object.
  ASSERT_OK(Put(*store, MakeObject("ns", 41, obj)));
  ASSERT_OK(Put(*store, MakeObject("ns", 42, obj)));
  EXPECT_FALSE(store->Lookup(a.name.storage_key).present);
  EXPECT_TRUE(store->Lookup(b.name.storage_key).present);
}

TEST(CpuStoreTest, WatermarkEvictionRunsInTheBackground) {
  const uint64_t obj = 64 * 1024;
  StoreOptions options = CpuOnlyOptions(16 * obj);
  options.high_watermark = 0.5;
  options.low_watermark = 0.25;
  auto store = OpenOrDie(options);
  std::vector<TestObject> objs;
  for (int i = 0; i < 10; ++i) {
    objs.push_back(MakeObject("ns", i, obj));
    ASSERT_OK(Put(*store, objs.back()));
  }
  // 10/16 is above the high watermark; the evictor (not Reserve: the arena never filled) brings
  // it down to 4/16 whenever it crosses 8/16. Depending on when it ran, 4 or 5 objects remain,
  // and they are the most recent ones.
  ASSERT_TRUE(Eventually([&] { return CpuStats(*store).used_bytes <= 8 * obj; }));
  int present = 0;
  for (int i = 0; i < 10; ++i) {
    bool here = store->Lookup(objs[i].name.storage_key).present;
    if (here) ++present;
    if (!here) {
      EXPECT_EQ(present, 0) << "object " << i << " evicted before an older one";
    }
  }
  EXPECT_GE(present, 4);
  EXPECT_LE(present, 5);
  EXPECT_EQ(CpuStats(*store).evictions, 10u - present);
  for (int i = 10 - present; i < 10; ++i) EXPECT_TRUE(ReadsBack(*store, objs[i]));
}

TEST(CpuStoreTest, ListPagesInKeyOrderPerNamespace) {
  auto store = OpenOrDie(CpuOnlyOptions(8 * kMiB));
  std::vector<Hash128> keys_a;
  for (int i = 0; i < 25; ++i) {
    TestObject o = MakeObject("a", i, 100);
    ASSERT_OK(Put(*store, o));
    keys_a.push_back(o.name.storage_key);
  }
  for (int i = 0; i < 7; ++i) ASSERT_OK(Put(*store, MakeObject("b", i, 100)));
  ASSERT_OK(store->Pin(keys_a[3]));
  std::sort(keys_a.begin(), keys_a.end());
  std::vector<Hash128> listed;
  std::string token;
  int pages = 0;
  do {
    auto page = store->List("a", false, 10, token);
    ASSERT_OK(page);
    for (const auto& o : page->objects) {
      EXPECT_EQ(o.name.name_space, "a");
      EXPECT_EQ(o.tier, Tier::kCpu);
      listed.push_back(o.name.storage_key);
    }
    token = page->next_page_token;
    ++pages;
  } while (!token.empty());
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(listed, keys_a);
  auto all = store->List("", true, 100, "");
  ASSERT_OK(all);
  EXPECT_EQ(all->objects.size(), 32u);
  EXPECT_TRUE(all->next_page_token.empty());
  int pinned = 0;
  for (const auto& o : all->objects) pinned += o.pinned ? 1 : 0;
  EXPECT_EQ(pinned, 1);
  EXPECT_THAT(store->List("a", false, 10, "not-hex"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(CpuStoreTest, MetricsAreExported) {
  MetricsRegistry registry;
  StoreOptions options = CpuOnlyOptions(kMiB);
  options.metrics = &registry;
  auto store = OpenOrDie(options);
  TestObject o = MakeObject("ns", 1, 5000);
  ASSERT_OK(Put(*store, o));
  EXPECT_TRUE(ReadsBack(*store, o));
  EXPECT_THAT(store->Acquire(MakeObject("ns", 2, 1).name.storage_key, 0),
              StatusIs(absl::StatusCode::kNotFound));
  std::string text = registry.Render();
  EXPECT_NE(text.find("kvstash_storage_hits_total{tier=\"cpu\"} 1"), std::string::npos) << text;
  EXPECT_NE(text.find("kvstash_storage_misses_total{tier=\"cpu\"} 1"), std::string::npos);
  EXPECT_NE(text.find("kvstash_storage_used_bytes{tier=\"cpu\"} 8192"), std::string::npos);
  EXPECT_NE(text.find("kvstash_storage_latency_seconds_count{op=\"commit\"} 1"), std::string::npos);
}

TEST(CpuStoreTest, CloseIsIdempotentAndLaterCallsAreUnavailable) {
  auto store = OpenOrDie(CpuOnlyOptions(kMiB));
  TestObject o = MakeObject("ns", 1, 5000);
  ASSERT_OK(Put(*store, o));
  EXPECT_OK(store->Close());
  EXPECT_OK(store->Close());
  EXPECT_THAT(store->Reserve(o.name, o.info, 0, true), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(store->Acquire(o.name.storage_key, 0), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(store->Delete(o.name.storage_key), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(store->Flush(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(store->List("ns", false, 1, ""), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_FALSE(store->Lookup(o.name.storage_key).present);
}

// Several threads put, read (verifying every byte), delete and pin objects of mixed sizes in a
// small arena, so eviction runs constantly. At the end everything is deleted and the arena must be
// entirely free again: nothing leaked, nothing double-freed.
TEST(CpuStoreTest, ConcurrentStress) {
  auto store = OpenOrDie(CpuOnlyOptions(4 * kMiB));
  constexpr int kThreads = 4;
  constexpr int kIds = 64;
  std::atomic<int> corrupt{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      for (int step = 0; step < 1500; ++step) {
        int id = static_cast<int>(rng() % kIds);
        TestObject o = MakeObject("stress", id, 4096 + (id * 7919) % (300 * 1024));
        switch (rng() % 6) {
          case 0:
          case 1: {
            Status s = Put(*store, o, false, /*overwrite=*/rng() % 2 == 0);
            EXPECT_THAT(s, ::testing::AnyOf(
                               ::kvstash::testing::IsOk(),
                               ::kvstash::testing::StatusIs(absl::StatusCode::kAlreadyExists),
                               ::kvstash::testing::StatusIs(absl::StatusCode::kResourceExhausted)));
            break;
          }
          case 2:
          case 3: {
            auto lease = store->Acquire(o.name.storage_key, 0);
            if (lease.ok()) {
              if (std::memcmp(store->arena_base() + lease->arena_offset, o.payload.data(),
                              o.payload.size()) != 0) {
                ++corrupt;
              }
              EXPECT_OK(store->Release(lease->id));
            }
            break;
          }
          case 4:
            (void)store->Delete(o.name.storage_key);
            break;
          default:
            if (store->Pin(o.name.storage_key).ok()) (void)store->Unpin(o.name.storage_key);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(corrupt.load(), 0);
  auto all = store->List("", true, 10000, "");
  ASSERT_OK(all);
  for (const auto& o : all->objects) EXPECT_OK(store->Delete(o.name.storage_key));
  StoreStats s = store->Stats();
  EXPECT_EQ(s.tiers[0].used_bytes, 0u);
  EXPECT_EQ(s.tiers[0].objects, 0u);
  EXPECT_EQ(s.leases_active, 0u);
  EXPECT_EQ(s.reservations_active, 0u);
}

}  // namespace
}  // namespace kvstash::storage
