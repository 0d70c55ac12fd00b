// Status-returning front of the CacheGen CUDA kernels: argument checks here (host compiler, absl),
// device work in cachegen_cuda.cu. Without KVSTASH_HAVE_CUDA every entry point is Unimplemented.
#include "kvstash/kernels/cachegen_cuda.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "cachegen_cuda_launch.h"
#include "kvstash/kernels/cachegen_core.h"
#include "kvstash/kernels/cuda_device.h"

namespace kvstash::kernels {
namespace {

namespace cg = cachegen;

Status CheckShape(const CacheGenCudaShape& s, std::span<const uint8_t> row_bins) {
  if (s.num_layers == 0 || s.channels == 0 || s.num_tokens == 0 || s.subchunk_tokens == 0) {
    return absl::InvalidArgumentError("CacheGen CUDA: empty shape");
  }
  if (DTypeSize(s.dtype) == 0) return absl::InvalidArgumentError("CacheGen CUDA: bad dtype");
  if (row_bins.size() != s.rows()) {
    return absl::InvalidArgumentError("CacheGen CUDA: need one bins value per row");
  }
  int max_bins = 0;
  for (uint8_t b : row_bins) {
    if (b < cg::kMinBins || b > cg::kMaxBins || b % 2 != 0) {
      return absl::InvalidArgumentError(absl::StrCat("CacheGen CUDA: bad bins ", int{b}));
    }
    max_bins = std::max<int>(max_bins, b);
  }
  if (s.lp != static_cast<uint32_t>(max_bins) + 1) {
    return absl::InvalidArgumentError("CacheGen CUDA: lp must be max bins + 1");
  }
  // Device indexing is 32-bit per stream and 64-bit per element; keep streams countable.
  uint64_t streams = uint64_t{s.subchunks()} * s.rows() * s.channels;
  if (streams > (uint64_t{1} << 31)) return absl::InvalidArgumentError("CacheGen CUDA: too large");
  return OkStatus();
}

#if defined(KVSTASH_HAVE_CUDA)
Status ToStatus(const detail::CgResult& r) {
  switch (r.code) {
    case detail::CgCode::kOk:
      return OkStatus();
    case detail::CgCode::kInvalidArgument:
      return absl::InvalidArgumentError(r.message);
    case detail::CgCode::kDataLoss:
      return absl::DataLossError(r.message);
    case detail::CgCode::kInternal:
      break;
  }
  return absl::InternalError(r.message);
}

detail::CgShape ToDetail(const CacheGenCudaShape& s) {
  detail::CgShape d;
  d.layers = s.num_layers;
  d.channels = s.channels;
  d.tokens = s.num_tokens;
  d.subchunk = s.subchunk_tokens;
  d.lp = s.lp;
  d.dtype = static_cast<int>(s.dtype);
  return d;
}
#endif

}  // namespace

Status CacheGenEncodeCuda(const void* kv, bool kv_on_device, const CacheGenCudaShape& shape,
                          std::span<const uint8_t> row_bins, std::span<const uint16_t> cdf,
                          CacheGenCudaEncoded* out) {
  if (!CudaDeviceAvailable()) return absl::UnimplementedError("no CUDA device");
  KVSTASH_RETURN_IF_ERROR(CheckShape(shape, row_bins));
  const size_t cdf_entries = size_t{shape.rows()} * shape.channels * shape.lp;
  if (!cdf.empty() && cdf.size() != cdf_entries) {
    return absl::InvalidArgumentError("CacheGen CUDA: CDF size mismatch");
  }
  if (kv == nullptr || out == nullptr) return absl::InvalidArgumentError("CacheGen CUDA: null");
  out->scales.assign(size_t{shape.rows()} * shape.num_tokens, 0.0f);
  out->cdf.assign(cdf.empty() ? cdf_entries : 0, 0);
  out->lengths.assign(size_t{shape.subchunks()} * shape.rows() * shape.channels, 0);
  out->payload.clear();
#if defined(KVSTASH_HAVE_CUDA)
  return ToStatus(detail::CgEncode(kv, kv_on_device, ToDetail(shape), row_bins.data(),
                                   cdf.empty() ? nullptr : cdf.data(), out->scales.data(),
                                   out->cdf.data(), out->lengths.data(), &out->payload));
#else
  return absl::UnimplementedError("built without CUDA");
#endif
}

Status CacheGenDecodeCuda(const CacheGenCudaShape& shape, std::span<const uint8_t> row_bins,
                          std::span<const uint16_t> cdf, std::span<const float> scales,
                          std::span<const uint32_t> lengths, std::span<const uint8_t> payload,
                          void* out, bool out_on_device) {
  if (!CudaDeviceAvailable()) return absl::UnimplementedError("no CUDA device");
  KVSTASH_RETURN_IF_ERROR(CheckShape(shape, row_bins));
  const size_t streams = size_t{shape.subchunks()} * shape.rows() * shape.channels;
  if (cdf.size() != size_t{shape.rows()} * shape.channels * shape.lp ||
      scales.size() != size_t{shape.rows()} * shape.num_tokens || lengths.size() != streams) {
    return absl::InvalidArgumentError("CacheGen CUDA: decode input sizes do not match the shape");
  }
  if (out == nullptr) return absl::InvalidArgumentError("CacheGen CUDA: null output");
  std::vector<uint64_t> offsets(streams);
  uint64_t total = 0;
  for (size_t i = 0; i < streams; ++i) {
    offsets[i] = total;
    total += lengths[i];
  }
  if (total != payload.size()) {
    return absl::InvalidArgumentError("CacheGen CUDA: stream lengths do not sum to the payload");
  }
#if defined(KVSTASH_HAVE_CUDA)
  return ToStatus(detail::CgDecode(ToDetail(shape), row_bins.data(), cdf.data(), scales.data(),
                                   lengths.data(), offsets.data(), payload.data(), payload.size(),
                                   out, out_on_device));
#else
  (void)out_on_device;
  return absl::UnimplementedError("built without CUDA");
#endif
}

}  // namespace kvstash::kernels
