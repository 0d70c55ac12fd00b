// CUDA paged-KV copies against the CPU ones, bit for bit. Skips without a device.
#include "kvstash/kernels/cuda_paged_kv.h"

#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "cuda_test_util.h"
#include "kv_test_util.h"
#include "kvstash/kernels/paged_kv.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::kernels {
namespace {

using testing::DeviceBuffer;
using testing::PagedMemory;
using testing::RandomBlockTable;

struct GpuCase {
  std::string name;
  uint32_t layers, heads, head_dim, block_size, blocks;
  uint32_t layer_begin, num_layers, head_begin, head_end, num_tokens, token_begin;
  size_t chunk_offset;  // bytes added to the chunk pointer (forces narrower copy words)
};

const std::vector<GpuCase>& Cases() {
  static const std::vector<GpuCase> cases = {
      {"SmolLM2Chunk", 30, 3, 64, 16, 64, 0, 30, 0, 3, 256, 7, 0},
      {"HeadAndLayerSubRange", 4, 8, 128, 16, 40, 1, 2, 2, 5, 100, 3, 0},
      {"MoreLayersThanOneLaunch", 70, 1, 8, 4, 20, 0, 70, 0, 1, 30, 1, 0},
      {"MoreBlocksThanOneLaunch", 2, 2, 8, 1, 1200, 0, 2, 0, 2, 1100, 13, 0},
      {"OddDims", 2, 3, 5, 5, 30, 0, 2, 2, 3, 23, 4, 0},
      {"MisalignedChunkPointer", 2, 2, 16, 8, 16, 0, 2, 0, 2, 20, 0, 4},
  };
  return cases;
}

// Paged memory on the device mirroring a host PagedMemory.
struct DevicePaged {
  explicit DevicePaged(const PagedMemory& host) {
    view.shape = host.view.shape;
    const size_t bytes = host.view.shape.PoolBytes();
    for (size_t l = 0; l < host.k.size(); ++l) {
      k.push_back(std::make_unique<DeviceBuffer>(bytes));
      v.push_back(std::make_unique<DeviceBuffer>(bytes));
      k.back()->Upload(host.k[l].data(), bytes);
      v.back()->Upload(host.v[l].data(), bytes);
      view.k_pools.push_back(k.back()->get());
      view.v_pools.push_back(v.back()->get());
    }
  }
  void DownloadInto(PagedMemory& host) const {
    const size_t bytes = view.shape.PoolBytes();
    for (size_t l = 0; l < k.size(); ++l) {
      host.k[l] = k[l]->Download(bytes);
      host.v[l] = v[l]->Download(bytes);
    }
  }
  std::vector<std::unique_ptr<DeviceBuffer>> k, v;
  PagedKvView view;
};

using Param = std::tuple<DType, DType, GpuCase>;

class CudaPagedKvTest : public ::testing::TestWithParam<Param> {};

TEST_P(CudaPagedKvTest, MatchesCpuBitForBit) {
  KVSTASH_SKIP_WITHOUT_CUDA_DEVICE();
  const auto& [paged_dtype, chunk_dtype, c] = GetParam();
  std::mt19937_64 rng(11);
  PagedKvShape shape;
  shape.num_layers = c.layers;
  shape.num_kv_heads = c.heads;
  shape.head_dim = c.head_dim;
  shape.block_size = c.block_size;
  shape.num_blocks = c.blocks;
  shape.dtype = paged_dtype;
  PagedMemory host(shape);
  host.Randomize(rng);
  KvLayout chunk;
  chunk.num_layers = c.num_layers;
  chunk.layer_begin = c.layer_begin;
  chunk.total_kv_heads = c.heads;
  chunk.head_begin = c.head_begin;
  chunk.head_end = c.head_end;
  chunk.head_dim = c.head_dim;
  chunk.dtype = chunk_dtype;
  chunk.num_tokens = c.num_tokens;
  const uint32_t needed = (c.token_begin + c.num_tokens + c.block_size - 1) / c.block_size;
  const std::vector<int32_t> table = RandomBlockTable(c.blocks, needed, rng);
  const TokenSpan span{table, c.token_begin};
  const size_t bytes = chunk.RawBytes();

  // Gather: whole chunk, and one layer.
  std::vector<std::byte> want(bytes);
  ASSERT_OK(GatherChunk(host.view, span, chunk, want.data()));
  DevicePaged device(host);
  DeviceBuffer device_chunk(bytes + c.chunk_offset);
  std::byte* chunk_ptr = device_chunk.get() + c.chunk_offset;
  ASSERT_OK(CudaGatherChunk(device.view, span, chunk, chunk_ptr, nullptr));
  ASSERT_OK(CudaStreamSynchronize(nullptr));
  EXPECT_TRUE(device_chunk.Download(bytes, c.chunk_offset) == want) << "gather chunk";

  const size_t layer_bytes = ChunkLayerBytes(chunk);
  const uint32_t last = chunk.layer_begin + chunk.num_layers - 1;
  ASSERT_OK(CudaGatherLayer(device.view, span, chunk, last, chunk_ptr, nullptr));
  ASSERT_OK(CudaStreamSynchronize(nullptr));
  std::vector<std::byte> want_layer(want.end() - layer_bytes, want.end());
  EXPECT_TRUE(device_chunk.Download(layer_bytes, c.chunk_offset) == want_layer) << "gather layer";

  // Scatter a random chunk into both copies of the paged memory.
  std::vector<std::byte> source(bytes);
  testing::FillRandom(source.data(), chunk_dtype, bytes / DTypeSize(chunk_dtype), rng);
  device_chunk.Upload(source.data(), bytes, c.chunk_offset);
  ASSERT_OK(CudaScatterChunk(chunk, chunk_ptr, span, device.view, nullptr));
  ASSERT_OK(CudaStreamSynchronize(nullptr));
  ASSERT_OK(ScatterChunk(chunk, source.data(), span, host.view));
  PagedMemory from_device(shape);
  device.DownloadInto(from_device);
  EXPECT_TRUE(from_device == host) << "scatter chunk";

  ASSERT_TRUE(CudaScatterLayer(chunk, chunk.layer_begin, chunk_ptr + layer_bytes, span, device.view,
                               nullptr)
                  .ok());
  ASSERT_OK(ScatterLayer(chunk, chunk.layer_begin, source.data() + layer_bytes, span, host.view));
  ASSERT_OK(CudaStreamSynchronize(nullptr));
  device.DownloadInto(from_device);
  EXPECT_TRUE(from_device == host) << "scatter layer";
}

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  return std::string(DTypeName(std::get<0>(info.param))) + "_to_" +
         std::string(DTypeName(std::get<1>(info.param))) + "_" + std::get<2>(info.param).name;
}

INSTANTIATE_TEST_SUITE_P(
    AllDtypePairs, CudaPagedKvTest,
    ::testing::Combine(::testing::Values(DType::kF16, DType::kBF16, DType::kF32),
                       ::testing::Values(DType::kF16, DType::kBF16, DType::kF32),
                       ::testing::ValuesIn(Cases())),
    ParamName);

TEST(CudaPagedKvErrorTest, ValidationMatchesCpu) {
  KVSTASH_SKIP_WITHOUT_CUDA_DEVICE();
  PagedKvShape shape;
  shape.num_layers = 2;
  shape.num_kv_heads = 2;
  shape.head_dim = 8;
  shape.block_size = 4;
  shape.num_blocks = 4;
  PagedMemory host(shape);
  DevicePaged device(host);
  KvLayout chunk;
  chunk.num_layers = 2;
  chunk.total_kv_heads = 2;
  chunk.head_begin = 0;
  chunk.head_end = 2;
  chunk.head_dim = 8;
  chunk.num_tokens = 6;
  DeviceBuffer buffer(chunk.RawBytes());
  std::vector<int32_t> table = {1, 4};  // 4 is out of range
  EXPECT_THAT(CudaGatherChunk(device.view, TokenSpan{table, 0}, chunk, buffer.get(), nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument));
  table = {1, 1};
  EXPECT_THAT(CudaScatterChunk(chunk, buffer.get(), TokenSpan{table, 0}, device.view, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvstash::kernels
