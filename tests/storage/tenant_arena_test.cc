// Per-tenant arenas (StoreOptions::tenant_arenas): each tenant's objects live in a memfd of their
// own, allocated and evicted apart from every other namespace's, and each arena has a read-only
// descriptor whose mappings can never be written.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <string>
#include <thread>

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

StoreOptions TwoTenants(uint64_t shared, uint64_t alpha, uint64_t beta) {
  StoreOptions o = CpuOnlyOptions(shared);
  o.tenant_arenas = {{"alpha", alpha}, {"beta", beta}};
  return o;
}

bool InSegment(const ArenaSegment& seg, uint64_t offset, uint64_t bytes) {
  return offset >= seg.offset && offset + bytes <= seg.offset + seg.bytes;
}

TEST(TenantArenaTest, EachTenantHasItsOwnMemfdAndRange) {
  auto store = OpenOrDie(TwoTenants(kMiB, 2 * kMiB, 3 * kMiB));
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->arena_bytes(), 6 * kMiB);
  ArenaSegment shared = store->arena_segment("anyone-else");
  ArenaSegment alpha = store->arena_segment("alpha");
  ArenaSegment beta = store->arena_segment("beta");
  EXPECT_EQ(shared.index, 0u);
  EXPECT_EQ(shared.name_space, "");
  EXPECT_EQ(shared.fd, store->arena_fd());
  EXPECT_EQ(alpha.index, 1u);
  EXPECT_EQ(alpha.name_space, "alpha");
  EXPECT_EQ(alpha.offset, kMiB);
  EXPECT_EQ(alpha.bytes, 2 * kMiB);
  EXPECT_EQ(beta.index, 2u);
  EXPECT_EQ(beta.offset, 3 * kMiB);
  EXPECT_EQ(beta.bytes, 3 * kMiB);
  // Different files, not views of one: a client holding alpha's fds reaches nothing else.
  struct stat sa, sb, ss, sro;
  ASSERT_EQ(fstat(alpha.fd, &sa), 0);
  ASSERT_EQ(fstat(beta.fd, &sb), 0);
  ASSERT_EQ(fstat(shared.fd, &ss), 0);
  ASSERT_EQ(fstat(alpha.read_only_fd, &sro), 0);
  EXPECT_NE(sa.st_ino, sb.st_ino);
  EXPECT_NE(sa.st_ino, ss.st_ino);
  EXPECT_EQ(sa.st_ino, sro.st_ino);  // the read-only fd is alpha's own memory
  EXPECT_EQ(static_cast<uint64_t>(sa.st_size), alpha.bytes);

  TestObject a = MakeObject("alpha", 1, 100'000);
  TestObject b = MakeObject("beta", 1, 100'000);
  TestObject s = MakeObject("gamma", 1, 100'000);
  ASSERT_OK_AND_ASSIGN(Reservation ra, store->Reserve(a.name, a.info, 0, false));
  ASSERT_OK_AND_ASSIGN(Reservation rb, store->Reserve(b.name, b.info, 0, false));
  ASSERT_OK_AND_ASSIGN(Reservation rs, store->Reserve(s.name, s.info, 0, false));
  EXPECT_TRUE(InSegment(alpha, ra.arena_offset, a.info.payload_bytes));
  EXPECT_TRUE(InSegment(beta, rb.arena_offset, b.info.payload_bytes));
  EXPECT_TRUE(InSegment(shared, rs.arena_offset, s.info.payload_bytes));
  ASSERT_OK(store->Abort(ra.id));
  ASSERT_OK(store->Abort(rb.id));
  ASSERT_OK(store->Abort(rs.id));
}

TEST(TenantArenaTest, ATenantsBytesAreVisibleThroughItsOwnFdAtItsOffset) {
  auto store = OpenOrDie(TwoTenants(kMiB, kMiB, kMiB));
  ASSERT_NE(store, nullptr);
  TestObject a = MakeObject("alpha", 7, 50'000);
  ASSERT_OK(Put(*store, a));
  ArenaSegment alpha = store->arena_segment("alpha");
  ASSERT_OK_AND_ASSIGN(Lease lease, store->Acquire(a.name.storage_key, 0));
  void* m = mmap(nullptr, alpha.bytes, PROT_READ, MAP_SHARED, alpha.read_only_fd, 0);
  ASSERT_NE(m, MAP_FAILED);
  const uint8_t* view = static_cast<const uint8_t*>(m) + (lease.arena_offset - alpha.offset);
  EXPECT_EQ(std::memcmp(view, a.payload.data(), a.payload.size()), 0);
  munmap(m, alpha.bytes);
  ASSERT_OK(store->Release(lease.id));
}

TEST(TenantArenaTest, ReadOnlyFdCannotBeMappedWritableNorMadeWritable) {
  auto store = OpenOrDie(TwoTenants(kMiB, kMiB, kMiB));
  ASSERT_NE(store, nullptr);
  ArenaSegment alpha = store->arena_segment("alpha");
  errno = 0;
  EXPECT_EQ(mmap(nullptr, alpha.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, alpha.read_only_fd, 0),
            MAP_FAILED);
  EXPECT_EQ(errno, EACCES);
  void* m = mmap(nullptr, alpha.bytes, PROT_READ, MAP_SHARED, alpha.read_only_fd, 0);
  ASSERT_NE(m, MAP_FAILED);
  errno = 0;
  EXPECT_EQ(mprotect(m, alpha.bytes, PROT_READ | PROT_WRITE), -1);
  EXPECT_EQ(errno, EACCES);
  // A store through the read-only mapping faults: in a child, so the test survives it.
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    alarm(10);  // bounded even if the write were to succeed and something then hung
    // The default action, so the fault kills the child with SIGSEGV also under ASan, whose own
    // handler would report it and abort instead.
    signal(SIGSEGV, SIG_DFL);
    static_cast<volatile uint8_t*>(m)[123] = 1;
    _exit(0);  // reached only if the write went through
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the write through a read-only mapping succeeded";
  EXPECT_EQ(WTERMSIG(status), SIGSEGV);
  munmap(m, alpha.bytes);
  // Neither fd can resize the memory under the service (sealed): EPERM, not SIGBUS later.
  errno = 0;
  EXPECT_EQ(ftruncate(alpha.fd, 4096), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(ftruncate(alpha.read_only_fd, 4096), -1);
  // Reopening the read-only fd read-write through /proc is refused by the file mode (0400),
  // except for a process with CAP_DAC_OVERRIDE (root), which can do anything to the service.
  if (geteuid() != 0) {
    std::string self = "/proc/self/fd/" + std::to_string(alpha.read_only_fd);
    errno = 0;
    EXPECT_EQ(open(self.c_str(), O_RDWR), -1);
    EXPECT_EQ(errno, EACCES);
  }
}

TEST(TenantArenaTest, ATenantsPutsEvictOnlyItsOwnObjects) {
  // Six 256 KiB objects of alpha through a 1 MiB arena: alpha evicts its own oldest, and
  // beta's and the shared arena's objects stay.
  auto store = OpenOrDie(TwoTenants(kMiB, kMiB, kMiB));
  ASSERT_NE(store, nullptr);
  TestObject b = MakeObject("beta", 1, 256 * 1024);
  TestObject s = MakeObject("gamma", 1, 256 * 1024);
  ASSERT_OK(Put(*store, b));
  ASSERT_OK(Put(*store, s));
  for (uint64_t i = 0; i < 6; ++i) ASSERT_OK(Put(*store, MakeObject("alpha", i, 256 * 1024)));
  EXPECT_FALSE(store->Lookup(MakeObject("alpha", 0, 256 * 1024).name.storage_key).present);
  EXPECT_TRUE(store->Lookup(MakeObject("alpha", 5, 256 * 1024).name.storage_key).present);
  EXPECT_TRUE(ReadsBack(*store, b));
  EXPECT_TRUE(ReadsBack(*store, s));
  EXPECT_EQ(store->Usage("beta").cpu_bytes, 256 * 1024u);
  EXPECT_LE(store->Usage("alpha").cpu_bytes, kMiB);
}

TEST(TenantArenaTest, AFullTenantArenaIsResourceExhaustedWhileOthersStillPut) {
  auto store = OpenOrDie(TwoTenants(kMiB, kMiB, kMiB));
  ASSERT_NE(store, nullptr);
  // Pinned objects are not evictable: alpha's arena is full for good.
  for (uint64_t i = 0; i < 4; ++i) {
    TestObject a = MakeObject("alpha", i, 256 * 1024);
    ASSERT_OK(Put(*store, a));
    ASSERT_OK(store->Pin(a.name.storage_key));
  }
  TestObject more = MakeObject("alpha", 9, 4096);
  EXPECT_THAT(store->Reserve(more.name, more.info, 0, false),
              StatusIs(absl::StatusCode::kResourceExhausted));
  TestObject huge = MakeObject("beta", 9, kMiB + 4096);
  EXPECT_THAT(store->Reserve(huge.name, huge.info, 0, false),
              StatusIs(absl::StatusCode::kResourceExhausted));
  TestObject b = MakeObject("beta", 1, 512 * 1024);
  ASSERT_OK(Put(*store, b));
  EXPECT_TRUE(ReadsBack(*store, b));
  for (uint64_t i = 0; i < 4; ++i) {
    EXPECT_TRUE(store->Lookup(MakeObject("alpha", i, 256 * 1024).name.storage_key).present);
  }
}

TEST(TenantArenaTest, PromotionFromSsdLandsInTheOwnersArena) {
  testing::TempDir dir;
  StoreOptions o = TwoTenants(kMiB, kMiB, kMiB);
  o.data_dir = dir.path();
  o.ssd_capacity_bytes = 64 * kMiB;
  TestObject a = MakeObject("alpha", 3, 100'000);
  {
    auto store = OpenOrDie(o);
    ASSERT_NE(store, nullptr);
    ASSERT_OK(Put(*store, a, /*durable=*/true));
    ASSERT_OK(store->Close());
  }
  auto store = OpenOrDie(o);  // a new arena: alpha's object is on SSD only
  ASSERT_NE(store, nullptr);
  ASSERT_OK_AND_ASSIGN(Lease lease, store->Acquire(a.name.storage_key, 0));
  EXPECT_EQ(lease.served_from, Tier::kSsd);
  EXPECT_TRUE(InSegment(store->arena_segment("alpha"), lease.arena_offset, a.payload.size()));
  EXPECT_EQ(
      std::memcmp(store->arena_base() + lease.arena_offset, a.payload.data(), a.payload.size()), 0);
  ASSERT_OK(store->Release(lease.id));
}

TEST(TenantArenaTest, BadTenantArenaOptionsAreRefused) {
  StoreOptions dup = TwoTenants(kMiB, kMiB, kMiB);
  dup.tenant_arenas[1].name_space = "alpha";
  EXPECT_THAT(ObjectStore::Open(dup), StatusIs(absl::StatusCode::kInvalidArgument));
  StoreOptions unnamed = TwoTenants(kMiB, kMiB, kMiB);
  unnamed.tenant_arenas[0].name_space = "";
  EXPECT_THAT(ObjectStore::Open(unnamed), StatusIs(absl::StatusCode::kInvalidArgument));
  StoreOptions tiny = TwoTenants(kMiB, 100, kMiB);
  EXPECT_THAT(ObjectStore::Open(tiny), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvstash::storage
