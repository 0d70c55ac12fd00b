#include "kvstash/proto/convert.h"

#include "absl/strings/str_cat.h"

namespace kvstash {
namespace {

DType DTypeFromProto(v1::DType d) {
  switch (d) {
    case v1::DTYPE_F16:
      return DType::kF16;
    case v1::DTYPE_BF16:
      return DType::kBF16;
    case v1::DTYPE_F32:
      return DType::kF32;
    default:
      return static_cast<DType>(0);  // rejected by Validate()
  }
}

v1::DType DTypeToProto(DType d) {
  switch (d) {
    case DType::kF16:
      return v1::DTYPE_F16;
    case DType::kBF16:
      return v1::DTYPE_BF16;
    case DType::kF32:
      return v1::DTYPE_F32;
  }
  return v1::DTYPE_UNSPECIFIED;
}

}  // namespace

void ToProto(const ObjectName& name, v1::ObjectKey* out) {
  out->set_namespace_(name.name_space);
  auto fp = name.model_fingerprint.Bytes();
  auto th = name.token_hash.Bytes();
  out->set_model_fingerprint(fp.data(), fp.size());
  out->set_token_hash(th.data(), th.size());
}

Result<ObjectName> FromProto(const v1::ObjectKey& key) {
  if (key.namespace_().size() > kMaxNamespaceBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("namespace longer than ", kMaxNamespaceBytes, " bytes"));
  }
  auto fp = Hash128::FromBytes(key.model_fingerprint());
  if (!fp.ok()) return absl::InvalidArgumentError("model_fingerprint must be 16 bytes");
  auto th = Hash128::FromBytes(key.token_hash());
  if (!th.ok()) return absl::InvalidArgumentError("token_hash must be 16 bytes");
  return MakeObjectName(key.namespace_(), *fp, *th);
}

void ToProto(const KvLayout& l, v1::KvLayout* out) {
  out->set_num_layers(l.num_layers);
  out->set_layer_begin(l.layer_begin);
  out->set_total_kv_heads(l.total_kv_heads);
  out->set_head_begin(l.head_begin);
  out->set_head_end(l.head_end);
  out->set_head_dim(l.head_dim);
  out->set_dtype(DTypeToProto(l.dtype));
  out->set_num_tokens(l.num_tokens);
  out->set_rope(static_cast<v1::RopeConvention>(l.rope));
  out->set_rope_theta(l.rope_theta);
  out->set_rotary_dim(l.rotary_dim);
  out->set_position_start(l.position_start);
}

KvLayout FromProto(const v1::KvLayout& p) {
  KvLayout l;
  l.num_layers = p.num_layers();
  l.layer_begin = p.layer_begin();
  l.total_kv_heads = p.total_kv_heads();
  l.head_begin = p.head_begin();
  l.head_end = p.head_end();
  l.head_dim = p.head_dim();
  l.dtype = DTypeFromProto(p.dtype());
  l.num_tokens = p.num_tokens();
  int rope = p.rope();
  l.rope = (rope >= 0 && rope <= 2) ? static_cast<RopeConvention>(rope)
                                    : static_cast<RopeConvention>(255);
  l.rope_theta = p.rope_theta();
  l.rotary_dim = p.rotary_dim();
  l.position_start = p.position_start();
  return l;
}

void ToProto(const ObjectInfo& info, v1::ObjectInfo* out) {
  ToProto(info.layout, out->mutable_layout());
  out->set_encoding(static_cast<v1::Encoding>(info.encoding));
  out->set_encoding_level(info.encoding_level);
  out->set_payload_bytes(info.payload_bytes);
  out->set_payload_crc32c(info.payload_crc32c);
  out->set_lossy(info.lossy);
}

Result<ObjectInfo> FromProto(const v1::ObjectInfo& p) {
  if (!p.has_layout()) return absl::InvalidArgumentError("object info has no layout");
  ObjectInfo info;
  info.layout = FromProto(p.layout());
  int enc = p.encoding();
  if (enc < 0 || enc > 1) return absl::InvalidArgumentError("unknown encoding");
  info.encoding = static_cast<Encoding>(enc);
  if (p.encoding_level() > 255) return absl::InvalidArgumentError("encoding_level out of range");
  info.encoding_level = static_cast<uint8_t>(p.encoding_level());
  info.payload_bytes = p.payload_bytes();
  info.payload_crc32c = p.payload_crc32c();
  info.lossy = p.lossy();
  KVSTASH_RETURN_IF_ERROR(info.Validate());
  return info;
}

v1::Tier ToProtoTier(Tier tier) {
  switch (tier) {
    case Tier::kGpu:
      return v1::TIER_GPU;
    case Tier::kCpu:
      return v1::TIER_CPU;
    case Tier::kSsd:
      return v1::TIER_SSD;
    case Tier::kRemote:
      return v1::TIER_REMOTE;
    case Tier::kProcess:  // engine-side only; never on the wire
    case Tier::kUnknown:
      break;
  }
  return v1::TIER_UNSPECIFIED;
}

Tier FromProtoTier(int tier) {
  switch (tier) {
    case v1::TIER_GPU:
      return Tier::kGpu;
    case v1::TIER_CPU:
      return Tier::kCpu;
    case v1::TIER_SSD:
      return Tier::kSsd;
    case v1::TIER_REMOTE:
      return Tier::kRemote;
    default:
      return Tier::kUnknown;
  }
}

}  // namespace kvstash
