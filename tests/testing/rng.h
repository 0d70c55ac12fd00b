// Deterministic random numbers for test and benchmark generators (splitmix64): the same seed
// gives the same trace and the same prompts on every platform. Header-only; a Rng is a value used
// by one thread at a time.
#ifndef KVSTASH_TESTS_TESTING_RNG_H_
#define KVSTASH_TESTS_TESTING_RNG_H_

#include <cstdint>

namespace kvstash::testing {

class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t Next() {
    uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

 private:
  uint64_t s_;
};

}  // namespace kvstash::testing

#endif  // KVSTASH_TESTS_TESTING_RNG_H_
