#include "kvstash/common/layout.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace kvstash {

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF16:
    case DType::kBF16:
      return 2;
    case DType::kF32:
      return 4;
  }
  return 0;
}

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF16:
      return "f16";
    case DType::kBF16:
      return "bf16";
    case DType::kF32:
      return "f32";
  }
  return "unknown";
}

std::string_view RopeConventionName(RopeConvention rope) {
  switch (rope) {
    case RopeConvention::kNone:
      return "none";
    case RopeConvention::kNeox:
      return "neox";
    case RopeConvention::kGptj:
      return "gptj";
  }
  return "unknown";
}

std::string_view EncodingName(Encoding encoding) {
  switch (encoding) {
    case Encoding::kRaw:
      return "raw";
    case Encoding::kCacheGen:
      return "cachegen";
  }
  return "unknown";
}

Status KvLayout::Validate() const {
  auto bad = [](const char* what) {
    return absl::InvalidArgumentError(absl::StrCat("invalid KV layout: ", what));
  };
  if (num_layers == 0 || num_layers > kMaxLayers) return bad("num_layers out of range");
  if (layer_begin >= kMaxLayers || layer_begin + num_layers > kMaxLayers) {
    return bad("layer range out of range");
  }
  if (total_kv_heads == 0 || total_kv_heads > kMaxKvHeads)
    return bad("total_kv_heads out of range");
  if (head_begin >= head_end) return bad("empty head range");
  if (head_end > total_kv_heads) return bad("head range exceeds total_kv_heads");
  if (head_dim == 0 || head_dim > kMaxHeadDim) return bad("head_dim out of range");
  if (DTypeSize(dtype) == 0) return bad("unknown dtype");
  if (num_tokens == 0 || num_tokens > kMaxTokensPerObject) return bad("num_tokens out of range");
  switch (rope) {
    case RopeConvention::kNone:
    case RopeConvention::kNeox:
    case RopeConvention::kGptj:
      break;
    default:
      return bad("unknown rope convention");
  }
  if (rotary_dim > head_dim || rotary_dim % 2 != 0)
    return bad("rotary_dim must be even and <= head_dim");
  // rope_theta applies only to rotated keys: with RoPE none it may be left at the wire's 0 (a
  // proto3 client that never sets it), but never NaN or infinite.
  if (rope == RopeConvention::kNone) {
    if (!(rope_theta >= 0.0f && rope_theta <= 1e9f)) return bad("rope_theta out of range");
  } else if (!(rope_theta > 0.0f) || rope_theta > 1e9f) {
    return bad("rope_theta out of range (RoPE keys need a positive theta)");
  }
  if (position_start < 0 || position_start > (int64_t{1} << 40))
    return bad("position_start out of range");
  if (RawBytes() > kMaxObjectBytes) return bad("object larger than the 16 GiB limit");
  return OkStatus();
}

Status ObjectInfo::Validate() const {
  KVSTASH_RETURN_IF_ERROR(layout.Validate());
  switch (encoding) {
    case Encoding::kRaw:
      if (encoding_level != 0) return absl::InvalidArgumentError("raw encoding takes level 0");
      if (payload_bytes != layout.RawBytes()) {
        return absl::InvalidArgumentError(absl::StrCat("raw payload is ", payload_bytes,
                                                       " bytes, layout needs ", layout.RawBytes()));
      }
      break;
    case Encoding::kCacheGen:
      // kCacheGen means "a codec container": CacheGen levels 1..3 or KVQ levels 1..4 (a streamed
      // Get's or a peer's KVQ transfer at level 4); the container itself says which.
      if (encoding_level < 1 || encoding_level > 4) {
        return absl::InvalidArgumentError("codec container level must be 1..4");
      }
      if (payload_bytes == 0 || payload_bytes > kMaxObjectBytes) {
        return absl::InvalidArgumentError("codec container payload size out of range");
      }
      break;
    default:
      return absl::InvalidArgumentError("unknown encoding");
  }
  return OkStatus();
}

}  // namespace kvstash
