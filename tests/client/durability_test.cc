// Failure behaviour end to end, through KvClient against the real cachesvc binary: kill -9 during
// a write storm, a corrupted SSD value, a full SSD tier. After every failure the daemon keeps
// serving and never returns partial or corrupt bytes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>

#include "kvstash/client/kv_client.h"
#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using client::KvClient;

ObjectName StormName(uint64_t i) { return TestName(i, "storm"); }

// Every file under `dir` whose bytes contain `needle`; flips one byte of the first match in each.
int CorruptFilesContaining(const std::string& dir, const std::vector<uint8_t>& needle_bytes) {
  const std::vector<char> needle(needle_bytes.begin(), needle_bytes.end());
  int corrupted = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    std::fstream f(entry.path(), std::ios::in | std::ios::out | std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    auto it = std::search(bytes.begin(), bytes.end(), needle.begin(), needle.end());
    if (it == bytes.end()) continue;
    auto offset = static_cast<std::streamoff>(it - bytes.begin()) + 7;
    f.clear();
    f.seekp(offset);
    char flipped = static_cast<char>(bytes[static_cast<size_t>(offset)] ^ 0x40);
    f.write(&flipped, 1);
    ++corrupted;
  }
  return corrupted;
}

TEST(Durability, KillDuringWriteStormThenRestart) {
  TempDir dir;
  ServiceOptions options;
  options.cpu_capacity = "32MiB";  // small enough that the storm also evicts to SSD
  options.ssd_capacity = "512MiB";
  auto svc = ServiceProcess::Start(dir.path(), options);
  ASSERT_OK(svc);
  auto kv = KvClient::Connect((*svc)->target());
  ASSERT_OK(kv);
  ASSERT_TRUE((*kv)->shared_memory_attached());

  constexpr int kWriters = 3;
  std::atomic<uint64_t> next{0};
  std::atomic<int> durable_acks{0};
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::set<uint64_t> acked_durable;
  std::vector<std::thread> writers;
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      while (!stop) {
        uint64_t i = next++;
        ObjectInfo info = TestInfo(256 + (i % 7) * 512);  // 64 KiB .. 1.6 MiB
        auto payload = TestPayload(i, info.payload_bytes);
        client::PutOptions po;
        po.durable = (i % 2 == 0);
        po.path = (w == 0) ? client::DataPath::kStream : client::DataPath::kAuto;
        Status s = (*kv)->Put(StormName(i), info, payload, po);
        if (s.ok() && po.durable) {
          std::lock_guard<std::mutex> lock(mu);
          acked_durable.insert(i);
          ++durable_acks;
        }
      }
    });
  }
  while (durable_acks < 40) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  (*svc)->Kill();  // SIGKILL while the writers are mid-flight
  stop = true;
  for (auto& t : writers) t.join();
  const uint64_t attempted = next.load();

  auto restarted = ServiceProcess::Start(dir.path(), options);
  ASSERT_OK(restarted);
  // The same client keeps working: it reconnects (after gRPC's short reconnect backoff; calls
  // fail fast with UNAVAILABLE meanwhile) and re-attaches the new arena generation.
  Status up = absl::UnavailableError("not yet");
  for (int i = 0; i < 200 && !up.ok(); ++i) {
    up = (*kv)->Stats().status();
    if (!up.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_OK(up);
  int present = 0;
  for (uint64_t i = 0; i < attempted; ++i) {
    ObjectInfo info = TestInfo(256 + (i % 7) * 512);
    auto got = (*kv)->Get(StormName(i));  // verifies crc32c; compare bytes as well
    bool durable = acked_durable.count(i) > 0;
    if (!got.ok()) {
      EXPECT_FALSE(durable) << "durably committed object " << i << " lost: " << got.status();
      EXPECT_THAT(got, StatusIs(absl::StatusCode::kNotFound)) << i << ": " << got.status();
      continue;
    }
    ++present;
    EXPECT_EQ(got->info.payload_bytes, info.payload_bytes) << i;
    EXPECT_TRUE(got->payload == TestPayload(i, info.payload_bytes))
        << "object " << i << " is not intact";
  }
  EXPECT_GE(present, static_cast<int>(acked_durable.size()));
  std::printf("storm: %llu puts attempted, %zu acknowledged durable, %d present after kill -9\n",
              static_cast<unsigned long long>(attempted), acked_durable.size(), present);
  // What the service lists is exactly what it serves.
  auto list = (*kv)->List("storm", 0);
  ASSERT_OK(list);
  std::string token = list->next_page_token;
  size_t listed = list->objects.size();
  while (!token.empty()) {
    auto page = (*kv)->List("storm", 0, token);
    ASSERT_OK(page);
    listed += page->objects.size();
    token = page->next_page_token;
  }
  EXPECT_EQ(listed, static_cast<size_t>(present));

  EXPECT_TRUE((*kv)->shared_memory_attached());
  ObjectInfo info = TestInfo(1024);
  auto payload = TestPayload(999'999, info.payload_bytes);
  Status put = (*kv)->Put(StormName(999'999), info, payload);
  ASSERT_OK(put);
  auto lease = (*kv)->Acquire(StormName(999'999));
  ASSERT_OK(lease);
  EXPECT_TRUE(std::equal(lease->data().begin(), lease->data().end(), payload.begin()));
}

TEST(Durability, CorruptSsdValueIsAMissAndACounter) {
  TempDir dir;
  ServiceOptions options;
  options.metrics = true;
  auto svc = ServiceProcess::Start(dir.path(), options);
  ASSERT_OK(svc);
  ObjectInfo info = SmolChunkInfo();
  auto good = TestPayload(1, info.payload_bytes);
  auto victim = TestPayload(2, info.payload_bytes);
  {
    auto kv = KvClient::Connect((*svc)->target());
    ASSERT_OK(kv);
    client::PutOptions durable;
    durable.durable = true;
    ASSERT_OK((*kv)->Put(TestName(1), info, good, durable));
    ASSERT_OK((*kv)->Put(TestName(2), info, victim, durable));
  }
  ASSERT_EQ((*svc)->Terminate(), 0);
  // Flip a byte inside the stored payload of object 2, wherever the SSD tier keeps it.
  std::vector<uint8_t> needle(victim.begin() + 1'000'000, victim.begin() + 1'000'064);
  ASSERT_EQ(CorruptFilesContaining((*svc)->data_dir(), needle), 1);

  auto again = ServiceProcess::Start(dir.path(), options);
  ASSERT_OK(again);
  auto kv = KvClient::Connect((*again)->target());
  ASSERT_OK(kv);
  auto lease = (*kv)->Acquire(TestName(2));
  EXPECT_THAT(lease, StatusIs(absl::StatusCode::kNotFound));
  auto streamed = (*kv)->Get(TestName(2));
  EXPECT_THAT(streamed, StatusIs(absl::StatusCode::kNotFound));
  auto stats = (*kv)->Stats();
  ASSERT_OK(stats);
  EXPECT_GE(stats->checksum_failures, 1u);
  std::string metrics;
  ASSERT_EQ(HttpGet((*again)->metrics_port(), "/metrics", &metrics), 200);
  EXPECT_THAT(metrics, ::testing::ContainsRegex("kvstash_storage_checksum_failures_total [1-9]"));
  // The intact neighbour is still served, from SSD and then from the CPU tier.
  auto ok = (*kv)->Acquire(TestName(1));
  ASSERT_OK(ok);
  EXPECT_TRUE(std::equal(ok->data().begin(), ok->data().end(), good.begin()));
  EXPECT_EQ((*again)->Terminate(), 0);
}

TEST(Durability, FullSsdTierFailsDurablePutsPrecisely) {
  TempDir dir;
  ServiceOptions options;
  options.cpu_capacity = "64MiB";
  options.ssd_capacity = "4MiB";
  auto svc = ServiceProcess::Start(dir.path(), options);
  ASSERT_OK(svc);
  auto kv = KvClient::Connect((*svc)->target());
  ASSERT_OK(kv);
  ObjectInfo info = SmolChunkInfo();  // 5.9 MB: more than the whole SSD tier
  auto payload = TestPayload(3, info.payload_bytes);
  client::PutOptions durable;
  durable.durable = true;
  for (auto path : {client::DataPath::kSharedMemory, client::DataPath::kStream}) {
    durable.path = path;
    durable.overwrite = true;
    Status s = (*kv)->Put(TestName(3), info, payload, durable);
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kResourceExhausted));
  }
  // The daemon keeps serving: small durable objects still fit, nothing partial is visible.
  ObjectInfo small = TestInfo(1024);
  auto small_payload = TestPayload(4, small.payload_bytes);
  durable.path = client::DataPath::kAuto;
  durable.overwrite = false;
  ASSERT_OK((*kv)->Put(TestName(4), small, small_payload, durable));
  auto got = (*kv)->Get(TestName(4));
  ASSERT_OK(got);
  EXPECT_EQ(got->payload, small_payload);
  auto big = (*kv)->Get(TestName(3));
  if (big.ok()) {
    EXPECT_EQ(big->payload, payload);  // committed in memory only, intact
  }
  EXPECT_EQ((*kv)->Stats()->reservations_active, 0u);
}

}  // namespace
}  // namespace kvstash::testing
