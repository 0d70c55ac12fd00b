#include "kvstash/codec/cachegen_gpu.h"

#include "absl/strings/str_cat.h"
#include "chunk.h"
#include "kvstash/codec/levels.h"
#include "kvstash/codec/profile.h"
#include "kvstash/kernels/cachegen_cuda.h"
#include "kvstash/kernels/cuda_device.h"

namespace kvstash::codec {
namespace {

kernels::CacheGenCudaShape CudaShape(uint32_t layers, uint32_t channels, uint32_t tokens,
                                     uint32_t subchunk, DType dtype, uint32_t lp) {
  kernels::CacheGenCudaShape s;
  s.num_layers = layers;
  s.channels = channels;
  s.num_tokens = tokens;
  s.subchunk_tokens = subchunk;
  s.dtype = dtype;
  s.lp = lp;
  return s;
}

Result<const ProfileTable*> FindTable(const CdfProfile& profile, uint32_t layers, uint32_t heads,
                                      uint32_t head_dim, std::span<const uint8_t> bins) {
  const ProfileShape& s = profile.shape();
  if (s.num_layers != layers || s.num_heads != heads || s.head_dim != head_dim) {
    return absl::InvalidArgumentError("profile shape does not match the chunk");
  }
  const ProfileTable* t = profile.Find(CacheGenMode::kReference, bins);
  if (t == nullptr) return absl::InvalidArgumentError("profile has no table for these bins");
  return t;
}

}  // namespace

bool GpuCodecAvailable() { return kernels::CudaDeviceAvailable(); }

Result<std::vector<uint8_t>> EncodeCacheGenGpu(const KvLayout& layout, const void* kv,
                                               bool kv_on_device, const EncodeOptions& options) {
  if (!GpuCodecAvailable()) return absl::UnimplementedError("no CUDA device");
  KVSTASH_RETURN_IF_ERROR(layout.Validate());
  if (options.mode != CacheGenMode::kReference) {
    return absl::UnimplementedError("delta mode is not implemented on the GPU");
  }
  if (options.subchunk_tokens == 0 || options.subchunk_tokens > 65535) {
    return absl::InvalidArgumentError("subchunk_tokens must be in [1, 65535]");
  }
  KVSTASH_ASSIGN_OR_RETURN(std::vector<uint8_t> bins, ResolveRowBins(layout, options));
  KVSTASH_ASSIGN_OR_RETURN(int max_bins, CheckRowBins(bins, layout.num_layers));
  const ProfileTable* table = nullptr;
  if (options.profile != nullptr) {
    if (!(ProfileShape::Of(layout) == options.profile->shape())) {
      return absl::InvalidArgumentError("profile was learned on a different layer or head range");
    }
    KVSTASH_ASSIGN_OR_RETURN(table, FindTable(*options.profile, layout.num_layers, layout.heads(),
                                              layout.head_dim, bins));
  }
  const uint32_t channels = layout.heads() * layout.head_dim;
  const auto shape = CudaShape(layout.num_layers, channels, layout.num_tokens,
                               options.subchunk_tokens, layout.dtype, max_bins + 1);
  kernels::CacheGenCudaEncoded enc;
  std::span<const uint16_t> given_cdf;
  if (table != nullptr) given_cdf = table->cdf;
  KVSTASH_RETURN_IF_ERROR(
      kernels::CacheGenEncodeCuda(kv, kv_on_device, shape, bins, given_cdf, &enc));

  internal::ContainerParts parts;
  ContainerInfo& info = parts.info;
  info.mode = CacheGenMode::kReference;
  info.level = static_cast<uint8_t>(options.row_bins.empty() ? options.level : 0);
  info.dtype = layout.dtype;
  info.scale_dtype = layout.dtype;
  info.cdf_source = table != nullptr ? CdfSource::kProfile : CdfSource::kInline;
  info.lp = static_cast<uint8_t>(max_bins + 1);
  info.num_layers = layout.num_layers;
  info.num_heads = layout.heads();
  info.head_dim = layout.head_dim;
  info.num_tokens = layout.num_tokens;
  info.subchunk_tokens = options.subchunk_tokens;
  if (table != nullptr) info.profile_id = options.profile->id();
  parts.bins = bins;
  if (table == nullptr) parts.cdf = enc.cdf;
  parts.scales = enc.scales;
  parts.lengths = enc.lengths;
  parts.payload = enc.payload;
  return internal::BuildContainer(parts);
}

Status DecodeCacheGenGpu(std::span<const uint8_t> container, void* out, bool out_on_device,
                         const DecodeOptions& options) {
  if (!GpuCodecAvailable()) return absl::UnimplementedError("no CUDA device");
  KVSTASH_ASSIGN_OR_RETURN(ContainerView v, ParseContainer(container));
  const ContainerInfo& info = v.info;
  if (info.mode != CacheGenMode::kReference) {
    return absl::UnimplementedError("delta mode is not implemented on the GPU");
  }
  std::vector<uint16_t> cdf;
  if (info.cdf_source == CdfSource::kProfile) {
    const CdfProfile* profile =
        options.profiles != nullptr ? options.profiles->Find(info.profile_id) : nullptr;
    if (profile == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("CacheGen profile ", info.profile_id.ToHex(), " is not available"));
    }
    KVSTASH_ASSIGN_OR_RETURN(
        const ProfileTable* t,
        FindTable(*profile, info.num_layers, info.num_heads, info.head_dim, v.bins));
    cdf = t->cdf;
  } else {
    cdf.resize(v.cdf.size() / 2);
    for (size_t i = 0; i < cdf.size(); ++i) cdf[i] = v.Cdf(i);
  }
  std::vector<float> scales(uint64_t{info.rows()} * info.num_tokens);
  for (size_t i = 0; i < scales.size(); ++i) scales[i] = v.Scale(i);
  std::vector<uint32_t> lengths(v.lengths.size() / info.length_width);
  for (size_t i = 0; i < lengths.size(); ++i) lengths[i] = v.StreamLength(i);
  const auto shape = CudaShape(info.num_layers, info.channels(), info.num_tokens,
                               info.subchunk_tokens, info.dtype, info.lp);
  std::vector<uint8_t> bins(v.bins.begin(), v.bins.end());
  return kernels::CacheGenDecodeCuda(shape, bins, cdf, scales, lengths, v.payload, out,
                                     out_on_device);
}

}  // namespace kvstash::codec
