#include "kvstash/engine/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "attention.h"
#include "cpu_features.h"
#include "kvstash/common/half.h"
#include "matmul.h"
#include "vec_math.h"

namespace kvstash::engine {
namespace {

// Runs fn(row) for rows [0, n), split over the pool; rows are independent.
void ForRows(ThreadPool* pool, size_t n, size_t min_block, const std::function<void(size_t)>& fn) {
  if (pool == nullptr || n <= min_block) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  pool->ParallelFor(n, min_block, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) fn(i);
  });
}

template <typename T>
void EnsureSize(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

}  // namespace

Status TokenBatch::Keep(std::span<const size_t> rows) {
  std::vector<bool> seen(size(), false);
  for (size_t r : rows) {
    if (r >= size() || seen[r]) {
      return absl::InvalidArgumentError("TokenBatch::Keep: row index out of range or repeated");
    }
    seen[r] = true;
  }
  auto compact = [&rows](auto& vec, size_t width) {
    if (vec.empty()) return;
    std::remove_reference_t<decltype(vec)> out(rows.size() * width);
    for (size_t i = 0; i < rows.size(); ++i) {
      std::copy_n(vec.begin() + static_cast<ptrdiff_t>(rows[i] * width), width,
                  out.begin() + static_cast<ptrdiff_t>(i * width));
    }
    vec.swap(out);
  };
  compact(tokens_, 1);
  compact(positions_, 1);
  compact(hidden_, dim_);
  compact(q_, q_dim_);
  compact(k_, kv_dim_);
  compact(v_, kv_dim_);
  compact(rope_cos_, rope_half_);
  compact(rope_sin_, rope_half_);
  return OkStatus();
}

Engine::~Engine() = default;

const char* Engine::KernelIsa() { return IsaName(ActiveIsa()); }

Result<std::unique_ptr<Engine>> Engine::Create(std::shared_ptr<const Model> model,
                                               const EngineOptions& options) {
  if (model == nullptr) return absl::InvalidArgumentError("Engine: null model");
  const ModelConfig& c = model->config();
  KVSTASH_RETURN_IF_ERROR(c.Validate());
  std::unique_ptr<Engine> e(new Engine());
  KvCacheOptions kv = options.kv;
  if (kv.num_blocks == 0 && kv.block_size != 0) {
    kv.num_blocks = (c.max_seq_len + kv.block_size - 1) / kv.block_size;
  }
  KVSTASH_ASSIGN_OR_RETURN(e->kv_, PagedKvCache::Create(c, kv));
  size_t threads = options.num_threads;
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  if (threads > 1) e->pool_ = std::make_unique<ThreadPool>(threads - 1);
  e->inv_freq_.resize(c.rotary_dim / 2);
  for (uint32_t i = 0; i < c.rotary_dim / 2; ++i) {
    e->inv_freq_[i] = std::pow(static_cast<double>(c.rope_theta),
                               -2.0 * static_cast<double>(i) / static_cast<double>(c.rotary_dim));
  }
  e->model_ = std::move(model);
  return e;
}

Result<TokenBatch> Engine::Embed(std::span<const int32_t> tokens,
                                 std::span<const uint32_t> positions) const {
  const ModelConfig& c = config();
  if (tokens.size() != positions.size()) {
    return absl::InvalidArgumentError("Embed: tokens and positions differ in length");
  }
  for (int32_t t : tokens) {
    if (t < 0 || static_cast<uint32_t>(t) >= c.vocab_size) {
      return absl::InvalidArgumentError("Embed: token id " + std::to_string(t) +
                                        " outside the vocabulary");
    }
  }
  std::vector<uint32_t> sorted(positions.begin(), positions.end());
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
    return absl::InvalidArgumentError("Embed: positions must be distinct");
  }
  if (!sorted.empty() && sorted.back() >= c.max_seq_len) {
    return absl::InvalidArgumentError("Embed: position " + std::to_string(sorted.back()) +
                                      " beyond the model's context length " +
                                      std::to_string(c.max_seq_len));
  }
  const size_t n = tokens.size();
  TokenBatch b;
  b.dim_ = c.dim;
  b.q_dim_ = c.q_dim();
  b.kv_dim_ = c.kv_dim();
  b.rope_half_ = c.rotary_dim / 2;
  b.tokens_.assign(tokens.begin(), tokens.end());
  b.positions_.assign(positions.begin(), positions.end());
  b.hidden_.resize(n * c.dim);
  b.rope_cos_.resize(n * b.rope_half_);
  b.rope_sin_.resize(n * b.rope_half_);
  for (size_t r = 0; r < n; ++r) {
    DequantizeRow(model_->weights().token_embedding, static_cast<uint32_t>(tokens[r]), b.hidden(r));
    for (size_t i = 0; i < b.rope_half_; ++i) {
      double angle = static_cast<double>(positions[r]) * inv_freq_[i];
      b.rope_cos_[r * b.rope_half_ + i] = static_cast<float>(std::cos(angle));
      b.rope_sin_[r * b.rope_half_ + i] = static_cast<float>(std::sin(angle));
    }
  }
  return b;
}

void Engine::ApplyRope(TokenBatch& b) const {
  const ModelConfig& c = config();
  const size_t half = b.rope_half_;
  auto rotate = [&](float* x, const float* cs, const float* sn) {
    for (size_t i = 0; i < half; ++i) {
      size_t i0 = c.rope == RopeConvention::kGptj ? 2 * i : i;
      size_t i1 = c.rope == RopeConvention::kGptj ? 2 * i + 1 : i + half;
      float x0 = x[i0], x1 = x[i1];
      x[i0] = x0 * cs[i] - x1 * sn[i];
      x[i1] = x0 * sn[i] + x1 * cs[i];
    }
  };
  for (size_t r = 0; r < b.size(); ++r) {
    const float* cs = b.rope_cos_.data() + r * half;
    const float* sn = b.rope_sin_.data() + r * half;
    for (uint32_t h = 0; h < c.num_heads; ++h)
      rotate(b.q_.data() + r * b.q_dim_ + h * c.head_dim, cs, sn);
    for (uint32_t h = 0; h < c.num_kv_heads; ++h) {
      rotate(b.k_.data() + r * b.kv_dim_ + h * c.head_dim, cs, sn);
    }
  }
}

Status Engine::ComputeQkv(uint32_t layer, TokenBatch& b) {
  const ModelConfig& c = config();
  if (layer >= c.num_layers) return absl::InvalidArgumentError("ComputeQkv: no such layer");
  const LayerWeights& w = model_->weights().layers[layer];
  const size_t n = b.size();
  EnsureSize(xn_, n * c.dim);
  ForRows(pool_.get(), n, 32, [&](size_t r) {
    RmsNorm(b.hidden(r), w.attn_norm.data(), c.dim, c.rms_eps, xn_.data() + r * c.dim);
  });
  b.q_.resize(n * b.q_dim_);
  b.k_.resize(n * b.kv_dim_);
  b.v_.resize(n * b.kv_dim_);
  const MatmulJob jobs[] = {{&w.wq, b.q_.data(), b.q_dim_},
                            {&w.wk, b.k_.data(), b.kv_dim_},
                            {&w.wv, b.v_.data(), b.kv_dim_}};
  Matmul(pool_.get(), jobs, xn_.data(), c.dim, n);
  ApplyRope(b);
  b.qkv_layer_ = static_cast<int>(layer);
  return OkStatus();
}

Status Engine::WriteKv(Sequence& seq, uint32_t layer, const TokenBatch& b) {
  if (&seq.cache() != kv_.get()) return absl::InvalidArgumentError("WriteKv: foreign sequence");
  if (b.qkv_layer_ != static_cast<int>(layer)) {
    return absl::FailedPreconditionError("WriteKv: batch does not hold this layer's K/V");
  }
  for (uint32_t p : b.positions_) {
    if (p >= seq.length()) {
      return absl::InvalidArgumentError("WriteKv: position " + std::to_string(p) +
                                        " beyond the sequence length");
    }
  }
  const bool f16 = kv_->shape().dtype == DType::kF16;
  for (size_t r = 0; r < b.size(); ++r) {
    uint32_t p = b.positions_[r];
    if (f16) {
      F32ToF16(b.k(r), reinterpret_cast<uint16_t*>(seq.KRow(layer, p)), b.kv_dim_);
      F32ToF16(b.v(r), reinterpret_cast<uint16_t*>(seq.VRow(layer, p)), b.kv_dim_);
    } else {
      std::memcpy(seq.KRow(layer, p), b.k(r), b.kv_dim_ * 4);
      std::memcpy(seq.VRow(layer, p), b.v(r), b.kv_dim_ * 4);
    }
  }
  return OkStatus();
}

Status Engine::ReadKv(const Sequence& seq, uint32_t layer, std::span<const uint32_t> positions,
                      float* k, float* v) const {
  if (&seq.cache() != kv_.get()) return absl::InvalidArgumentError("ReadKv: foreign sequence");
  if (layer >= config().num_layers) return absl::InvalidArgumentError("ReadKv: no such layer");
  const size_t width = config().kv_dim();
  const bool f16 = kv_->shape().dtype == DType::kF16;
  for (size_t i = 0; i < positions.size(); ++i) {
    uint32_t p = positions[i];
    if (p >= seq.length()) return absl::InvalidArgumentError("ReadKv: position beyond length");
    if (f16) {
      F16ToF32(reinterpret_cast<const uint16_t*>(seq.KRow(layer, p)), k + i * width, width);
      F16ToF32(reinterpret_cast<const uint16_t*>(seq.VRow(layer, p)), v + i * width, width);
    } else {
      std::memcpy(k + i * width, seq.KRow(layer, p), width * 4);
      std::memcpy(v + i * width, seq.VRow(layer, p), width * 4);
    }
  }
  return OkStatus();
}

Status Engine::GatherContext(const Sequence& seq, uint32_t layer, uint32_t context) {
  const ModelConfig& c = config();
  const size_t hd = c.head_dim;
  EnsureSize(k_ctx_, size_t{context} * c.kv_dim());
  EnsureSize(v_ctx_, size_t{context} * c.kv_dim());
  const bool f16 = kv_->shape().dtype == DType::kF16;
  ForRows(pool_.get(), context, 256, [&](size_t p) {
    const uint8_t* ks = seq.KRow(layer, static_cast<uint32_t>(p));
    const uint8_t* vs = seq.VRow(layer, static_cast<uint32_t>(p));
    for (uint32_t h = 0; h < c.num_kv_heads; ++h) {
      float* kd = k_ctx_.data() + (size_t{h} * context + p) * hd;
      float* vd = v_ctx_.data() + (size_t{h} * context + p) * hd;
      if (f16) {
        F16ToF32(reinterpret_cast<const uint16_t*>(ks) + h * hd, kd, hd);
        F16ToF32(reinterpret_cast<const uint16_t*>(vs) + h * hd, vd, hd);
      } else {
        std::memcpy(kd, ks + h * hd * 4, hd * 4);
        std::memcpy(vd, vs + h * hd * 4, hd * 4);
      }
    }
  });
  return OkStatus();
}

Status Engine::FinishLayer(Sequence& seq, uint32_t layer, TokenBatch& b,
                           const AttentionProbsFn& probs, std::span<const uint32_t> last_key) {
  const ModelConfig& c = config();
  if (&seq.cache() != kv_.get()) return absl::InvalidArgumentError("FinishLayer: foreign sequence");
  if (b.qkv_layer_ != static_cast<int>(layer)) {
    return absl::FailedPreconditionError("FinishLayer: batch does not hold this layer's Q/K/V");
  }
  const size_t n = b.size();
  if (n == 0) {
    b.qkv_layer_ = -1;
    return OkStatus();
  }
  if (!last_key.empty() && last_key.size() != n) {
    return absl::InvalidArgumentError("FinishLayer: one last_key entry per row expected");
  }
  std::span<const uint32_t> limits =
      last_key.empty() ? std::span<const uint32_t>(b.positions_) : last_key;
  uint32_t context = *std::max_element(limits.begin(), limits.end()) + 1;
  if (context > seq.length()) {
    return absl::InvalidArgumentError("FinishLayer: a row's position is beyond the sequence");
  }
  const LayerWeights& w = model_->weights().layers[layer];
  KVSTASH_RETURN_IF_ERROR(GatherContext(seq, layer, context));
  EnsureSize(att_, n * c.q_dim());
  AttentionShape shape{c.num_heads, c.num_kv_heads, c.head_dim, context};
  Attention(pool_.get(), shape, b.q_.data(), limits, k_ctx_.data(), v_ctx_.data(), att_.data(),
            probs ? &probs : nullptr);

  EnsureSize(tmp_, n * c.dim);
  const MatmulJob out_job[] = {{&w.wo, tmp_.data(), c.dim}};
  Matmul(pool_.get(), out_job, att_.data(), c.q_dim(), n);
  EnsureSize(xn_, n * c.dim);
  ForRows(pool_.get(), n, 32, [&](size_t r) {
    AddInPlace(b.hidden(r), tmp_.data() + r * c.dim, c.dim);
    RmsNorm(b.hidden(r), w.ffn_norm.data(), c.dim, c.rms_eps, xn_.data() + r * c.dim);
  });
  EnsureSize(gate_, n * c.ffn_dim);
  EnsureSize(up_, n * c.ffn_dim);
  const MatmulJob ffn_jobs[] = {{&w.w_gate, gate_.data(), c.ffn_dim},
                                {&w.w_up, up_.data(), c.ffn_dim}};
  Matmul(pool_.get(), ffn_jobs, xn_.data(), c.dim, n);
  ForRows(pool_.get(), n, 16, [&](size_t r) {
    SwiGlu(gate_.data() + r * c.ffn_dim, up_.data() + r * c.ffn_dim, c.ffn_dim);
  });
  const MatmulJob down_job[] = {{&w.w_down, tmp_.data(), c.dim}};
  Matmul(pool_.get(), down_job, gate_.data(), c.ffn_dim, n);
  for (size_t r = 0; r < n; ++r) AddInPlace(b.hidden(r), tmp_.data() + r * c.dim, c.dim);
  b.qkv_layer_ = -1;
  return OkStatus();
}

Result<std::vector<float>> Engine::Logits(const TokenBatch& b, std::span<const size_t> rows) {
  const ModelConfig& c = config();
  for (size_t r : rows) {
    if (r >= b.size()) return absl::InvalidArgumentError("Logits: row out of range");
  }
  EnsureSize(xn_, rows.size() * c.dim);
  for (size_t i = 0; i < rows.size(); ++i) {
    RmsNorm(b.hidden(rows[i]), model_->weights().output_norm.data(), c.dim, c.rms_eps,
            xn_.data() + i * c.dim);
  }
  std::vector<float> logits(rows.size() * c.vocab_size);
  const MatmulJob job[] = {{&model_->weights().output, logits.data(), c.vocab_size}};
  Matmul(pool_.get(), job, xn_.data(), c.dim, rows.size());
  return logits;
}

Result<std::vector<float>> Engine::Prefill(Sequence& seq, std::span<const int32_t> tokens,
                                           uint32_t start_pos, const PrefillOptions& options) {
  if (tokens.empty()) return absl::InvalidArgumentError("Prefill: no tokens");
  if (&seq.cache() != kv_.get()) return absl::InvalidArgumentError("Prefill: foreign sequence");
  if (start_pos > seq.length()) {
    return absl::InvalidArgumentError("Prefill: start_pos " + std::to_string(start_pos) +
                                      " beyond the sequence length " +
                                      std::to_string(seq.length()));
  }
  const size_t n = tokens.size();
  if (start_pos + n > config().max_seq_len) {
    return absl::InvalidArgumentError("Prefill: sequence would exceed the context length " +
                                      std::to_string(config().max_seq_len));
  }
  std::vector<uint32_t> positions(n);
  for (size_t i = 0; i < n; ++i) positions[i] = start_pos + static_cast<uint32_t>(i);
  KVSTASH_ASSIGN_OR_RETURN(TokenBatch batch, Embed(tokens, positions));
  KVSTASH_RETURN_IF_ERROR(seq.Resize(start_pos + static_cast<uint32_t>(n)));
  auto run = [&]() -> Status {
    for (uint32_t l = 0; l < config().num_layers; ++l) {
      KVSTASH_RETURN_IF_ERROR(ComputeQkv(l, batch));
      if (options.hooks.before_layer_kv) KVSTASH_RETURN_IF_ERROR(options.hooks.before_layer_kv(l));
      KVSTASH_RETURN_IF_ERROR(WriteKv(seq, l, batch));
      if (options.hooks.after_layer_kv) KVSTASH_RETURN_IF_ERROR(options.hooks.after_layer_kv(l));
      KVSTASH_RETURN_IF_ERROR(FinishLayer(seq, l, batch));
    }
    return OkStatus();
  };
  Status st = run();
  if (!st.ok()) {
    (void)seq.Resize(start_pos);  // shrinking never fails
    return st;
  }
  switch (options.logits) {
    case LogitsMode::kNone:
      return std::vector<float>();
    case LogitsMode::kLast: {
      const size_t last[] = {n - 1};
      return Logits(batch, last);
    }
    case LogitsMode::kAll: {
      std::vector<size_t> rows(n);
      for (size_t i = 0; i < n; ++i) rows[i] = i;
      return Logits(batch, rows);
    }
  }
  return absl::InternalError("Prefill: unknown logits mode");
}

Result<std::vector<float>> Engine::Decode(Sequence& seq, int32_t token) {
  const int32_t tokens[] = {token};
  return Prefill(seq, tokens, seq.length());
}

}  // namespace kvstash::engine
