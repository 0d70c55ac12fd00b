// Run-time CPU feature checks for the codec's vector paths (compiled with target attributes; the
// portable paths give identical results).
#ifndef KVSTASH_CODEC_SRC_CPU_FEATURES_H_
#define KVSTASH_CODEC_SRC_CPU_FEATURES_H_

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

}  // namespace kvstash::codec::internal

#if defined(__x86_64__)
#define KVSTASH_AVX512 __attribute__((target("avx512f,avx512cd,avx512bw")))
#define KVSTASH_AVX2 __attribute__((target("avx2")))
#endif

#endif  // KVSTASH_CODEC_SRC_CPU_FEATURES_H_
