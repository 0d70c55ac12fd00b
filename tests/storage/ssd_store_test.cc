// ObjectStore with the SSD tier: write-through, durability across reopen, recovery, corruption,
// capacity and ENOSPC, admission, promotion, concurrency.
#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "store_test_util.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::storage {
namespace {

using testing::MakeObject;
using testing::OpenOrDie;
using testing::Put;
using testing::ReadsBack;
using testing::TempDir;
using testing::TestObject;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;

StoreOptions SsdOptions(const std::string& dir, uint64_t cpu_bytes, uint64_t ssd_bytes) {
  StoreOptions o;
  o.data_dir = dir;
  o.cpu_capacity_bytes = cpu_bytes;
  o.ssd_capacity_bytes = ssd_bytes;
  o.ssd_io_threads = 3;
  o.background_commit_checks = false;  // as CpuOnlyOptions (store_test_util.h)
  return o;
}

TierStats SsdStats(ObjectStore& store) { return store.Stats().tiers.at(1); }

// Object files holding data, in creation order (empty files are created ahead for writers).
std::vector<std::filesystem::path> ObjectFiles(const std::string& dir) {
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir + "/ssd/objects")) {
    if (e.file_size() > 0) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

// The file holding `o`, found through the storage key in its name block (bytes 72..88).
std::filesystem::path FileOf(const std::string& dir, const TestObject& o) {
  auto key = o.name.storage_key.Bytes();
  for (const auto& file : ObjectFiles(dir)) {
    std::ifstream f(file, std::ios::binary);
    char buf[16];
    f.seekg(64 + 8);
    if (f.read(buf, 16) && std::memcmp(buf, key.data(), 16) == 0) return file;
  }
  ADD_FAILURE() << "no file holds " << o.name.storage_key.ToHex();
  return {};
}

void FlipByte(const std::filesystem::path& file, uint64_t offset) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c;
  f.read(&c, 1);
  c ^= 0x5a;
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

// Per-namespace usage (tenant quotas): counted per tier while bytes are there, given back on
// delete, and rebuilt from the SSD index on reopen.
TEST(SsdStoreTest, NamespaceUsageFollowsTiers) {
  TempDir dir;
  TestObject a1 = MakeObject("alpha", 1, 100 * kKiB), a2 = MakeObject("alpha", 2, 50 * kKiB);
  TestObject b1 = MakeObject("beta", 3, 30 * kKiB);
  {
    auto store = OpenOrDie(SsdOptions(dir.path(), 64 * kMiB, 256 * kMiB));
    ASSERT_NE(store, nullptr);
    for (const TestObject* o : {&a1, &a2, &b1}) ASSERT_OK(Put(*store, *o));
    ASSERT_OK(store->Flush());
    NamespaceUsage alpha = store->Usage("alpha");
    EXPECT_EQ(alpha.cpu_bytes, 150 * kKiB);
    EXPECT_EQ(alpha.ssd_bytes, 150 * kKiB);
    EXPECT_EQ(store->Usage("beta").cpu_bytes, 30 * kKiB);
    EXPECT_EQ(store->Usage("gamma").cpu_bytes, 0u);
    ASSERT_OK(store->Delete(a2.name.storage_key));
    alpha = store->Usage("alpha");
    EXPECT_EQ(alpha.cpu_bytes, 100 * kKiB);
    EXPECT_EQ(alpha.ssd_bytes, 100 * kKiB);
    ASSERT_OK(store->Close());
  }
  auto store = OpenOrDie(SsdOptions(dir.path(), 64 * kMiB, 256 * kMiB));
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->Usage("alpha").cpu_bytes, 0u);  // a fresh arena
  EXPECT_EQ(store->Usage("alpha").ssd_bytes, 100 * kKiB);
  EXPECT_EQ(store->Usage("beta").ssd_bytes, 30 * kKiB);
  EXPECT_TRUE(ReadsBack(*store, a1));  // promoted back into the arena
  EXPECT_EQ(store->Usage("alpha").cpu_bytes, 100 * kKiB);
}

TEST(SsdStoreTest, ObjectsSurviveReopen) {
  TempDir dir;
  std::vector<TestObject> objs;
  for (int i = 0; i < 12; ++i) {
    // Sizes around block boundaries: exercises the O_DIRECT tail handling.
    objs.push_back(MakeObject("ns", i, i % 3 == 0 ? 4096 * (i + 1) : 1000 + i * 37 * kKiB));
  }
  {
    auto store = OpenOrDie(SsdOptions(dir.path(), 64 * kMiB, 256 * kMiB));
    ASSERT_NE(store, nullptr);
    for (auto& o : objs) ASSERT_OK(Put(*store, o));
    ASSERT_OK(store->Pin(objs[5].name.storage_key));
    EXPECT_TRUE(ReadsBack(*store, objs[1]));
    ASSERT_OK(store->Flush());
    EXPECT_EQ(SsdStats(*store).objects, objs.size());
    ASSERT_OK(store->Close());
  }
  auto store = OpenOrDie(SsdOptions(dir.path(), 64 * kMiB, 256 * kMiB));
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(SsdStats(*store).objects, objs.size());
  EXPECT_EQ(store->Stats().tiers[0].objects, 0u);  // a fresh arena
  for (auto& o : objs) {
    LookupEntry e = store->Lookup(o.name.storage_key);
    ASSERT_TRUE(e.present);
    EXPECT_EQ(e.tier, Tier::kSsd);
    EXPECT_EQ(e.info, o.info);
    Tier from;
    EXPECT_TRUE(ReadsBack(*store, o, &from));
    EXPECT_EQ(from, Tier::kSsd);
    EXPECT_EQ(store->Lookup(o.name.storage_key).tier, Tier::kCpu);  // promoted
    EXPECT_TRUE(ReadsBack(*store, o, &from));
    EXPECT_EQ(from, Tier::kCpu);
  }
  EXPECT_EQ(store->Stats().pinned_objects, 1u);  // pins survive a clean restart
  auto listed = store->List("ns", false, 100, "");
  ASSERT_OK(listed);
  EXPECT_EQ(listed->objects.size(), objs.size());
  for (const auto& l : listed->objects) {
    if (l.name.storage_key == objs[1].name.storage_key) {
      EXPECT_EQ(l.hits, 3u);
    }
  }
  EXPECT_EQ(store->Stats().checksum_failures, 0u);
}

TEST(SsdStoreTest, DurableCommitIsOnDiskWhenItReturns) {
  TempDir dir;
  auto store = OpenOrDie(SsdOptions(dir.path(), 16 * kMiB, 64 * kMiB));
  TestObject o = MakeObject("ns", 1, 300 * kKiB);
  ASSERT_OK(Put(*store, o, /*durable=*/true));
  // No Flush: the file is already complete and renamed into place.
  auto files = ObjectFiles(dir.path());
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].extension(), ".kvo");
  EXPECT_EQ(std::filesystem::file_size(files[0]), 4096 + o.payload.size());
  EXPECT_EQ(SsdStats(*store).objects, 1u);
}

TEST(SsdStoreTest, DeleteRemovesFromEveryTier) {
  TempDir dir;
  TestObject a = MakeObject("ns", 1, 100 * kKiB), b = MakeObject("ns", 2, 100 * kKiB);
  {
    auto store = OpenOrDie(SsdOptions(dir.path(), 16 * kMiB, 64 * kMiB));
    ASSERT_OK(Put(*store, a, true));
    ASSERT_OK(Put(*store, b, true));
    ASSERT_OK(store->Delete(a.name.storage_key));
    EXPECT_EQ(ObjectFiles(dir.path()).size(), 1u);
  }
  auto store = OpenOrDie(SsdOptions(dir.path(), 16 * kMiB, 64 * kMiB));
  EXPECT_FALSE(store->Lookup(a.name.storage_key).present);
  EXPECT_TRUE(ReadsBack(*store, b));
}

TEST(SsdStoreTest, OverwriteKeepsOnlyTheNewVersionAcrossReopen) {
  TempDir dir;
  TestObject v1 = MakeObject("ns", 1, 50 * kKiB);
  TestObject v2 = MakeObject("ns", 77, 70 * kKiB);
  v2.name = v1.name;
  {
    auto store = OpenOrDie(SsdOptions(dir.path(), 16 * kMiB, 64 * kMiB));
    ASSERT_OK(Put(*store, v1, true));
    ASSERT_OK(Put(*store, v2, true, /*overwrite=*/true));
  }
  auto store = OpenOrDie(SsdOptions(dir.path(), 16 * kMiB, 64 * kMiB));
  EXPECT_TRUE(ReadsBack(*store, v2));
  EXPECT_EQ(ObjectFiles(dir.path()).size(), 1u);
}

TEST(SsdStoreTest, PromotionOfEvictedObjects) {
  TempDir dir;
  StoreOptions options = SsdOptions(dir.path(), 4 * 256 * kKiB, 64 * kMiB);
  options.high_watermark = 1.0;
  options.low_watermark = 1.0;
  auto store = OpenOrDie(options);
  std::vector<TestObject> objs;
  for (int i = 0; i < 10; ++i) {
    objs.push_back(MakeObject("ns", i, 256 * kKiB));
    ASSERT_OK(Put(*store, objs.back()));
  }
  ASSERT_OK(store->Flush());
  EXPECT_GE(store->Stats().tiers[0].evictions, 6u);
  // Which six were evicted depends on which writes finished first; all ten are present.
  int on_ssd_only = 0;
  for (auto& o : objs) {
    LookupEntry e = store->Lookup(o.name.storage_key);
    EXPECT_TRUE(e.present);
    on_ssd_only += e.tier == Tier::kSsd ? 1 : 0;
  }
  EXPECT_EQ(on_ssd_only, 6);
  // Every object reads back, the arena's residents being evicted to make room for promotions.
  for (int round = 0; round < 2; ++round) {
    for (auto& o : objs) EXPECT_TRUE(ReadsBack(*store, o));
  }
  EXPECT_GE(SsdStats(*store).hits, 10u);
  // The arena now holds the four most recently read objects; with all of them leased, a
  // promotion has no room.
  std::vector<uint64_t> leases;
  for (int i = 6; i < 10; ++i) {
    EXPECT_EQ(store->Lookup(objs[i].name.storage_key).tier, Tier::kCpu);
    auto lease = store->Acquire(objs[i].name.storage_key, 0);
    ASSERT_OK(lease);
    EXPECT_EQ(lease->served_from, Tier::kCpu);
    leases.push_back(lease->id);
  }
  EXPECT_THAT(store->Acquire(objs[0].name.storage_key, 0),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_TRUE(store->Lookup(objs[0].name.storage_key).present);  // still on SSD
  for (uint64_t id : leases) EXPECT_OK(store->Release(id));
}

TEST(SsdStoreTest, ConcurrentReadersShareOnePromotion) {
  TempDir dir;
  TestObject o = MakeObject("ns", 1, 2 * kMiB);
  {
    auto store = OpenOrDie(SsdOptions(dir.path(), 16 * kMiB, 64 * kMiB));
    ASSERT_OK(Put(*store, o, true));
  }
  auto store = OpenOrDie(SsdOptions(dir.path(), 16 * kMiB, 64 * kMiB));
  std::atomic<int> good{0};
  std::vector<std::thread> readers;
  for (int i = 0; i < 6; ++i) {
    readers.emplace_back([&] { good += ReadsBack(*store, o) ? 1 : 0; });
  }
  for (auto& t : readers) t.join();
  EXPECT_EQ(good.load(), 6);
  EXPECT_EQ(SsdStats(*store).hits, 1u);  // read from SSD once
  EXPECT_EQ(store->Stats().tiers[0].used_bytes, 2 * kMiB);
}

TEST(SsdStoreTest, CorruptPayloadIsAMissNeverBytes) {
  TempDir dir;
  TestObject a = MakeObject("ns", 1, 200 * kKiB), b = MakeObject("ns", 2, 200 * kKiB);
  {
    auto store = OpenOrDie(SsdOptions(dir.path(), 16 * kMiB, 64 * kMiB));
    ASSERT_OK(Put(*store, a, true));
    ASSERT_OK(Put(*store, b, true));
  }
  ASSERT_EQ(ObjectFiles(dir.path()).size(), 2u);
  FlipByte(FileOf(dir.path(), a), 4096 + 12345);  // a's payload
  MetricsRegistry registry;
  StoreOptions options = SsdOptions(dir.path(), 16 * kMiB, 64 * kMiB);
  options.metrics = &registry;
  auto store = OpenOrDie(options);
  EXPECT_THAT(store->Acquire(a.name.storage_key, 0), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(store->Stats().checksum_failures, 1u);
  EXPECT_NE(registry.Render().find("kvstash_storage_checksum_failures_total 1"), std::string::npos);
  EXPECT_FALSE(store->Lookup(a.name.storage_key).present);  // dropped
  EXPECT_EQ(ObjectFiles(dir.path()).size(), 1u);
  EXPECT_EQ(store->Stats().tiers[0].used_bytes, 0u);  // the promotion's extent was returned
  // The store keeps serving.
  EXPECT_TRUE(ReadsBack(*store, b));
  TestObject c = MakeObject("ns", 3, 10 * kKiB);
  EXPECT_OK(Put(*store, c, true));
  EXPECT_TRUE(ReadsBack(*store, c));
}

TEST(SsdStoreTest, CorruptHeaderOrNameBlockIsAMiss) {
  TempDir dir;
  std::vector<TestObject> objs;
  for (int i = 0; i < 3; ++i) objs.push_back(MakeObject("ns", i, 64 * kKiB));
  {
    auto store = OpenOrDie(SsdOptions(dir.path(), 16 * kMiB, 64 * kMiB));
    for (auto& o : objs) ASSERT_OK(Put(*store, o, true));
  }
  ASSERT_EQ(ObjectFiles(dir.path()).size(), 3u);
  FlipByte(FileOf(dir.path(), objs[0]), 10);      // object header
  FlipByte(FileOf(dir.path(), objs[1]), 64 + 9);  // name block (the storage key)
  auto store = OpenOrDie(SsdOptions(dir.path(), 16 * kMiB, 64 * kMiB));
  EXPECT_THAT(store->Acquire(objs[0].name.storage_key, 0), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store->Acquire(objs[1].name.storage_key, 0), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_TRUE(ReadsBack(*store, objs[2]));
  EXPECT_EQ(store->Stats().checksum_failures, 2u);
}

TEST(SsdStoreTest, RecoveryDropsMissingAndShortFilesAndDeletesOrphans) {
  TempDir dir;
  std::vector<TestObject> objs;
  for (int i = 0; i < 4; ++i) objs.push_back(MakeObject("ns", i, 64 * kKiB));
  {
    auto store = OpenOrDie(SsdOptions(dir.path(), 16 * kMiB, 64 * kMiB));
    for (auto& o : objs) ASSERT_OK(Put(*store, o, true));
  }
  ASSERT_EQ(ObjectFiles(dir.path()).size(), 4u);
  std::filesystem::remove(FileOf(dir.path(), objs[0]));
  std::filesystem::resize_file(FileOf(dir.path(), objs[1]), 4096 + 1000);
  std::string objects = dir.path() + "/ssd/objects/";
  std::ofstream(objects + "00000000000000ff.tmp") << "half-written";
  std::ofstream(objects + "0000000000000fff.kvo") << "never indexed";
  MetricsRegistry registry;
  StoreOptions options = SsdOptions(dir.path(), 16 * kMiB, 64 * kMiB);
  options.metrics = &registry;
  auto store = OpenOrDie(options);
  EXPECT_FALSE(store->Lookup(objs[0].name.storage_key).present);
  EXPECT_FALSE(store->Lookup(objs[1].name.storage_key).present);
  EXPECT_TRUE(ReadsBack(*store, objs[2]));
  EXPECT_TRUE(ReadsBack(*store, objs[3]));
  EXPECT_NE(registry.Render().find("kvstash_storage_ssd_recovery_dropped_total 2"),
            std::string::npos);
  EXPECT_EQ(ObjectFiles(dir.path()).size(), 2u);  // orphan, temp and short file are gone
  EXPECT_EQ(SsdStats(*store).used_bytes, 2 * (4096 + 64 * kKiB));
}

TEST(SsdStoreTest, SsdCapacityEvictsLeastRecentlyUsed) {
  TempDir dir;
  const uint64_t obj = 256 * kKiB;
  const uint64_t file = 4096 + obj;
  auto store = OpenOrDie(SsdOptions(dir.path(), 16 * kMiB, 10 * file));
  std::vector<TestObject> objs;
  for (int i = 0; i < 20; ++i) {
    objs.push_back(MakeObject("ns", i, obj));
    ASSERT_OK(Put(*store, objs.back(), true));
  }
  TierStats ssd = SsdStats(*store);
  EXPECT_LE(ssd.used_bytes, 10 * file);
  EXPECT_GE(ssd.evictions, 10u);
  EXPECT_EQ(ObjectFiles(dir.path()).size(), ssd.objects);
  // The newest object is on SSD, the oldest is not (it lives on in the arena only).
  EXPECT_EQ(ssd.objects + ssd.evictions, 20u);
  ASSERT_OK(store->Close());
  auto reopened = OpenOrDie(SsdOptions(dir.path(), 16 * kMiB, 10 * file));
  EXPECT_FALSE(reopened->Lookup(objs[0].name.storage_key).present);
  EXPECT_TRUE(ReadsBack(*reopened, objs[19]));
}

TEST(SsdStoreTest, FullSsdFailsDurableCommitButKeepsServing) {
  TempDir dir;
  const uint64_t obj = 256 * kKiB;
  MetricsRegistry registry;
  StoreOptions options = SsdOptions(dir.path(), 16 * kMiB, 2 * (4096 + obj) + 8192);
  options.metrics = &registry;
  options.high_watermark = 1.0;  // let the SSD fill up to its capacity
  options.low_watermark = 1.0;
  auto store = OpenOrDie(options);
  TestObject a = MakeObject("ns", 1, obj), b = MakeObject("ns", 2, obj),
             c = MakeObject("ns", 3, obj);
  ASSERT_OK(Put(*store, a, true));
  ASSERT_OK(Put(*store, b, true));
  ASSERT_OK(store->Pin(a.name.storage_key));  // pinned objects are never evicted
  ASSERT_OK(store->Pin(b.name.storage_key));
  EXPECT_THAT(Put(*store, c, true), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_NE(registry.Render().find("kvstash_storage_ssd_write_errors_total{reason=\"capacity\"} 1"),
            std::string::npos);
  // c is committed in the arena all the same, and everything is readable.
  EXPECT_TRUE(ReadsBack(*store, c));
  EXPECT_TRUE(ReadsBack(*store, a));
  TestObject too_big = MakeObject("ns", 4, 2 * kMiB);
  EXPECT_THAT(Put(*store, too_big, true), StatusIs(absl::StatusCode::kResourceExhausted));
  ASSERT_OK(store->Unpin(a.name.storage_key));
  TestObject d = MakeObject("ns", 5, obj);
  EXPECT_OK(Put(*store, d, true));  // a is evictable from SSD now
}

// A real ENOSPC from the filesystem: the SSD tier on a 4 MiB tmpfs (which also exercises the
// buffered fallback, tmpfs refusing O_DIRECT).
TEST(SsdStoreTest, RealEnospcFailsDurableCommitButKeepsServing) {
  TempDir dir;
  std::string mnt = dir.path() + "/small";
  std::filesystem::create_directories(mnt);
  if (mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=4m") != 0) {
    GTEST_SKIP() << "cannot mount a 4 MiB tmpfs here (" << std::strerror(errno)
                 << "); the capacity-limit test covers the same code path";
  }
  {
    MetricsRegistry registry;
    StoreOptions options = SsdOptions(mnt, 32 * kMiB, 1ull << 30);  // the cap is not the limit
    options.metrics = &registry;
    auto store = OpenOrDie(options);
    ASSERT_NE(store, nullptr);
    std::vector<TestObject> stored;
    Status last;
    for (int i = 0; i < 20 && last.ok(); ++i) {
      TestObject o = MakeObject("ns", i, 512 * kKiB);
      last = Put(*store, o, true);
      if (last.ok()) stored.push_back(o);
    }
    EXPECT_THAT(last, StatusIs(absl::StatusCode::kResourceExhausted));
    EXPECT_GE(stored.size(), 3u);
    EXPECT_NE(registry.Render().find("kvstash_storage_ssd_write_errors_total{reason=\"enospc\"} 1"),
              std::string::npos);
    for (auto& o : stored) EXPECT_TRUE(ReadsBack(*store, o));
    // Space comes back after a delete, and writes work again.
    ASSERT_OK(store->Delete(stored[0].name.storage_key));
    ASSERT_OK(store->Delete(stored[1].name.storage_key));
    EXPECT_OK(Put(*store, MakeObject("ns", 100, 512 * kKiB), true));
    ASSERT_OK(store->Close());
  }
  EXPECT_EQ(umount(mnt.c_str()), 0) << std::strerror(errno);
}

TEST(SsdStoreTest, AdmissionAfterNHits) {
  TempDir dir;
  const uint64_t obj = 256 * kKiB;
  MetricsRegistry registry;
  StoreOptions options = SsdOptions(dir.path(), 4 * obj, 64 * kMiB);
  options.ssd_admission_hits = 2;
  options.high_watermark = 1.0;
  options.low_watermark = 1.0;
  options.metrics = &registry;
  auto store = OpenOrDie(options);
  TestObject hot = MakeObject("ns", 1, obj), cold = MakeObject("ns", 2, obj);
  ASSERT_OK(Put(*store, hot));
  ASSERT_OK(Put(*store, cold));
  ASSERT_OK(store->Flush());
  EXPECT_EQ(SsdStats(*store).objects, 0u);  // nothing written through
  EXPECT_TRUE(ReadsBack(*store, hot));
  EXPECT_TRUE(ReadsBack(*store, cold));
  ASSERT_OK(store->Flush());
  EXPECT_EQ(SsdStats(*store).objects, 0u);  // one hit is not enough
  EXPECT_TRUE(ReadsBack(*store, hot));      // second hit: admitted
  ASSERT_OK(store->Flush());
  EXPECT_EQ(SsdStats(*store).objects, 1u);
  // Arena pressure evicts both: the admitted one survives on SSD, the other is dropped.
  for (int i = 10; i < 18; ++i) ASSERT_OK(Put(*store, MakeObject("ns", i, obj)));
  EXPECT_EQ(store->Lookup(hot.name.storage_key).tier, Tier::kSsd);
  EXPECT_FALSE(store->Lookup(cold.name.storage_key).present);
  Tier from;
  EXPECT_TRUE(ReadsBack(*store, hot, &from));
  EXPECT_EQ(from, Tier::kSsd);
  EXPECT_NE(registry.Render().find("kvstash_storage_ssd_admission_dropped_total"),
            std::string::npos);
  // A durable commit bypasses admission.
  TestObject durable = MakeObject("ns", 50, obj);
  ASSERT_OK(Put(*store, durable, true));
  EXPECT_EQ(SsdStats(*store).objects, 2u);
}

TEST(SsdStoreTest, AdmittedObjectIsDemotedBeforeItsBytesAreFreed) {
  TempDir dir;
  const uint64_t obj = 256 * kKiB;
  StoreOptions options = SsdOptions(dir.path(), 4 * obj, 64 * kMiB);
  options.ssd_admission_hits = 1;
  options.high_watermark = 1.0;
  options.low_watermark = 1.0;
  options.ssd_io_threads = 1;
  auto store = OpenOrDie(options);
  std::vector<TestObject> objs;
  for (int i = 0; i < 4; ++i) {
    objs.push_back(MakeObject("ns", i, obj));
    ASSERT_OK(Put(*store, objs.back()));
    EXPECT_TRUE(ReadsBack(*store, objs.back()));  // admitted, write queued
  }
  // Reserving now must wait for demotions rather than drop admitted objects.
  for (int i = 4; i < 8; ++i) ASSERT_OK(Put(*store, MakeObject("ns", i, obj)));
  for (auto& o : objs) EXPECT_TRUE(ReadsBack(*store, o));
  EXPECT_EQ(store->Stats().checksum_failures, 0u);
}

// Threads put (durable or not), read and verify, delete and pin concurrently in a small arena with
// write-through; afterwards a reopened store must return every surviving object intact.
TEST(SsdStoreTest, ConcurrentStressThenReopen) {
  TempDir dir;
  constexpr int kThreads = 4;
  constexpr int kIds = 48;
  auto size_of = [](int id) { return 4096 + static_cast<uint64_t>(id * 7919) % (200 * kKiB); };
  {
    auto store = OpenOrDie(SsdOptions(dir.path(), 2 * kMiB, 6 * kMiB));
    std::atomic<int> corrupt{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937_64 rng(t + 100);
        for (int step = 0; step < 400; ++step) {
          int id = static_cast<int>(rng() % kIds);
          TestObject o = MakeObject("stress", id, size_of(id));
          switch (rng() % 7) {
            case 0:
            case 1:
            case 2: {
              Status s = Put(*store, o, rng() % 4 == 0, rng() % 2 == 0);
              EXPECT_THAT(s,
                          ::testing::AnyOf(
                              ::kvstash::testing::IsOk(),
                              ::kvstash::testing::StatusIs(absl::StatusCode::kAlreadyExists),
                              ::kvstash::testing::StatusIs(absl::StatusCode::kResourceExhausted)));
              break;
            }
            case 3:
            case 4: {
              auto lease = store->Acquire(o.name.storage_key, 0);
              if (lease.ok()) {
                if (std::memcmp(store->arena_base() + lease->arena_offset, o.payload.data(),
                                o.payload.size()) != 0) {
                  ++corrupt;
                }
                EXPECT_OK(store->Release(lease->id));
              } else {
                EXPECT_TRUE(absl::IsNotFound(lease.status()) ||
                            absl::IsResourceExhausted(lease.status()))
                    << lease.status();
              }
              break;
            }
            case 5:
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
    EXPECT_EQ(store->Stats().checksum_failures, 0u);
    ASSERT_OK(store->Close());
  }
  auto store = OpenOrDie(SsdOptions(dir.path(), 8 * kMiB, 6 * kMiB));
  auto all = store->List("", true, 1000, "");
  ASSERT_OK(all);
  EXPECT_GT(all->objects.size(), 0u);
  for (const auto& l : all->objects) {
    int id = static_cast<int>(l.name.token_hash.hi);
    EXPECT_TRUE(ReadsBack(*store, MakeObject("stress", id, size_of(id)))) << id;
  }
  EXPECT_EQ(store->Stats().checksum_failures, 0u);
}

}  // namespace
}  // namespace kvstash::storage
