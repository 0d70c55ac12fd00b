#include "kvstash/connector/chunker.h"

#include "absl/strings/str_cat.h"

namespace kvstash::connector {

Result<Chunker> Chunker::Create(const ModelSpec& spec, std::string name_space,
                                uint32_t chunk_tokens) {
  if (chunk_tokens == 0) return absl::InvalidArgumentError("chunk_tokens must be > 0");
  if (name_space.size() > kMaxNamespaceBytes) {
    return absl::InvalidArgumentError(absl::StrCat("namespace is ", name_space.size(),
                                                   " bytes; the limit is ", kMaxNamespaceBytes));
  }
  if (spec.layer_begin >= spec.layer_end || spec.layer_end > spec.num_layers) {
    return absl::InvalidArgumentError("model spec: empty or out-of-range layer range");
  }
  Chunker c;
  c.spec_ = spec;
  c.name_space_ = std::move(name_space);
  c.chunk_tokens_ = chunk_tokens;
  c.fingerprint_ = ModelFingerprint(spec);
  KvLayout probe = c.ChunkLayout(0);
  if (Status st = probe.Validate(); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("model spec: ", st.message()));
  }
  return c;
}

ChunkPlan Chunker::Plan(std::span<const int32_t> tokens) const {
  ChunkPlan plan;
  plan.chunk_tokens = chunk_tokens_;
  plan.prompt_tokens = static_cast<uint32_t>(tokens.size());
  const size_t full = tokens.size() / chunk_tokens_;
  plan.token_hashes.reserve(full);
  plan.names.reserve(full);
  std::vector<uint32_t> chunk(chunk_tokens_);
  Hash128 parent;
  for (size_t i = 0; i < full; ++i) {
    for (uint32_t t = 0; t < chunk_tokens_; ++t) {
      chunk[t] = static_cast<uint32_t>(tokens[i * chunk_tokens_ + t]);
    }
    parent = ChainTokenHash(parent, chunk);
    plan.token_hashes.push_back(parent);
    plan.names.push_back(MakeObjectName(name_space_, fingerprint_, parent));
  }
  return plan;
}

KvLayout Chunker::ChunkLayout(uint32_t index) const {
  KvLayout layout;
  layout.num_layers = spec_.layer_end - spec_.layer_begin;
  layout.layer_begin = spec_.layer_begin;
  layout.total_kv_heads = spec_.total_kv_heads;
  layout.head_begin = spec_.head_begin;
  layout.head_end = spec_.head_end;
  layout.head_dim = spec_.head_dim;
  layout.dtype = spec_.dtype;
  layout.num_tokens = chunk_tokens_;
  layout.rope = spec_.rope;
  layout.rope_theta = spec_.rope_theta;
  layout.rotary_dim = 0;  // the whole head (every model the engine loads)
  layout.position_start = int64_t{index} * chunk_tokens_;
  return layout;
}

ObjectInfo Chunker::ChunkInfo(uint32_t index) const {
  ObjectInfo info;
  info.layout = ChunkLayout(index);
  info.encoding = Encoding::kRaw;
  info.payload_bytes = info.layout.RawBytes();
  return info;
}

}  // namespace kvstash::connector
