// The SSD tier with the service's CacheGen TierCodec, in process: the real TieredStore and the
// real codec. Raw KV is encoded on its way to SSD and decoded on promotion (after a reopen and
// after a demotion), within the quantisation bound and with a crc32c that matches the reported
// ObjectInfo; non-KV content is stored verbatim; a corrupt encoded file is a miss plus a counter;
// a store configured `raw` still reads what a `cachegen` run wrote.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "cachegen_tier_codec.h"
#include "kv_bound.h"
#include "kvstash/codec/cachegen.h"
#include "kvstash/codec/kvq.h"
#include "kvstash/codec/synthetic_kv.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/storage/object_store.h"
#include "service_process.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::cachesvc {
namespace {

using storage::ObjectStore;
using storage::StoredName;
using storage::Tier;

struct Object {
  StoredName name;
  ObjectInfo info;
  std::vector<uint8_t> payload;
};

StoredName NameFor(uint64_t id) {
  StoredName n;
  n.name_space = "tier-codec";
  n.model_fingerprint = Hash128{0x736d6f6cull, 2};
  n.token_hash = Hash128{id * 0x9E3779B97F4A7C15ull + 3, id};
  n.storage_key = ObjectKey(n.name_space, n.model_fingerprint, n.token_hash);
  return n;
}

// A SmolLM2-135M-shaped chunk (30 layers x 3 KV heads x 64 dims, f16) of `tokens` tokens.
Object KvObject(uint64_t id, uint32_t tokens = 64) {
  Object o;
  o.name = NameFor(id);
  KvLayout& l = o.info.layout;
  l.num_layers = 30;
  l.total_kv_heads = 3;
  l.head_begin = 0;
  l.head_end = 3;
  l.head_dim = 64;
  l.dtype = DType::kF16;
  l.num_tokens = tokens;
  l.rope = RopeConvention::kNeox;
  l.rope_theta = 100000.0f;
  o.info.encoding = Encoding::kRaw;
  o.info.payload_bytes = l.RawBytes();
  codec::SyntheticKvOptions so;
  so.seed = id + 11;
  o.payload = codec::SyntheticKv(l, so);
  o.info.payload_crc32c = Crc32c(o.payload.data(), o.payload.size());
  return o;
}

Status Put(ObjectStore& store, const Object& o) {
  auto r = store.Reserve(o.name, o.info, 0, /*overwrite=*/false);
  if (!r.ok()) return r.status();
  std::memcpy(store.arena_base() + r->arena_offset, o.payload.data(), o.payload.size());
  return store.Commit(r->id, o.info.payload_crc32c, /*durable=*/true);
}

struct Read {
  storage::Lease lease;
  std::vector<uint8_t> bytes;
};

Result<Read> Get(ObjectStore& store, const Object& o) {
  auto lease = store.Acquire(o.name.storage_key, 0);
  if (!lease.ok()) return lease.status();
  Read out{*lease, {}};
  const uint8_t* p = store.arena_base() + lease->arena_offset;
  out.bytes.assign(p, p + lease->info.payload_bytes);
  KVSTASH_RETURN_IF_ERROR(store.Release(lease->id));
  return out;
}

storage::StoreOptions Options(const std::string& dir, storage::TierCodec* codec,
                              uint64_t cpu_bytes = 64ull << 20) {
  storage::StoreOptions o;
  o.data_dir = dir;
  o.cpu_capacity_bytes = cpu_bytes;
  o.ssd_capacity_bytes = 256ull << 20;
  o.ssd_codec = codec;
  return o;
}

TierEncoding CacheGenLevel(int level) { return TierEncoding{Encoding::kCacheGen, level}; }

uint64_t SsdStat(ObjectStore& store, uint64_t storage::TierStats::*field) {
  for (const auto& t : store.Stats().tiers)
    if (t.tier == Tier::kSsd) return t.*field;
  return 0;
}

TEST(CacheGenSsdTier, RawKvIsEncodedOnSsdAndDecodedOnPromotionAfterReopen) {
  testing::TempDir dir;
  CacheGenTierCodec codec(CacheGenLevel(2));
  std::vector<Object> objects = {KvObject(1), KvObject(2, 256)};
  {
    auto store = ObjectStore::Open(Options(dir.path(), &codec));
    ASSERT_OK(store);
    for (const Object& o : objects) ASSERT_OK(Put(**store, o));
    // While the exact copy is in the arena, readers get it.
    auto read = Get(**store, objects[0]);
    ASSERT_OK(read);
    EXPECT_EQ(read->lease.served_from, Tier::kCpu);
    EXPECT_FALSE(read->lease.info.lossy);
    EXPECT_EQ(read->bytes, objects[0].payload);
    // The SSD holds far fewer bytes than the objects.
    uint64_t raw = objects[0].payload.size() + objects[1].payload.size();
    EXPECT_EQ(SsdStat(**store, &storage::TierStats::logical_bytes), raw);
    EXPECT_LT(SsdStat(**store, &storage::TierStats::used_bytes), raw / 2);
  }
  auto store = ObjectStore::Open(Options(dir.path(), &codec));
  ASSERT_OK(store);
  for (const Object& o : objects) {
    storage::LookupEntry entry = (*store)->Lookup(o.name.storage_key);
    ASSERT_TRUE(entry.present);
    EXPECT_EQ(entry.tier, Tier::kSsd);
    EXPECT_TRUE(entry.info.lossy);
    EXPECT_EQ(entry.info.encoding, Encoding::kRaw);
    EXPECT_EQ(entry.info.payload_bytes, o.payload.size());

    auto read = Get(**store, o);
    ASSERT_OK(read);
    EXPECT_EQ(read->lease.served_from, Tier::kSsd);
    EXPECT_TRUE(read->lease.info.lossy);
    EXPECT_EQ(read->lease.info.layout, o.info.layout);
    EXPECT_EQ(Crc32c(read->bytes.data(), read->bytes.size()), read->lease.info.payload_crc32c);
    EXPECT_NE(read->lease.info.payload_crc32c, o.info.payload_crc32c);
    testing::ExpectWithinQuantisationBound(o.info.layout, o.payload, read->bytes, 2);
    // Exactly what the codec decodes to.
    codec::EncodeOptions eo;
    eo.level = 2;
    auto container = codec::EncodeCacheGen(o.info.layout, o.payload, eo);
    ASSERT_OK(container);
    auto decoded = codec::DecodeCacheGen(*container);
    ASSERT_OK(decoded);
    EXPECT_EQ(read->bytes, *decoded);
    // The arena copy is now the decoded one: a second read is a CPU hit with the same info.
    auto again = Get(**store, o);
    ASSERT_OK(again);
    EXPECT_EQ(again->lease.served_from, Tier::kCpu);
    EXPECT_EQ(again->lease.info, read->lease.info);
    EXPECT_EQ(again->bytes, read->bytes);
  }
  EXPECT_EQ((*store)->Stats().checksum_failures, 0u);
}

TEST(KvqSsdTier, RawKvIsStoredAsKvqAndPromotedToExactlyWhatKvqDecodes) {
  testing::TempDir dir;
  TierEncoding kvq = CacheGenLevel(3);
  kvq.kvq = true;
  CacheGenTierCodec codec(kvq);
  EXPECT_EQ(codec.name(), "kvq-l3");
  const Object o = KvObject(7, 256);
  {
    auto store = ObjectStore::Open(Options(dir.path(), &codec));
    ASSERT_OK(store);
    ASSERT_OK(Put(**store, o));
    EXPECT_LT(SsdStat(**store, &storage::TierStats::used_bytes), o.payload.size() / 2);
  }
  auto store = ObjectStore::Open(Options(dir.path(), &codec));
  ASSERT_OK(store);
  auto read = Get(**store, o);
  ASSERT_OK(read);
  EXPECT_EQ(read->lease.served_from, Tier::kSsd);
  EXPECT_TRUE(read->lease.info.lossy);
  EXPECT_EQ(Crc32c(read->bytes.data(), read->bytes.size()), read->lease.info.payload_crc32c);
  codec::KvqOptions ko;
  ko.level = 3;
  auto container = codec::EncodeKvq(o.info.layout, o.payload, ko);
  ASSERT_OK(container);
  auto decoded = codec::DecodeKvq(*container);
  ASSERT_OK(decoded);
  EXPECT_EQ(read->bytes, *decoded);
  EXPECT_EQ((*store)->Stats().checksum_failures, 0u);
}

TEST(CacheGenSsdTier, DemotionReplacesTheExactCopyWithTheDecodedOne) {
  testing::TempDir dir;
  CacheGenTierCodec codec(CacheGenLevel(1));
  // An 8 MiB arena holds two 2.9 MB chunks at most: writing six demotes the oldest.
  auto store = ObjectStore::Open(Options(dir.path(), &codec, 8ull << 20));
  ASSERT_OK(store);
  std::vector<Object> objects;
  for (uint64_t i = 0; i < 6; ++i) {
    objects.push_back(KvObject(100 + i, 256));
    ASSERT_OK(Put(**store, objects.back()));
  }
  ASSERT_EQ((*store)->Lookup(objects[0].name.storage_key).tier, Tier::kSsd);
  auto read = Get(**store, objects[0]);
  ASSERT_OK(read);
  EXPECT_EQ(read->lease.served_from, Tier::kSsd);
  EXPECT_TRUE(read->lease.info.lossy);
  EXPECT_EQ(Crc32c(read->bytes.data(), read->bytes.size()), read->lease.info.payload_crc32c);
  testing::ExpectWithinQuantisationBound(objects[0].info.layout, objects[0].payload, read->bytes,
                                         1);
}

TEST(CacheGenSsdTier, NonKvContentIsStoredVerbatim) {
  testing::TempDir dir;
  CacheGenTierCodec codec(CacheGenLevel(2));
  // Random bytes read as f16 hold NaN and Inf: the codec does not take them.
  Object noise = KvObject(7);
  for (size_t i = 0; i < noise.payload.size(); ++i) noise.payload[i] = static_cast<uint8_t>(i * 7);
  noise.payload[1] = 0x7c;  // +Inf at element 0
  noise.info.payload_crc32c = Crc32c(noise.payload.data(), noise.payload.size());
  // Finite KV-like values, but a `kvstash put --wrap` file: opaque bytes that must come back.
  Object wrapped = KvObject(8);
  const char trailer[16] = {'K', 'V', 'S', 'C', 'L', 'I', 'F', '1', 16, 0, 0, 0, 0, 0, 0, 0};
  std::memcpy(wrapped.payload.data() + wrapped.payload.size() - 16, trailer, 16);
  wrapped.info.payload_crc32c = Crc32c(wrapped.payload.data(), wrapped.payload.size());
  {
    auto store = ObjectStore::Open(Options(dir.path(), &codec));
    ASSERT_OK(store);
    ASSERT_OK(Put(**store, noise));
    ASSERT_OK(Put(**store, wrapped));
  }
  auto store = ObjectStore::Open(Options(dir.path(), &codec));
  ASSERT_OK(store);
  for (const Object* o : {&noise, &wrapped}) {
    auto read = Get(**store, *o);
    ASSERT_OK(read);
    EXPECT_EQ(read->lease.served_from, Tier::kSsd);
    EXPECT_FALSE(read->lease.info.lossy);
    EXPECT_EQ(read->lease.info, o->info);
    EXPECT_EQ(read->bytes, o->payload);
  }
  EXPECT_EQ(SsdStat(**store, &storage::TierStats::logical_bytes),
            noise.payload.size() + wrapped.payload.size());
}

TEST(CacheGenSsdTier, CorruptEncodedFileIsAMissAndCounted) {
  testing::TempDir dir;
  CacheGenTierCodec codec(CacheGenLevel(2));
  Object o = KvObject(9);
  {
    auto store = ObjectStore::Open(Options(dir.path(), &codec));
    ASSERT_OK(store);
    ASSERT_OK(Put(**store, o));
  }
  // Flip one byte in the middle of the encoded payload (files: 4 KiB header block, then payload).
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path() + "/ssd/objects")) {
    if (entry.path().extension() != ".kvo" || entry.file_size() <= 4096) continue;
    ++files;
    std::fstream f(entry.path(), std::ios::in | std::ios::out | std::ios::binary);
    const std::streamoff at = 4096 + static_cast<std::streamoff>(entry.file_size() - 4096) / 2;
    f.seekg(at);
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x40);
    f.seekp(at);
    f.write(&c, 1);
  }
  ASSERT_EQ(files, 1);
  auto store = ObjectStore::Open(Options(dir.path(), &codec));
  ASSERT_OK(store);
  auto read = Get(**store, o);
  EXPECT_THAT(read.status(), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ((*store)->Stats().checksum_failures, 1u);
  EXPECT_FALSE((*store)->Lookup(o.name.storage_key).present);
}

TEST(CacheGenSsdTier, RawConfiguredStoreStillReadsEncodedCopies) {
  testing::TempDir dir;
  CacheGenTierCodec cachegen(CacheGenLevel(3));
  Object o = KvObject(10);
  {
    auto store = ObjectStore::Open(Options(dir.path(), &cachegen));
    ASSERT_OK(store);
    ASSERT_OK(Put(**store, o));
  }
  CacheGenTierCodec raw(TierEncoding{});
  auto store = ObjectStore::Open(Options(dir.path(), &raw));
  ASSERT_OK(store);
  auto read = Get(**store, o);
  ASSERT_OK(read);
  EXPECT_TRUE(read->lease.info.lossy);
  EXPECT_EQ(Crc32c(read->bytes.data(), read->bytes.size()), read->lease.info.payload_crc32c);
  testing::ExpectWithinQuantisationBound(o.info.layout, o.payload, read->bytes, 3);
  // A new object under `raw` is stored exactly.
  Object exact = KvObject(11);
  ASSERT_OK(Put(**store, exact));
  EXPECT_EQ(raw.name(), "raw");
  auto encoded = raw.EncodeForTier(exact.info, exact.payload);
  ASSERT_OK(encoded);
  EXPECT_FALSE(encoded->has_value());
}

}  // namespace
}  // namespace kvstash::cachesvc
