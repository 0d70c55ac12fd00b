// The client's copy into the arena on a shared-memory put, against memcpy: the same source,
// destinations rotating over 1 GiB of shared memory (cold, as arena slots are).
//   ./build/release/bench/service/put_copy_bench --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "copy_crc.h"

namespace {

constexpr size_t kRegionBytes = size_t{1} << 30;

struct Region {
  Region() {
    base = static_cast<uint8_t*>(mmap(nullptr, kRegionBytes, PROT_READ | PROT_WRITE,
                                      MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0));
  }
  ~Region() {
    if (base != MAP_FAILED) munmap(base, kRegionBytes);
  }
  uint8_t* base;
};

template <typename Copy>
void RunCopy(benchmark::State& state, Copy copy) {
  static Region region;
  if (region.base == MAP_FAILED) {
    state.SkipWithError("mmap of the 1 GiB destination region failed");
    return;
  }
  const size_t n = static_cast<size_t>(state.range(0));
  const size_t slots = kRegionBytes / n;
  std::vector<uint8_t> source(n);
  for (size_t i = 0; i < n; ++i) source[i] = static_cast<uint8_t>(i * 131 + 7);
  size_t slot = 0;
  for ([[maybe_unused]] auto _ : state) {
    benchmark::DoNotOptimize(copy(region.base + slot * n, source.data(), n));
    slot = (slot + 1) % slots;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n));
}

void BM_Memcpy(benchmark::State& state) {
  RunCopy(state, [](uint8_t* dst, const uint8_t* src, size_t n) {
    std::memcpy(dst, src, n);
    return dst[0];
  });
}

// The copy with crc32c the client used for puts before streaming stores (and still uses below
// 64 KiB, and for stream gets).
void BM_CopyWithCrc(benchmark::State& state) {
  RunCopy(state, [](uint8_t* dst, const uint8_t* src, size_t n) {
    return kvstash::client::internal::CopyWithCrc(dst, src, n);
  });
}

void BM_CopyForPut(benchmark::State& state) {
  RunCopy(state, [](uint8_t* dst, const uint8_t* src, size_t n) {
    return *kvstash::client::internal::CopyForPut(dst, src, n, 0);
  });
}

#define KVSTASH_COPY_SIZES ->Arg(256 << 10)->Arg(2 << 20)->Arg(32 << 20)
BENCHMARK(BM_Memcpy) KVSTASH_COPY_SIZES;
BENCHMARK(BM_CopyWithCrc) KVSTASH_COPY_SIZES;
BENCHMARK(BM_CopyForPut) KVSTASH_COPY_SIZES;

}  // namespace

BENCHMARK_MAIN();
