// The boundary between the host-side entry points (.cc: validation, Status) and the CUDA
// translation units (.cu). Nothing here needs CUDA or absl headers, so nvcc never parses absl and
// the .cc files compile without the CUDA toolkit. Launch functions return a cudaError_t as int.
#ifndef KVSTASH_KERNELS_SRC_CUDA_LAUNCH_H_
#define KVSTASH_KERNELS_SRC_CUDA_LAUNCH_H_

#include <cstdint>

namespace kvstash::kernels::cuda {

// Dtype codes as in kvstash::DType (1 = f16, 2 = bf16, 3 = f32).
inline constexpr int kLaunchF16 = 1;
inline constexpr int kLaunchBF16 = 2;
inline constexpr int kLaunchF32 = 3;

// Sized so that one launch's parameters stay under the classic 4 KiB kernel-argument limit; larger
// copies are split into several launches by the host side.
inline constexpr uint32_t kMaxLayersPerLaunch = 64;
inline constexpr uint32_t kMaxBlocksPerLaunch = 512;

// One launch of a paged <-> chunk copy: `num_layers` layers and a run of tokens whose blocks are
// listed in `blocks` (the first token sits at slot `first_slot` of blocks[0]).
struct PagedCopyLaunch {
  void* k_pools[kMaxLayersPerLaunch];
  void* v_pools[kMaxLayersPerLaunch];
  int32_t blocks[kMaxBlocksPerLaunch];
  char* chunk;                  // the slab of the launch's first layer
  uint64_t chunk_layer_bytes;   // stride between layer slabs
  uint32_t chunk_tokens;        // tokens in the chunk (stride of the K/V halves)
  uint32_t chunk_token_offset;  // chunk index of the launch's first token
  uint32_t num_tokens;          // tokens in this launch
  uint32_t num_layers;          // layers in this launch
  uint32_t first_slot;
  uint32_t block_size;
  uint32_t num_kv_heads;
  uint32_t head_begin;
  uint32_t heads;
  uint32_t head_dim;
  int paged_dtype;
  int chunk_dtype;
  bool gather;  // paged -> chunk; else chunk -> paged
};

int LaunchPagedCopy(const PagedCopyLaunch& launch, void* stream);

struct RopeLaunch {
  void* k;
  const int64_t* deltas;  // per token (device-accessible), or null: every token uses `delta`
  int64_t delta;
  uint32_t num_tokens;
  uint32_t num_heads;
  uint32_t head_dim;
  uint32_t rotary_dim;
  double theta;
  int dtype;
  bool neox;  // else gptj
};

int LaunchRope(const RopeLaunch& launch, void* stream);

// Runtime helpers (cuda_device.cu).
int DeviceCount(int* count);
int Malloc(void** ptr, uint64_t bytes);
int Free(void* ptr);
int Memcpy(void* dst, const void* src, uint64_t bytes);
int StreamSynchronize(void* stream);
const char* ErrorName(int code);
const char* ErrorString(int code);
bool IsNoDevice(int code);  // no device / no usable driver
bool IsOutOfMemory(int code);

}  // namespace kvstash::kernels::cuda

#endif  // KVSTASH_KERNELS_SRC_CUDA_LAUNCH_H_
