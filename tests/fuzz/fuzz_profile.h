// The fixed CDF profile the CacheGen container fuzzer resolves profile containers against
// (shape: 2 layers x 1 head x 4 dims; reference levels 1-3 and delta level 2). Deterministic, so
// corpus inputs made by make_fuzz_corpus.cc reference the same id.
#ifndef KVSTASH_TESTS_FUZZ_FUZZ_PROFILE_H_
#define KVSTASH_TESTS_FUZZ_FUZZ_PROFILE_H_

#include <cstdlib>

#include "kvstash/codec/profile.h"
#include "kvstash/codec/synthetic_kv.h"

namespace kvstash::fuzz {

inline KvLayout FuzzLayout(uint32_t tokens) {
  KvLayout l;
  l.num_layers = 2;
  l.total_kv_heads = 1;
  l.head_begin = 0;
  l.head_end = 1;
  l.head_dim = 4;
  l.num_tokens = tokens;
  l.dtype = DType::kF16;
  return l;
}

inline const codec::CdfProfile& FuzzProfile() {
  static const codec::CdfProfile profile = [] {
    using codec::CacheGenMode;
    auto builder = codec::CdfProfileBuilder::Create(codec::ProfileShape::Of(FuzzLayout(1)),
                                                    {{CacheGenMode::kReference, 1, {}},
                                                     {CacheGenMode::kReference, 2, {}},
                                                     {CacheGenMode::kReference, 3, {}},
                                                     {CacheGenMode::kDelta, 2, {}}});
    if (!builder.ok()) std::abort();
    for (uint64_t seed = 1; seed <= 4; ++seed) {
      codec::SyntheticKvOptions o;
      o.seed = seed;
      KvLayout layout = FuzzLayout(64);
      if (!builder->Add(layout, codec::SyntheticKv(layout, o)).ok()) std::abort();
    }
    auto p = builder->Build();
    if (!p.ok()) std::abort();
    return *std::move(p);
  }();
  return profile;
}

}  // namespace kvstash::fuzz

#endif  // KVSTASH_TESTS_FUZZ_FUZZ_PROFILE_H_
