// kvstash::Mutex (common/mutex.h: std::mutex with thread-safety annotations) against absl::Mutex,
// for the short critical sections of the store (a counter bump under the lock), uncontended and
// with 2 and 4 threads on one lock:
//   ./build/release/bench/common/mutex_bench --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true   (one command line)
#include <benchmark/benchmark.h>

#include <cstdint>

#include "absl/synchronization/mutex.h"
#include "kvstash/common/mutex.h"

namespace {

kvstash::Mutex kv_mu;
uint64_t kv_counter ABSL_GUARDED_BY(kv_mu) = 0;
// Constant-initialized (ABSL_CONST_INIT checks it): no constructor runs at start-up, so none can
// throw there; cert-err58-cpp looks only at the constructor's missing noexcept.
ABSL_CONST_INIT absl::Mutex absl_mu(absl::kConstInit);  // NOLINT(cert-err58-cpp)
uint64_t absl_counter ABSL_GUARDED_BY(absl_mu) = 0;

void BM_KvstashMutex(benchmark::State& state) {
  for ([[maybe_unused]] auto _ : state) {
    kvstash::MutexLock lock(&kv_mu);
    ++kv_counter;
  }
}
BENCHMARK(BM_KvstashMutex)->Threads(1)->Threads(2)->Threads(4)->UseRealTime();

void BM_AbslMutex(benchmark::State& state) {
  for ([[maybe_unused]] auto _ : state) {
    absl::MutexLock lock(&absl_mu);
    ++absl_counter;
  }
}
BENCHMARK(BM_AbslMutex)->Threads(1)->Threads(2)->Threads(4)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
