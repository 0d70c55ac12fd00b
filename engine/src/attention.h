// Causal grouped-query attention of a batch of query rows over one layer's gathered K/V.
#ifndef KVSTASH_ENGINE_SRC_ATTENTION_H_
#define KVSTASH_ENGINE_SRC_ATTENTION_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>

#include "kvstash/common/thread_pool.h"

namespace kvstash::engine {

struct AttentionShape {
  uint32_t num_heads = 0;
  uint32_t num_kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t context = 0;  // positions held in k/v
};

using ProbsSink = std::function<void(size_t row, uint32_t head, std::span<const float> probs)>;

// q: [n][num_heads][head_dim]; k, v: [num_kv_heads][context][head_dim] (f32);
// out: [n][num_heads][head_dim]. Row r attends to positions [0, positions[r]] (all
// < context). Query head h reads KV head h / (num_heads / num_kv_heads). Scores are scaled by
// 1/sqrt(head_dim). Each (row, head) is computed by one thread with one fixed operation order
// that depends only on positions[r], so results do not depend on the batch. `probs`, when set,
// receives the softmax of each (row, head), concurrently from pool threads.
void Attention(ThreadPool* pool, const AttentionShape& shape, const float* q,
               std::span<const uint32_t> positions, const float* k, const float* v, float* out,
               const ProbsSink* probs);

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_SRC_ATTENTION_H_
