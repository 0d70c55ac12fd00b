// CacheGen quantisation levels: bins per row derived from the model's layer count.
//
// Layer groups (shallow layers are more sensitive, so they get the finer bins):
//   K: group 1 = [0, ceil(5L/16)), group 2 = [ceil(5L/16), ceil(5L/8)), group 3 = the rest
//   V: group 1 = [0, ceil(L/16)),  group 2 = the rest
// Bins per group:
//   level | K groups 1/2/3 | V groups 1/2
//     1   |  16 / 16 / 12  |  16 / 12
//     2   |  32 / 16 / 16  |  32 / 16
//     3   |  32 / 32 / 32  |  32 / 32
// For L = 32 the groups are K [0,10) [10,20) [20,32) and V [0,2) [2,32): exactly the reference
// tables (CacheGenConfig for Mistral-7B, algorithms.md §1.2 item 2). The fractions 5/16, 5/8 and
// 1/16 are those boundaries divided by 32; rounding up keeps at least one layer in each first
// group.
//
// Rows follow the spec: row r < n is K of held layer r, row n + r is V of held layer r, where the
// object holds layers [layer_begin, layer_begin + n) of a model with `model_layers` layers.
#ifndef KVSTASH_CODEC_LEVELS_H_
#define KVSTASH_CODEC_LEVELS_H_

#include <cstdint>
#include <vector>

#include "kvstash/common/status.h"

namespace kvstash::codec {

inline constexpr int kMinLevel = 1;
inline constexpr int kMaxLevel = 3;

struct LayerGroups {
  uint32_t k_group1_end = 0;  // K layers [0, k_group1_end) are group 1
  uint32_t k_group2_end = 0;  // K layers [k_group1_end, k_group2_end) are group 2
  uint32_t v_group1_end = 0;  // V layers [0, v_group1_end) are group 1
};

// Groups for a model with `model_layers` >= 1 layers.
LayerGroups LayerGroupsFor(uint32_t model_layers);

// Bins of K (index 0) or V (index 1) for one absolute model layer at `level` (1..3).
// InvalidArgument for a bad level, zero model_layers or a layer outside the model.
Result<int> BinsForLayer(int level, uint32_t model_layers, uint32_t layer, bool is_value);

// Bins of the 2n rows of an object holding layers [layer_begin, layer_begin + n).
Result<std::vector<uint8_t>> RowBinsForLevel(int level, uint32_t model_layers, uint32_t layer_begin,
                                             uint32_t num_layers);

// Validates explicit bins: even, in [4, 64]. Returns max bins (lp = max + 1).
Result<int> CheckRowBins(const std::vector<uint8_t>& row_bins, uint32_t num_layers);

}  // namespace kvstash::codec

#endif  // KVSTASH_CODEC_LEVELS_H_
