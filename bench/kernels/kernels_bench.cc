// Gather/scatter throughput between paged KV memory and chunk objects, and RoPE shift throughput.
//
// Bytes per second count the chunk bytes moved (each is read once and written once). Shapes:
//   SmolLM2 chunk: 30 layers, 3 KV heads, head_dim 64, 256 tokens (5.6 MiB in f16)
//   Llama-8B layer: 8 KV heads, head_dim 128, 256 tokens (1 MiB in f16)
// Block size 16; the sequence's blocks are a random, non-contiguous draw from the pool.
// CUDA benchmarks are registered only when a device is present (main() below).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "kvstash/common/half.h"
#include "kvstash/common/layout.h"
#include "kvstash/kernels/cuda_device.h"
#include "kvstash/kernels/cuda_paged_kv.h"
#include "kvstash/kernels/cuda_rope.h"
#include "kvstash/kernels/paged_kv.h"
#include "kvstash/kernels/rope.h"

namespace kvstash::kernels {
namespace {

constexpr uint32_t kTokens = 256;
constexpr uint32_t kBlockSize = 16;

struct Model {
  uint32_t layers;
  uint32_t heads;
  uint32_t head_dim;
};
constexpr Model kSmolLM2{30, 3, 64};
constexpr Model kLlama8BLayer{1, 8, 128};

// Host or device memory for the pools and the chunk, filled with a fixed pattern.
class Buffers {
 public:
  explicit Buffers(bool device) : device_(device) {}
  ~Buffers() {
    for (void* p : owned_) {
      if (device_) {
        (void)CudaFree(p);
      } else {
        std::free(p);
      }
    }
  }
  void* Allocate(size_t bytes) {
    std::vector<uint8_t> pattern(bytes);
    for (size_t i = 0; i < bytes; ++i) pattern[i] = static_cast<uint8_t>(i * 131 + 7);
    void* p = nullptr;
    if (device_) {
      p = CudaMalloc(bytes).value();
      (void)CudaMemcpy(p, pattern.data(), bytes);
    } else {
      p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
      std::memcpy(p, pattern.data(), bytes);
    }
    owned_.push_back(p);
    return p;
  }

 private:
  bool device_;
  std::vector<void*> owned_;
};

struct Setup {
  Setup(const Model& model, DType paged_dtype, DType chunk_dtype, uint32_t head_begin,
        uint32_t head_end, bool device)
      : buffers(device) {
    paged.shape.num_layers = model.layers;
    paged.shape.num_kv_heads = model.heads;
    paged.shape.head_dim = model.head_dim;
    paged.shape.block_size = kBlockSize;
    paged.shape.num_blocks = 4 * kTokens / kBlockSize;  // the sequence uses a quarter of the pool
    paged.shape.dtype = paged_dtype;
    for (uint32_t l = 0; l < model.layers; ++l) {
      paged.k_pools.push_back(buffers.Allocate(paged.shape.PoolBytes()));
      paged.v_pools.push_back(buffers.Allocate(paged.shape.PoolBytes()));
    }
    std::vector<int32_t> all(paged.shape.num_blocks);
    std::iota(all.begin(), all.end(), 0);
    std::mt19937 rng(1);
    std::shuffle(all.begin(), all.end(), rng);
    table.assign(all.begin(), all.begin() + kTokens / kBlockSize);
    chunk.num_layers = model.layers;
    chunk.total_kv_heads = model.heads;
    chunk.head_begin = head_begin;
    chunk.head_end = head_end;
    chunk.head_dim = model.head_dim;
    chunk.dtype = chunk_dtype;
    chunk.num_tokens = kTokens;
    chunk_bytes = buffers.Allocate(chunk.RawBytes());
  }
  TokenSpan span() const { return TokenSpan{table, 0}; }

  Buffers buffers;
  PagedKvView paged;
  std::vector<int32_t> table;
  KvLayout chunk;
  void* chunk_bytes;
};

void Gather(benchmark::State& state, Model model, DType paged_dtype, DType chunk_dtype,
            uint32_t head_begin, uint32_t head_end) {
  Setup s(model, paged_dtype, chunk_dtype, head_begin, head_end, /*device=*/false);
  for ([[maybe_unused]] auto _ : state) {
    if (!GatherChunk(s.paged, s.span(), s.chunk, s.chunk_bytes).ok()) state.SkipWithError("gather");
    benchmark::DoNotOptimize(s.chunk_bytes);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * s.chunk.RawBytes());
}

void Scatter(benchmark::State& state, Model model, DType paged_dtype, DType chunk_dtype,
             uint32_t head_begin, uint32_t head_end) {
  Setup s(model, paged_dtype, chunk_dtype, head_begin, head_end, /*device=*/false);
  for ([[maybe_unused]] auto _ : state) {
    if (!ScatterChunk(s.chunk, s.chunk_bytes, s.span(), s.paged).ok()) {
      state.SkipWithError("scatter");
    }
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * s.chunk.RawBytes());
}

// Reference point for the copies: one contiguous memcpy of the same number of bytes (what a
// gather could reach if the blocks were contiguous and no conversion were needed).
void ContiguousMemcpy(benchmark::State& state, Model model) {
  const size_t bytes = size_t{model.layers} * 2 * kTokens * model.heads * model.head_dim * 2;
  Buffers buffers(/*device=*/false);
  void* from = buffers.Allocate(bytes);
  void* to = buffers.Allocate(bytes);
  for ([[maybe_unused]] auto _ : state) {
    std::memcpy(to, from, bytes);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * bytes);
}

// The K half of one Llama-8B layer of a chunk, moved by a constant delta (ShiftKeys) or by one
// delta per token (RotateKeys, every delta distinct: the cos/sin table is rebuilt per token).
void Rope(benchmark::State& state, DType dtype, bool per_token) {
  const Model m = kLlama8BLayer;
  const size_t elements = size_t{kTokens} * m.heads * m.head_dim;
  std::vector<std::byte> k(elements * DTypeSize(dtype));
  std::vector<float> values(elements);
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> uniform(-1, 1);
  for (float& v : values) v = uniform(rng);
  if (dtype == DType::kF32) {
    std::memcpy(k.data(), values.data(), k.size());
  } else {
    for (size_t i = 0; i < elements; ++i) {
      const uint16_t h = dtype == DType::kF16 ? F32ToF16(values[i]) : F32ToBF16(values[i]);
      std::memcpy(k.data() + 2 * i, &h, 2);
    }
  }
  std::vector<int64_t> deltas(kTokens);
  std::iota(deltas.begin(), deltas.end(), 1000);
  RopeParams params{RopeConvention::kNeox, 500000.0f, 0};
  int64_t sign = 1;
  for ([[maybe_unused]] auto _ : state) {
    Status status =
        per_token ? RotateKeys(k.data(), dtype, kTokens, m.heads, m.head_dim, params, deltas)
                  : ShiftKeys(k.data(), dtype, kTokens, m.heads, m.head_dim, params, sign * 997);
    if (!status.ok()) state.SkipWithError("rope");
    sign = -sign;  // keep values bounded
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * k.size());
  state.SetItemsProcessed(int64_t(state.iterations()) * kTokens);  // tokens per second
}

// ---- CUDA: each iteration queues kBatch launches and waits once. ----
constexpr int kBatch = 20;

void CudaGather(benchmark::State& state, Model model, DType dtype, bool scatter) {
  Setup s(model, dtype, dtype, 0, model.heads, /*device=*/true);
  for ([[maybe_unused]] auto _ : state) {
    for (int i = 0; i < kBatch; ++i) {
      Status status = scatter ? CudaScatterChunk(s.chunk, s.chunk_bytes, s.span(), s.paged, nullptr)
                              : CudaGatherChunk(s.paged, s.span(), s.chunk, s.chunk_bytes, nullptr);
      if (!status.ok()) state.SkipWithError("cuda copy");
    }
    if (!CudaStreamSynchronize(nullptr).ok()) state.SkipWithError("cuda sync");
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * kBatch * s.chunk.RawBytes());
}

void CudaRope(benchmark::State& state, DType dtype) {
  const Model m = kLlama8BLayer;
  const size_t bytes = size_t{kTokens} * m.heads * m.head_dim * DTypeSize(dtype);
  Buffers buffers(/*device=*/true);
  void* k = buffers.Allocate(bytes);
  RopeParams params{RopeConvention::kNeox, 500000.0f, 0};
  for ([[maybe_unused]] auto _ : state) {
    for (int i = 0; i < kBatch; ++i) {
      if (!CudaShiftKeys(k, dtype, kTokens, m.heads, m.head_dim, params, i % 2 ? 997 : -997,
                         nullptr)
               .ok()) {
        state.SkipWithError("cuda rope");
      }
    }
    if (!CudaStreamSynchronize(nullptr).ok()) state.SkipWithError("cuda sync");
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * kBatch * bytes);
  state.SetItemsProcessed(int64_t(state.iterations()) * kBatch * kTokens);
}

constexpr DType kF16 = DType::kF16;
constexpr DType kBF16 = DType::kBF16;
constexpr DType kF32 = DType::kF32;

BENCHMARK_CAPTURE(ContiguousMemcpy, SmolLM2_chunk_f16, kSmolLM2);
BENCHMARK_CAPTURE(ContiguousMemcpy, Llama8B_layer_f16, kLlama8BLayer);
BENCHMARK_CAPTURE(Gather, SmolLM2_chunk_f16, kSmolLM2, kF16, kF16, 0, 3);
BENCHMARK_CAPTURE(Scatter, SmolLM2_chunk_f16, kSmolLM2, kF16, kF16, 0, 3);
BENCHMARK_CAPTURE(Gather, SmolLM2_chunk_f16_heads_1_3, kSmolLM2, kF16, kF16, 1, 3);
BENCHMARK_CAPTURE(Gather, SmolLM2_chunk_f32_to_f16, kSmolLM2, kF32, kF16, 0, 3);
BENCHMARK_CAPTURE(Scatter, SmolLM2_chunk_f16_to_f32, kSmolLM2, kF32, kF16, 0, 3);
BENCHMARK_CAPTURE(Gather, SmolLM2_chunk_bf16_to_f16, kSmolLM2, kBF16, kF16, 0, 3);
BENCHMARK_CAPTURE(Gather, Llama8B_layer_f16, kLlama8BLayer, kF16, kF16, 0, 8);
BENCHMARK_CAPTURE(Scatter, Llama8B_layer_f16, kLlama8BLayer, kF16, kF16, 0, 8);
BENCHMARK_CAPTURE(Gather, Llama8B_layer_f16_heads_2_6, kLlama8BLayer, kF16, kF16, 2, 6);
BENCHMARK_CAPTURE(Gather, Llama8B_layer_f32_to_f16, kLlama8BLayer, kF32, kF16, 0, 8);
BENCHMARK_CAPTURE(Rope, Shift_Llama8B_K_f16, kF16, false);
BENCHMARK_CAPTURE(Rope, Shift_Llama8B_K_bf16, kBF16, false);
BENCHMARK_CAPTURE(Rope, Shift_Llama8B_K_f32, kF32, false);
BENCHMARK_CAPTURE(Rope, PerTokenDeltas_Llama8B_K_f16, kF16, true);

void RegisterCudaBenchmarks() {
  benchmark::RegisterBenchmark("CudaGather/SmolLM2_chunk_f16", CudaGather, kSmolLM2, kF16, false)
      ->UseRealTime();
  benchmark::RegisterBenchmark("CudaScatter/SmolLM2_chunk_f16", CudaGather, kSmolLM2, kF16, true)
      ->UseRealTime();
  benchmark::RegisterBenchmark("CudaGather/Llama8B_layer_f16", CudaGather, kLlama8BLayer, kF16,
                               false)
      ->UseRealTime();
  benchmark::RegisterBenchmark("CudaScatter/Llama8B_layer_f16", CudaGather, kLlama8BLayer, kF16,
                               true)
      ->UseRealTime();
  benchmark::RegisterBenchmark("CudaRope/Shift_Llama8B_K_f16", CudaRope, kF16)->UseRealTime();
}

}  // namespace
}  // namespace kvstash::kernels

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const bool cuda = kvstash::kernels::CudaDeviceAvailable();
  benchmark::AddCustomContext("cuda_device", cuda ? "yes" : "no");
  if (cuda) kvstash::kernels::RegisterCudaBenchmarks();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
