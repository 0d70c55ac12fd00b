// GpuPoolTier (label gpu): the refusal without a device runs everywhere; the round trips through
// device memory skip, saying why, where no CUDA device can be used.
#include "gpu_pool_tier.h"

#include <cstring>
#include <memory>
#include <vector>

#include "kvstash/storage/gpu_pool.h"
#include "store_test_util.h"
#include "testing/status_matchers.h"
#include "tiered_store.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::storage {
namespace {

using testing::MakeObject;
using testing::Put;
using testing::ReadsBack;
using testing::TestObject;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;

#define SKIP_WITHOUT_DEVICE()                                                    \
  do {                                                                           \
    Status available = GpuPoolTier::Available();                                 \
    if (!available.ok()) GTEST_SKIP() << "no usable CUDA device: " << available; \
  } while (0)

TEST(GpuPoolTierTest, OpenRefusesClearlyWithoutADevice) {
  if (GpuPoolTier::Available().ok()) {
    GTEST_SKIP() << "a CUDA device is present: the refusal is for machines without one";
  }
  GpuPoolTier::Options o;
  o.capacity_bytes = 16 * kMiB;
  Result<std::unique_ptr<GpuPoolTier>> tier = GpuPoolTier::Open(o);
  EXPECT_THAT(tier, StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_NE(std::string(tier.status().message()).find("CUDA"), std::string::npos) << tier.status();
}

TEST(GpuPoolTierTest, ZeroCapacityIsInvalid) {
  GpuPoolTier::Options o;
  o.capacity_bytes = 100;  // under one page
  EXPECT_THAT(GpuPoolTier::Open(o), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(GpuPoolTierTest, WriteReadRemoveThroughDeviceMemory) {
  SKIP_WITHOUT_DEVICE();
  GpuPoolTier::Options o;
  o.capacity_bytes = 16 * kMiB;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<GpuPoolTier> tier, GpuPoolTier::Open(o));
  EXPECT_EQ(tier->tier(), Tier::kGpu);
  EXPECT_NE(tier->device_base(), 0u);
  TestObject obj = MakeObject("ns", 1, 300 * kKiB + 5);
  TierRecord record;
  record.name = obj.name;
  record.info = obj.info;
  record.served = obj.info;
  const uint64_t stored = tier->StoredBytes(obj.info.payload_bytes);
  ASSERT_TRUE(tier->TryReserve(stored, tier->capacity_bytes()));
  ASSERT_OK(tier->Write(&record, obj.payload.data()));
  EXPECT_EQ(tier->used_bytes(), stored);
  std::vector<uint8_t> back(stored);
  ASSERT_OK(tier->Read(obj.name.storage_key, record.seq, obj.info, back.data()));
  EXPECT_EQ(std::memcmp(back.data(), obj.payload.data(), obj.payload.size()), 0);
  ObjectInfo wrong = obj.info;
  wrong.payload_crc32c ^= 1;
  EXPECT_THAT(tier->Read(obj.name.storage_key, record.seq, wrong, back.data()),
              StatusIs(absl::StatusCode::kDataLoss));
  tier->Remove(obj.name.storage_key, record.seq, obj.info.payload_bytes);
  EXPECT_EQ(tier->used_bytes(), 0u);
  EXPECT_THAT(tier->Read(obj.name.storage_key, record.seq, obj.info, back.data()),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST(GpuPoolTierTest, StoreDemotesIntoTheGpuPoolAndPromotesBack) {
  SKIP_WITHOUT_DEVICE();
  GpuPoolTier::Options o;
  o.capacity_bytes = 64 * kMiB;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<GpuPoolTier> gpu, GpuPoolTier::Open(o));
  std::vector<std::unique_ptr<StorageTier>> lower;
  lower.push_back(std::move(gpu));
  StoreOptions options = testing::CpuOnlyOptions(2 * kMiB);  // no SSD: the pool is lower_[0]
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<ObjectStore> store,
                       TieredStore::Create(options, std::move(lower)));
  std::vector<TestObject> objs;
  for (int i = 0; i < 24; ++i) {
    objs.push_back(MakeObject("ns", i, 256 * kKiB));
    ASSERT_OK(Put(*store, objs.back(), /*durable=*/true));
  }
  StoreStats stats = store->Stats();
  ASSERT_EQ(stats.tiers.size(), 2u);
  EXPECT_EQ(stats.tiers[1].tier, Tier::kGpu);
  EXPECT_EQ(stats.tiers[1].objects, objs.size());
  // The arena holds 8: most objects come back from the device.
  for (const auto& o : objs) EXPECT_TRUE(ReadsBack(*store, o));
  EXPECT_GT(store->Stats().tiers[1].hits, 0u);
  EXPECT_EQ(store->Stats().checksum_failures, 0u);
}

TEST(GpuPoolTierTest, PublicOpenerRefusesClearlyWithoutADevice) {
  if (GpuPoolAvailable(0).ok()) {
    GTEST_SKIP() << "a CUDA device is present: the refusal is for machines without one";
  }
  GpuPoolRegion region;
  Result<std::unique_ptr<ObjectStore>> store = OpenStoreWithGpuPool(
      testing::CpuOnlyOptions(2 * kMiB), GpuPoolOptions{0, 16 * kMiB}, &region);
  EXPECT_THAT(store, StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_NE(std::string(store.status().message()).find("CUDA"), std::string::npos)
      << store.status();
  EXPECT_EQ(region.bytes, 0u);  // untouched on failure
}

TEST(GpuPoolTierTest, PublicOpenerGivesTheStoreAPoolAndItsRegion) {
  SKIP_WITHOUT_DEVICE();
  GpuPoolRegion region;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<ObjectStore> store,
                       OpenStoreWithGpuPool(testing::CpuOnlyOptions(2 * kMiB),
                                            GpuPoolOptions{0, 16 * kMiB + 100}, &region));
  EXPECT_NE(region.device_base, 0u);
  EXPECT_EQ(region.bytes, 16 * kMiB);  // rounded down to pages
  TestObject obj = MakeObject("ns", 7, 1 * kMiB);
  ASSERT_OK(Put(*store, obj, /*durable=*/true));
  StoreStats stats = store->Stats();
  ASSERT_EQ(stats.tiers.size(), 2u);
  EXPECT_EQ(stats.tiers[1].tier, Tier::kGpu);
  EXPECT_TRUE(ReadsBack(*store, obj));
}

TEST(GpuPoolTierTest, LandingsInDeviceMemoryCommitCheckedOrAbort) {
  SKIP_WITHOUT_DEVICE();
  GpuPoolTier::Options o;
  o.capacity_bytes = 16 * kMiB;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<GpuPoolTier> gpu, GpuPoolTier::Open(o));
  GpuPoolTier* pool = gpu.get();
  std::vector<std::unique_ptr<StorageTier>> lower;
  lower.push_back(std::move(gpu));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<ObjectStore> store,
                       TieredStore::Create(testing::CpuOnlyOptions(2 * kMiB), std::move(lower)));
  // Good bytes (more than one 4 MiB read-back piece): committed in the GPU tier, read back.
  TestObject good = MakeObject("ns", 8, 5 * kMiB + 11);
  ASSERT_OK_AND_ASSIGN(Reservation r,
                       store->ReserveInTier(Tier::kGpu, good.name, good.info, 0, false));
  EXPECT_EQ(r.tier, Tier::kGpu);
  ASSERT_OK(pool->WriteLanding(r.tier_offset, 0, good.payload.data(), good.payload.size()));
  ASSERT_OK(store->CommitChecked(r.id, good.info.payload_crc32c, false));
  EXPECT_EQ(store->Lookup(good.name.storage_key).tier, Tier::kGpu);
  EXPECT_TRUE(ReadsBack(*store, good));
  // Corrupt bytes: refused, the extent freed.
  TestObject bad = MakeObject("ns", 9, 1 * kMiB);
  const uint64_t used = pool->used_bytes();
  ASSERT_OK_AND_ASSIGN(Reservation b,
                       store->ReserveInTier(Tier::kGpu, bad.name, bad.info, 0, false));
  std::vector<uint8_t> flipped = bad.payload;
  flipped[4096] ^= 1;
  ASSERT_OK(pool->WriteLanding(b.tier_offset, 0, flipped.data(), flipped.size()));
  EXPECT_THAT(pool->WriteLanding(b.tier_offset, 1 * kMiB, flipped.data(), 1),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store->Commit(b.id, bad.info.payload_crc32c, false),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_FALSE(store->Lookup(bad.name.storage_key).present);
  EXPECT_EQ(pool->used_bytes(), used);
  // Abort frees it too.
  ASSERT_OK_AND_ASSIGN(Reservation c,
                       store->ReserveInTier(Tier::kGpu, bad.name, bad.info, 0, false));
  ASSERT_OK(store->Abort(c.id));
  EXPECT_EQ(pool->used_bytes(), used);
}

}  // namespace
}  // namespace kvstash::storage
