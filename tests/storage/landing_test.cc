// ObjectStore::ReserveInTier: transfers that land straight in a lower tier (the GPU pool).
//
// The store's side of a landing (ids, expiry, abort, the crc32c check on commit, the committed
// object living only in that tier, promotion, eviction) does not depend on where the tier's
// memory is, so it runs here over HostLandingTier: the StorageTier landing contract in host
// memory, reporting Tier::kGpu as the pool does. The GPU pool's own landings (device memory)
// are in gpu_pool_tier_test.cc, label gpu. The refusals without a pool use the real store.
#include <cstring>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "kvstash/common/crc32c.h"
#include "kvstash/common/mutex.h"
#include "page_allocator.h"
#include "store_test_util.h"
#include "testing/status_matchers.h"
#include "tiered_store.h"

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

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;

// A lower tier with landings in host memory (see the file comment). Thread-safe.
class HostLandingTier final : public StorageTier {
 public:
  explicit HostLandingTier(uint64_t capacity)
      : memory_(capacity), capacity_(capacity), allocator_(capacity) {}

  uint8_t* memory() { return memory_.data(); }

  Tier tier() const override { return Tier::kGpu; }
  Result<std::vector<TierRecord>> Recover() override { return std::vector<TierRecord>{}; }
  uint64_t StoredBytes(uint64_t payload_bytes) const override {
    return PageAllocator::RoundUp(payload_bytes);
  }
  bool TryReserve(uint64_t bytes, uint64_t limit_bytes) override {
    MutexLock lock(&mu_);
    if (used_ + reserved_ + bytes > limit_bytes) return false;
    reserved_ += bytes;
    return true;
  }
  void Unreserve(uint64_t bytes) override {
    MutexLock lock(&mu_);
    reserved_ -= bytes;
  }
  uint64_t used_bytes() const override {
    MutexLock lock(&mu_);
    return used_;
  }
  uint64_t capacity_bytes() const override { return capacity_; }
  Status Write(TierRecord* record, const uint8_t* payload) override {
    KVSTASH_ASSIGN_OR_RETURN(uint64_t offset, AllocateLanding(record->info.payload_bytes));
    std::memcpy(memory_.data() + offset, payload, record->info.payload_bytes);
    return AdoptLanding(offset, record);
  }
  Status PutRecord(const TierRecord&, bool) override { return OkStatus(); }
  Status PutRecords(const std::vector<TierRecord>&) override { return OkStatus(); }
  Status Sync() override { return OkStatus(); }
  void Remove(const Hash128& storage_key, uint64_t seq, uint64_t) override {
    MutexLock lock(&mu_);
    auto it = versions_.find({storage_key, seq});
    if (it == versions_.end()) return;
    (void)allocator_.Free(it->second.offset);
    used_ -= it->second.bytes;
    versions_.erase(it);
  }
  Status Read(const Hash128& storage_key, uint64_t seq, const ObjectInfo& info,
              uint8_t* dst) override {
    MutexLock lock(&mu_);
    auto it = versions_.find({storage_key, seq});
    if (it == versions_.end()) return absl::NotFoundError("no such version");
    std::memcpy(dst, memory_.data() + it->second.offset, info.payload_bytes);
    if (Crc32c(dst, info.payload_bytes) != info.payload_crc32c) {
      return absl::DataLossError("crc32c mismatch");
    }
    return OkStatus();
  }

  Result<uint64_t> AllocateLanding(uint64_t payload_bytes) override {
    MutexLock lock(&mu_);
    reserved_ -= StoredBytes(payload_bytes);
    std::optional<PageAllocator::Extent> extent = allocator_.Allocate(payload_bytes);
    if (!extent) return absl::ResourceExhaustedError("fragmented");
    landings_[extent->offset] = *extent;
    used_ += extent->bytes;
    return extent->offset;
  }
  Status WriteLanding(uint64_t offset, uint64_t at, const uint8_t* src, uint64_t n) override {
    MutexLock lock(&mu_);
    auto it = landings_.find(offset);
    if (it == landings_.end()) return absl::NotFoundError("no landing");
    if (at > it->second.bytes || n > it->second.bytes - at) {
      return absl::InvalidArgumentError("past the landing");
    }
    std::memcpy(memory_.data() + offset + at, src, n);
    return OkStatus();
  }
  Result<uint32_t> LandedCrc32c(uint64_t offset, uint64_t payload_bytes) override {
    MutexLock lock(&mu_);
    if (landings_.count(offset) == 0) return absl::NotFoundError("no landing");
    return Crc32c(memory_.data() + offset, payload_bytes);
  }
  Status AdoptLanding(uint64_t offset, TierRecord* record) override {
    MutexLock lock(&mu_);
    auto it = landings_.find(offset);
    if (it == landings_.end()) return absl::NotFoundError("no landing");
    record->seq = next_seq_++;
    versions_[{record->name.storage_key, record->seq}] = it->second;
    landings_.erase(it);
    return OkStatus();
  }
  void FreeLanding(uint64_t offset) override {
    MutexLock lock(&mu_);
    auto it = landings_.find(offset);
    if (it == landings_.end()) return;
    (void)allocator_.Free(offset);
    used_ -= it->second.bytes;
    landings_.erase(it);
  }

  size_t open_landings() {
    MutexLock lock(&mu_);
    return landings_.size();
  }

 private:
  std::vector<uint8_t> memory_;
  const uint64_t capacity_;
  mutable Mutex mu_;
  PageAllocator allocator_ ABSL_GUARDED_BY(mu_);
  uint64_t used_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t reserved_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, PageAllocator::Extent> landings_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<Hash128, uint64_t>, PageAllocator::Extent> versions_ ABSL_GUARDED_BY(mu_);
};

// A CPU-only store (no SSD) over a HostLandingTier of `tier_bytes`; *tier stays valid while the
// store lives.
std::unique_ptr<ObjectStore> OpenWithLandingTier(uint64_t cpu_bytes, uint64_t tier_bytes,
                                                 HostLandingTier** tier,
                                                 uint32_t reservation_ms = 30'000) {
  auto owned = std::make_unique<HostLandingTier>(tier_bytes);
  *tier = owned.get();
  std::vector<std::unique_ptr<StorageTier>> lower;
  lower.push_back(std::move(owned));
  StoreOptions o = CpuOnlyOptions(cpu_bytes);
  o.default_reservation_ms = reservation_ms;
  Result<std::unique_ptr<ObjectStore>> store = TieredStore::Create(o, std::move(lower));
  EXPECT_OK(store);
  return store.ok() ? std::move(*store) : nullptr;
}

// Reserve in the GPU tier, copy `payload` into the landing, commit with `crc`.
Status Land(ObjectStore& store, HostLandingTier& tier, const TestObject& o, uint32_t crc) {
  KVSTASH_ASSIGN_OR_RETURN(Reservation r, store.ReserveInTier(Tier::kGpu, o.name, o.info, 0,
                                                              /*overwrite=*/false));
  if (r.tier != Tier::kGpu) return absl::InternalError("reservation not in the gpu tier");
  std::memcpy(tier.memory() + r.tier_offset, o.payload.data(), o.payload.size());
  return store.Commit(r.id, crc, /*durable=*/false);
}

TEST(LandingTest, WithoutAGpuPoolTheGpuTierIsAFailedPrecondition) {
  std::unique_ptr<ObjectStore> store = OpenOrDie(CpuOnlyOptions(4 * kMiB));
  ASSERT_NE(store, nullptr);
  TestObject o = MakeObject("ns", 1, 64 * kKiB);
  Result<Reservation> r = store->ReserveInTier(Tier::kGpu, o.name, o.info, 0, false);
  EXPECT_THAT(r, StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_NE(std::string(r.status().message()).find("--gpu-pool-capacity"), std::string::npos)
      << r.status();
  // Nothing can land in the SSD tier or the remote one.
  EXPECT_THAT(store->ReserveInTier(Tier::kSsd, o.name, o.info, 0, false),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store->ReserveInTier(Tier::kRemote, o.name, o.info, 0, false),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(store->Stats().reservations_active, 0u);
}

TEST(LandingTest, TheCpuTierIsAnArenaReservation) {
  std::unique_ptr<ObjectStore> store = OpenOrDie(CpuOnlyOptions(4 * kMiB));
  ASSERT_NE(store, nullptr);
  TestObject o = MakeObject("ns", 2, 100 * kKiB + 3);
  ASSERT_OK_AND_ASSIGN(Reservation r, store->ReserveInTier(Tier::kCpu, o.name, o.info, 0, false));
  EXPECT_EQ(r.tier, Tier::kCpu);
  std::memcpy(store->arena_base() + r.arena_offset, o.payload.data(), o.payload.size());
  ASSERT_OK(store->Commit(r.id, o.info.payload_crc32c, false));
  EXPECT_EQ(store->Lookup(o.name.storage_key).tier, Tier::kCpu);
  EXPECT_TRUE(ReadsBack(*store, o));
}

TEST(LandingTest, ALandedObjectLivesInTheGpuTierAndPromotesOnRead) {
  HostLandingTier* tier = nullptr;
  std::unique_ptr<ObjectStore> store = OpenWithLandingTier(4 * kMiB, 8 * kMiB, &tier);
  ASSERT_NE(store, nullptr);
  TestObject o = MakeObject("ns", 3, 300 * kKiB + 7);
  ASSERT_OK(Land(*store, *tier, o, o.info.payload_crc32c));
  LookupEntry entry = store->Lookup(o.name.storage_key);
  EXPECT_TRUE(entry.present);
  EXPECT_EQ(entry.tier, Tier::kGpu);
  EXPECT_EQ(entry.info.payload_crc32c, o.info.payload_crc32c);
  StoreStats stats = store->Stats();
  ASSERT_EQ(stats.tiers.size(), 2u);
  EXPECT_EQ(stats.tiers[0].used_bytes, 0u);  // nothing went through the arena
  EXPECT_EQ(stats.tiers[1].tier, Tier::kGpu);
  EXPECT_EQ(stats.tiers[1].objects, 1u);
  EXPECT_EQ(stats.tiers[1].used_bytes, PageAllocator::RoundUp(o.payload.size()));
  EXPECT_EQ(stats.reservations_active, 0u);
  Tier from = Tier::kCpu;
  EXPECT_TRUE(ReadsBack(*store, o, &from));
  EXPECT_EQ(from, Tier::kGpu);
  EXPECT_TRUE(ReadsBack(*store, o, &from));  // promoted: now an arena hit
  EXPECT_EQ(from, Tier::kCpu);
  EXPECT_EQ(tier->open_landings(), 0u);
}

TEST(LandingTest, CorruptLandedBytesAreNeverCommitted) {
  HostLandingTier* tier = nullptr;
  std::unique_ptr<ObjectStore> store = OpenWithLandingTier(4 * kMiB, 8 * kMiB, &tier);
  ASSERT_NE(store, nullptr);
  TestObject o = MakeObject("ns", 4, 64 * kKiB);
  ASSERT_OK_AND_ASSIGN(Reservation r, store->ReserveInTier(Tier::kGpu, o.name, o.info, 0, false));
  std::memcpy(tier->memory() + r.tier_offset, o.payload.data(), o.payload.size());
  tier->memory()[r.tier_offset + 1000] ^= 0x40;  // one bit flipped in flight
  // CommitChecked too: a caller cannot vouch for bytes it did not copy itself.
  EXPECT_THAT(store->CommitChecked(r.id, o.info.payload_crc32c, false),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_FALSE(store->Lookup(o.name.storage_key).present);
  EXPECT_EQ(tier->used_bytes(), 0u);
  EXPECT_EQ(tier->open_landings(), 0u);
  // The reservation has ended like an arena one.
  EXPECT_THAT(store->Commit(r.id, o.info.payload_crc32c, false),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST(LandingTest, AbortExpiryAndDurableCommitFollowTheArenaRules) {
  HostLandingTier* tier = nullptr;
  std::unique_ptr<ObjectStore> store =
      OpenWithLandingTier(4 * kMiB, 8 * kMiB, &tier, /*reservation_ms=*/50);
  ASSERT_NE(store, nullptr);
  TestObject o = MakeObject("ns", 5, 128 * kKiB);
  // Abort frees the landing.
  ASSERT_OK_AND_ASSIGN(Reservation a, store->ReserveInTier(Tier::kGpu, o.name, o.info, 0, false));
  EXPECT_GT(tier->used_bytes(), 0u);
  ASSERT_OK(store->Abort(a.id));
  EXPECT_EQ(tier->used_bytes(), 0u);
  EXPECT_THAT(store->Abort(a.id), StatusIs(absl::StatusCode::kFailedPrecondition));
  // A durable commit is refused (the pool is volatile) and leaves the reservation open...
  ASSERT_OK_AND_ASSIGN(Reservation b, store->ReserveInTier(Tier::kGpu, o.name, o.info, 0, false));
  EXPECT_THAT(store->Commit(b.id, o.info.payload_crc32c, /*durable=*/true),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(store->Stats().reservations_active, 1u);
  // ... until it expires (50 ms), which frees the landing too.
  EXPECT_TRUE(Eventually([&] { return store->Stats().reservations_active == 0; }));
  EXPECT_TRUE(Eventually([&] { return tier->used_bytes() == 0; }));
  EXPECT_THAT(store->Commit(b.id, o.info.payload_crc32c, false),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(tier->open_landings(), 0u);
}

TEST(LandingTest, ExistingObjectsAndOverwriteAsReserve) {
  HostLandingTier* tier = nullptr;
  std::unique_ptr<ObjectStore> store = OpenWithLandingTier(4 * kMiB, 8 * kMiB, &tier);
  ASSERT_NE(store, nullptr);
  TestObject o = MakeObject("ns", 6, 64 * kKiB);
  ASSERT_OK(Put(*store, o));
  EXPECT_THAT(store->ReserveInTier(Tier::kGpu, o.name, o.info, 0, /*overwrite=*/false),
              StatusIs(absl::StatusCode::kAlreadyExists));
  // Overwriting replaces the arena version with the landed one (last commit wins).
  ASSERT_OK_AND_ASSIGN(Reservation r, store->ReserveInTier(Tier::kGpu, o.name, o.info, 0, true));
  std::memcpy(tier->memory() + r.tier_offset, o.payload.data(), o.payload.size());
  ASSERT_OK(store->Commit(r.id, o.info.payload_crc32c, false));
  EXPECT_EQ(store->Lookup(o.name.storage_key).tier, Tier::kGpu);
  EXPECT_TRUE(ReadsBack(*store, o));
}

TEST(LandingTest, AFullTierEvictsLandedObjectsOrRefuses) {
  HostLandingTier* tier = nullptr;
  // Room for 4 objects of 256 KiB.
  std::unique_ptr<ObjectStore> store = OpenWithLandingTier(4 * kMiB, 1 * kMiB, &tier);
  ASSERT_NE(store, nullptr);
  std::vector<TestObject> objs;
  for (int i = 0; i < 8; ++i) objs.push_back(MakeObject("ns", 100 + i, 256 * kKiB));
  for (const TestObject& o : objs) ASSERT_OK(Land(*store, *tier, o, o.info.payload_crc32c));
  EXPECT_LE(tier->used_bytes(), 1 * kMiB);
  StoreStats stats = store->Stats();
  EXPECT_GE(stats.tiers[1].evictions, 4u);
  EXPECT_TRUE(store->Lookup(objs.back().name.storage_key).present);
  EXPECT_TRUE(ReadsBack(*store, objs.back()));
  // Pinned objects cannot be evicted: with the tier full of them, a landing is refused.
  HostLandingTier* small = nullptr;
  std::unique_ptr<ObjectStore> pinned = OpenWithLandingTier(4 * kMiB, 512 * kKiB, &small);
  ASSERT_NE(pinned, nullptr);
  for (int i = 0; i < 2; ++i) {
    ASSERT_OK(Land(*pinned, *small, objs[i], objs[i].info.payload_crc32c));
    ASSERT_OK(pinned->Pin(objs[i].name.storage_key));
  }
  EXPECT_THAT(pinned->ReserveInTier(Tier::kGpu, objs[2].name, objs[2].info, 0, false),
              StatusIs(absl::StatusCode::kResourceExhausted));
}

}  // namespace
}  // namespace kvstash::storage
