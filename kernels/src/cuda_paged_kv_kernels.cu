#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cuda_dtype.cuh"
#include "cuda_launch.h"

namespace kvstash::kernels::cuda {
namespace {

// Units are elements of the element types, or words of the raw types for same-dtype copies.
struct CopyGeometry {
  uint32_t row_units;          // one token's held heads in the chunk
  uint32_t slot_units;         // one paged slot (all heads)
  uint32_t head_offset_units;  // from a slot's start to head_begin
};

// Kernel arguments stay within the classic 4 KiB limit (cuda_launch.h sizes the arrays for it).
static_assert(sizeof(PagedCopyLaunch) + sizeof(CopyGeometry) <= 4096);

// blockIdx.y = launch layer * 2 + (K=0 | V=1); threadIdx.y picks a token of the block's group;
// threadIdx.x strides over the token's row.
template <typename PagedT, typename ChunkT, bool kGather>
__global__ void PagedCopyKernel(const PagedCopyLaunch p, const CopyGeometry g) {
  const uint32_t t = blockIdx.x * blockDim.y + threadIdx.y;
  if (t >= p.num_tokens) return;
  const uint32_t layer = blockIdx.y >> 1;
  const uint32_t kv = blockIdx.y & 1u;
  const uint32_t run_pos = p.first_slot + t;
  const uint64_t block = static_cast<uint64_t>(p.blocks[run_pos / p.block_size]);
  const uint64_t slot = run_pos % p.block_size;
  PagedT* paged = static_cast<PagedT*>(kv ? p.v_pools[layer] : p.k_pools[layer]) +
                  (block * p.block_size + slot) * g.slot_units + g.head_offset_units;
  const uint64_t half_units = static_cast<uint64_t>(p.chunk_tokens) * g.row_units;
  ChunkT* chunk = reinterpret_cast<ChunkT*>(p.chunk + layer * p.chunk_layer_bytes) +
                  kv * half_units + static_cast<uint64_t>(p.chunk_token_offset + t) * g.row_units;
  for (uint32_t u = threadIdx.x; u < g.row_units; u += blockDim.x) {
    if constexpr (kGather) {
      chunk[u] = Convert<ChunkT>(paged[u]);
    } else {
      paged[u] = Convert<PagedT>(chunk[u]);
    }
  }
}

template <typename PagedT, typename ChunkT>
int Launch(const PagedCopyLaunch& p, const CopyGeometry& g, cudaStream_t stream) {
  const uint32_t threads_x = std::min<uint32_t>(256, (g.row_units + 31) / 32 * 32);
  const uint32_t threads_y = std::max<uint32_t>(1, 256 / threads_x);
  const dim3 block(threads_x, threads_y);
  const dim3 grid((p.num_tokens + threads_y - 1) / threads_y, p.num_layers * 2);
  if (p.gather) {
    PagedCopyKernel<PagedT, ChunkT, true><<<grid, block, 0, stream>>>(p, g);
  } else {
    PagedCopyKernel<PagedT, ChunkT, false><<<grid, block, 0, stream>>>(p, g);
  }
  return static_cast<int>(cudaGetLastError());
}

uint32_t ElementBytes(int dtype) { return dtype == kLaunchF32 ? 4 : 2; }

// The widest word (16, 8, 4 or 2 bytes) that divides every offset and pointer of the copy.
uint32_t CopyWord(const PagedCopyLaunch& p) {
  const uint64_t elem = ElementBytes(p.paged_dtype);
  uint64_t all = uint64_t{p.heads} * p.head_dim * elem;
  all |= uint64_t{p.num_kv_heads} * p.head_dim * elem;
  all |= uint64_t{p.head_begin} * p.head_dim * elem;
  all |= reinterpret_cast<uintptr_t>(p.chunk);
  for (uint32_t l = 0; l < p.num_layers; ++l) {
    all |= reinterpret_cast<uintptr_t>(p.k_pools[l]) | reinterpret_cast<uintptr_t>(p.v_pools[l]);
  }
  for (uint32_t word = 16; word > 2; word /= 2) {
    if (all % word == 0) return word;
  }
  return 2;
}

template <typename Word>
int LaunchRaw(const PagedCopyLaunch& p, cudaStream_t stream) {
  const uint32_t elem = ElementBytes(p.paged_dtype);
  const uint32_t w = sizeof(Word);
  const CopyGeometry g{p.heads * p.head_dim * elem / w, p.num_kv_heads * p.head_dim * elem / w,
                       p.head_begin * p.head_dim * elem / w};
  return Launch<Word, Word>(p, g, stream);
}

template <typename PagedT>
int LaunchToChunkType(const PagedCopyLaunch& p, const CopyGeometry& g, cudaStream_t stream) {
  switch (p.chunk_dtype) {
    case kLaunchF32:
      return Launch<PagedT, float>(p, g, stream);
    case kLaunchF16:
      return Launch<PagedT, F16>(p, g, stream);
    default:
      return Launch<PagedT, BF16>(p, g, stream);
  }
}

}  // namespace

int LaunchPagedCopy(const PagedCopyLaunch& p, void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  if (p.num_tokens == 0 || p.num_layers == 0) return 0;
  if (p.paged_dtype == p.chunk_dtype) {
    switch (CopyWord(p)) {
      case 16:
        return LaunchRaw<uint4>(p, stream);
      case 8:
        return LaunchRaw<uint2>(p, stream);
      case 4:
        return LaunchRaw<uint32_t>(p, stream);
      default:
        return LaunchRaw<uint16_t>(p, stream);
    }
  }
  const CopyGeometry g{p.heads * p.head_dim, p.num_kv_heads * p.head_dim,
                       p.head_begin * p.head_dim};
  switch (p.paged_dtype) {
    case kLaunchF32:
      return LaunchToChunkType<float>(p, g, stream);
    case kLaunchF16:
      return LaunchToChunkType<F16>(p, g, stream);
    default:
      return LaunchToChunkType<BF16>(p, g, stream);
  }
}

}  // namespace kvstash::kernels::cuda
