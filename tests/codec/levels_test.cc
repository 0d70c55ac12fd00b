#include "kvstash/codec/levels.h"

#include <gtest/gtest.h>

#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::codec {
namespace {

// algorithms.md §1.2 item 2: Mistral-7B (32 layers), QUANT_LEVEL 1..3.
TEST(LevelsTest, ThirtyTwoLayersReproduceReferenceTables) {
  const int k_bins[3][3] = {{16, 16, 12}, {32, 16, 16}, {32, 32, 32}};
  const int v_bins[3][2] = {{16, 12}, {32, 16}, {32, 32}};
  for (int level = 1; level <= 3; ++level) {
    auto bins = RowBinsForLevel(level, 32, 0, 32);
    ASSERT_OK(bins);
    ASSERT_EQ(bins->size(), 64u);
    for (uint32_t layer = 0; layer < 32; ++layer) {
      const int k_group = layer < 10 ? 0 : (layer < 20 ? 1 : 2);
      const int v_group = layer < 2 ? 0 : 1;
      EXPECT_EQ((*bins)[layer], k_bins[level - 1][k_group]) << "K layer " << layer;
      EXPECT_EQ((*bins)[32 + layer], v_bins[level - 1][v_group]) << "V layer " << layer;
    }
  }
  const LayerGroups g = LayerGroupsFor(32);
  EXPECT_EQ(g.k_group1_end, 10u);
  EXPECT_EQ(g.k_group2_end, 20u);
  EXPECT_EQ(g.v_group1_end, 2u);
}

TEST(LevelsTest, GroupsScaleWithLayerCount) {
  // stories260K (5 layers) and SmolLM2-135M (30 layers).
  LayerGroups g5 = LayerGroupsFor(5);
  EXPECT_EQ(g5.k_group1_end, 2u);
  EXPECT_EQ(g5.k_group2_end, 4u);
  EXPECT_EQ(g5.v_group1_end, 1u);
  LayerGroups g30 = LayerGroupsFor(30);
  EXPECT_EQ(g30.k_group1_end, 10u);
  EXPECT_EQ(g30.k_group2_end, 19u);
  EXPECT_EQ(g30.v_group1_end, 2u);
  LayerGroups g1 = LayerGroupsFor(1);
  EXPECT_EQ(g1.k_group1_end, 1u);
  EXPECT_EQ(g1.v_group1_end, 1u);
  for (uint32_t layers = 1; layers <= 200; ++layers) {
    LayerGroups g = LayerGroupsFor(layers);
    EXPECT_GE(g.k_group1_end, 1u);
    EXPECT_LE(g.k_group1_end, g.k_group2_end);
    EXPECT_LE(g.k_group2_end, layers);
    EXPECT_GE(g.v_group1_end, 1u);
  }
}

TEST(LevelsTest, LayerSliceUsesAbsoluteLayers) {
  auto full = RowBinsForLevel(2, 30, 0, 30);
  auto slice = RowBinsForLevel(2, 30, 8, 4);  // layers 8..11
  ASSERT_OK(full);
  ASSERT_OK(slice);
  for (uint32_t i = 0; i < 4; ++i) {
    EXPECT_EQ((*slice)[i], (*full)[8 + i]);
    EXPECT_EQ((*slice)[4 + i], (*full)[30 + 8 + i]);
  }
}

TEST(LevelsTest, LevelsAreOrderedByPrecision) {
  for (uint32_t layers : {1u, 5u, 30u, 32u, 80u}) {
    auto l1 = RowBinsForLevel(1, layers, 0, layers);
    auto l2 = RowBinsForLevel(2, layers, 0, layers);
    auto l3 = RowBinsForLevel(3, layers, 0, layers);
    ASSERT_OK(l1);
    ASSERT_OK(l2);
    ASSERT_OK(l3);
    for (size_t i = 0; i < l1->size(); ++i) {
      EXPECT_LE((*l1)[i], (*l2)[i]);
      EXPECT_LE((*l2)[i], (*l3)[i]);
    }
  }
}

TEST(LevelsTest, RejectsBadArguments) {
  EXPECT_THAT(RowBinsForLevel(0, 32, 0, 32), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(RowBinsForLevel(4, 32, 0, 32), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(RowBinsForLevel(2, 32, 30, 4), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(RowBinsForLevel(2, 0, 0, 1), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(CheckRowBins({16, 16, 16}, 2), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(CheckRowBins({16, 15}, 1), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(CheckRowBins({2, 16}, 1), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(CheckRowBins({66, 16}, 1), StatusIs(absl::StatusCode::kInvalidArgument));
  auto max = CheckRowBins({12, 64}, 1);
  ASSERT_OK(max);
  EXPECT_EQ(*max, 64);
}

}  // namespace
}  // namespace kvstash::codec
