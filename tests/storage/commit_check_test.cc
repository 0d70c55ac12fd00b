// Committed bytes are checked against their crc32c after a non-durable Commit returns, and bytes
// that fail are never served and never written to SSD (object_store.h, "Checksums of new
// objects").
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

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
using testing::TempDir;
using testing::TestObject;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;

// With the background checker (the default; the shared test helpers turn it off).
StoreOptions CheckedCpuOptions(uint64_t cpu_bytes) {
  StoreOptions o = CpuOnlyOptions(cpu_bytes);
  o.background_commit_checks = true;
  return o;
}

StoreOptions WriteThroughOptions(const std::string& dir) {
  StoreOptions o;
  o.data_dir = dir;
  o.cpu_capacity_bytes = 16 * kMiB;
  o.ssd_capacity_bytes = 64 * kMiB;
  o.ssd_io_threads = 2;
  o.ssd_admission_hits = 0;  // every commit is written through to SSD
  return o;
}

// Reserves, copies o's payload with one byte flipped, and commits o's (now wrong) crc32c.
Status PutCorrupted(ObjectStore& store, const TestObject& o, bool durable) {
  Result<Reservation> r = store.Reserve(o.name, o.info, 0, false);
  if (!r.ok()) return r.status();
  uint8_t* at = store.arena_base() + r->arena_offset;
  std::memcpy(at, o.payload.data(), o.payload.size());
  at[o.payload.size() / 2] ^= 0x10;
  return store.Commit(r->id, o.info.payload_crc32c, durable);
}

TEST(CommitCheckTest, TheCheckerRemovesAMismatchWithoutAnyReader) {
  auto store = OpenOrDie(CheckedCpuOptions(8 * kMiB));
  TestObject good = MakeObject("ns", 1, 300 * kKiB);
  TestObject bad = MakeObject("ns", 2, 300 * kKiB);
  ASSERT_OK(Put(*store, good));
  ASSERT_OK(PutCorrupted(*store, bad, false));
  EXPECT_TRUE(Eventually([&] { return !store->Lookup(bad.name.storage_key).present; }));
  EXPECT_EQ(store->Stats().checksum_failures, 1u);
  EXPECT_EQ(store->Stats().tiers.at(0).objects, 1u);
  EXPECT_TRUE(Eventually([&] {
    return store->Stats().tiers.at(0).used_bytes == 300 * kKiB;  // good's pages only
  }));
  EXPECT_TRUE(ReadsBack(*store, good));
  // The key is free again: a correct put of it succeeds and is served.
  ASSERT_OK(Put(*store, bad));
  EXPECT_TRUE(ReadsBack(*store, bad));
  EXPECT_EQ(store->Stats().checksum_failures, 1u);
}

TEST(CommitCheckTest, DurableCommitChecksBeforeItReturns) {
  TempDir dir;
  auto store = OpenOrDie(WriteThroughOptions(dir.path()));
  TestObject bad = MakeObject("ns", 3, 200 * kKiB);
  Status s = PutCorrupted(*store, bad, /*durable=*/true);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(std::string(s.message()).find("crc32c mismatch"), std::string::npos) << s;
  EXPECT_FALSE(store->Lookup(bad.name.storage_key).present);
  EXPECT_EQ(store->Stats().tiers.at(0).used_bytes, 0u);
  EXPECT_EQ(store->Stats().tiers.at(1).objects, 0u);
}

TEST(CommitCheckTest, MismatchesNeverReachTheSsdTierOrSurviveARestart) {
  TempDir dir;
  std::vector<TestObject> objects;
  for (uint64_t id = 10; id < 30; ++id) objects.push_back(MakeObject("ns", id, 64 * kKiB + id));
  {
    auto store = OpenOrDie(WriteThroughOptions(dir.path()));
    for (size_t i = 0; i < objects.size(); ++i) {
      // Every third object is committed with bytes that do not match its crc32c.
      Status s = i % 3 == 0 ? PutCorrupted(*store, objects[i], false) : Put(*store, objects[i]);
      ASSERT_OK(s);
    }
    ASSERT_OK(store->Flush());
    EXPECT_EQ(store->Stats().checksum_failures, 7u);
    EXPECT_EQ(store->Stats().tiers.at(1).objects, 13u);
  }
  auto store = OpenOrDie(WriteThroughOptions(dir.path()));
  for (size_t i = 0; i < objects.size(); ++i) {
    SCOPED_TRACE(i);
    if (i % 3 == 0) {
      EXPECT_FALSE(store->Lookup(objects[i].name.storage_key).present);
    } else {
      EXPECT_TRUE(ReadsBack(*store, objects[i]));
    }
  }
  EXPECT_EQ(store->Stats().checksum_failures, 0u);  // nothing bad was persisted
}

// Readers race the checker for freshly committed objects: every lease they get holds exactly
// the committed bytes, and every corrupted object answers NotFound.
class CommitCheckModeTest : public ::testing::TestWithParam<bool> {};

TEST_P(CommitCheckModeTest, ConcurrentReadersNeverSeeMismatchedBytes) {
  StoreOptions options = CpuOnlyOptions(64 * kMiB);
  options.background_commit_checks = GetParam();
  auto store = OpenOrDie(options);
  constexpr int kObjects = 60;
  std::vector<TestObject> objects;
  for (int id = 0; id < kObjects; ++id) objects.push_back(MakeObject("ns", 100 + id, 256 * kKiB));
  std::atomic<int> committed{0};
  std::atomic<int> bad_served{0};
  std::atomic<int> good_missing{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&] {
      for (int i = 0; i < kObjects; ++i) {
        while (committed.load() <= i) std::this_thread::yield();
        Result<Lease> lease = store->Acquire(objects[i].name.storage_key, 0);
        const bool corrupted = i % 2 == 1;
        if (!lease.ok()) {
          if (!corrupted || !absl::IsNotFound(lease.status())) good_missing.fetch_add(1);
          continue;
        }
        const bool same = std::memcmp(store->arena_base() + lease->arena_offset,
                                      objects[i].payload.data(), objects[i].payload.size()) == 0;
        if (corrupted || !same) bad_served.fetch_add(1);
        (void)store->Release(lease->id);
      }
    });
  }
  for (int i = 0; i < kObjects; ++i) {
    Status s = i % 2 == 1 ? PutCorrupted(*store, objects[i], false) : Put(*store, objects[i]);
    ASSERT_OK(s);
    committed.store(i + 1);
  }
  for (auto& t : readers) t.join();
  EXPECT_EQ(bad_served.load(), 0);
  EXPECT_EQ(good_missing.load(), 0);
  EXPECT_EQ(store->Stats().checksum_failures, kObjects / 2);
}

// An object not yet checked may be evicted like any other; without an SSD tier its bytes are
// simply dropped, unread, and nothing is counted.
TEST_P(CommitCheckModeTest, UncheckedObjectsCanBeEvicted) {
  StoreOptions options = CpuOnlyOptions(4 * 256 * kKiB);
  options.background_commit_checks = GetParam();
  auto store = OpenOrDie(options);
  std::vector<TestObject> objects;
  for (uint64_t id = 0; id < 8; ++id) objects.push_back(MakeObject("ns", 200 + id, 256 * kKiB));
  auto corrupted = [](size_t i) { return i % 2 == 0; };
  for (size_t i = 0; i < objects.size(); ++i) {
    Status s = corrupted(i) ? PutCorrupted(*store, objects[i], false) : Put(*store, objects[i]);
    ASSERT_OK(s);  // room is made by evicting older objects, checked or not
  }
  // Room came from evictions, or (with the checker) from corrupted objects it removed.
  StoreStats stats = store->Stats();
  EXPECT_LE(stats.tiers.at(0).objects, 4u);
  EXPECT_GE(stats.tiers.at(0).evictions + stats.checksum_failures, 4u);
  for (size_t i = 0; i < objects.size(); ++i) {
    Result<Lease> lease = store->Acquire(objects[i].name.storage_key, 0);
    if (!lease.ok()) continue;  // evicted, or removed by its check
    EXPECT_FALSE(corrupted(i)) << "corrupted object " << i << " was served";
    EXPECT_EQ(std::memcmp(store->arena_base() + lease->arena_offset, objects[i].payload.data(),
                          objects[i].payload.size()),
              0);
    ASSERT_OK(store->Release(lease->id));
  }
}

INSTANTIATE_TEST_SUITE_P(BackgroundChecker, CommitCheckModeTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Background" : "FirstUseOnly";
                         });

// CommitChecked is for callers that checked while copying (the gRPC stream path): the store
// serves the bytes without reading them first.
TEST(CommitCheckTest, CommitCheckedServesAtOnce) {
  auto store = OpenOrDie(CheckedCpuOptions(8 * kMiB));
  TestObject o = MakeObject("ns", 7, 100 * kKiB);
  Result<Reservation> r = store->Reserve(o.name, o.info, 0, false);
  ASSERT_OK(r);
  std::memcpy(store->arena_base() + r->arena_offset, o.payload.data(), o.payload.size());
  ASSERT_OK(store->CommitChecked(r->id, o.info.payload_crc32c, false));
  EXPECT_TRUE(ReadsBack(*store, o));
  EXPECT_EQ(store->Stats().checksum_failures, 0u);
}

}  // namespace
}  // namespace kvstash::storage
