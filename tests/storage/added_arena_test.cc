// Tenant arenas added while the store runs (ObjectStore::AddTenantArena): mapped into the address
// space reserved at Open (StoreOptions::tenant_arena_reserve_bytes), made like the arenas of
// StoreOptions::tenant_arenas, and visible to concurrent readers and writers without stopping
// them.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
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
using testing::TestObject;

constexpr uint64_t kMiB = 1 << 20;

// Shared 1 MiB, alpha 1 MiB from the start, and `reserve` for arenas added later.
StoreOptions WithReserve(uint64_t reserve) {
  StoreOptions o = CpuOnlyOptions(kMiB);
  o.tenant_arenas = {{"alpha", kMiB}};
  o.tenant_arena_reserve_bytes = reserve;
  return o;
}

bool InSegment(const ArenaSegment& seg, uint64_t offset, uint64_t bytes) {
  return offset >= seg.offset && offset + bytes <= seg.offset + seg.bytes;
}

TEST(AddedArenaTest, AnAddedArenaIsASealedMemfdOfItsOwnInTheReserve) {
  auto store = OpenOrDie(WithReserve(4 * kMiB));
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->arena_bytes(), 2 * kMiB);
  EXPECT_EQ(store->arena_reserved_bytes(), 6 * kMiB);
  EXPECT_EQ(store->arena_segment("beta").index, 0u);  // no arena yet: the shared one
  uint8_t* const base = store->arena_base();

  ASSERT_OK_AND_ASSIGN(ArenaSegment beta, store->AddTenantArena({"beta", 2 * kMiB + 100}));
  EXPECT_EQ(beta.index, 2u);
  EXPECT_EQ(beta.name_space, "beta");
  EXPECT_EQ(beta.offset, 2 * kMiB);
  EXPECT_EQ(beta.bytes, 2 * kMiB);       // whole pages
  EXPECT_EQ(store->arena_base(), base);  // nothing moved
  EXPECT_EQ(store->arena_bytes(), 4 * kMiB);
  EXPECT_EQ(store->arena_reserved_bytes(), 6 * kMiB);
  const ArenaSegment again = store->arena_segment("beta");
  EXPECT_EQ(again.index, beta.index);
  EXPECT_EQ(again.fd, beta.fd);
  EXPECT_EQ(again.read_only_fd, beta.read_only_fd);

  // Its own inode, of exactly its size, sealed, mode 0400; the read-only fd is the same memory
  // and cannot be mapped writable.
  const ArenaSegment alpha = store->arena_segment("alpha");
  struct stat sa, sb, ss, sro;
  ASSERT_EQ(fstat(alpha.fd, &sa), 0);
  ASSERT_EQ(fstat(beta.fd, &sb), 0);
  ASSERT_EQ(fstat(store->arena_fd(), &ss), 0);
  ASSERT_EQ(fstat(beta.read_only_fd, &sro), 0);
  EXPECT_NE(sb.st_ino, sa.st_ino);
  EXPECT_NE(sb.st_ino, ss.st_ino);
  EXPECT_EQ(sb.st_ino, sro.st_ino);
  EXPECT_EQ(static_cast<uint64_t>(sb.st_size), beta.bytes);
  EXPECT_EQ(sb.st_mode & 0777, 0400u);
  EXPECT_EQ(fcntl(beta.fd, F_GET_SEALS), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  errno = 0;
  EXPECT_EQ(mmap(nullptr, beta.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, beta.read_only_fd, 0),
            MAP_FAILED);
  EXPECT_EQ(errno, EACCES);
  errno = 0;
  EXPECT_EQ(ftruncate(beta.fd, 4096), -1);
  EXPECT_EQ(errno, EPERM);

  // beta's puts land in it, and its fd shows them at offset - beta.offset.
  TestObject b = MakeObject("beta", 1, 300'000);
  ASSERT_OK(Put(*store, b));
  ASSERT_OK_AND_ASSIGN(Lease lease, store->Acquire(b.name.storage_key, 0));
  EXPECT_TRUE(InSegment(beta, lease.arena_offset, b.payload.size()));
  void* m = mmap(nullptr, beta.bytes, PROT_READ, MAP_SHARED, beta.read_only_fd, 0);
  ASSERT_NE(m, MAP_FAILED);
  EXPECT_EQ(std::memcmp(static_cast<const uint8_t*>(m) + (lease.arena_offset - beta.offset),
                        b.payload.data(), b.payload.size()),
            0);
  munmap(m, beta.bytes);
  ASSERT_OK(store->Release(lease.id));
  EXPECT_EQ(store->Usage("beta").cpu_bytes, 300'000u);
}

TEST(AddedArenaTest, AnAddedTenantsPutsEvictOnlyItsOwnObjects) {
  auto store = OpenOrDie(WithReserve(4 * kMiB));
  ASSERT_NE(store, nullptr);
  TestObject a = MakeObject("alpha", 1, 256 * 1024);
  TestObject s = MakeObject("gamma", 1, 256 * 1024);
  ASSERT_OK(Put(*store, a));
  ASSERT_OK(Put(*store, s));
  ASSERT_OK_AND_ASSIGN(ArenaSegment beta, store->AddTenantArena({"beta", kMiB}));
  // Six 256 KiB objects through beta's 1 MiB: beta evicts its own oldest, the rest stay.
  for (uint64_t i = 0; i < 6; ++i) {
    TestObject b = MakeObject("beta", i, 256 * 1024);
    ASSERT_OK(Put(*store, b));
    ASSERT_OK_AND_ASSIGN(Lease lease, store->Acquire(b.name.storage_key, 0));
    EXPECT_TRUE(InSegment(beta, lease.arena_offset, b.payload.size()));
    ASSERT_OK(store->Release(lease.id));
  }
  EXPECT_FALSE(store->Lookup(MakeObject("beta", 0, 256 * 1024).name.storage_key).present);
  EXPECT_TRUE(store->Lookup(MakeObject("beta", 5, 256 * 1024).name.storage_key).present);
  EXPECT_TRUE(ReadsBack(*store, a));
  EXPECT_TRUE(ReadsBack(*store, s));
  EXPECT_LE(store->Usage("beta").cpu_bytes, kMiB);
}

TEST(AddedArenaTest, RefusedAdditionsLeaveTheStoreAsItWas) {
  auto store = OpenOrDie(WithReserve(3 * kMiB));
  ASSERT_NE(store, nullptr);
  EXPECT_THAT(store->AddTenantArena({"alpha", kMiB}), StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(store->AddTenantArena({"", kMiB}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store->AddTenantArena({"beta", 100}), StatusIs(absl::StatusCode::kInvalidArgument));
  // More than the reserve: ResourceExhausted, nothing mapped, beta still in the shared arena.
  EXPECT_THAT(store->AddTenantArena({"beta", 4 * kMiB}),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(store->arena_bytes(), 2 * kMiB);
  EXPECT_EQ(store->arena_segment("beta").index, 0u);
  TestObject b = MakeObject("beta", 1, 100'000);
  ASSERT_OK(Put(*store, b));
  EXPECT_TRUE(ReadsBack(*store, b));
  // What fits still goes in, until the reserve is used up.
  ASSERT_OK(store->AddTenantArena({"beta", 2 * kMiB}).status());
  EXPECT_THAT(store->AddTenantArena({"beta", kMiB}), StatusIs(absl::StatusCode::kAlreadyExists));
  ASSERT_OK(store->AddTenantArena({"delta", kMiB}).status());
  EXPECT_THAT(store->AddTenantArena({"epsilon", 4096}),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(store->arena_bytes(), store->arena_reserved_bytes());
  // Without a reserve nothing can be added.
  auto none = OpenOrDie(WithReserve(0));
  ASSERT_NE(none, nullptr);
  EXPECT_THAT(none->AddTenantArena({"beta", 4096}), StatusIs(absl::StatusCode::kResourceExhausted));
  ASSERT_OK(store->Close());
  EXPECT_THAT(store->AddTenantArena({"zeta", 4096}), StatusIs(absl::StatusCode::kUnavailable));
}

TEST(AddedArenaTest, ObjectsPutBeforeTheirNamespaceGotAnArenaStayUsableAndEvictable) {
  // gamma's first objects land in the shared arena; once gamma has an arena its new objects go
  // there, while the old ones stay in the shared arena's eviction policy (evicting from the
  // shared arena must find them, or a full shared arena could never make room).
  auto store = OpenOrDie(WithReserve(4 * kMiB));
  ASSERT_NE(store, nullptr);
  const ArenaSegment shared = store->arena_segment("");
  TestObject old_kept = MakeObject("gamma", 1, 256 * 1024);
  TestObject old_evicted = MakeObject("gamma", 2, 256 * 1024);
  ASSERT_OK(Put(*store, old_evicted));
  ASSERT_OK(Put(*store, old_kept));
  ASSERT_OK_AND_ASSIGN(ArenaSegment gamma, store->AddTenantArena({"gamma", kMiB}));
  // Leased (out of the shared arena's policy) while the shared arena fills up: eviction there
  // must not pick it (a policy that still named it would be asked for it forever).
  ASSERT_OK_AND_ASSIGN(Lease lease, store->Acquire(old_kept.name.storage_key, 0));
  EXPECT_TRUE(InSegment(shared, lease.arena_offset, old_kept.payload.size()));
  TestObject fresh = MakeObject("gamma", 3, 256 * 1024);
  ASSERT_OK(Put(*store, fresh));
  ASSERT_OK_AND_ASSIGN(Lease fresh_lease, store->Acquire(fresh.name.storage_key, 0));
  EXPECT_TRUE(InSegment(gamma, fresh_lease.arena_offset, fresh.payload.size()));
  ASSERT_OK(store->Release(fresh_lease.id));
  // Other namespaces' objects fill the shared arena: the old unleased gamma object is evicted
  // (least recently used), and every put finds room.
  for (uint64_t i = 0; i < 4; ++i) ASSERT_OK(Put(*store, MakeObject("omega", i, 256 * 1024)));
  EXPECT_FALSE(store->Lookup(old_evicted.name.storage_key).present);
  EXPECT_EQ(std::memcmp(store->arena_base() + lease.arena_offset, old_kept.payload.data(),
                        old_kept.payload.size()),
            0);
  ASSERT_OK(store->Release(lease.id));  // back into the shared arena's policy
  EXPECT_TRUE(ReadsBack(*store, fresh));
  ASSERT_OK(store->Delete(fresh.name.storage_key));
}

TEST(AddedArenaTest, ArenasAddedWhileOthersPutAndReadAreUsableAtOnce) {
  // Two threads put, read back and release objects of alpha and of the shared arena in a loop
  // (bounded) while arenas are added one after another; each added tenant puts and reads in its
  // arena right after the call. Every read sees its own bytes.
  auto store = OpenOrDie(WithReserve(16 * kMiB));
  ASSERT_NE(store, nullptr);
  constexpr int kAdded = 12;
  constexpr uint64_t kRounds = 400;
  std::atomic<bool> adding_done{false};
  std::atomic<int> bad_reads{0};
  std::atomic<int> failed_puts{0};
  auto worker = [&](const std::string& name_space) {
    for (uint64_t i = 0; i < kRounds || !adding_done.load(); ++i) {
      if (i >= 4 * kRounds) break;  // bounded whatever the adder does
      TestObject o = MakeObject(name_space, i % 16, 64 * 1024 + (i % 7) * 4096);
      if (!Put(*store, o, false, /*overwrite=*/true).ok()) {
        failed_puts.fetch_add(1);
        continue;
      }
      if (!ReadsBack(*store, o)) bad_reads.fetch_add(1);
    }
  };
  std::thread alpha([&] { worker("alpha"); });
  std::thread shared([&] { worker("anyone"); });
  std::vector<ArenaSegment> added;
  for (int t = 0; t < kAdded; ++t) {
    const std::string name_space = absl::StrCat("tenant", t);
    Result<ArenaSegment> seg = store->AddTenantArena({name_space, kMiB});
    ASSERT_OK(seg);
    added.push_back(*seg);
    TestObject o = MakeObject(name_space, 1, 200'000);
    ASSERT_OK(Put(*store, o));
    ASSERT_OK_AND_ASSIGN(Lease lease, store->Acquire(o.name.storage_key, 0));
    EXPECT_TRUE(InSegment(*seg, lease.arena_offset, o.payload.size()));
    EXPECT_EQ(
        std::memcmp(store->arena_base() + lease.arena_offset, o.payload.data(), o.payload.size()),
        0);
    ASSERT_OK(store->Release(lease.id));
  }
  adding_done = true;
  alpha.join();
  shared.join();
  EXPECT_EQ(bad_reads.load(), 0);
  EXPECT_EQ(failed_puts.load(), 0);
  EXPECT_EQ(store->arena_bytes(), (2 + kAdded) * kMiB);
  // Each added arena is its own range, in order, after the ones before it.
  for (int t = 0; t < kAdded; ++t) {
    EXPECT_EQ(added[t].index, static_cast<uint32_t>(2 + t));
    EXPECT_EQ(added[t].offset, (2 + static_cast<uint64_t>(t)) * kMiB);
    EXPECT_TRUE(ReadsBack(*store, MakeObject(absl::StrCat("tenant", t), 1, 200'000)));
  }
}

}  // namespace
}  // namespace kvstash::storage
