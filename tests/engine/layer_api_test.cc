// Batch invariance, layer hooks and the layer-level API, on stories260K (fast).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>

#include "test_util.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::engine {
namespace {

using testing::LoadStories;
using testing::MakeEngine;

const std::vector<int32_t> kPrompt = {1,   403, 407, 261, 378, 282, 395, 429, 266, 309, 324,
                                      272, 13,  46,  270, 289, 337, 301, 263, 291, 269, 283,
                                      365, 300, 306, 290, 318, 13,  46,  310, 266, 271, 260,
                                      299, 275, 287, 409, 296, 264, 13,  46};

std::vector<float> PrefillAll(Engine& e, Sequence& seq, std::span<const int32_t> ids,
                              uint32_t start, const LayerHooks& hooks = {}) {
  PrefillOptions opts;
  opts.logits = LogitsMode::kAll;
  opts.hooks = hooks;
  auto r = e.Prefill(seq, ids, start, opts);
  EXPECT_OK(r);
  return r.ok() ? *r : std::vector<float>();
}

// KV bytes of every layer and position of two sequences (same cache or same layout) agree.
bool SameKv(const Sequence& a, const Sequence& b, uint32_t layers, uint32_t n) {
  const size_t row = a.cache().TokenBytes();
  for (uint32_t l = 0; l < layers; ++l) {
    for (uint32_t p = 0; p < n; ++p) {
      if (std::memcmp(a.KRow(l, p), b.KRow(l, p), row) != 0) return false;
      if (std::memcmp(a.VRow(l, p), b.VRow(l, p), row) != 0) return false;
    }
  }
  return true;
}

class BatchInvarianceTest : public ::testing::TestWithParam<DType> {};

// The whole prompt at once, in two pieces at every cut, in three pieces, token by token, and
// with 1 or 2 threads: identical logits for every position and identical KV bytes.
TEST_P(BatchInvarianceTest, PiecesThreadsAndSingleTokens) {
  auto model = LoadStories();
  ASSERT_NE(model, nullptr);
  const uint32_t n = static_cast<uint32_t>(kPrompt.size()), L = model->config().num_layers;
  auto e1 = MakeEngine(model, 1, GetParam(), 16);
  auto e2 = MakeEngine(model, 2, GetParam(), 16);
  auto whole = e2->NewSequence();
  std::vector<float> ref = PrefillAll(*e2, *whole, kPrompt, 0);
  ASSERT_EQ(ref.size(), n * 512u);
  {
    auto single_thread = e1->NewSequence();
    EXPECT_EQ(PrefillAll(*e1, *single_thread, kPrompt, 0), ref);
    EXPECT_TRUE(SameKv(*whole, *single_thread, L, n));
  }
  for (uint32_t cut = 1; cut < n; ++cut) {
    auto seq = e2->NewSequence();
    std::vector<float> got = PrefillAll(*e2, *seq, std::span(kPrompt).first(cut), 0);
    std::vector<float> rest = PrefillAll(*e2, *seq, std::span(kPrompt).subspan(cut), cut);
    got.insert(got.end(), rest.begin(), rest.end());
    ASSERT_EQ(std::memcmp(got.data(), ref.data(), ref.size() * 4), 0) << "cut " << cut;
    ASSERT_TRUE(SameKv(*whole, *seq, L, n)) << "cut " << cut;
  }
  auto seq = e1->NewSequence();
  std::vector<float> got;
  for (uint32_t p = 0; p < n; ++p) {
    std::vector<float> one = PrefillAll(*e1, *seq, std::span(kPrompt).subspan(p, 1), p);
    got.insert(got.end(), one.begin(), one.end());
  }
  EXPECT_EQ(std::memcmp(got.data(), ref.data(), ref.size() * 4), 0);
  EXPECT_TRUE(SameKv(*whole, *seq, L, n));
}

INSTANTIATE_TEST_SUITE_P(KvDtypes, BatchInvarianceTest, ::testing::Values(DType::kF16, DType::kF32),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

// Layer-wise loading: the prefix's KV arrives in paged memory only inside before_layer_kv
// (copied from another sequence, as a connector would from the cache). The engine must not
// touch a layer's KV before its hook ran: the prefix starts out as NaN garbage.
TEST(LayerHooksTest, PrefixLoadedLayerByLayerGivesIdenticalResults) {
  auto model = LoadStories();
  const uint32_t n = static_cast<uint32_t>(kPrompt.size()), L = model->config().num_layers;
  const uint32_t prefix = 19;
  auto e = MakeEngine(model, 2, DType::kF16, 16);
  auto source = e->NewSequence();
  std::vector<float> ref = PrefillAll(*e, *source, kPrompt, 0);
  auto seq = e->NewSequence();
  ASSERT_OK(seq->Resize(prefix));
  const size_t row = e->kv_cache().TokenBytes();
  for (uint32_t l = 0; l < L; ++l) {
    for (uint32_t p = 0; p < prefix; ++p) {
      std::memset(seq->KRow(l, p), 0xFF, row);  // f16 NaN
      std::memset(seq->VRow(l, p), 0xFF, row);
    }
  }
  std::vector<uint32_t> order;
  std::vector<std::vector<uint8_t>> stored(L);
  LayerHooks hooks;
  hooks.before_layer_kv = [&](uint32_t l) {
    order.push_back(l);
    for (uint32_t p = 0; p < prefix; ++p) {
      std::memcpy(seq->KRow(l, p), source->KRow(l, p), row);
      std::memcpy(seq->VRow(l, p), source->VRow(l, p), row);
    }
    return OkStatus();
  };
  hooks.after_layer_kv = [&](uint32_t l) {
    order.push_back(100 + l);
    for (uint32_t p = prefix; p < n; ++p) {
      stored[l].insert(stored[l].end(), seq->KRow(l, p), seq->KRow(l, p) + row);
    }
    return OkStatus();
  };
  std::vector<float> got = PrefillAll(*e, *seq, std::span(kPrompt).subspan(prefix), prefix, hooks);
  ASSERT_EQ(got.size(), (n - prefix) * 512u);
  EXPECT_EQ(std::memcmp(got.data(), ref.data() + prefix * 512, got.size() * 4), 0);
  EXPECT_TRUE(SameKv(*source, *seq, L, n));
  std::vector<uint32_t> want;
  for (uint32_t l = 0; l < L; ++l) want.insert(want.end(), {l, 100 + l});
  EXPECT_EQ(order, want);
  for (uint32_t l = 0; l < L; ++l) {  // what after_layer_kv saw is what stayed
    for (uint32_t p = prefix; p < n; ++p) {
      EXPECT_EQ(std::memcmp(stored[l].data() + (p - prefix) * row, seq->KRow(l, p), row), 0);
    }
  }
}

TEST(LayerHooksTest, HookErrorAbortsAndTruncates) {
  auto model = LoadStories();
  auto e = MakeEngine(model, 1, DType::kF16, 16);
  auto seq = e->NewSequence();
  ASSERT_OK(e->Prefill(*seq, std::span(kPrompt).first(10), 0));
  PrefillOptions opts;
  opts.hooks.before_layer_kv = [](uint32_t l) {
    return l == 2 ? absl::UnavailableError("cache went away") : OkStatus();
  };
  auto r = e->Prefill(*seq, std::span(kPrompt).subspan(10, 5), 10, opts);
  EXPECT_THAT(r, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(seq->length(), 10u);
  // The fallback path (recompute) works on the same sequence afterwards.
  EXPECT_OK(e->Prefill(*seq, std::span(kPrompt).subspan(10, 5), 10));
}

// Prefill is made of the layer API; driving it by hand gives the same bits.
TEST(LayerApiTest, ManualLayersMatchPrefill) {
  auto model = LoadStories();
  const uint32_t n = static_cast<uint32_t>(kPrompt.size());
  auto e = MakeEngine(model, 2, DType::kF16, 16);
  auto a = e->NewSequence();
  std::vector<float> ref = PrefillAll(*e, *a, kPrompt, 0);
  auto b = e->NewSequence();
  ASSERT_OK(b->Resize(n));
  std::vector<uint32_t> pos(n);
  for (uint32_t i = 0; i < n; ++i) pos[i] = i;
  auto batch = e->Embed(kPrompt, pos);
  ASSERT_OK(batch);
  EXPECT_THAT(e->FinishLayer(*b, 0, *batch), StatusIs(absl::StatusCode::kFailedPrecondition));
  size_t prob_calls = 0;
  std::mutex mu;
  for (uint32_t l = 0; l < model->config().num_layers; ++l) {
    ASSERT_OK(e->ComputeQkv(l, *batch));
    EXPECT_EQ(batch->qkv_layer(), static_cast<int>(l));
    ASSERT_OK(e->WriteKv(*b, l, *batch));
    ASSERT_OK(e->FinishLayer(*b, l, *batch, [&](size_t, uint32_t, std::span<const float> p) {
      std::lock_guard lock(mu);
      ++prob_calls;
      EXPECT_FALSE(p.empty());
    }));
  }
  EXPECT_EQ(prob_calls, size_t{n} * model->config().num_heads * model->config().num_layers);
  std::vector<size_t> rows(n);
  for (uint32_t i = 0; i < n; ++i) rows[i] = i;
  auto logits = e->Logits(*batch, rows);
  ASSERT_OK(logits);
  EXPECT_EQ(*logits, ref);
  EXPECT_TRUE(SameKv(*a, *b, model->config().num_layers, n));
}

// CacheBlend-style selective recompute: with exact KV everywhere else, recomputing any subset
// of tokens (fresh K/V written over theirs) reproduces their K/V and logits bit for bit, and
// the fresh per-layer K/V the batch exposes round to exactly the stored bytes.
TEST(LayerApiTest, SelectedTokensRecomputeExactly) {
  auto model = LoadStories();
  const uint32_t L = model->config().num_layers;
  auto e = MakeEngine(model, 2, DType::kF32, 16);
  auto seq = e->NewSequence();
  std::vector<float> ref = PrefillAll(*e, *seq, kPrompt, 0);
  std::vector<uint32_t> pick = {40, 3, 17, 4};
  std::vector<int32_t> toks;
  for (uint32_t p : pick) toks.push_back(kPrompt[p]);
  auto batch = e->Embed(toks, pick);
  ASSERT_OK(batch);
  const size_t kv = model->config().kv_dim();
  std::vector<float> k(pick.size() * kv), v(pick.size() * kv);
  for (uint32_t l = 0; l < L; ++l) {
    ASSERT_OK(e->ComputeQkv(l, *batch));
    ASSERT_OK(e->ReadKv(*seq, l, batch->positions(), k.data(), v.data()));
    for (size_t r = 0; r < batch->size(); ++r) {
      ASSERT_EQ(std::memcmp(batch->k(r), k.data() + r * kv, kv * 4), 0) << l << " " << r;
      ASSERT_EQ(std::memcmp(batch->v(r), v.data() + r * kv, kv * 4), 0) << l << " " << r;
    }
    ASSERT_OK(e->WriteKv(*seq, l, *batch));
    ASSERT_OK(e->FinishLayer(*seq, l, *batch));
    if (l == 1) {  // drop some rows midway, as CacheBlend does after its selection layer
      const size_t keep[] = {2, 0};
      ASSERT_OK(batch->Keep(keep));
      pick = {17, 40};
      k.resize(2 * kv);
      v.resize(2 * kv);
    }
  }
  const size_t rows[] = {0, 1};
  auto logits = e->Logits(*batch, rows);
  ASSERT_OK(logits);
  // Bit for bit on purpose (the test's claim: recomputed exactly), so memcmp, not float ==.
  // NOLINTNEXTLINE(bugprone-suspicious-memory-comparison)
  EXPECT_EQ(std::memcmp(logits->data(), ref.data() + 17 * 512, 512 * 4), 0);
  // NOLINTNEXTLINE(bugprone-suspicious-memory-comparison)
  EXPECT_EQ(std::memcmp(logits->data() + 512, ref.data() + 40 * 512, 512 * 4), 0);
  const size_t bad[] = {0, 0};
  EXPECT_THAT(batch->Keep(bad), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(EngineErrorsTest, InvalidCallsAndCapacity) {
  auto model = LoadStories();
  auto e = MakeEngine(model, 1, DType::kF16, 3);  // 48 positions
  auto seq = e->NewSequence();
  EXPECT_THAT(e->Prefill(*seq, std::vector<int32_t>{}, 0),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(e->Prefill(*seq, std::vector<int32_t>{1}, 5),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(e->Prefill(*seq, std::vector<int32_t>{1, 512}, 0),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(e->Embed(std::vector<int32_t>{1, 2}, std::vector<uint32_t>{3, 3}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  std::vector<int32_t> many(49, 1);
  EXPECT_THAT(e->Prefill(*seq, many, 0), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(seq->length(), 0u);
  EXPECT_EQ(e->kv_cache().free_blocks(), 3u);
  ASSERT_OK(e->Prefill(*seq, std::span(kPrompt).first(20), 0));
  EXPECT_EQ(seq->block_table().size(), 2u);
  EXPECT_EQ(e->kv_cache().free_blocks(), 1u);
  ASSERT_OK(seq->Resize(5));
  EXPECT_EQ(e->kv_cache().free_blocks(), 2u);
  kernels::PagedKvView view = e->kv_cache().View();
  EXPECT_EQ(view.k_pools.size(), model->config().num_layers);
  EXPECT_EQ(view.shape.block_size, 16u);
  EXPECT_EQ(view.shape.PoolBytes(), 3u * 16 * 4 * 8 * 2);
  seq.reset();
  EXPECT_EQ(e->kv_cache().free_blocks(), 3u);
}

}  // namespace
}  // namespace kvstash::engine

namespace kvstash::engine {
namespace {

// Both RoPE pairings: stories260K's Q/K rows permuted from adjacent pairs (2i, 2i+1) to halves
// (i, i + d/2) and run with kNeox compute the same attention scores (in a different summation
// order), so the logits agree closely and greedy text is unchanged.
TEST(RopeConventionTest, NeoxOnPermutedWeightsMatchesGptj) {
  auto model = LoadStories();
  const ModelConfig& c = model->config();
  std::ifstream in(testing::StoriesModelPath(), std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_EQ(bytes.size(), 1056540u);
  const size_t D = c.dim, KV = c.kv_dim(), hd = c.head_dim, L = c.num_layers;
  auto permute_rows = [&](size_t float_offset, size_t rows) {
    float* m = reinterpret_cast<float*>(bytes.data() + 28) + float_offset;
    std::vector<float> copy(m, m + rows * D);
    for (size_t r = 0; r < rows; ++r) {
      size_t head = r / hd, j = r % hd;
      size_t src = j < hd / 2 ? 2 * j : 2 * (j - hd / 2) + 1;
      std::copy_n(copy.data() + (head * hd + src) * D, D, m + r * D);
    }
  };
  const size_t wq = size_t{c.vocab_size} * D + L * D, wk = wq + L * D * D;
  for (size_t l = 0; l < L; ++l) {
    permute_rows(wq + l * D * D, D);
    permute_rows(wk + l * KV * D, KV);
  }
  std::string path = (std::filesystem::temp_directory_path() /
                      ("kvstash_neox_" + std::to_string(::getpid()) + ".bin"))
                         .string();
  std::ofstream(path, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  LoadOptions opts;
  opts.rope = RopeConvention::kNeox;
  auto neox = Model::Load(path, opts);
  ASSERT_OK(neox);
  EXPECT_EQ((*neox)->config().rope, RopeConvention::kNeox);
  auto e1 = MakeEngine(model, 1, DType::kF32, 16);
  auto e2 = MakeEngine(*neox, 1, DType::kF32, 16);
  auto s1 = e1->NewSequence(), s2 = e2->NewSequence();
  std::vector<float> a = PrefillAll(*e1, *s1, kPrompt, 0), b = PrefillAll(*e2, *s2, kPrompt, 0);
  ASSERT_EQ(a.size(), b.size());
  double max_diff = 0;
  for (size_t i = 0; i < a.size(); ++i)
    max_diff = std::max(max_diff, double{std::fabs(a[i] - b[i])});
  EXPECT_LT(max_diff, 1e-4);
  EXPECT_GT(max_diff, 0.0);  // really a different computation, not the same bits
  // Without the override the permuted file is simply a different (worse) model.
  auto plain = Model::Load(path);
  ASSERT_OK(plain);
  auto e3 = MakeEngine(*plain, 1, DType::kF32, 16);
  auto s3 = e3->NewSequence();
  std::vector<float> d = PrefillAll(*e3, *s3, kPrompt, 0);
  double far = 0;
  for (size_t i = 0; i < a.size(); ++i) far = std::max(far, double{std::fabs(a[i] - d[i])});
  EXPECT_GT(far, 0.1);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace kvstash::engine
