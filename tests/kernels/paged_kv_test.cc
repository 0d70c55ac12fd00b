#include "kvstash/kernels/paged_kv.h"

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kv_test_util.h"
#include "kvstash/kernels/cuda_device.h"
#include "kvstash/kernels/cuda_paged_kv.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::kernels {
namespace {

using testing::ConvertOne;
using testing::NaiveCopy;
using testing::PagedMemory;
using testing::RandomBlockTable;

struct Geometry {
  std::string name;
  PagedKvShape shape;  // dtype is set by the test parameter
  uint32_t layer_begin;
  uint32_t num_layers;
  uint32_t head_begin;
  uint32_t head_end;
  uint32_t num_tokens;
  uint32_t token_begin;
};

PagedKvShape Shape(uint32_t layers, uint32_t heads, uint32_t head_dim, uint32_t block_size,
                   uint32_t blocks) {
  PagedKvShape s;
  s.num_layers = layers;
  s.num_kv_heads = heads;
  s.head_dim = head_dim;
  s.block_size = block_size;
  s.num_blocks = blocks;
  return s;
}

const std::vector<Geometry>& Geometries() {
  static const std::vector<Geometry> geometries = {
      // every head and layer; span starts mid-block and ends in a partial block
      {"AllHeads", Shape(4, 4, 16, 8, 40), 0, 4, 0, 4, 37, 5},
      // a sub-range of layers and of heads
      {"SubRanges", Shape(4, 4, 16, 8, 40), 1, 2, 1, 3, 37, 13},
      // block-aligned span of exactly one block
      {"OneAlignedBlock", Shape(2, 2, 8, 8, 10), 0, 2, 0, 2, 8, 16},
      // span inside one block
      {"InsideOneBlock", Shape(2, 2, 8, 8, 10), 1, 1, 1, 2, 3, 2},
      // one token per block
      {"BlockSizeOne", Shape(3, 2, 8, 1, 64), 0, 3, 0, 1, 20, 7},
      // odd head count and head_dim, single last head
      {"OddDims", Shape(2, 3, 5, 5, 30), 0, 2, 2, 3, 23, 4},
  };
  return geometries;
}

KvLayout ChunkLayout(const Geometry& g, DType dtype) {
  KvLayout chunk;
  chunk.num_layers = g.num_layers;
  chunk.layer_begin = g.layer_begin;
  chunk.total_kv_heads = g.shape.num_kv_heads;
  chunk.head_begin = g.head_begin;
  chunk.head_end = g.head_end;
  chunk.head_dim = g.shape.head_dim;
  chunk.dtype = dtype;
  chunk.num_tokens = g.num_tokens;
  return chunk;
}

std::vector<int32_t> TableFor(const Geometry& g, std::mt19937_64& rng) {
  const uint32_t needed =
      (g.token_begin + g.num_tokens + g.shape.block_size - 1) / g.shape.block_size;
  return RandomBlockTable(g.shape.num_blocks, std::min(needed + 2, g.shape.num_blocks), rng);
}

PagedMemory Clone(const PagedMemory& from) {
  PagedMemory to(from.view.shape);
  to.k = from.k;
  to.v = from.v;
  for (size_t l = 0; l < to.k.size(); ++l) {
    to.view.k_pools[l] = to.k[l].data();
    to.view.v_pools[l] = to.v[l].data();
  }
  return to;
}

using Param = std::tuple<DType, DType, Geometry>;  // paged dtype, chunk dtype, geometry

class PagedKvTest : public ::testing::TestWithParam<Param> {
 protected:
  PagedKvTest()
      : rng_(0x5eed),
        geometry_(std::get<2>(GetParam())),
        paged_([&] {
          PagedKvShape shape = geometry_.shape;
          shape.dtype = std::get<0>(GetParam());
          return shape;
        }()),
        chunk_(ChunkLayout(geometry_, std::get<1>(GetParam()))),
        table_(TableFor(geometry_, rng_)) {
    paged_.Randomize(rng_);
  }

  TokenSpan Span(const std::vector<int32_t>& table) const {
    return TokenSpan{table, geometry_.token_begin};
  }

  std::mt19937_64 rng_;
  Geometry geometry_;
  PagedMemory paged_;
  KvLayout chunk_;
  std::vector<int32_t> table_;
};

TEST_P(PagedKvTest, GatherMatchesNaiveLoop) {
  std::vector<std::byte> got(chunk_.RawBytes(), std::byte{0xAB});
  std::vector<std::byte> want(chunk_.RawBytes(), std::byte{0xAB});
  ASSERT_OK(GatherChunk(paged_.view, Span(table_), chunk_, got.data()));
  NaiveCopy(paged_, table_, geometry_.token_begin, chunk_, want.data(), /*gather=*/true);
  EXPECT_EQ(got, want);

  // Layer by layer gives the same bytes as the whole chunk.
  std::vector<std::byte> by_layer(chunk_.RawBytes(), std::byte{0xCD});
  const size_t layer_bytes = ChunkLayerBytes(chunk_);
  for (uint32_t i = 0; i < chunk_.num_layers; ++i) {
    ASSERT_TRUE(GatherLayer(paged_.view, Span(table_), chunk_, chunk_.layer_begin + i,
                            by_layer.data() + i * layer_bytes)
                    .ok());
  }
  EXPECT_EQ(by_layer, want);
}

TEST_P(PagedKvTest, ScatterMatchesNaiveLoop) {
  std::vector<std::byte> chunk_bytes(chunk_.RawBytes());
  testing::FillRandom(chunk_bytes.data(), chunk_.dtype,
                      chunk_bytes.size() / DTypeSize(chunk_.dtype), rng_);
  PagedMemory got = Clone(paged_);
  PagedMemory want = Clone(paged_);
  ASSERT_OK(ScatterChunk(chunk_, chunk_bytes.data(), Span(table_), got.view));
  NaiveCopy(want, table_, geometry_.token_begin, chunk_, chunk_bytes.data(), /*gather=*/false);
  EXPECT_TRUE(got == want);  // the span's slots changed, everything else kept its bytes

  PagedMemory by_layer = Clone(paged_);
  const size_t layer_bytes = ChunkLayerBytes(chunk_);
  for (uint32_t i = 0; i < chunk_.num_layers; ++i) {
    ASSERT_TRUE(ScatterLayer(chunk_, chunk_.layer_begin + i, chunk_bytes.data() + i * layer_bytes,
                             Span(table_), by_layer.view)
                    .ok());
  }
  EXPECT_TRUE(by_layer == want);
}

TEST_P(PagedKvTest, RoundTripThroughOtherBlocks) {
  std::vector<std::byte> first(chunk_.RawBytes());
  ASSERT_OK(GatherChunk(paged_.view, Span(table_), chunk_, first.data()));

  // Into zeroed memory at other, non-contiguous blocks, then back.
  PagedMemory other(paged_.view.shape);
  std::vector<int32_t> other_table = TableFor(geometry_, rng_);
  ASSERT_OK(ScatterChunk(chunk_, first.data(), Span(other_table), other.view));
  std::vector<std::byte> second(chunk_.RawBytes());
  ASSERT_OK(GatherChunk(other.view, Span(other_table), chunk_, second.data()));

  const DType paged_dtype = paged_.view.shape.dtype;
  const bool exact_both_ways = paged_dtype == chunk_.dtype || chunk_.dtype == DType::kF32;
  if (exact_both_ways) {
    EXPECT_EQ(first, second);
    // And the paged values themselves came back bit for bit.
    KvLayout native = chunk_;
    native.dtype = paged_dtype;
    std::vector<std::byte> original(native.RawBytes()), restored(native.RawBytes());
    ASSERT_OK(GatherChunk(paged_.view, Span(table_), native, original.data()));
    ASSERT_OK(GatherChunk(other.view, Span(other_table), native, restored.data()));
    EXPECT_EQ(original, restored);
  } else {
    // Narrowing pairs (f32 -> f16/bf16, f16 <-> bf16) round once: element by element, the second
    // gather is the reference conversion of the first.
    std::vector<std::byte> want(first.size());
    const size_t ce = DTypeSize(chunk_.dtype);
    std::vector<std::byte> tmp(4);
    for (size_t i = 0; i < first.size() / ce; ++i) {
      ConvertOne(first.data() + i * ce, chunk_.dtype, tmp.data(), paged_dtype);
      ConvertOne(tmp.data(), paged_dtype, want.data() + i * ce, chunk_.dtype);
    }
    EXPECT_EQ(second, want);
  }
}

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  return std::string(DTypeName(std::get<0>(info.param))) + "_to_" +
         std::string(DTypeName(std::get<1>(info.param))) + "_" + std::get<2>(info.param).name;
}

INSTANTIATE_TEST_SUITE_P(
    AllDtypePairs, PagedKvTest,
    ::testing::Combine(::testing::Values(DType::kF16, DType::kBF16, DType::kF32),
                       ::testing::Values(DType::kF16, DType::kBF16, DType::kF32),
                       ::testing::ValuesIn(Geometries())),
    ParamName);

TEST(PagedKvConvertTest, SpecialValuesRoundToNearestEven) {
  PagedKvShape shape = Shape(1, 1, 8, 4, 2);
  shape.dtype = DType::kF32;
  PagedMemory paged(shape);
  const float values[8] = {65504.0f,      65520.0f,           -65520.0f,          5.9604645e-8f,
                           2.9802322e-8f, 1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048, -0.0f};
  std::memcpy(paged.k[0].data(), values, sizeof(values));
  KvLayout chunk;
  chunk.num_layers = 1;
  chunk.total_kv_heads = 1;
  chunk.head_begin = 0;
  chunk.head_end = 1;
  chunk.head_dim = 8;
  chunk.num_tokens = 1;
  chunk.dtype = DType::kF16;
  std::vector<int32_t> table = {0};
  std::vector<uint16_t> out(16);
  ASSERT_OK(GatherChunk(paged.view, TokenSpan{table, 0}, chunk, out.data()));
  const uint16_t want[8] = {0x7BFF, 0x7C00, 0xFC00, 0x0001, 0x0000, 0x3C00, 0x3C02, 0x8000};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(out[i], want[i]) << i;
}

TEST(PagedKvTest, ChunkLayerBytes) {
  KvLayout chunk;
  chunk.num_layers = 30;
  chunk.total_kv_heads = 3;
  chunk.head_begin = 1;
  chunk.head_end = 3;
  chunk.head_dim = 64;
  chunk.num_tokens = 256;
  chunk.dtype = DType::kBF16;
  EXPECT_EQ(ChunkLayerBytes(chunk), size_t{2} * 256 * 2 * 64 * 2);
  EXPECT_EQ(ChunkLayerBytes(chunk) * 30, chunk.RawBytes());
}

// ---- error cases --------------------------------------------------------------------------------

class PagedKvErrorTest : public ::testing::Test {
 protected:
  PagedKvErrorTest() : rng_(7), paged_(Shape(4, 4, 8, 4, 16)) {
    paged_.Randomize(rng_);
    chunk_.num_layers = 2;
    chunk_.layer_begin = 1;
    chunk_.total_kv_heads = 4;
    chunk_.head_begin = 1;
    chunk_.head_end = 3;
    chunk_.head_dim = 8;
    chunk_.num_tokens = 10;
    table_ = {3, 9, 1, 12};  // positions 2..11 need blocks 0..2
  }

  // Runs every entry point with the current state and expects InvalidArgument with nothing
  // written.
  void ExpectRejected(const std::string& why) {
    SCOPED_TRACE(why);
    TokenSpan span{table_, token_begin_};
    std::vector<std::byte> chunk_bytes(chunk_.RawBytes() + 1, std::byte{0x11});
    const auto before = chunk_bytes;
    const PagedMemory paged_before = Clone(paged_);
    void* chunk_ptr = null_chunk_ ? nullptr : chunk_bytes.data() + chunk_offset_;
    EXPECT_THAT(GatherChunk(paged_.view, span, chunk_, chunk_ptr),
                StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(GatherLayer(paged_.view, span, chunk_, layer_, chunk_ptr),
                StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(ScatterChunk(chunk_, chunk_ptr, span, paged_.view),
                StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(ScatterLayer(chunk_, layer_, chunk_ptr, span, paged_.view),
                StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_EQ(chunk_bytes, before);
    EXPECT_TRUE(paged_ == paged_before);
  }

  std::mt19937_64 rng_;
  PagedMemory paged_;
  KvLayout chunk_;
  std::vector<int32_t> table_;
  uint32_t token_begin_ = 2;
  uint32_t layer_ = 1;
  bool null_chunk_ = false;
  size_t chunk_offset_ = 0;
};

TEST_F(PagedKvErrorTest, ValidSetupIsAccepted) {
  TokenSpan span{table_, token_begin_};
  std::vector<std::byte> chunk_bytes(chunk_.RawBytes());
  EXPECT_OK(GatherChunk(paged_.view, span, chunk_, chunk_bytes.data()));
  EXPECT_OK(ScatterLayer(chunk_, 2, chunk_bytes.data(), span, paged_.view));
}

TEST_F(PagedKvErrorTest, BlockIdOutOfRange) {
  table_[1] = 16;
  ExpectRejected("block id == num_blocks");
  table_[1] = -1;
  ExpectRejected("negative block id");
}

TEST_F(PagedKvErrorTest, BlockTableTooShort) {
  table_.resize(2);
  ExpectRejected("span needs three blocks");
  table_ = {3, 9, 1};
  token_begin_ = 3;  // positions 3..12 need block index 3
  ExpectRejected("span shifted past the table");
}

TEST_F(PagedKvErrorTest, RepeatedBlock) {
  table_[2] = 3;
  ExpectRejected("block 3 twice");
}

TEST_F(PagedKvErrorTest, HeadRangeOutside) {
  chunk_.head_end = 5;
  ExpectRejected("head_end beyond total heads");
  chunk_.head_end = 3;
  chunk_.total_kv_heads = 5;
  ExpectRejected("chunk model has more heads than paged memory");
}

TEST_F(PagedKvErrorTest, LayerOutside) {
  layer_ = 3;  // chunk holds layers 1..2
  chunk_.num_layers = 2;
  {
    SCOPED_TRACE("layer outside the chunk");
    TokenSpan span{table_, token_begin_};
    std::vector<std::byte> bytes(chunk_.RawBytes());
    EXPECT_THAT(GatherLayer(paged_.view, span, chunk_, 3, bytes.data()),
                StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(GatherLayer(paged_.view, span, chunk_, 0, bytes.data()),
                StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(ScatterLayer(chunk_, 3, bytes.data(), span, paged_.view),
                StatusIs(absl::StatusCode::kInvalidArgument));
  }
  chunk_.layer_begin = 3;  // layers 3..4, paged memory has 0..3
  layer_ = 4;
  ExpectRejected("chunk layers beyond the paged layers");
}

TEST_F(PagedKvErrorTest, SizeMismatch) {
  chunk_.head_dim = 16;
  ExpectRejected("head_dim differs");
  chunk_.head_dim = 8;
  paged_.view.k_pools.pop_back();
  ExpectRejected("k_pools shorter than num_layers");
  paged_.view.k_pools.push_back(paged_.k.back().data());
  paged_.view.shape.block_size = 0;
  ExpectRejected("zero block size");
  paged_.view.shape.block_size = 4;
  chunk_.num_tokens = 0;
  ExpectRejected("empty chunk layout");
}

TEST_F(PagedKvErrorTest, NullPointers) {
  null_chunk_ = true;
  ExpectRejected("null chunk");
  null_chunk_ = false;
  chunk_offset_ = 1;
  ExpectRejected("misaligned chunk");
  chunk_offset_ = 0;
  paged_.view.v_pools[2] = nullptr;
  layer_ = 2;
  ExpectRejected("null pool of a copied layer");
  paged_.view.v_pools[2] = paged_.v[2].data() + 1;
  ExpectRejected("misaligned pool of a copied layer");
}

TEST_F(PagedKvErrorTest, CudaVariantsRejectTheSameInputs) {
  // Without CUDA every entry point is Unimplemented; with CUDA validation comes first.
  table_[1] = 16;
  std::vector<std::byte> bytes(chunk_.RawBytes());
  Status status =
      CudaGatherChunk(paged_.view, TokenSpan{table_, token_begin_}, chunk_, bytes.data(), nullptr);
#if KVSTASH_HAVE_CUDA
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kInvalidArgument));
#else
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kUnimplemented));
#endif
}

TEST(CudaDeviceTest, EntryPointsAreUnimplementedWithoutDevice) {
  if (CudaDeviceAvailable()) GTEST_SKIP() << "a CUDA device is present (see the gpu tests)";
  EXPECT_THAT(CudaMalloc(16), StatusIs(absl::StatusCode::kUnimplemented));
  EXPECT_THAT(CudaStreamSynchronize(nullptr), StatusIs(absl::StatusCode::kUnimplemented));
}

}  // namespace
}  // namespace kvstash::kernels
