// Run-time CPU feature checks for the codec's vector paths (compiled with target attributes; the
// portable paths give identical results).
#ifndef KVSTASH_CODEC_SRC_CPU_FEATURES_H_
#define KVSTASH_CODEC_SRC_CPU_FEATURES_H_

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace kvstash::codec::internal {

// AVX-512 F + CD + BW, as used by the stream coders and the quantiser.
inline bool CpuHasAvx512() {
#if defined(__x86_64__)
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
                          __builtin_cpu_supports("avx512bw");
  return has;
#else
  return false;
#endif
}

// AVX2 (the rANS decoder's path for CPUs without AVX-512).
inline bool CpuHasAvx2() {
#if defined(__x86_64__)
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
#else
  return false;
#endif
}

// F16C (vector f32 <-> f16), read from cpuid: clang 14 has no "f16c" name for
// __builtin_cpu_supports. Checked with AVX (the OS saves the YMM registers).
inline bool CpuHasF16c() {
#if defined(__x86_64__)
  static const bool has = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0 &&
           __builtin_cpu_supports("avx");
  }();
  return has;
#else
  return false;
#endif
}

}  // namespace kvstash::codec::internal

#if defined(__x86_64__)
#define KVSTASH_AVX512 __attribute__((target("avx512f,avx512cd,avx512bw")))
#define KVSTASH_AVX2 __attribute__((target("avx2")))
#define KVSTASH_AVX2_F16C __attribute__((target("avx2,f16c")))
#endif

#endif  // KVSTASH_CODEC_SRC_CPU_FEATURES_H_
