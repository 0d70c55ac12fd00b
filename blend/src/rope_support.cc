// Whether blending may re-rotate this engine's cached keys (Blender::Create refuses otherwise).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kvstash/blend/blender.h"
#include "kvstash/engine/gguf.h"
#include "kvstash/kernels/rope.h"

namespace kvstash::blend {
namespace {

Status Refuse(const std::string& why) {
  return absl::FailedPreconditionError(
      absl::StrCat("blending disabled: cached keys cannot be re-rotated exactly (", why, ")"));
}

// RoPE scaling changes the angle of a position (linear: p / factor; YaRN / NTK: per-frequency
// ramps), which a rotation by the integer position delta with theta^(-2i/d) does not reproduce.
Status CheckGgufScaling(const engine::Model& model) {
  const engine::GgufFile* f = model.gguf();
  if (f == nullptr) return OkStatus();
  const std::string a = model.config().architecture + ".rope.";
  if (const engine::GgufValue* v = f->Find(a + "scaling.type"); v != nullptr) {
    auto type = f->GetString(a + "scaling.type");
    if (!type.ok() || *type != "none") {
      return Refuse(absl::StrCat("rope scaling type '", type.ok() ? *type : "?", "'"));
    }
  }
  for (const char* key : {"scaling.factor", "scale_linear"}) {
    if (f->Find(a + key) == nullptr) continue;
    auto factor = f->GetF32(a + key);
    if (!factor.ok() || (*factor != 0.0f && *factor != 1.0f)) {
      return Refuse(absl::StrCat(a, key, " = ", factor.ok() ? std::to_string(*factor) : "?"));
    }
  }
  return OkStatus();
}

}  // namespace

Status CheckRopeReRotatable(engine::Engine& engine) {
  const engine::ModelConfig& c = engine.config();
  if (c.rope != RopeConvention::kNeox && c.rope != RopeConvention::kGptj) {
    return Refuse(absl::StrCat("RoPE convention ", std::string(RopeConventionName(c.rope)),
                               "; only neox and gptj pairs are supported"));
  }
  if (c.rotary_dim == 0 || c.rotary_dim % 2 != 0 || c.rotary_dim > c.head_dim) {
    return Refuse(absl::StrCat("rotary_dim ", c.rotary_dim, " with head_dim ", c.head_dim));
  }
  KVSTASH_RETURN_IF_ERROR(CheckGgufScaling(engine.model()));

  // Self-check: the engine's key of one token at position a, rotated by the kernel to position b,
  // must be the engine's key at b (and back), up to f32 rounding.
  const uint32_t far = std::min<uint32_t>(c.max_seq_len - 1, 1000);
  const std::vector<std::pair<uint32_t, uint32_t>> pairs = {{0, 7}, {3, far}, {far, 1}};
  const int32_t token = static_cast<int32_t>(std::min<uint32_t>(c.vocab_size - 1, 7));
  for (auto [a, b] : pairs) {
    if (a == b) continue;
    const int32_t tokens[] = {token, token};
    const uint32_t positions[] = {a, b};
    KVSTASH_ASSIGN_OR_RETURN(engine::TokenBatch batch, engine.Embed(tokens, positions));
    KVSTASH_RETURN_IF_ERROR(engine.ComputeQkv(0, batch));
    std::vector<float> moved(batch.k(0), batch.k(0) + c.kv_dim());
    kernels::RopeParams rope{c.rope, c.rope_theta, c.rotary_dim};
    KVSTASH_RETURN_IF_ERROR(kernels::ShiftKeys(moved.data(), DType::kF32, 1, c.num_kv_heads,
                                               c.head_dim, rope,
                                               static_cast<int64_t>(b) - static_cast<int64_t>(a)));
    const float* want = batch.k(1);
    double scale = 1e-6, err = 0.0;
    for (size_t i = 0; i < moved.size(); ++i) {
      scale = std::max(scale, std::fabs(double{want[i]}));
      err = std::max(err, std::fabs(double{moved[i]} - double{want[i]}));
    }
    if (!(err <= 1e-4 * scale)) {
      return Refuse(absl::StrCat("self-check: key moved from position ", a, " to ", b,
                                 " differs from the engine's by ", err, " (scale ", scale, ")"));
    }
  }
  return OkStatus();
}

}  // namespace kvstash::blend
