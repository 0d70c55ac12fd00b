// The store's side of per-tier encoding (StoreOptions::ssd_codec), with a small lossy codec
// defined here that keeps the high byte of every 16-bit word: what the store does with whatever
// a TierCodec returns (encoded, refused, failed, or a decode that breaks its promise). CacheGen
// itself, through the service's codec, is tested in tests/cachesvc/tier_codec_test.cc.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>

#include "kvstash/common/crc32c.h"
#include "kvstash/storage/object_store.h"
#include "kvstash/storage/tier_codec.h"
#include "store_test_util.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::storage {
namespace {

using testing::TempDir;
using testing::TestObject;

// Raw f16 objects only: keeps the high byte of each element (a 2x lossy "codec"). Its
// encoded form is tagged as CacheGen level 1 because that is the only non-raw encoding there is.
class HighByteCodec : public TierCodec {
 public:
  enum class Mode { kEncode, kRefuse, kFail, kBreakDecode };
  explicit HighByteCodec(Mode mode = Mode::kEncode) : mode_(mode) {}

  std::string name() const override { return "high-byte"; }

  Result<std::optional<Encoded>> EncodeForTier(const ObjectInfo& info,
                                               std::span<const uint8_t> payload) override {
    if (mode_ == Mode::kRefuse || info.encoding != Encoding::kRaw) return std::optional<Encoded>();
    if (mode_ == Mode::kFail) return absl::InternalError("encoder failed");
    Encoded e;
    e.bytes.resize(payload.size() / 2);
    std::vector<uint8_t> decoded(payload.size(), 0);
    for (size_t i = 0; i < e.bytes.size(); ++i) {
      e.bytes[i] = payload[2 * i + 1];
      decoded[2 * i + 1] = payload[2 * i + 1];
    }
    e.stored_info = info;
    e.stored_info.encoding = Encoding::kCacheGen;
    e.stored_info.encoding_level = 1;
    e.stored_info.payload_bytes = e.bytes.size();
    e.stored_info.payload_crc32c = Crc32c(e.bytes.data(), e.bytes.size());
    e.decoded_info = info;
    e.decoded_info.payload_crc32c = Crc32c(decoded.data(), decoded.size());
    e.decoded_info.lossy = true;
    return std::optional<Encoded>(std::move(e));
  }

  Status Decode(const ObjectInfo&, std::span<const uint8_t> stored,
                std::span<uint8_t> out) override {
    ++decodes;
    if (out.size() != stored.size() * 2) return absl::InvalidArgumentError("size");
    for (size_t i = 0; i < stored.size(); ++i) {
      out[2 * i] = 0;
      out[2 * i + 1] = stored[i];
    }
    if (mode_ == Mode::kBreakDecode) out[0] ^= 1;
    return OkStatus();
  }

  std::atomic<int> decodes{0};

 private:
  Mode mode_;
};

// A raw f16 object (the shared helper makes CacheGen-tagged ones of any size).
TestObject RawObject(uint64_t id) {
  TestObject o = testing::MakeObject("tier", id, 1);
  o.info.encoding = Encoding::kRaw;
  o.info.encoding_level = 0;
  o.info.payload_bytes = o.info.layout.RawBytes();
  TestObject bytes = testing::MakeObject("tier", id, o.info.payload_bytes);
  o.payload = bytes.payload;
  o.info.payload_crc32c = Crc32c(o.payload.data(), o.payload.size());
  return o;
}

StoreOptions WithCodec(const std::string& dir, TierCodec* codec) {
  StoreOptions o;
  o.data_dir = dir;
  o.cpu_capacity_bytes = 16ull << 20;
  o.ssd_capacity_bytes = 64ull << 20;
  o.ssd_codec = codec;
  return o;
}

TierStats SsdStats(ObjectStore& store) {
  for (const TierStats& t : store.Stats().tiers)
    if (t.tier == Tier::kSsd) return t;
  return {};
}

TEST(StoreTierCodec, EncodedCopyIsServedDecodedWithItsOwnInfoAfterReopen) {
  TempDir dir;
  HighByteCodec codec;
  TestObject o = RawObject(1);
  {
    auto store = ObjectStore::Open(WithCodec(dir.path(), &codec));
    ASSERT_OK(store);
    ASSERT_OK(testing::Put(**store, o, /*durable=*/true));
    EXPECT_TRUE(testing::ReadsBack(**store, o));  // the exact copy while it is in the arena
    EXPECT_FALSE((*store)->Lookup(o.name.storage_key).info.lossy);
    TierStats ssd = SsdStats(**store);
    EXPECT_EQ(ssd.logical_bytes, o.payload.size());
    EXPECT_EQ(ssd.used_bytes, 4096 + o.payload.size() / 2);  // header block + half the payload
    EXPECT_EQ(ssd.bytes_written, o.payload.size() / 2);
  }
  auto store = ObjectStore::Open(WithCodec(dir.path(), &codec));
  ASSERT_OK(store);
  LookupEntry entry = (*store)->Lookup(o.name.storage_key);
  ASSERT_TRUE(entry.present);
  EXPECT_TRUE(entry.info.lossy);
  EXPECT_EQ(entry.info.encoding, Encoding::kRaw);
  EXPECT_EQ(entry.info.payload_bytes, o.payload.size());
  auto lease = (*store)->Acquire(o.name.storage_key, 0);
  ASSERT_OK(lease);
  EXPECT_EQ(lease->served_from, Tier::kSsd);
  EXPECT_EQ(lease->info, entry.info);
  const uint8_t* got = (*store)->arena_base() + lease->arena_offset;
  EXPECT_EQ(Crc32c(got, lease->info.payload_bytes), lease->info.payload_crc32c);
  for (size_t i = 0; i < o.payload.size(); i += 2) {
    ASSERT_EQ(got[i], 0) << i;
    ASSERT_EQ(got[i + 1], o.payload[i + 1]) << i;
  }
  ASSERT_OK((*store)->Release(lease->id));
  EXPECT_EQ(codec.decodes.load(), 1);
  // The arena now holds the decoded copy: no second decode.
  auto again = (*store)->Acquire(o.name.storage_key, 0);
  ASSERT_OK(again);
  EXPECT_EQ(again->served_from, Tier::kCpu);
  EXPECT_TRUE(again->info.lossy);
  ASSERT_OK((*store)->Release(again->id));
  EXPECT_EQ(codec.decodes.load(), 1);
}

TEST(StoreTierCodec, RefusedOrFailedEncodingsAreStoredVerbatim) {
  for (auto mode : {HighByteCodec::Mode::kRefuse, HighByteCodec::Mode::kFail}) {
    TempDir dir;
    HighByteCodec codec(mode);
    TestObject raw = RawObject(2);
    TestObject encoded = testing::MakeObject("tier", 3, 5000);  // a client's CacheGen object
    {
      auto store = ObjectStore::Open(WithCodec(dir.path(), &codec));
      ASSERT_OK(store);
      ASSERT_OK(testing::Put(**store, raw, true));
      ASSERT_OK(testing::Put(**store, encoded, true));
    }
    auto store = ObjectStore::Open(WithCodec(dir.path(), &codec));
    ASSERT_OK(store);
    for (const TestObject* o : {&raw, &encoded}) {
      Tier from;
      EXPECT_TRUE(testing::ReadsBack(**store, *o, &from));
      EXPECT_EQ(from, Tier::kSsd);
      EXPECT_EQ((*store)->Lookup(o->name.storage_key).info, o->info);
    }
    EXPECT_EQ(codec.decodes.load(), 0);
  }
}

TEST(StoreTierCodec, DecodeThatMissesTheRecordedCrcIsAMissNeverBytes) {
  TempDir dir;
  HighByteCodec writer;
  TestObject o = RawObject(4);
  {
    auto store = ObjectStore::Open(WithCodec(dir.path(), &writer));
    ASSERT_OK(store);
    ASSERT_OK(testing::Put(**store, o, true));
  }
  HighByteCodec broken(HighByteCodec::Mode::kBreakDecode);
  auto store = ObjectStore::Open(WithCodec(dir.path(), &broken));
  ASSERT_OK(store);
  auto lease = (*store)->Acquire(o.name.storage_key, 0);
  EXPECT_THAT(lease.status(), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ((*store)->Stats().checksum_failures, 1u);
  EXPECT_FALSE((*store)->Lookup(o.name.storage_key).present);
}

TEST(StoreTierCodec, StoreWithoutCodecTreatsEncodedCopiesAsUnreadable) {
  TempDir dir;
  HighByteCodec codec;
  TestObject o = RawObject(5);
  {
    auto store = ObjectStore::Open(WithCodec(dir.path(), &codec));
    ASSERT_OK(store);
    ASSERT_OK(testing::Put(**store, o, true));
  }
  auto store = ObjectStore::Open(WithCodec(dir.path(), nullptr));
  ASSERT_OK(store);
  EXPECT_TRUE((*store)->Lookup(o.name.storage_key).info.lossy);
  auto lease = (*store)->Acquire(o.name.storage_key, 0);
  EXPECT_THAT(lease.status(), StatusIs(absl::StatusCode::kNotFound));
}

}  // namespace
}  // namespace kvstash::storage
