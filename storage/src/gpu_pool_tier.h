// GpuPoolTier: a lower tier (StorageTier) in GPU device memory, for hot chunks and
// prefill/decode staging (docs/storage.md "GPU pool tier").
//
// One pool of `capacity_bytes` is allocated on the device at Open and carved into 4 KiB pages
// (PageAllocator); each object version is one extent. The tier is volatile: Recover returns
// nothing, PutRecord and Sync keep nothing (device memory does not survive the process).
//
// The CUDA driver API is loaded at run time (dlopen of libcuda.so.1), so every build compiles
// this tier and none links CUDA: Open and Available return FailedPrecondition, saying why, when
// there is no driver, no device or the device cannot be used.
//
// Threading: as StorageTier: every method is thread-safe. Copies run on the calling thread with
// the device's primary context made current on it.
#ifndef KVSTASH_STORAGE_GPU_POOL_TIER_H_
#define KVSTASH_STORAGE_GPU_POOL_TIER_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "kvstash/common/mutex.h"
#include "kvstash/common/status.h"
#include "kvstash/storage/storage_tier.h"
#include "page_allocator.h"

namespace kvstash::storage {

struct CudaDriver;  // gpu_pool_tier.cc: the driver entry points

class GpuPoolTier final : public StorageTier {
 public:
  struct Options {
    int device = 0;               // CUDA device ordinal
    uint64_t capacity_bytes = 0;  // the pool, rounded down to 4 KiB; > 0
  };

  // OK when device `device` can be used here; FailedPrecondition naming what is missing (the
  // driver library, a device) otherwise.
  static Status Available(int device = 0);
  // Allocates the pool. FailedPrecondition as Available; InvalidArgument for a zero capacity;
  // ResourceExhausted when the device cannot allocate it.
  static Result<std::unique_ptr<GpuPoolTier>> Open(const Options& options);
  ~GpuPoolTier() override;

  Tier tier() const override { return Tier::kGpu; }
  Result<std::vector<TierRecord>> Recover() override { return std::vector<TierRecord>{}; }
  uint64_t StoredBytes(uint64_t payload_bytes) const override {
    return PageAllocator::RoundUp(payload_bytes);
  }
  bool TryReserve(uint64_t bytes, uint64_t limit_bytes) override;
  void Unreserve(uint64_t bytes) override;
  uint64_t used_bytes() const override { return used_.load(); }
  uint64_t capacity_bytes() const override { return capacity_bytes_; }

  // Copies the payload to the device. ResourceExhausted when no extent is large enough (the
  // pool is fragmented although the reservation fits), Internal for a failed copy.
  Status Write(TierRecord* record, const uint8_t* payload) override;
  Status PutRecord(const TierRecord& record, bool sync) override { return OkStatus(); }
  Status PutRecords(const std::vector<TierRecord>& records) override { return OkStatus(); }
  Status Sync() override { return OkStatus(); }
  void Remove(const Hash128& storage_key, uint64_t seq, uint64_t payload_bytes) override;
  // Copies back and checks the payload's crc32c against `info` (DataLoss on a mismatch).
  Status Read(const Hash128& storage_key, uint64_t seq, const ObjectInfo& info,
              uint8_t* dst) override;

  // Landings (StorageTier): extents of the pool that a transport fills (a UCX read into CUDA
  // memory at device_base() + offset), checked by copying them back.
  Result<uint64_t> AllocateLanding(uint64_t payload_bytes) override;
  Status WriteLanding(uint64_t offset, uint64_t at, const uint8_t* src, uint64_t n) override;
  Result<uint32_t> LandedCrc32c(uint64_t offset, uint64_t payload_bytes) override;
  Status AdoptLanding(uint64_t offset, TierRecord* record) override;
  void FreeLanding(uint64_t offset) override;

  // The pool's device address and length, for registering it with UCX
  // (transport MemoryKind::kCuda) so peers can read and write it.
  uint64_t device_base() const { return base_; }
  uint64_t pool_bytes() const { return capacity_bytes_; }

 private:
  GpuPoolTier(std::shared_ptr<const CudaDriver> driver, int device, void* context, uint64_t base,
              uint64_t capacity_bytes);
  Status MakeCurrent() const;

  const std::shared_ptr<const CudaDriver> driver_;
  const int device_;
  void* const context_;  // the device's primary context (CUcontext)
  const uint64_t base_;  // CUdeviceptr of the pool
  const uint64_t capacity_bytes_;

  struct Placed {
    PageAllocator::Extent extent;
    uint64_t payload_bytes = 0;
  };
  Mutex mu_;
  PageAllocator allocator_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<Hash128, uint64_t>, Placed> objects_ ABSL_GUARDED_BY(mu_);
  // Landings not yet adopted or freed, by offset.
  std::map<uint64_t, PageAllocator::Extent> landings_ ABSL_GUARDED_BY(mu_);
  uint64_t reserved_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  std::atomic<uint64_t> used_{0};
};

}  // namespace kvstash::storage

#endif  // KVSTASH_STORAGE_GPU_POOL_TIER_H_
