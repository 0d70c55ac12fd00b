#include "kvstash/codec/levels.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kvstash/kernels/cachegen_core.h"

namespace kvstash::codec {
namespace {

uint32_t CeilFraction(uint32_t layers, uint32_t num, uint32_t den) {
  return static_cast<uint32_t>((uint64_t{layers} * num + den - 1) / den);
}

constexpr int kKBins[3][3] = {{16, 16, 12}, {32, 16, 16}, {32, 32, 32}};
constexpr int kVBins[3][2] = {{16, 12}, {32, 16}, {32, 32}};

}  // namespace

LayerGroups LayerGroupsFor(uint32_t model_layers) {
  LayerGroups g;
  g.k_group1_end = std::min(model_layers, CeilFraction(model_layers, 5, 16));
  g.k_group2_end = std::min(model_layers, CeilFraction(model_layers, 5, 8));
  g.v_group1_end = std::min(model_layers, CeilFraction(model_layers, 1, 16));
  return g;
}

Result<int> BinsForLayer(int level, uint32_t model_layers, uint32_t layer, bool is_value) {
  if (level < kMinLevel || level > kMaxLevel) {
    return absl::InvalidArgumentError(absl::StrCat("CacheGen level must be 1..3, got ", level));
  }
  if (model_layers == 0 || layer >= model_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, " outside a model of ", model_layers, " layers"));
  }
  const LayerGroups g = LayerGroupsFor(model_layers);
  if (is_value) return kVBins[level - 1][layer < g.v_group1_end ? 0 : 1];
  int group = layer < g.k_group1_end ? 0 : (layer < g.k_group2_end ? 1 : 2);
  return kKBins[level - 1][group];
}

Result<std::vector<uint8_t>> RowBinsForLevel(int level, uint32_t model_layers, uint32_t layer_begin,
                                             uint32_t num_layers) {
  if (num_layers == 0 || uint64_t{layer_begin} + num_layers > model_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layers [", layer_begin, ", ",
                                                   uint64_t{layer_begin} + num_layers,
                                                   ") do not fit a model of ", model_layers));
  }
  std::vector<uint8_t> bins(size_t{num_layers} * 2);
  for (uint32_t i = 0; i < num_layers; ++i) {
    KVSTASH_ASSIGN_OR_RETURN(int k, BinsForLayer(level, model_layers, layer_begin + i, false));
    KVSTASH_ASSIGN_OR_RETURN(int v, BinsForLayer(level, model_layers, layer_begin + i, true));
    bins[i] = static_cast<uint8_t>(k);
    bins[num_layers + i] = static_cast<uint8_t>(v);
  }
  return bins;
}

Result<int> CheckRowBins(const std::vector<uint8_t>& row_bins, uint32_t num_layers) {
  if (row_bins.size() != size_t{num_layers} * 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("need ", size_t{num_layers} * 2, " row bins, got ", row_bins.size()));
  }
  int max_bins = 0;
  for (uint8_t b : row_bins) {
    if (b < kernels::cachegen::kMinBins || b > kernels::cachegen::kMaxBins || b % 2 != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("bins must be even and in [4, 64], got ", int{b}));
    }
    max_bins = std::max<int>(max_bins, b);
  }
  return max_bins;
}

}  // namespace kvstash::codec
