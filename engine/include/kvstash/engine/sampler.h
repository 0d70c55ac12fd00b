// Next-token choice from logits: greedy (temperature 0) or seeded sampling.
//
// Sampling draws from softmax(logits / temperature), optionally restricted to the smallest set
// of most likely tokens whose mass reaches top_p. The random stream is SplitMix64 from `seed`,
// so a (seed, logits sequence) pair gives the same tokens on every platform. Not thread-safe.
#ifndef KVSTASH_ENGINE_SAMPLER_H_
#define KVSTASH_ENGINE_SAMPLER_H_

#include <cstdint>
#include <span>

namespace kvstash::engine {

class Sampler {
 public:
  // temperature <= 0 means greedy; top_p outside (0, 1) means no nucleus restriction.
  Sampler(float temperature, float top_p, uint64_t seed)
      : temperature_(temperature), top_p_(top_p), state_(seed) {}

  // Index of the chosen token; greedy ties go to the lowest index. logits must be non-empty.
  int32_t Sample(std::span<const float> logits);

  static int32_t Argmax(std::span<const float> logits);

 private:
  double NextUniform();  // [0, 1)

  float temperature_;
  float top_p_;
  uint64_t state_;
};

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_SAMPLER_H_
