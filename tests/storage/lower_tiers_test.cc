// TieredStore with two lower tiers (the SSD tier of StoreOptions, then a second SsdTier in its own
// directory): eviction from the first moves copies down into the second, reads promote from
// whichever holds the object, stats and recovery are per tier.
#include <memory>
#include <string>
#include <vector>

#include "ssd_tier.h"
#include "store_metrics.h"
#include "store_test_util.h"
#include "testing/status_matchers.h"
#include "tiered_store.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::storage {
namespace {

using testing::MakeObject;
using testing::Put;
using testing::ReadsBack;
using testing::TempDir;
using testing::TestObject;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kObject = 256 * kKiB;
constexpr uint64_t kFile = 4096 + kObject;  // SsdTier::FileBytes(kObject)

StoreOptions FirstTierOptions(const std::string& dir, uint64_t cpu_bytes, uint64_t ssd_bytes) {
  StoreOptions o;
  o.data_dir = dir;
  o.cpu_capacity_bytes = cpu_bytes;
  o.ssd_capacity_bytes = ssd_bytes;
  o.ssd_io_threads = 2;
  o.background_commit_checks = false;  // as CpuOnlyOptions (store_test_util.h)
  return o;
}

// The store over `dir`/ssd (first lower tier, `first_bytes`) and `dir`/cold (second, 64 MiB).
Result<std::unique_ptr<ObjectStore>> OpenTwoTiers(const std::string& dir, uint64_t cpu_bytes,
                                                  uint64_t first_bytes, StoreMetrics* metrics) {
  SsdTier::Options cold;
  cold.dir = dir + "/cold";
  cold.capacity_bytes = 64 * kMiB;
  cold.io_threads = 1;
  KVSTASH_ASSIGN_OR_RETURN(std::unique_ptr<SsdTier> second, SsdTier::Open(cold, metrics));
  std::vector<std::unique_ptr<StorageTier>> more;
  more.push_back(std::move(second));
  return TieredStore::Create(FirstTierOptions(dir, cpu_bytes, first_bytes), std::move(more));
}

TEST(LowerTiersTest, EvictionFromTheFirstTierMovesCopiesIntoTheSecond) {
  TempDir dir;
  StoreMetrics cold_metrics(nullptr);  // the second SsdTier's own counters
  std::vector<TestObject> objs;
  for (int i = 0; i < 16; ++i) objs.push_back(MakeObject("ns", i, kObject));
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<ObjectStore> store,
                         OpenTwoTiers(dir.path(), 2 * kMiB, 4 * kFile, &cold_metrics));
    // Durable commits write through into the first tier, which holds 4: writing the rest evicts
    // the oldest copies from it, and each moves down instead of being dropped.
    for (const auto& o : objs) ASSERT_OK(Put(*store, o, /*durable=*/true));
    ASSERT_OK(store->Flush());
    StoreStats stats = store->Stats();
    ASSERT_EQ(stats.tiers.size(), 3u);
    EXPECT_EQ(stats.tiers[0].tier, Tier::kCpu);
    EXPECT_EQ(stats.tiers[1].tier, Tier::kSsd);
    EXPECT_EQ(stats.tiers[2].tier, Tier::kSsd);
    EXPECT_LE(stats.tiers[1].used_bytes, 4 * kFile);
    EXPECT_GE(stats.tiers[1].evictions, 12u);
    EXPECT_EQ(stats.tiers[1].objects + stats.tiers[2].objects, objs.size());
    EXPECT_EQ(stats.tiers[2].bytes_written, stats.tiers[2].objects * kObject);
    EXPECT_EQ(stats.tiers[2].evictions, 0u);
    // Every object reads back byte for byte, whichever tier (or the arena) serves it.
    for (const auto& o : objs) EXPECT_TRUE(ReadsBack(*store, o)) << o.name.storage_key.ToHex();
    EXPECT_EQ(store->Stats().checksum_failures, 0u);
    ASSERT_OK(store->Close());
  }
  // Recovery per tier: a fresh arena, every object found in one of the two tiers.
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<ObjectStore> store,
                       OpenTwoTiers(dir.path(), 2 * kMiB, 4 * kFile, &cold_metrics));
  StoreStats stats = store->Stats();
  EXPECT_EQ(stats.tiers[0].objects, 0u);
  EXPECT_EQ(stats.tiers[1].objects + stats.tiers[2].objects, objs.size());
  EXPECT_GT(stats.tiers[2].objects, 0u);
  for (const auto& o : objs) {
    EXPECT_TRUE(store->Lookup(o.name.storage_key).present);
    Tier from = Tier::kUnknown;
    EXPECT_TRUE(ReadsBack(*store, o, &from)) << o.name.storage_key.ToHex();
    EXPECT_EQ(from, Tier::kSsd);
  }
}

TEST(LowerTiersTest, ObjectsInTheSecondTierAreDeletedAndOverwrittenThere) {
  TempDir dir;
  StoreMetrics cold_metrics(nullptr);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<ObjectStore> store,
                       OpenTwoTiers(dir.path(), 2 * kMiB, 2 * kFile, &cold_metrics));
  std::vector<TestObject> objs;
  for (int i = 0; i < 6; ++i) {
    objs.push_back(MakeObject("ns", i, kObject));
    ASSERT_OK(Put(*store, objs.back(), /*durable=*/true));
  }
  // objs[0] was moved down (the first tier holds 2); delete it and overwrite objs[1].
  EXPECT_GT(store->Stats().tiers[2].objects, 0u);
  ASSERT_OK(store->Delete(objs[0].name.storage_key));
  EXPECT_FALSE(store->Lookup(objs[0].name.storage_key).present);
  TestObject newer = MakeObject("ns", 100, kObject);
  newer.name = objs[1].name;
  ASSERT_OK(Put(*store, newer, /*durable=*/true, /*overwrite=*/true));
  ASSERT_OK(store->Close());
  ASSERT_OK_AND_ASSIGN(store, OpenTwoTiers(dir.path(), 2 * kMiB, 2 * kFile, &cold_metrics));
  EXPECT_FALSE(store->Lookup(objs[0].name.storage_key).present);
  EXPECT_TRUE(ReadsBack(*store, newer));  // never the older version from the second tier
  for (int i = 2; i < 6; ++i) EXPECT_TRUE(ReadsBack(*store, objs[i]));
}

TEST(LowerTiersTest, MoreTiersThanTheStoreTakesIsInvalid) {
  TempDir dir;
  StoreMetrics metrics(nullptr);
  std::vector<std::unique_ptr<StorageTier>> more;
  for (int i = 0; i < 2; ++i) {
    SsdTier::Options o;
    o.dir = dir.path() + "/t" + std::to_string(i);
    o.capacity_bytes = 8 * kMiB;
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<SsdTier> t, SsdTier::Open(o, &metrics));
    more.push_back(std::move(t));
  }
  EXPECT_THAT(
      TieredStore::Create(FirstTierOptions(dir.path(), 2 * kMiB, 8 * kMiB), std::move(more)),
      StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvstash::storage
