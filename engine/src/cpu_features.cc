#include "cpu_features.h"

#include <cstdlib>
#include <cstring>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace kvstash::engine {
namespace {

#if defined(__x86_64__)
// CPUID.1:ECX.F16C, read directly: clang before 16 does not know "f16c" in
// __builtin_cpu_supports (the fuzz and tsa presets build with clang 14).
bool HasF16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) != 0 && (c & bit_F16C) != 0;
}
#endif

Isa Detect() {
  Isa best = Isa::kScalar;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && HasF16c()) {
    best = Isa::kAvx2;
    if (__builtin_cpu_supports("avx512f")) best = Isa::kAvx512;
  }
#endif
  const char* cap = std::getenv("KVSTASH_ENGINE_ISA");
  if (cap != nullptr) {
    Isa limit = best;
    if (std::strcmp(cap, "scalar") == 0) limit = Isa::kScalar;
    if (std::strcmp(cap, "avx2") == 0) limit = Isa::kAvx2;
    if (static_cast<int>(limit) < static_cast<int>(best)) best = limit;
  }
  return best;
}

}  // namespace

Isa ActiveIsa() {
  static const Isa isa = Detect();
  return isa;
}

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
    default:
      return "scalar";
  }
}

}  // namespace kvstash::engine
