// Method specifications of the blending evaluation and demo ("cb:0.15", "craft:2", ...) and the
// quality metrics measured against a full prefill.
#ifndef KVSTASH_BENCH_BLEND_METHODS_H_
#define KVSTASH_BENCH_BLEND_METHODS_H_

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "kvstash/blend/blender.h"
#include "kvstash/engine/engine.h"
#include "kvstash/engine/sampler.h"

namespace kvstash::bench {

struct MethodSpec {
  std::string name;  // as given, e.g. "cb:0.15"
  blend::BlendOptions options;
};

// full | prefix | naive | random:R | cb:R[:k][:br][:grad] | cbauto | craft:ALPHA[:et][:paper]
// R is a ratio in [0, 1]; k = deviation on K (default V); br = the reference bottom-right mask;
// grad = gradual filtering from 2R; et = Cache-Craft early termination; paper = Cache-Craft's CFO
// as in the paper, without CacheCraftOptions::count_new_context (nc, the default, is accepted).
inline Result<MethodSpec> ParseMethod(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream ss(text);
  for (std::string p; std::getline(ss, p, ':');) parts.push_back(p);
  MethodSpec m;
  m.name = text;
  blend::BlendOptions& o = m.options;
  auto number = [&](size_t i, double* out) {
    if (parts.size() <= i) return false;
    try {
      *out = std::stod(parts[i]);
    } catch (...) {
      return false;
    }
    return true;
  };
  const std::string& kind = parts.empty() ? text : parts[0];
  if (kind == "full") {
    o.method = blend::Method::kFullPrefill;
  } else if (kind == "prefix") {
    o.method = blend::Method::kPrefixCaching;
  } else if (kind == "naive") {
    o.method = blend::Method::kFullReuse;
  } else if (kind == "random" || kind == "cb") {
    o.method = kind == "cb" ? blend::Method::kCacheBlend : blend::Method::kRandom;
    if (!number(1, &o.blend.ratio)) return absl::InvalidArgumentError("method " + text + ": ratio");
    for (size_t i = 2; i < parts.size(); ++i) {
      if (parts[i] == "k") {
        o.blend.deviation = blend::Deviation::kKey;
      } else if (parts[i] == "br") {
        o.mask = blend::MaskMode::kReferenceBottomRight;
      } else if (parts[i] == "grad") {
        o.blend.gradual = true;
        o.blend.gradual_start_ratio = std::min(1.0, 2 * o.blend.ratio);
      } else {
        return absl::InvalidArgumentError("method " + text + ": unknown flag " + parts[i]);
      }
    }
  } else if (kind == "cbauto") {
    o.method = blend::Method::kCacheBlend;
    o.blend.ratio = -1.0;
  } else if (kind == "craft") {
    o.method = blend::Method::kCacheCraft;
    if (!number(1, &o.craft.alpha)) return absl::InvalidArgumentError("method " + text + ": alpha");
    for (size_t i = 2; i < parts.size(); ++i) {
      if (parts[i] == "et") {
        o.craft.early_termination = true;
      } else if (parts[i] == "nc") {
        o.craft.count_new_context = true;  // the default; kept so older method lists still parse
      } else if (parts[i] == "paper") {
        o.craft.count_new_context = false;
      } else {
        return absl::InvalidArgumentError("method " + text + ": unknown flag " + parts[i]);
      }
    }
    // Variants come only from full prefills outside the timed methods (warm-up prompts and each
    // prompt after its evaluation). Storing a variant inside a method's own Prefill would let the
    // next Cache-Craft method of the same prompt reuse it in this exact context (CFO 0) and would
    // time the store as part of TTFT; a chunk without a variant is recomputed instead.
    o.craft.store_new_variants = false;
  } else {
    return absl::InvalidArgumentError("unknown method " + text);
  }
  return m;
}

// KL(p || q) of the softmax distributions of two logit vectors, in nats.
inline double KlDivergence(const std::vector<float>& p_logits, const std::vector<float>& q_logits) {
  auto log_softmax = [](const std::vector<float>& x) {
    double mx = x[0];
    for (float v : x) mx = std::max(mx, double{v});
    double sum = 0;
    for (float v : x) sum += std::exp(double{v} - mx);
    const double lse = mx + std::log(sum);
    std::vector<double> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = double{x[i]} - lse;
    return out;
  };
  const std::vector<double> lp = log_softmax(p_logits), lq = log_softmax(q_logits);
  double kl = 0;
  for (size_t i = 0; i < lp.size(); ++i) kl += std::exp(lp[i]) * (lp[i] - lq[i]);
  return std::max(0.0, kl);
}

// Greedy continuation of `seq` from `logits`: `max_tokens` tokens, and the logits each was chosen
// from (logits[0] is the input).
struct Continuation {
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;
};
inline Result<Continuation> Greedy(engine::Engine& e, engine::Sequence& seq,
                                   std::vector<float> logits, size_t max_tokens) {
  Continuation c;
  for (size_t i = 0; i < max_tokens; ++i) {
    const int32_t t = engine::Sampler::Argmax(logits);
    c.tokens.push_back(t);
    c.logits.push_back(std::move(logits));
    if (i + 1 < max_tokens) {
      KVSTASH_ASSIGN_OR_RETURN(logits, e.Decode(seq, t));
    }
  }
  return c;
}

// The reference's greedy continuation fed to `seq` token by token (teacher forcing): at each step
// whether `seq` would have chosen the same token, and the KL of its distribution from the
// reference's. Until the first mismatch this is exactly the free-running greedy continuation, so
// `leading` is how many tokens a free-running greedy decode would share with the reference.
struct Agreement {
  size_t leading = 0;  // tokens before the first mismatch
  double matched = 0;  // share of the steps with the same argmax
  double kl_mean = 0;  // mean KL(reference || seq) over the steps
};
inline Result<Agreement> AgreeAlong(engine::Engine& e, engine::Sequence& seq,
                                    std::vector<float> logits, const Continuation& ref) {
  Agreement a;
  size_t matches = 0;
  bool diverged = false;
  const size_t n = ref.tokens.size();
  for (size_t i = 0; i < n; ++i) {
    const bool same = engine::Sampler::Argmax(logits) == ref.tokens[i];
    matches += same ? 1 : 0;
    diverged = diverged || !same;
    a.leading += diverged ? 0 : 1;
    a.kl_mean += KlDivergence(ref.logits[i], logits);
    if (i + 1 < n) {
      KVSTASH_ASSIGN_OR_RETURN(logits, e.Decode(seq, ref.tokens[i]));
    }
  }
  a.matched = n ? static_cast<double>(matches) / n : 0;
  a.kl_mean = n ? a.kl_mean / n : 0;
  return a;
}

// Mean |K_a - K_b| and |V_a - V_b| of each layer over positions [0, n).
inline std::vector<double> KvDeviationPerLayer(const engine::Engine& e, const engine::Sequence& a,
                                               const engine::Sequence& b, uint32_t n) {
  const uint32_t layers = e.config().num_layers;
  const size_t width = e.config().kv_dim();
  std::vector<uint32_t> pos(n);
  for (uint32_t p = 0; p < n; ++p) pos[p] = p;
  std::vector<float> ka(n * width), va(n * width), kb(n * width), vb(n * width);
  std::vector<double> out(layers, 0.0);
  for (uint32_t l = 0; l < layers; ++l) {
    if (!e.ReadKv(a, l, pos, ka.data(), va.data()).ok() ||
        !e.ReadKv(b, l, pos, kb.data(), vb.data()).ok()) {
      out[l] = NAN;
      continue;
    }
    double sum = 0;
    for (size_t i = 0; i < ka.size(); ++i) {
      sum += std::fabs(double{ka[i]} - double{kb[i]}) + std::fabs(double{va[i]} - double{vb[i]});
    }
    out[l] = sum / (2.0 * static_cast<double>(ka.size()));
  }
  return out;
}

}  // namespace kvstash::bench

#endif  // KVSTASH_BENCH_BLEND_METHODS_H_
