#include "gpu_pool_tier.h"

#include <dlfcn.h>

#include <algorithm>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/storage/gpu_pool.h"
#include "spdlog/spdlog.h"
#include "tiered_store.h"

namespace kvstash::storage {

// The CUDA driver API entry points this tier uses, resolved from libcuda.so.1 (the versioned
// names cuda.h maps the plain ones to). Types as in cuda.h: CUresult is an int enum, CUdevice an
// int, CUcontext a pointer, CUdeviceptr an unsigned 64-bit integer.
struct CudaDriver {
  using CuInit = int (*)(unsigned int);
  using CuDeviceGetCount = int (*)(int*);
  using CuDeviceGet = int (*)(int*, int);
  using CuPrimaryCtxRetain = int (*)(void**, int);
  using CuPrimaryCtxRelease = int (*)(int);
  using CuCtxSetCurrent = int (*)(void*);
  using CuMemAlloc = int (*)(uint64_t*, size_t);
  using CuMemFree = int (*)(uint64_t);
  using CuMemcpyHtoD = int (*)(uint64_t, const void*, size_t);
  using CuMemcpyDtoH = int (*)(void*, uint64_t, size_t);
  using CuGetErrorString = int (*)(int, const char**);

  CuInit init = nullptr;
  CuDeviceGetCount device_get_count = nullptr;
  CuDeviceGet device_get = nullptr;
  CuPrimaryCtxRetain primary_ctx_retain = nullptr;
  CuPrimaryCtxRelease primary_ctx_release = nullptr;
  CuCtxSetCurrent ctx_set_current = nullptr;
  CuMemAlloc mem_alloc = nullptr;
  CuMemFree mem_free = nullptr;
  CuMemcpyHtoD memcpy_htod = nullptr;
  CuMemcpyDtoH memcpy_dtoh = nullptr;
  CuGetErrorString get_error_string = nullptr;

  std::string Error(const char* call, int result) const {
    const char* text = nullptr;
    if (get_error_string == nullptr || get_error_string(result, &text) != 0 || text == nullptr) {
      text = "unknown error";
    }
    return absl::StrCat(call, " failed: CUDA error ", result, " (", text, ")");
  }
};

namespace {

template <typename F>
bool Resolve(void* lib, const char* name, F* fn) {
  *fn = reinterpret_cast<F>(dlsym(lib, name));
  return *fn != nullptr;
}

// Loads and initialises the driver once per process (the library stays loaded).
Result<std::shared_ptr<const CudaDriver>> LoadDriver() {
  static std::once_flag once;
  static Result<std::shared_ptr<const CudaDriver>>* loaded = nullptr;
  std::call_once(once, [] {
    auto result = [&]() -> Result<std::shared_ptr<const CudaDriver>> {
      void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
      if (lib == nullptr) {
        return absl::FailedPreconditionError(absl::StrCat(
            "no CUDA driver: libcuda.so.1 cannot be loaded (", std::string(dlerror()), ")"));
      }
      auto d = std::make_shared<CudaDriver>();
      bool ok = Resolve(lib, "cuInit", &d->init) &&
                Resolve(lib, "cuDeviceGetCount", &d->device_get_count) &&
                Resolve(lib, "cuDeviceGet", &d->device_get) &&
                Resolve(lib, "cuDevicePrimaryCtxRetain", &d->primary_ctx_retain) &&
                Resolve(lib, "cuDevicePrimaryCtxRelease_v2", &d->primary_ctx_release) &&
                Resolve(lib, "cuCtxSetCurrent", &d->ctx_set_current) &&
                Resolve(lib, "cuMemAlloc_v2", &d->mem_alloc) &&
                Resolve(lib, "cuMemFree_v2", &d->mem_free) &&
                Resolve(lib, "cuMemcpyHtoD_v2", &d->memcpy_htod) &&
                Resolve(lib, "cuMemcpyDtoH_v2", &d->memcpy_dtoh) &&
                Resolve(lib, "cuGetErrorString", &d->get_error_string);
      if (!ok) {
        return absl::FailedPreconditionError(
            "the CUDA driver (libcuda.so.1) lacks an entry point this tier needs (driver too old)");
      }
      if (int r = d->init(0); r != 0) {
        return absl::FailedPreconditionError(d->Error("cuInit", r));
      }
      return std::shared_ptr<const CudaDriver>(std::move(d));
    }();
    loaded = new Result<std::shared_ptr<const CudaDriver>>(std::move(result));
  });
  return *loaded;
}

// The driver, with `device` checked to exist.
Result<std::shared_ptr<const CudaDriver>> DriverFor(int device) {
  KVSTASH_ASSIGN_OR_RETURN(std::shared_ptr<const CudaDriver> d, LoadDriver());
  int count = 0;
  if (int r = d->device_get_count(&count); r != 0) {
    return absl::FailedPreconditionError(d->Error("cuDeviceGetCount", r));
  }
  if (count == 0) return absl::FailedPreconditionError("no CUDA device");
  if (device < 0 || device >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("no CUDA device ", device, " (", count, " present)"));
  }
  return d;
}

}  // namespace

Status GpuPoolTier::Available(int device) { return DriverFor(device).status(); }

Status GpuPoolAvailable(int device) { return GpuPoolTier::Available(device); }

Result<std::unique_ptr<ObjectStore>> OpenStoreWithGpuPool(const StoreOptions& options,
                                                          const GpuPoolOptions& pool,
                                                          GpuPoolRegion* region) {
  GpuPoolTier::Options o;
  o.device = pool.device;
  o.capacity_bytes = pool.capacity_bytes;
  KVSTASH_ASSIGN_OR_RETURN(std::unique_ptr<GpuPoolTier> tier, GpuPoolTier::Open(o));
  const GpuPoolRegion where{pool.device, tier->device_base(), tier->pool_bytes()};
  std::vector<std::unique_ptr<StorageTier>> lower;
  lower.push_back(std::move(tier));
  KVSTASH_ASSIGN_OR_RETURN(std::unique_ptr<ObjectStore> store,
                           TieredStore::Create(options, std::move(lower)));
  if (region != nullptr) *region = where;
  return store;
}

Result<std::unique_ptr<GpuPoolTier>> GpuPoolTier::Open(const Options& options) {
  const uint64_t capacity =
      options.capacity_bytes / PageAllocator::kPageBytes * PageAllocator::kPageBytes;
  if (capacity == 0) return absl::InvalidArgumentError("GPU pool capacity must be >= 4 KiB");
  KVSTASH_ASSIGN_OR_RETURN(std::shared_ptr<const CudaDriver> d, DriverFor(options.device));
  int dev = 0;
  if (int r = d->device_get(&dev, options.device); r != 0) {
    return absl::FailedPreconditionError(d->Error("cuDeviceGet", r));
  }
  void* ctx = nullptr;
  if (int r = d->primary_ctx_retain(&ctx, dev); r != 0) {
    return absl::FailedPreconditionError(d->Error("cuDevicePrimaryCtxRetain", r));
  }
  uint64_t base = 0;
  int r = d->ctx_set_current(ctx);
  if (r == 0) r = d->mem_alloc(&base, capacity);
  if (r != 0) {
    d->primary_ctx_release(dev);
    return absl::ResourceExhaustedError(
        absl::StrCat(d->Error("cuMemAlloc", r), " for a GPU pool of ", capacity, " bytes"));
  }
  return std::unique_ptr<GpuPoolTier>(new GpuPoolTier(std::move(d), dev, ctx, base, capacity));
}

GpuPoolTier::GpuPoolTier(std::shared_ptr<const CudaDriver> driver, int device, void* context,
                         uint64_t base, uint64_t capacity_bytes)
    : driver_(std::move(driver)),
      device_(device),
      context_(context),
      base_(base),
      capacity_bytes_(capacity_bytes),
      allocator_(capacity_bytes) {}

GpuPoolTier::~GpuPoolTier() {
  if (MakeCurrent().ok()) driver_->mem_free(base_);
  driver_->primary_ctx_release(device_);
}

Status GpuPoolTier::MakeCurrent() const {
  if (int r = driver_->ctx_set_current(context_); r != 0) {
    return absl::InternalError(driver_->Error("cuCtxSetCurrent", r));
  }
  return OkStatus();
}

bool GpuPoolTier::TryReserve(uint64_t bytes, uint64_t limit_bytes) {
  MutexLock lock(&mu_);
  if (used_.load() + reserved_ + bytes > limit_bytes) return false;
  reserved_ += bytes;
  return true;
}

void GpuPoolTier::Unreserve(uint64_t bytes) {
  MutexLock lock(&mu_);
  reserved_ -= bytes;
}

Status GpuPoolTier::Write(TierRecord* record, const uint8_t* payload) {
  const uint64_t payload_bytes = record->info.payload_bytes;
  const uint64_t stored = StoredBytes(payload_bytes);
  std::optional<PageAllocator::Extent> extent;
  {
    MutexLock lock(&mu_);
    reserved_ -= stored;
    extent = allocator_.Allocate(payload_bytes);
  }
  if (!extent) {
    return absl::ResourceExhaustedError(absl::StrCat("GPU pool fragmented: no free extent of ",
                                                     stored, " bytes (", used_.load(), " of ",
                                                     capacity_bytes_, " bytes used)"));
  }
  Status status = MakeCurrent();
  if (status.ok()) {
    if (int r = driver_->memcpy_htod(base_ + extent->offset, payload, payload_bytes); r != 0) {
      status = absl::InternalError(driver_->Error("cuMemcpyHtoD", r));
    }
  }
  MutexLock lock(&mu_);
  if (!status.ok()) {
    (void)allocator_.Free(extent->offset);
    return status;
  }
  record->seq = next_seq_++;
  objects_[{record->name.storage_key, record->seq}] = Placed{*extent, payload_bytes};
  used_ += extent->bytes;
  return OkStatus();
}

Result<uint64_t> GpuPoolTier::AllocateLanding(uint64_t payload_bytes) {
  const uint64_t stored = StoredBytes(payload_bytes);
  MutexLock lock(&mu_);
  reserved_ -= stored;
  std::optional<PageAllocator::Extent> extent = allocator_.Allocate(payload_bytes);
  if (!extent) {
    return absl::ResourceExhaustedError(absl::StrCat("GPU pool fragmented: no free extent of ",
                                                     stored, " bytes (", used_.load(), " of ",
                                                     capacity_bytes_, " bytes used)"));
  }
  landings_[extent->offset] = *extent;
  used_ += extent->bytes;
  return extent->offset;
}

Status GpuPoolTier::WriteLanding(uint64_t offset, uint64_t at, const uint8_t* src, uint64_t n) {
  {
    MutexLock lock(&mu_);
    auto it = landings_.find(offset);
    if (it == landings_.end()) {
      return absl::NotFoundError(absl::StrCat("no landing at GPU pool offset ", offset));
    }
    if (at > it->second.bytes || n > it->second.bytes - at) {
      return absl::InvalidArgumentError("write past the end of a GPU pool landing");
    }
  }
  KVSTASH_RETURN_IF_ERROR(MakeCurrent());
  if (int r = driver_->memcpy_htod(base_ + offset + at, src, n); r != 0) {
    return absl::InternalError(driver_->Error("cuMemcpyHtoD", r));
  }
  return OkStatus();
}

Result<uint32_t> GpuPoolTier::LandedCrc32c(uint64_t offset, uint64_t payload_bytes) {
  {
    MutexLock lock(&mu_);
    auto it = landings_.find(offset);
    if (it == landings_.end()) {
      return absl::NotFoundError(absl::StrCat("no landing at GPU pool offset ", offset));
    }
    if (payload_bytes > it->second.bytes) {
      return absl::InvalidArgumentError("crc32c past the end of a GPU pool landing");
    }
  }
  // The landing stays allocated while its reservation is being committed (nobody else frees
  // it), so the bytes are read back in pieces through one bounded host buffer.
  KVSTASH_RETURN_IF_ERROR(MakeCurrent());
  constexpr uint64_t kPiece = 4 << 20;
  std::vector<uint8_t> host(std::min(payload_bytes, kPiece));
  uint32_t crc = 0;  // Crc32c of no bytes
  for (uint64_t done = 0; done < payload_bytes;) {
    const uint64_t n = std::min(kPiece, payload_bytes - done);
    if (int r = driver_->memcpy_dtoh(host.data(), base_ + offset + done, n); r != 0) {
      return absl::InternalError(driver_->Error("cuMemcpyDtoH", r));
    }
    crc = Crc32cExtend(crc, host.data(), n);
    done += n;
  }
  return crc;
}

Status GpuPoolTier::AdoptLanding(uint64_t offset, TierRecord* record) {
  MutexLock lock(&mu_);
  auto it = landings_.find(offset);
  if (it == landings_.end()) {
    return absl::NotFoundError(absl::StrCat("no landing at GPU pool offset ", offset));
  }
  const PageAllocator::Extent extent = it->second;
  landings_.erase(it);
  if (record->info.payload_bytes > extent.bytes) {
    (void)allocator_.Free(extent.offset);
    used_ -= extent.bytes;
    return absl::InvalidArgumentError("a GPU pool landing smaller than its object");
  }
  record->seq = next_seq_++;
  objects_[{record->name.storage_key, record->seq}] = Placed{extent, record->info.payload_bytes};
  return OkStatus();
}

void GpuPoolTier::FreeLanding(uint64_t offset) {
  MutexLock lock(&mu_);
  auto it = landings_.find(offset);
  if (it == landings_.end()) return;
  Status freed = allocator_.Free(it->second.offset);
  if (!freed.ok()) spdlog::error("kvstash storage: GPU pool: {}", freed.ToString());
  used_ -= it->second.bytes;
  landings_.erase(it);
}

void GpuPoolTier::Remove(const Hash128& storage_key, uint64_t seq, uint64_t payload_bytes) {
  MutexLock lock(&mu_);
  auto it = objects_.find({storage_key, seq});
  if (it == objects_.end()) return;
  Status freed = allocator_.Free(it->second.extent.offset);
  if (!freed.ok()) spdlog::error("kvstash storage: GPU pool: {}", freed.ToString());
  used_ -= it->second.extent.bytes;
  objects_.erase(it);
}

Status GpuPoolTier::Read(const Hash128& storage_key, uint64_t seq, const ObjectInfo& info,
                         uint8_t* dst) {
  uint64_t offset = 0;
  {
    MutexLock lock(&mu_);
    auto it = objects_.find({storage_key, seq});
    if (it == objects_.end()) {
      return absl::NotFoundError(absl::StrCat("object ", storage_key.ToHex(), " version ", seq,
                                              " is not in the GPU pool"));
    }
    if (it->second.payload_bytes != info.payload_bytes) {
      return absl::DataLossError(absl::StrCat("GPU pool holds ", it->second.payload_bytes,
                                              " bytes of ", storage_key.ToHex(), ", not ",
                                              info.payload_bytes));
    }
    offset = it->second.extent.offset;
  }
  // A Remove racing with this copy may let a later Write reuse the extent: the crc32c check
  // below then fails (DataLoss), so other bytes are never returned as this object.
  KVSTASH_RETURN_IF_ERROR(MakeCurrent());
  if (int r = driver_->memcpy_dtoh(dst, base_ + offset, info.payload_bytes); r != 0) {
    return absl::InternalError(driver_->Error("cuMemcpyDtoH", r));
  }
  if (Crc32c(dst, info.payload_bytes) != info.payload_crc32c) {
    return absl::DataLossError(
        absl::StrCat("GPU pool copy of ", storage_key.ToHex(), " does not match its crc32c"));
  }
  return OkStatus();
}

}  // namespace kvstash::storage
