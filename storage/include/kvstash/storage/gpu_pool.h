// The GPU pool tier for code outside storage (cachesvc --gpu-pool-capacity): device memory as a
// lower tier of the store, for hot chunks and prefill/decode staging (docs/storage.md "GPU pool
// tier"). The tier itself is private (storage/src/gpu_pool_tier.h).
//
// The CUDA driver is loaded at run time (dlopen of libcuda.so.1): every build has this, none
// links CUDA, and without a driver or device the calls below fail with FailedPrecondition naming
// what is missing. Thread-safe (free functions).
#ifndef KVSTASH_STORAGE_GPU_POOL_H_
#define KVSTASH_STORAGE_GPU_POOL_H_

#include <cstdint>
#include <memory>

#include "kvstash/common/status.h"
#include "kvstash/storage/object_store.h"

namespace kvstash::storage {

struct GpuPoolOptions {
  int device = 0;               // CUDA device ordinal
  uint64_t capacity_bytes = 0;  // rounded down to 4 KiB; must be at least 4 KiB
};

// Where the pool lives in device memory: what a transport registers (transport
// MemoryKind::kCuda) so peers' reads can come from or land in it.
struct GpuPoolRegion {
  int device = 0;
  uint64_t device_base = 0;  // CUdeviceptr of the pool's first byte
  uint64_t bytes = 0;
};

// OK when CUDA device `device` can be used here; FailedPrecondition naming what is missing.
Status GpuPoolAvailable(int device);

// Opens the store of `options` (as ObjectStore::Open) with a GPU pool as its last lower tier:
// after the SSD tier, or the only lower tier when options.ssd_capacity_bytes is 0 (then the
// arena writes committed objects through into the pool and evicts into it). The pool is
// volatile: nothing in it survives the process. `*region` (optional) receives the pool's device
// memory, valid while the store lives. Errors: FailedPrecondition without a usable device,
// InvalidArgument for a capacity under 4 KiB, ResourceExhausted when the device cannot allocate
// the pool, and ObjectStore::Open's.
Result<std::unique_ptr<ObjectStore>> OpenStoreWithGpuPool(const StoreOptions& options,
                                                          const GpuPoolOptions& pool,
                                                          GpuPoolRegion* region = nullptr);

}  // namespace kvstash::storage

#endif  // KVSTASH_STORAGE_GPU_POOL_H_
