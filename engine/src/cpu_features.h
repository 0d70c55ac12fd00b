// Instruction-set level the engine's kernels run at, picked once per process at run time.
#ifndef KVSTASH_ENGINE_SRC_CPU_FEATURES_H_
#define KVSTASH_ENGINE_SRC_CPU_FEATURES_H_

namespace kvstash::engine {

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// The best level this CPU supports (AVX2 needs avx2+fma+f16c; AVX-512 adds avx512f), capped by
// the environment variable KVSTASH_ENGINE_ISA=scalar|avx2|avx512 when set. Fixed for the
// process lifetime (read once), so every computation in a process uses one reduction order.
Isa ActiveIsa();
const char* IsaName(Isa isa);

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_SRC_CPU_FEATURES_H_
