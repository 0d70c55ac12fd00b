#include "kvstash/storage/eviction_policy.h"

#include <gtest/gtest.h>

#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::storage {
namespace {

EvictionMeta Meta(uint64_t id, uint64_t t) {
  EvictionMeta m;
  m.key = Hash128{id, 0};
  m.bytes = 4096;
  m.last_access_ns = t;
  return m;
}

TEST(LruPolicyTest, EvictsLeastRecentlyUsedFirst) {
  auto lru = NewLruPolicy();
  EXPECT_FALSE(lru->Victim().has_value());
  lru->OnInsert(Meta(1, 10));
  lru->OnInsert(Meta(2, 20));
  lru->OnInsert(Meta(3, 30));
  EXPECT_EQ(lru->Victim()->lo, 1u);
  lru->OnAccess(Meta(1, 40));  // 1 becomes the most recent
  EXPECT_EQ(lru->Victim()->lo, 2u);
  lru->OnRemove(Hash128{2, 0});
  EXPECT_EQ(lru->Victim()->lo, 3u);
  EXPECT_EQ(lru->size(), 2u);
}

TEST(LruPolicyTest, ReinsertKeepsTrueAge) {
  auto lru = NewLruPolicy();
  lru->OnInsert(Meta(1, 100));
  lru->OnInsert(Meta(2, 200));
  lru->OnRemove(Hash128{1, 0});  // e.g. leased
  lru->OnInsert(Meta(1, 100));   // lease ended; it was still last touched at t=100
  EXPECT_EQ(lru->Victim()->lo, 1u);
}

TEST(LruPolicyTest, UnknownKeysAreIgnored) {
  auto lru = NewLruPolicy();
  lru->OnAccess(Meta(9, 1));
  lru->OnRemove(Hash128{9, 0});
  EXPECT_EQ(lru->size(), 0u);
  lru->OnInsert(Meta(1, 5));
  lru->OnInsert(Meta(1, 6));  // re-insert updates, never duplicates
  EXPECT_EQ(lru->size(), 1u);
  lru->OnRemove(Hash128{1, 0});
  EXPECT_FALSE(lru->Victim().has_value());
}

TEST(EvictionPolicyFactoryTest, KnowsLruOnly) {
  auto lru = MakeEvictionPolicy("lru");
  ASSERT_OK(lru);
  EXPECT_EQ((*lru)->name(), "lru");
  EXPECT_THAT(MakeEvictionPolicy("nope"), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvstash::storage
