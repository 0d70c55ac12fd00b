// Google Benchmark: CacheGen encode/decode throughput in GB/s of fp16 KV, on one thread and on
// all cores, plus zstd/lz4 on the same fp16 bytes. Shape: SmolLM2-135M KV (30 layers, 3 KV heads
// x 64), synthetic values (kv_corpus.h). With a CUDA device, the GPU codec too (registered in
// main() only then), also on a Llama-8B-shaped chunk (32 layers, 8 KV heads x 128).
//
//   build/release/bench/codec/codec_bench --benchmark_out=bench/results/codec_bench.json
#include <benchmark/benchmark.h>
#include <lz4.h>
#include <zstd.h>

#include <memory>
#include <thread>

#include "kv_corpus.h"
#include "kvstash/codec/cachegen.h"
#include "kvstash/codec/cachegen_gpu.h"
#include "kvstash/codec/kvq.h"
#include "kvstash/common/thread_pool.h"
#include "kvstash/kernels/cuda_device.h"

namespace kvstash::bench {
namespace {

// Model shapes: SmolLM2-135M and a Llama-3-8B-like model (GPU benchmarks only).
enum Shape : int64_t { kSmolLM2 = 0, kLlama8B = 1 };

const KvChunk& Chunk(uint32_t tokens, int64_t shape = kSmolLM2) {
  static std::map<std::pair<int64_t, uint32_t>, KvChunk> cache;
  auto key = std::make_pair(shape, tokens);
  auto it = cache.find(key);
  if (it == cache.end()) {
    KvLayout layout =
        shape == kLlama8B ? ContextLayout(32, 8, 128, tokens) : ContextLayout(30, 3, 64, tokens);
    it = cache.emplace(key, SyntheticContext(layout, 1)).first;
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
  for ([[maybe_unused]] auto _ : state) {
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
  for ([[maybe_unused]] auto _ : state) {
    Status s = codec::DecodeCacheGen(*container, out, d);
    if (!s.ok()) state.SkipWithError(std::string(s.message()).c_str());
    benchmark::DoNotOptimize(out.data());
  }
  SetRates(state, c.kv.size(), threads);
}

// KVQ (kvq.h) at its defaults (keys per channel in groups of 64 tokens, values per token).
void BM_KvqEncode(benchmark::State& state) {
  const KvChunk& c = Chunk(static_cast<uint32_t>(state.range(2)));
  size_t threads;
  auto pool = MakePool(state.range(1), &threads);
  codec::KvqOptions options;
  options.level = static_cast<int>(state.range(0));
  options.pool = pool.get();
  size_t bytes = 0;
  for ([[maybe_unused]] auto _ : state) {
    auto out = codec::EncodeKvq(c.layout, c.kv, options);
    if (!out.ok()) state.SkipWithError(std::string(out.status().message()).c_str());
    bytes = out->size();
    benchmark::DoNotOptimize(out->data());
  }
  SetRates(state, c.kv.size(), threads);
  state.counters["ratio_vs_fp16"] = static_cast<double>(c.kv.size()) / bytes;
}

void BM_KvqDecode(benchmark::State& state) {
  const KvChunk& c = Chunk(static_cast<uint32_t>(state.range(2)));
  size_t threads;
  auto pool = MakePool(state.range(1), &threads);
  codec::KvqOptions options;
  options.level = static_cast<int>(state.range(0));
  auto container = codec::EncodeKvq(c.layout, c.kv, options);
  std::vector<uint8_t> out(c.kv.size());
  for ([[maybe_unused]] auto _ : state) {
    Status s = codec::DecodeKvq(*container, out, pool.get());
    if (!s.ok()) state.SkipWithError(std::string(s.message()).c_str());
    benchmark::DoNotOptimize(out.data());
  }
  SetRates(state, c.kv.size(), threads);
}

// KVQ with the quality options of docs/benchmarks-codec.md "Rotation and attention sinks": keys
// and values rotated (decoded through the portable dequantiser plus the inverse Hadamard), one
// sink token kept exact (the chunk starts at position 0).
void BM_KvqDecodeRotatedSink(benchmark::State& state) {
  const KvChunk& c = Chunk(static_cast<uint32_t>(state.range(2)));
  size_t threads;
  auto pool = MakePool(state.range(1), &threads);
  codec::KvqOptions options;
  options.level = static_cast<int>(state.range(0));
  options.rotate_keys = options.rotate_values = true;
  options.sink_tokens = 1;
  auto container = codec::EncodeKvq(c.layout, c.kv, options);
  if (!container.ok()) {
    state.SkipWithError(std::string(container.status().message()).c_str());
    return;
  }
  std::vector<uint8_t> out(c.kv.size());
  for ([[maybe_unused]] auto _ : state) {
    Status s = codec::DecodeKvq(*container, out, pool.get());
    if (!s.ok()) state.SkipWithError(std::string(s.message()).c_str());
    benchmark::DoNotOptimize(out.data());
  }
  SetRates(state, c.kv.size(), threads);
}

void BM_ZstdCompress(benchmark::State& state) {
  const KvChunk& c = Chunk(256);
  std::vector<uint8_t> dst(ZSTD_compressBound(c.kv.size()));
  size_t n = 0;
  for ([[maybe_unused]] auto _ : state) {
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
  for ([[maybe_unused]] auto _ : state) {
    ZSTD_decompress(out.data(), out.size(), dst.data(), dst.size());
    benchmark::DoNotOptimize(out.data());
  }
  SetRates(state, c.kv.size(), 1);
}

void BM_Lz4Compress(benchmark::State& state) {
  const KvChunk& c = Chunk(256);
  std::vector<char> dst(LZ4_compressBound(static_cast<int>(c.kv.size())));
  int n = 0;
  for ([[maybe_unused]] auto _ : state) {
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
  for ([[maybe_unused]] auto _ : state) {
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
BENCHMARK(BM_KvqEncode)
    ->ArgsProduct({{1, 2, 3, 4}, {1, 0}, {256, 1024}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_KvqDecode)
    ->ArgsProduct({{1, 2, 3, 4}, {1, 0}, {256, 1024}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_KvqDecodeRotatedSink)
    ->ArgsProduct({{3}, {1, 0}, {256, 1024}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_ZstdCompress)->Arg(1)->Arg(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ZstdDecompress)->Arg(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Lz4Compress)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Lz4Decompress)->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- GPU codec. Args: level, chunk tokens, shape, data on device (1) or in host memory (0).
// Host-memory runs include the PCIe copies; device runs are what a GPU tier or a GPU-direct
// transfer sees. Encode returns the container in host memory either way.

// Device copy of a chunk's KV, freed at scope exit.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : ptr_(kernels::CudaMalloc(bytes).value_or(nullptr)) {}
  ~DeviceBuffer() {
    if (ptr_ != nullptr) (void)kernels::CudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return ptr_; }

 private:
  void* ptr_;
};

void BM_CacheGenGpuEncode(benchmark::State& state) {
  const KvChunk& c = Chunk(static_cast<uint32_t>(state.range(1)), state.range(2));
  const bool on_device = state.range(3) != 0;
  DeviceBuffer device(c.kv.size());
  if (device.get() == nullptr ||
      !kernels::CudaMemcpy(device.get(), c.kv.data(), c.kv.size()).ok()) {
    state.SkipWithError("device allocation");
    return;
  }
  const void* input = on_device ? device.get() : static_cast<const void*>(c.kv.data());
  codec::EncodeOptions options;
  options.level = static_cast<int>(state.range(0));
  size_t bytes = 1;
  for ([[maybe_unused]] auto _ : state) {
    auto out = codec::EncodeCacheGenGpu(c.layout, input, on_device, options);
    if (!out.ok()) {
      state.SkipWithError(std::string(out.status().message()).c_str());
      break;
    }
    bytes = out->size();
    benchmark::DoNotOptimize(out->data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * c.kv.size()));
  state.counters["ratio_vs_fp16"] = static_cast<double>(c.kv.size()) / bytes;
}

void BM_CacheGenGpuDecode(benchmark::State& state) {
  const KvChunk& c = Chunk(static_cast<uint32_t>(state.range(1)), state.range(2));
  const bool on_device = state.range(3) != 0;
  codec::EncodeOptions options;
  options.level = static_cast<int>(state.range(0));
  auto container = codec::EncodeCacheGen(c.layout, c.kv, options);
  DeviceBuffer device(c.kv.size());
  std::vector<uint8_t> host(c.kv.size());
  if (!container.ok() || device.get() == nullptr) {
    state.SkipWithError("encode or device allocation");
    return;
  }
  void* out = on_device ? device.get() : static_cast<void*>(host.data());
  for ([[maybe_unused]] auto _ : state) {
    Status s = codec::DecodeCacheGenGpu(*container, out, on_device);
    if (!s.ok()) {
      state.SkipWithError(std::string(s.message()).c_str());
      break;
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * c.kv.size()));
}

void RegisterGpuBenchmarks() {
  for (auto* b : {benchmark::RegisterBenchmark("BM_CacheGenGpuEncode", BM_CacheGenGpuEncode),
                  benchmark::RegisterBenchmark("BM_CacheGenGpuDecode", BM_CacheGenGpuDecode)}) {
    b->ArgsProduct({{1, 2, 3}, {256, 1024}, {kSmolLM2, kLlama8B}, {1, 0}})
        ->ArgNames({"level", "tokens", "llama8b", "on_device"})
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
}

}  // namespace
}  // namespace kvstash::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const bool gpu = kvstash::codec::GpuCodecAvailable();
  benchmark::AddCustomContext("cuda_device", gpu ? "yes" : "no");
  if (gpu) kvstash::bench::RegisterGpuBenchmarks();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
