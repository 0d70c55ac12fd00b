// Google Benchmark: CacheGen encode/decode throughput in GB/s of fp16 KV, on one thread and on
// all cores, plus zstd/lz4 on the same fp16 bytes. Shape: SmolLM2-135M KV (30 layers, 3 KV heads
// x 64), synthetic values (kv_corpus.h).
//
//   build/release/bench/codec/codec_bench --benchmark_out=bench/results/codec_bench.json
#include <benchmark/benchmark.h>
#include <lz4.h>
#include <zstd.h>

#include <memory>
#include <thread>

#include "kv_corpus.h"
#include "kvstash/codec/cachegen.h"
#include "kvstash/common/thread_pool.h"

namespace kvstash::bench {
namespace {

const KvChunk& Chunk(uint32_t tokens) {
  static std::map<uint32_t, KvChunk> cache;
  auto it = cache.find(tokens);
  if (it == cache.end()) {
    it = cache.emplace(tokens, SyntheticContext(ContextLayout(30, 3, 64, tokens), 1)).first;
  }
  return it->second;
}

// threads == 0: all cores (the calling thread plus hardware_concurrency - 1 workers).
std::unique_ptr<ThreadPool> MakePool(int64_t threads, size_t* used) {
  size_t n = threads == 0 ? std::max(1u, std::thread::hardware_concurrency()) : threads;
  *used = n;
  return n > 1 ? std::make_unique<ThreadPool>(n - 1) : nullptr;
}

void SetRates(benchmark::State& state, size_t raw_bytes, size_t threads) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * raw_bytes));
  state.counters["threads"] = static_cast<double>(threads);
  state.counters["GBps_per_core"] =
      benchmark::Counter(static_cast<double>(raw_bytes) / 1e9 / threads,
                         benchmark::Counter::kIsIterationInvariantRate);
}

void BM_CacheGenEncode(benchmark::State& state) {
  const KvChunk& c = Chunk(static_cast<uint32_t>(state.range(2)));
  size_t threads;
  auto pool = MakePool(state.range(1), &threads);
  codec::EncodeOptions options;
  options.level = static_cast<int>(state.range(0));
  options.pool = pool.get();
  size_t bytes = 0;
  for (auto _ : state) {
    auto out = codec::EncodeCacheGen(c.layout, c.kv, options);
    if (!out.ok()) state.SkipWithError(std::string(out.status().message()).c_str());
    bytes = out->size();
    benchmark::DoNotOptimize(out->data());
  }
  SetRates(state, c.kv.size(), threads);
  state.counters["ratio_vs_fp16"] = static_cast<double>(c.kv.size()) / bytes;
}

void BM_CacheGenDecode(benchmark::State& state) {
  const KvChunk& c = Chunk(static_cast<uint32_t>(state.range(2)));
  size_t threads;
  auto pool = MakePool(state.range(1), &threads);
  codec::EncodeOptions options;
  options.level = static_cast<int>(state.range(0));
  auto container = codec::EncodeCacheGen(c.layout, c.kv, options);
  std::vector<uint8_t> out(c.kv.size());
  codec::DecodeOptions d;
  d.pool = pool.get();
  for (auto _ : state) {
    Status s = codec::DecodeCacheGen(*container, out, d);
    if (!s.ok()) state.SkipWithError(std::string(s.message()).c_str());
    benchmark::DoNotOptimize(out.data());
  }
  SetRates(state, c.kv.size(), threads);
}

void BM_ZstdCompress(benchmark::State& state) {
  const KvChunk& c = Chunk(256);
  std::vector<uint8_t> dst(ZSTD_compressBound(c.kv.size()));
  size_t n = 0;
  for (auto _ : state) {
    n = ZSTD_compress(dst.data(), dst.size(), c.kv.data(), c.kv.size(),
                      static_cast<int>(state.range(0)));
    benchmark::DoNotOptimize(dst.data());
  }
  SetRates(state, c.kv.size(), 1);
  state.counters["ratio_vs_fp16"] = static_cast<double>(c.kv.size()) / n;
}

void BM_ZstdDecompress(benchmark::State& state) {
  const KvChunk& c = Chunk(256);
  std::vector<uint8_t> dst(ZSTD_compressBound(c.kv.size()));
  dst.resize(ZSTD_compress(dst.data(), dst.size(), c.kv.data(), c.kv.size(),
                           static_cast<int>(state.range(0))));
  std::vector<uint8_t> out(c.kv.size());
  for (auto _ : state) {
    ZSTD_decompress(out.data(), out.size(), dst.data(), dst.size());
    benchmark::DoNotOptimize(out.data());
  }
  SetRates(state, c.kv.size(), 1);
}

void BM_Lz4Compress(benchmark::State& state) {
  const KvChunk& c = Chunk(256);
  std::vector<char> dst(LZ4_compressBound(static_cast<int>(c.kv.size())));
  int n = 0;
  for (auto _ : state) {
    n = LZ4_compress_default(reinterpret_cast<const char*>(c.kv.data()), dst.data(),
                             static_cast<int>(c.kv.size()), static_cast<int>(dst.size()));
    benchmark::DoNotOptimize(dst.data());
  }
  SetRates(state, c.kv.size(), 1);
  state.counters["ratio_vs_fp16"] = static_cast<double>(c.kv.size()) / n;
}

void BM_Lz4Decompress(benchmark::State& state) {
  const KvChunk& c = Chunk(256);
  std::vector<char> dst(LZ4_compressBound(static_cast<int>(c.kv.size())));
  const int n = LZ4_compress_default(reinterpret_cast<const char*>(c.kv.data()), dst.data(),
                                     static_cast<int>(c.kv.size()), static_cast<int>(dst.size()));
  std::vector<char> out(c.kv.size());
  for (auto _ : state) {
    LZ4_decompress_safe(dst.data(), out.data(), n, static_cast<int>(out.size()));
    benchmark::DoNotOptimize(out.data());
  }
  SetRates(state, c.kv.size(), 1);
}

// Args: level, threads (0 = all cores), chunk tokens.
BENCHMARK(BM_CacheGenEncode)
    ->ArgsProduct({{1, 2, 3}, {1, 0}, {256, 1024}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_CacheGenDecode)
    ->ArgsProduct({{1, 2, 3}, {1, 0}, {256, 1024}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_ZstdCompress)->Arg(1)->Arg(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ZstdDecompress)->Arg(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Lz4Compress)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Lz4Decompress)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace kvstash::bench

BENCHMARK_MAIN();
