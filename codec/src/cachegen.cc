// Chunk encoder and decoder: options -> quantise -> CDF (own or profile) -> streams -> container.
#include "kvstash/codec/cachegen.h"

#include <bit>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "chunk.h"
#include "kvstash/codec/levels.h"
#include "kvstash/codec/profile.h"

namespace kvstash::codec {

Result<std::vector<uint8_t>> ResolveRowBins(const KvLayout& layout, const EncodeOptions& options) {
  if (!options.row_bins.empty()) {
    KVSTASH_RETURN_IF_ERROR(CheckRowBins(options.row_bins, layout.num_layers).status());
    return options.row_bins;
  }
  uint32_t model_layers =
      options.model_layers != 0 ? options.model_layers : layout.layer_begin + layout.num_layers;
  return RowBinsForLevel(options.level, model_layers, layout.layer_begin, layout.num_layers);
}

namespace {

Status CheckOptions(const EncodeOptions& o) {
  if (o.subchunk_tokens == 0 || o.subchunk_tokens > 65535) {
    return absl::InvalidArgumentError("subchunk_tokens must be in [1, 65535]");
  }
  if (o.mode == CacheGenMode::kDelta &&
      (o.delta_group_tokens < 2 || o.delta_group_tokens > 65535)) {
    return absl::InvalidArgumentError("delta_group_tokens must be in [2, 65535]");
  }
  if (o.mode != CacheGenMode::kReference && o.mode != CacheGenMode::kDelta) {
    return absl::InvalidArgumentError("unknown CacheGen mode");
  }
  return OkStatus();
}

// The profile table a container needs, checked against the chunk's shape and bins.
Result<const ProfileTable*> ProfileTableFor(const CdfProfile& profile, uint32_t layers,
                                            uint32_t heads, uint32_t head_dim, CacheGenMode mode,
                                            std::span<const uint8_t> bins) {
  const ProfileShape& s = profile.shape();
  if (s.num_layers != layers || s.num_heads != heads || s.head_dim != head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("profile ", profile.id().ToHex(), " was learned for ", s.num_layers,
                     " layers x ", s.num_heads, " heads x ", s.head_dim, ", chunk has ", layers,
                     " x ", heads, " x ", head_dim));
  }
  const ProfileTable* table = profile.Find(mode, bins);
  if (table == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("profile ", profile.id().ToHex(),
                                                   " has no table for ", CacheGenModeName(mode),
                                                   " mode with these bins"));
  }
  return table;
}

}  // namespace

Result<std::vector<uint8_t>> EncodeCacheGen(const KvLayout& layout, std::span<const uint8_t> kv,
                                            const EncodeOptions& options) {
  KVSTASH_RETURN_IF_ERROR(layout.Validate());
  KVSTASH_RETURN_IF_ERROR(CheckOptions(options));
  if (kv.size() != layout.RawBytes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV payload is ", kv.size(), " bytes, layout needs ", layout.RawBytes()));
  }
  KVSTASH_ASSIGN_OR_RETURN(std::vector<uint8_t> bins, ResolveRowBins(layout, options));
  KVSTASH_ASSIGN_OR_RETURN(int max_bins, CheckRowBins(bins, layout.num_layers));
  if (options.profile != nullptr && !(ProfileShape::Of(layout) == options.profile->shape())) {
    return absl::InvalidArgumentError("profile was learned on a different layer or head range");
  }

  const internal::ChunkShape shape = internal::ChunkShape::Of(layout);
  internal::ChunkParams p;
  p.mode = options.mode;
  p.row_bins = bins;
  p.lp = max_bins + 1;
  p.subchunk_tokens = options.subchunk_tokens;
  p.group_tokens = options.mode == CacheGenMode::kDelta ? options.delta_group_tokens : 0;

  const ProfileTable* table = nullptr;
  if (options.profile != nullptr) {
    KVSTASH_ASSIGN_OR_RETURN(table, ProfileTableFor(*options.profile, shape.layers, shape.heads,
                                                    shape.head_dim, p.mode, bins));
  }
  if (!options.reconstruction.empty() && options.reconstruction.size() != layout.RawBytes()) {
    return absl::InvalidArgumentError(absl::StrCat("reconstruction buffer is ",
                                                   options.reconstruction.size(),
                                                   " bytes, layout needs ", layout.RawBytes()));
  }
  internal::QuantizedChunk q;
  KVSTASH_RETURN_IF_ERROR(internal::QuantizeChunk(shape, kv, p, options.pool, &q));
  if (!options.reconstruction.empty()) {
    KVSTASH_RETURN_IF_ERROR(
        internal::Reconstruct(shape, p, q, options.pool, options.reconstruction));
  }
  std::vector<uint16_t> own_cdf;
  std::span<const uint16_t> cdf;
  if (table != nullptr) {
    cdf = table->cdf;
  } else {
    own_cdf = internal::BuildChunkCdfs(shape, p, q, options.pool);
    cdf = own_cdf;
  }
  internal::EncodedStreams streams;
  KVSTASH_RETURN_IF_ERROR(internal::EncodeStreams(shape, p, q, cdf, options.pool, &streams));

  internal::ContainerParts parts;
  ContainerInfo& info = parts.info;
  info.mode = p.mode;
  info.level = static_cast<uint8_t>(options.row_bins.empty() ? options.level : 0);
  info.dtype = layout.dtype;
  info.scale_dtype = p.mode == CacheGenMode::kDelta ? DType::kF32 : layout.dtype;
  info.cdf_source = table != nullptr ? CdfSource::kProfile : CdfSource::kInline;
  info.lp = static_cast<uint8_t>(p.lp);
  info.num_layers = shape.layers;
  info.num_heads = shape.heads;
  info.head_dim = shape.head_dim;
  info.num_tokens = shape.tokens;
  info.subchunk_tokens = p.subchunk_tokens;
  info.delta_group_tokens = p.group_tokens;
  if (table != nullptr) info.profile_id = options.profile->id();
  parts.bins = bins;
  if (table == nullptr) parts.cdf = own_cdf;
  parts.scales = q.scales;
  parts.anchors = q.anchors;
  parts.lengths = streams.lengths;
  parts.payload = streams.payload;
  return internal::BuildContainer(parts);
}

namespace {

Status DecodeParsed(const ContainerView& v, std::span<uint8_t> out, const DecodeOptions& options) {
  const ContainerInfo& info = v.info;
  if (out.size() != info.RawBytes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("output is ", out.size(), " bytes, container decodes to ", info.RawBytes()));
  }
  internal::ChunkParams p;
  p.mode = info.mode;
  p.row_bins.assign(v.bins.begin(), v.bins.end());
  p.lp = info.lp;
  p.subchunk_tokens = info.subchunk_tokens;
  p.group_tokens = info.delta_group_tokens;

  std::vector<uint16_t> inline_cdf;
  std::span<const uint16_t> cdf;
  if (info.cdf_source == CdfSource::kProfile) {
    const CdfProfile* profile =
        options.profiles != nullptr ? options.profiles->Find(info.profile_id) : nullptr;
    if (profile == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("CacheGen profile ", info.profile_id.ToHex(), " is not available"));
    }
    KVSTASH_ASSIGN_OR_RETURN(const ProfileTable* table,
                             ProfileTableFor(*profile, info.num_layers, info.num_heads,
                                             info.head_dim, info.mode, v.bins));
    cdf = table->cdf;
  } else {
    inline_cdf.resize(v.cdf.size() / 2);
    if constexpr (std::endian::native == std::endian::little) {
      std::memcpy(inline_cdf.data(), v.cdf.data(), v.cdf.size());
    } else {
      for (size_t i = 0; i < inline_cdf.size(); ++i) inline_cdf[i] = v.Cdf(i);
    }
    cdf = inline_cdf;
  }
  std::vector<float> scales(uint64_t{info.rows()} * info.num_tokens);
  for (size_t i = 0; i < scales.size(); ++i) scales[i] = v.Scale(i);
  std::vector<uint32_t> lengths(v.lengths.size() / info.length_width);
  for (size_t i = 0; i < lengths.size(); ++i) lengths[i] = v.StreamLength(i);

  internal::DecodeInputs in;
  in.cdf = cdf;
  in.scales = scales;
  in.anchors = v.anchors;
  in.lengths = lengths;
  in.payload = v.payload;
  return internal::DecodeStreams(internal::ChunkShape::Of(info), p, in, options.pool, out);
}

}  // namespace

Status DecodeCacheGen(std::span<const uint8_t> container, std::span<uint8_t> out,
                      const DecodeOptions& options) {
  KVSTASH_ASSIGN_OR_RETURN(ContainerView v, ParseContainer(container));
  return DecodeParsed(v, out, options);
}

Result<std::vector<uint8_t>> DecodeCacheGen(std::span<const uint8_t> container,
                                            const DecodeOptions& options) {
  KVSTASH_ASSIGN_OR_RETURN(ContainerView v, ParseContainer(container));
  std::vector<uint8_t> out(v.info.RawBytes());
  KVSTASH_RETURN_IF_ERROR(DecodeParsed(v, out, options));
  return out;
}

}  // namespace kvstash::codec
