// Blending through a real cachesvc (child process, temporary unix socket): chunk caches and
// Cache-Craft variants stored and leased as cachesvc objects give bitwise the same results as
// the in-process store, over shared memory and over gRPC byte streams.
#include <gtest/gtest.h>

#include "blend_test_util.h"
#include "kvstash/blend/service_store.h"
#include "service_process.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::blend {
namespace {

using testing::StoriesPrompt;

struct Results {
  std::vector<std::vector<float>> logits;
  std::vector<std::vector<uint32_t>> selected;
};

// The same script of blending calls against any store.
Results RunScript(engine::Engine& engine, ChunkKvStore& store) {
  Results out;
  auto blender = Blender::Create(&engine, &store);
  EXPECT_OK(blender);
  if (!blender.ok()) return out;
  Blender& b = **blender;
  const BlendPrompt first = StoriesPrompt({5, 1, 3, 0, 2});
  const BlendPrompt second = StoriesPrompt({2, 0, 3, 1});
  {
    auto seq = engine.NewSequence();
    auto cap = b.PrefillWithStats(*seq, first);
    EXPECT_OK(cap);
    EXPECT_OK(b.StoreVariants(*seq, first, cap->stats));
  }
  for (Method m : {Method::kCacheBlend, Method::kFullReuse, Method::kRandom, Method::kCacheCraft,
                   Method::kPrefixCaching}) {
    BlendOptions o;
    o.method = m;
    o.blend.ratio = 0.3;
    o.craft.alpha = 3.0;
    auto seq = engine.NewSequence();
    auto r = b.Prefill(*seq, second, o);
    EXPECT_OK(r) << MethodName(m) << ": " << r.status();
    if (!r.ok()) continue;
    EXPECT_GT(r->cached_tokens, 0u) << MethodName(m);
    if (m != Method::kPrefixCaching) {
      EXPECT_EQ(r->missing_chunks, 0u) << MethodName(m);
    }
    out.logits.push_back(r->logits);
    out.selected.push_back(r->selected);
  }
  return out;
}

class BlendServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto svc = kvstash::testing::ServiceProcess::Start(dir_.path());
    ASSERT_OK(svc);
    service_ = std::move(*svc);
    engine_ = testing::MakeEngine(testing::LoadStories(), 2, DType::kF16, 160);
    ASSERT_NE(engine_, nullptr);
  }

  std::unique_ptr<client::KvClient> Connect(bool shared_memory) {
    client::ClientOptions co;
    co.use_shared_memory = shared_memory;
    auto c = client::KvClient::Connect(service_->target(), co);
    EXPECT_OK(c);
    if (c.ok()) {
      EXPECT_EQ((*c)->shared_memory_attached(), shared_memory);
    }
    return c.ok() ? std::move(*c) : nullptr;
  }

  kvstash::testing::TempDir dir_;
  std::unique_ptr<kvstash::testing::ServiceProcess> service_;
  std::unique_ptr<engine::Engine> engine_;
};

TEST_F(BlendServiceTest, SameResultsAsInProcessStore) {
  auto local = NewInProcessChunkStore();
  const Results want = RunScript(*engine_, *local);
  ASSERT_EQ(want.logits.size(), 5u);
  const Hash128 fp = ModelFingerprint(engine_->Spec());
  for (bool shm : {true, false}) {
    auto client = Connect(shm);
    ASSERT_NE(client, nullptr);
    ServiceStoreOptions so;
    so.name_space = shm ? "blend-shm" : "blend-stream";
    auto store = NewServiceChunkStore(client.get(), fp, so);
    const Results got = RunScript(*engine_, *store);
    EXPECT_EQ(got.logits, want.logits) << (shm ? "shared memory" : "stream");
    EXPECT_EQ(got.selected, want.selected);
  }
}

TEST_F(BlendServiceTest, LookupFetchPutAndVanishedObjects) {
  auto client = Connect(true);
  ASSERT_NE(client, nullptr);
  auto store = NewServiceChunkStore(client.get(), ModelFingerprint(engine_->Spec()));
  auto blender = Blender::Create(engine_.get(), store.get());
  ASSERT_OK(blender);
  const BlendPrompt p = StoriesPrompt({1, 2});
  auto prepared = (*blender)->PrepareChunks(p);
  ASSERT_OK(prepared);
  EXPECT_EQ(*prepared, 3u);
  auto entries = store->Lookup(std::vector<Hash128>{p.Key(1), Hash128{9, 9}});
  ASSERT_OK(entries);
  ASSERT_TRUE((*entries)[0].alone.has_value());
  EXPECT_FALSE((*entries)[1].alone.has_value());
  const ChunkRecord rec = *(*entries)[0].alone;
  EXPECT_EQ(rec.tier, Tier::kCpu);
  EXPECT_EQ(rec.layout.num_tokens, p.end(1) - p.begin(1));
  EXPECT_EQ(rec.layout.rope, engine_->config().rope);
  {
    auto kv = store->Fetch(std::vector<ChunkRecord>{rec});
    ASSERT_OK(kv);
    EXPECT_OK((*kv)[0]->Layer(0));
    EXPECT_THAT((*kv)[0]->Layer(engine_->config().num_layers),
                StatusIs(absl::StatusCode::kInvalidArgument));
  }
  // Evicted (deleted) between lookup and fetch: NotFound, the caller recomputes.
  std::vector<ObjectName> names = {
      MakeObjectName("blend", ModelFingerprint(engine_->Spec()), p.Key(1))};
  ASSERT_OK(client->Delete(names));
  EXPECT_THAT(store->Fetch(std::vector<ChunkRecord>{rec}), StatusIs(absl::StatusCode::kNotFound));
  // Blending then finds it missing and prefills it alone again.
  auto seq = engine_->NewSequence();
  BlendOptions o;
  auto r = (*blender)->Prefill(*seq, p, o);
  ASSERT_OK(r);
  EXPECT_EQ(r->missing_chunks, 0u);
}

}  // namespace
}  // namespace kvstash::blend
