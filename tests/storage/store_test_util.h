// Helpers shared by the ObjectStore tests: deterministic objects, put/get through the two-phase
// protocol, temporary directories.
#ifndef KVSTASH_TESTS_STORAGE_STORE_TEST_UTIL_H_
#define KVSTASH_TESTS_STORAGE_STORE_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kvstash/common/crc32c.h"
#include "kvstash/storage/object_store.h"
#include "testing/status_matchers.h"

namespace kvstash::storage::testing {

struct TestObject {
  StoredName name;
  ObjectInfo info;
  std::vector<uint8_t> payload;
};

// An object of exactly `bytes` payload bytes (CacheGen-encoded, so any size is valid) whose
// content and key are a function of (name_space, id).
inline TestObject MakeObject(const std::string& name_space, uint64_t id, uint64_t bytes) {
  TestObject o;
  o.name.name_space = name_space;
  o.name.model_fingerprint = Hash128{0x6d6f64656cull, 7};
  o.name.token_hash = Hash128{id * 0x9E3779B97F4A7C15ull + 1, id};
  o.name.storage_key = ObjectKey(name_space, o.name.model_fingerprint, o.name.token_hash);
  KvLayout& l = o.info.layout;
  l.num_layers = 2;
  l.total_kv_heads = 4;
  l.head_begin = 0;
  l.head_end = 4;
  l.head_dim = 64;
  l.dtype = DType::kF16;
  l.num_tokens = 256;
  o.info.encoding = Encoding::kCacheGen;
  o.info.encoding_level = 1;
  o.info.payload_bytes = bytes;
  o.payload.resize(bytes);
  uint64_t x = id * 0x2545F4914F6CDD1Dull + 0x1234567;
  for (uint64_t i = 0; i < bytes; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    o.payload[i] = static_cast<uint8_t>(x);
  }
  o.info.payload_crc32c = Crc32c(o.payload.data(), o.payload.size());
  return o;
}

inline std::unique_ptr<ObjectStore> OpenOrDie(const StoreOptions& options) {
  auto store = ObjectStore::Open(options);
  EXPECT_OK(store);
  return store.ok() ? std::move(*store) : nullptr;
}

// Waits (bounded) for a background thread to reach a state; returns whether it did.
template <typename Pred>
bool Eventually(Pred pred) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return pred();
}

// Reserve, copy into the arena, Commit.
inline Status Put(ObjectStore& store, const TestObject& o, bool durable = false,
                  bool overwrite = false) {
  Result<Reservation> r = store.Reserve(o.name, o.info, 0, overwrite);
  if (!r.ok()) return r.status();
  std::memcpy(store.arena_base() + r->arena_offset, o.payload.data(), o.payload.size());
  return store.Commit(r->id, o.info.payload_crc32c, durable);
}

// Acquire, compare with the expected bytes, Release.
inline ::testing::AssertionResult ReadsBack(ObjectStore& store, const TestObject& o,
                                            Tier* served_from = nullptr) {
  Result<Lease> lease = store.Acquire(o.name.storage_key, 0);
  if (!lease.ok()) return ::testing::AssertionFailure() << lease.status().ToString();
  if (served_from != nullptr) *served_from = lease->served_from;
  bool same = lease->info.payload_bytes == o.payload.size() &&
              std::memcmp(store.arena_base() + lease->arena_offset, o.payload.data(),
                          o.payload.size()) == 0;
  Status released = store.Release(lease->id);
  if (!released.ok()) return ::testing::AssertionFailure() << released.ToString();
  if (!same) return ::testing::AssertionFailure() << "payload differs";
  return ::testing::AssertionSuccess();
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "kvstash-storage-XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Commits are checked on first use only (no background checker), so arena accounting and
// eviction order follow the test's own calls exactly; commit_check_test.cc covers the checker.
inline StoreOptions CpuOnlyOptions(uint64_t cpu_bytes) {
  StoreOptions o;
  o.cpu_capacity_bytes = cpu_bytes;
  o.ssd_capacity_bytes = 0;
  o.background_commit_checks = false;
  return o;
}

}  // namespace kvstash::storage::testing

#endif  // KVSTASH_TESTS_STORAGE_STORE_TEST_UTIL_H_
