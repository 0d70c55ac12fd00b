// codec_quality: CacheGen on real KV caches of the reference engine. Sizes per configuration and
// chunk size, output quality (next-token agreement over greedy tokens and KL divergence of the
// next-token distribution against exact KV), codec throughput on the real KV, and loading a chunk
// from local disk raw against compressed + decoded.
//
//   codec_quality --model M.gguf --text a.txt --text b.txt --label smollm2 --out results.json
//
// Prompts are windows of consecutive tokens cut from the texts (round robin over the files, no
// overlap); the training windows (for the model-level profile) and the test windows are disjoint.
// Per test prompt:
//   1. one exact prefill of the first `context` tokens; their KV is read from paged memory
//      (kernels::GatherChunk) as one f16 layer-major context;
//   2. the last prompt token and `gen` greedy tokens with exact KV: the reference continuation
//      and its next-token distributions;
//   3. every configuration (8-bit, CacheGen levels 1-3 in reference / profile / delta mode, per
//      chunk size) encodes and decodes the context chunk by chunk; bytewise identical decoded KVs
//      are evaluated once. The decoded KV is written back into paged memory
//      (kernels::ScatterChunk) and the last prompt token plus the first gen - 1 generated tokens
//      are prefilled on top of it as one batch: gen next-token distributions teacher-forced on
//      the exact continuation (so "all tokens match" means free-running greedy decoding gives the
//      same text). Exact KV through the same path is the control: by the engine's batch
//      invariance it must give agreement 1 and KL 0.
// Sizes count full chunks only (a trailing partial chunk is dropped, as in the reference); quality
// codes every token. The JSON (--out, section models.<label>) is rewritten after every prompt.
#include <lz4.h>
#include <zstd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "eval_common.h"
#include "kv_corpus.h"
#include "kvstash/codec/cachegen.h"
#include "kvstash/codec/kvq.h"
#include "kvstash/codec/levels.h"
#include "kvstash/codec/object_file.h"
#include "kvstash/codec/profile.h"
#include "kvstash/engine/engine.h"
#include "kvstash/engine/tokenizer.h"
#include "kvstash/kernels/paged_kv.h"
#include "quality_metrics.h"
#include "ssd_load.h"

namespace kvstash::bench {
namespace {

using codec::CacheGenMode;
using nlohmann::json;

struct Args {
  std::string model, tokenizer, label, out, ssd_dir, dump_dir;
  std::vector<std::string> texts, bins, kvq;
  bool no_cachegen = false;
  int prompts = 60, train_prompts = 16, speed_prompts = 4, reps = 5;
  int calibrate = 0, calibrate_bits = 3;  // KVQ row-sensitivity calibration (training prompts)
  std::string kvq_weights;                // or "FILE:LABEL": weights of an earlier calibration
  uint32_t context = 1024, gen = 64;
  std::vector<uint32_t> chunk_sizes = {256, 1024};
  size_t threads = 0;
  bool speed = false;
};

struct CodecConfig {
  std::string name;
  CacheGenMode mode;
  int level;
  bool profile;
  std::vector<uint8_t> row_bins;  // explicit bins (level 0) when non-empty
  bool kvq = false;               // the KVQ codec (kvq.h) with kvq_options instead of CacheGen
  codec::KvqOptions kvq_options = {};
  bool calibrated = false;  // kvq_options.row_weights come from QualityRun::Calibrate
  // Context tokens kept exact (f16, counted in the size) beside the KVQ containers: the first
  // `exact_head` (attention sinks) and the last `exact_tail` (the recent window) of the context.
  // Each chunk's container then holds only its other tokens.
  uint32_t exact_head = 0, exact_tail = 0;
};

std::vector<CodecConfig> LevelConfigs() {
  return {
      {"cachegen_l1", CacheGenMode::kReference, 1, false, {}},
      {"cachegen_l2", CacheGenMode::kReference, 2, false, {}},
      {"cachegen_l3", CacheGenMode::kReference, 3, false, {}},
      {"cachegen_profile_l1", CacheGenMode::kReference, 1, true, {}},
      {"cachegen_profile_l2", CacheGenMode::kReference, 2, true, {}},
      {"cachegen_profile_l3", CacheGenMode::kReference, 3, true, {}},
      {"cachegen_delta_l2", CacheGenMode::kDelta, 2, false, {}},
      {"cachegen_delta_profile_l2", CacheGenMode::kDelta, 2, true, {}},
  };
}

// "name=k1/k2/k3,v1/v2": bins of the K layer groups 1-3 and the V layer groups 1-2 (levels.h), as
// a reference-mode and a profile-mode configuration.
Result<std::vector<CodecConfig>> ParseBinsConfig(const std::string& spec, uint32_t model_layers) {
  auto bad = [&] { return absl::InvalidArgumentError("bad --bins " + spec); };
  const size_t eq = spec.find('='), comma = spec.find(',');
  if (eq == std::string::npos || comma == std::string::npos || comma < eq) return bad();
  auto numbers = [](const std::string& list) {
    std::vector<int> out;
    std::stringstream ss(list);
    for (std::string item; std::getline(ss, item, '/');) out.push_back(std::atoi(item.c_str()));
    return out;
  };
  const std::vector<int> k = numbers(spec.substr(eq + 1, comma - eq - 1));
  const std::vector<int> v = numbers(spec.substr(comma + 1));
  if (k.size() != 3 || v.size() != 2) return bad();
  const codec::LayerGroups g = codec::LayerGroupsFor(model_layers);
  std::vector<uint8_t> bins(2 * model_layers);
  for (uint32_t l = 0; l < model_layers; ++l) {
    bins[l] = static_cast<uint8_t>(k[l < g.k_group1_end ? 0 : l < g.k_group2_end ? 1 : 2]);
    bins[model_layers + l] = static_cast<uint8_t>(v[l < g.v_group1_end ? 0 : 1]);
  }
  KVSTASH_RETURN_IF_ERROR(codec::CheckRowBins(bins, model_layers).status());
  const std::string name = spec.substr(0, eq);
  return std::vector<CodecConfig>{
      {"cachegen_" + name, CacheGenMode::kReference, 0, false, bins},
      {"cachegen_profile_" + name, CacheGenMode::kReference, 0, true, bins}};
}

// "name=BITS[:key=token|channel][:value=token|channel][:group=G][:outliers=N][:context=N]
// [:subchunk=S][:avg=BITS:weights=cal|rel[:min=B][:max=B]][:rot=k|v|kv][:sink=N][:recent=N]
// [:step=S[:vstep=R][:weights=cal]]"
// with BITS "L<level>" or "k1/k2/k3,v1/v2" (bits of the K and V layer groups); step selects the
// step-based quantiser (KvqOptions::step_scale, value_step_ratio; BITS are then the alphabet,
// weights=cal the calibrated row weights instead of the row's RMS); rot rotates the
// K and/or V rows (KvqOptions::rotate_*), sink keeps the first N tokens of the context exact in
// the containers (KvqOptions::sink_tokens), sinkraw/recent keep the first/last N beside them
// (CodecConfig::exact_head/exact_tail).
Result<CodecConfig> ParseKvqConfig(const std::string& spec, uint32_t model_layers) {
  auto bad = [&] { return absl::InvalidArgumentError("bad --kvq " + spec); };
  const size_t eq = spec.find('=');
  if (eq == std::string::npos) return bad();
  std::vector<std::string> parts;
  std::stringstream ss(spec.substr(eq + 1));
  for (std::string item; std::getline(ss, item, ':');) parts.push_back(item);
  if (parts.empty()) return bad();
  CodecConfig cfg{"kvq_" + spec.substr(0, eq), CacheGenMode::kReference, 0, false, {}, true, {}};
  codec::KvqOptions& o = cfg.kvq_options;
  o.model_layers = model_layers;
  if (parts[0].size() > 1 && parts[0][0] == 'L') {
    o.level = std::atoi(parts[0].c_str() + 1);
    cfg.level = o.level;
  } else {
    const size_t comma = parts[0].find(',');
    if (parts[0].empty() || parts[0][0] != 'k' || comma == std::string::npos ||
        parts[0].compare(comma + 1, 1, "v") != 0) {
      return bad();
    }
    auto numbers = [](const std::string& list) {
      std::vector<int> out;
      std::stringstream ls(list);
      for (std::string item; std::getline(ls, item, '/');) out.push_back(std::atoi(item.c_str()));
      return out;
    };
    const std::vector<int> k = numbers(parts[0].substr(1, comma - 1));
    const std::vector<int> v = numbers(parts[0].substr(comma + 2));
    if (k.size() != 3 || v.size() != 2) return bad();
    const codec::LayerGroups g = codec::LayerGroupsFor(model_layers);
    o.row_bits.resize(2 * model_layers);
    for (uint32_t l = 0; l < model_layers; ++l) {
      o.row_bits[l] = static_cast<uint8_t>(k[l < g.k_group1_end ? 0 : l < g.k_group2_end ? 1 : 2]);
      o.row_bits[model_layers + l] = static_cast<uint8_t>(v[l < g.v_group1_end ? 0 : 1]);
    }
  }
  for (size_t i = 1; i < parts.size(); ++i) {
    const size_t e = parts[i].find('=');
    if (e == std::string::npos) return bad();
    const std::string key = parts[i].substr(0, e), value = parts[i].substr(e + 1);
    const uint32_t n = static_cast<uint32_t>(std::atoi(value.c_str()));
    auto scale = [&](codec::KvqScale* out) {
      if (value != "token" && value != "channel") return false;
      *out = value == "token" ? codec::KvqScale::kPerToken : codec::KvqScale::kPerChannel;
      return true;
    };
    if (key == "key") {
      if (!scale(&o.key_scale)) return bad();
    } else if (key == "value") {
      if (!scale(&o.value_scale)) return bad();
    } else if (key == "group") {
      o.group_tokens = n;
    } else if (key == "outliers") {
      o.key_outliers = n;
    } else if (key == "context") {
      o.context_channels = n;
    } else if (key == "subchunk") {
      o.subchunk_tokens = n;
    } else if (key == "avg") {
      o.avg_bits = std::stof(value);
      cfg.level = 0;
    } else if (key == "min") {
      o.min_bits = static_cast<uint8_t>(n);
    } else if (key == "max") {
      o.max_bits = static_cast<uint8_t>(n);
    } else if (key == "rot") {
      if (value != "k" && value != "v" && value != "kv") return bad();
      o.rotate_keys = value != "v";
      o.rotate_values = value != "k";
    } else if (key == "sink") {
      o.sink_tokens = n;  // in the container (KvqOptions::sink_tokens)
    } else if (key == "sinkraw") {
      cfg.exact_head = n;  // beside the containers, as raw f16
    } else if (key == "recent") {
      cfg.exact_tail = n;
    } else if (key == "step") {
      o.step_scale = std::stof(value);  // KvqOptions::step_scale (with weights=cal: per row)
    } else if (key == "unit") {
      o.step_per_unit = n != 0;  // KvqOptions::step_per_unit
    } else if (key == "vstep") {
      o.value_step_ratio = std::stof(value);
    } else if (key == "weights") {
      if (value != "cal" && value != "rel") return bad();
      cfg.calibrated = value == "cal";
    } else {
      return bad();
    }
  }
  return cfg;
}

struct Prompt {
  std::string text;
  size_t offset = 0;            // first token of the window in the text's tokens
  std::vector<int32_t> tokens;  // context + 1 tokens
};

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Non-overlapping windows of every text, interleaved round robin over the files, then dealt to
// the training and test sets in proportion so both cover every file.
Result<std::pair<std::vector<Prompt>, std::vector<Prompt>>> CutPrompts(const engine::Tokenizer& tok,
                                                                       const Args& a) {
  const bool bos = tok.add_bos_default() && tok.bos_id() >= 0;
  const size_t window = a.context + 1 - (bos ? 1 : 0);
  std::vector<std::vector<Prompt>> per_file;
  for (const std::string& path : a.texts) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return absl::NotFoundError("cannot read " + path);
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string text = ss.str();
    std::vector<int32_t> ids;
    if (a.tokenizer.empty()) {
      ids = tok.Encode(text, false);
    } else {
      // The llama2.c tokenizer merges pairs over its whole input (quadratic in its length), so
      // long texts go through it line by line.
      for (size_t begin = 0; begin < text.size();) {
        const size_t nl = text.find('\n', begin);
        const size_t end = nl == std::string::npos ? text.size() : nl + 1;
        const std::vector<int32_t> part = tok.Encode(text.substr(begin, end - begin), false);
        ids.insert(ids.end(), part.begin(), part.end());
        begin = end;
      }
    }
    std::vector<Prompt> windows;
    for (size_t off = 0; off + window <= ids.size(); off += window) {
      Prompt p;
      p.text = std::filesystem::path(path).filename().string();
      p.offset = off;
      if (bos) p.tokens.push_back(tok.bos_id());
      p.tokens.insert(p.tokens.end(), ids.begin() + off, ids.begin() + off + window);
      windows.push_back(std::move(p));
    }
    std::fprintf(stderr, "[codec_quality] %s: %zu tokens, %zu windows of %zu\n", path.c_str(),
                 ids.size(), windows.size(), window);
    per_file.push_back(std::move(windows));
  }
  std::vector<Prompt> all;
  for (size_t i = 0;; ++i) {
    bool any = false;
    for (auto& w : per_file) {
      if (i < w.size()) {
        all.push_back(std::move(w[i]));
        any = true;
      }
    }
    if (!any) break;
  }
  const size_t want_train = a.train_prompts, want_test = a.prompts;
  if (all.size() < want_train + want_test) {
    return absl::InvalidArgumentError("the texts give " + std::to_string(all.size()) +
                                      " windows; need " + std::to_string(want_train + want_test));
  }
  std::vector<Prompt> train, test;
  for (Prompt& p : all) {
    // Keep train/test at the wanted ratio as windows arrive.
    const bool to_train =
        train.size() < want_train &&
        (test.size() >= want_test || train.size() * want_test <= test.size() * want_train);
    if (to_train) {
      train.push_back(std::move(p));
    } else if (test.size() < want_test) {
      test.push_back(std::move(p));
    }
    if (train.size() == want_train && test.size() == want_test) break;
  }
  return std::make_pair(std::move(train), std::move(test));
}

// Writes `section` as models.<label> of the JSON file, keeping other models' sections.
void WriteJson(const std::string& path, const std::string& label, const json& section) {
  if (path.empty()) return;
  json root = json::object();
  if (std::ifstream in(path); in) {
    root = json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (root.is_discarded() || !root.is_object()) root = json::object();
  }
  root["models"][label] = section;
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << root.dump(2) << "\n";
  }
  std::filesystem::rename(tmp, path);
}

// Tokens [begin, begin + part.num_tokens) of `ctx` := part.
void PutSlice(KvChunk& ctx, const KvChunk& part, uint32_t begin) {
  const size_t row = size_t{ctx.layout.heads()} * ctx.layout.head_dim * 2;
  const uint32_t count = part.layout.num_tokens;
  for (uint32_t lh = 0; lh < ctx.layout.num_layers * 2; ++lh) {
    std::memcpy(ctx.kv.data() + (size_t{lh} * ctx.layout.num_tokens + begin) * row,
                part.kv.data() + size_t{lh} * count * row, size_t{count} * row);
  }
}

class QualityRun {
 public:
  QualityRun(const Args& a, engine::Engine& eng, std::vector<CodecConfig> configs)
      : a_(a), eng_(eng), configs_(std::move(configs)) {
    const size_t threads =
        a.threads ? a.threads : std::max(1u, std::thread::hardware_concurrency());
    threads_ = threads;
    if (threads > 1) pool_ = std::make_unique<ThreadPool>(threads - 1);
    const engine::ModelConfig& c = eng.config();
    layout_ = ContextLayout(c.num_layers, c.num_kv_heads, c.head_dim, a.context);
    const ModelSpec spec = eng.Spec();
    layout_.rope = spec.rope;
    layout_.rope_theta = spec.rope_theta;
    for (uint32_t cs : a.chunk_sizes) {
      if (cs <= a.context) chunk_sizes_.push_back(cs);
    }
  }

  Status TrainProfile(const std::vector<Prompt>& train);
  // KVQ row sensitivity on the first a_.calibrate training prompts: for every row alone
  // quantised at a_.calibrate_bits (KVQ default scalings), the output KL over the gen tokens
  // and the row's mean squared error; weight = mean KL / mean MSE. Fills the row weights of the
  // configurations with weights=cal.
  Status Calibrate(const std::vector<Prompt>& train);
  Status RunPrompt(const Prompt& p, size_t index, size_t total);
  json Summary() const;
  Status MeasureSpeed();
  Status MeasureSsd();
  json& section() { return section_; }

 private:
  // Prefills the first `context` tokens into `seq` and reads their KV back from paged memory.
  Result<KvChunk> PrefillContext(engine::Sequence& seq, const Prompt& p);
  // Decoded KV of every configuration (names "config@chunk") plus fp16 and int8, accumulating
  // the size table over full chunks.
  Result<std::vector<std::pair<std::string, KvChunk>>> Variants(const KvChunk& ctx);

  const Args& a_;
  engine::Engine& eng_;
  std::vector<CodecConfig> configs_;  // row weights filled in by Calibrate
  size_t threads_ = 1;
  std::unique_ptr<ThreadPool> pool_;
  KvLayout layout_;
  std::vector<uint32_t> chunk_sizes_;
  const codec::CdfProfile* profile_ = nullptr;  // owned by profiles_
  codec::ProfileSet profiles_;
  std::map<uint32_t, std::map<std::string, Totals>> sizes_;  // chunk size -> config -> totals
  std::map<uint32_t, uint64_t> size_chunks_;
  std::map<std::string, QualityStats> quality_;
  std::vector<std::string> variant_names_;
  std::map<std::pair<std::string, std::string>, bool> always_identical_;
  std::vector<KvChunk> kept_;  // contexts kept for the speed and disk measurements
  json per_prompt_ = json::array();
  json section_;
  double control_max_abs_logit_diff_ = 0;
};

Result<KvChunk> QualityRun::PrefillContext(engine::Sequence& seq, const Prompt& p) {
  engine::PrefillOptions o;
  o.logits = engine::LogitsMode::kNone;
  KVSTASH_RETURN_IF_ERROR(
      eng_.Prefill(seq, std::span<const int32_t>(p.tokens).first(a_.context), 0, o).status());
  KvChunk ctx{layout_, std::vector<uint8_t>(layout_.RawBytes())};
  KVSTASH_RETURN_IF_ERROR(
      kernels::GatherChunk(eng_.kv_cache().View(), seq.Span(0), layout_, ctx.kv.data()));
  return ctx;
}

Status QualityRun::TrainProfile(const std::vector<Prompt>& train) {
  std::vector<codec::CdfProfileBuilder::TableSpec> specs;
  for (const CodecConfig& cfg : configs_) {
    if (cfg.profile) specs.push_back({cfg.mode, cfg.level, cfg.row_bins});
  }
  if (specs.empty()) return absl::OkStatus();
  KVSTASH_ASSIGN_OR_RETURN(
      auto builder, codec::CdfProfileBuilder::Create(codec::ProfileShape::Of(layout_), specs));
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < train.size(); ++i) {
    auto seq = eng_.NewSequence();
    KVSTASH_ASSIGN_OR_RETURN(KvChunk ctx, PrefillContext(*seq, train[i]));
    for (const KvChunk& c : Chunks(ctx, std::min<uint32_t>(256, a_.context))) {
      KVSTASH_RETURN_IF_ERROR(builder.Add(c.layout, c.kv));
    }
    std::fprintf(stderr, "[codec_quality] profile: prompt %zu/%zu (%s@%zu), %.0f s\n", i + 1,
                 train.size(), train[i].text.c_str(), train[i].offset, Since(t0));
  }
  KVSTASH_ASSIGN_OR_RETURN(codec::CdfProfile profile, builder.Build());
  profile_ = profiles_.Add(std::move(profile));
  section_["profile"] = {{"train_prompts", train.size()},
                         {"chunks", builder.chunks()},
                         {"bytes", profile_->bytes().size()},
                         {"tables", profile_->tables().size()}};
  return absl::OkStatus();
}

Result<std::vector<std::pair<std::string, KvChunk>>> QualityRun::Variants(const KvChunk& ctx) {
  std::vector<std::pair<std::string, KvChunk>> out;
  out.emplace_back("fp16", ctx);
  out.emplace_back("int8", KvChunk{ctx.layout, EightBitRoundTrip(ctx)});
  for (uint32_t cs : chunk_sizes_) {
    const size_t first = out.size();
    for (const CodecConfig& cfg : configs_) {
      out.emplace_back(cfg.name + "@" + std::to_string(cs), KvChunk{ctx.layout, ctx.kv});
    }
    std::map<std::string, Totals>& totals = sizes_[cs];
    for (uint32_t t = 0; t < ctx.layout.num_tokens; t += cs) {
      const uint32_t count = std::min(cs, ctx.layout.num_tokens - t);
      const bool full = count == cs;
      const KvChunk chunk = Slice(ctx, t, count);
      if (full) {
        ++size_chunks_[cs];
        auto add = [&](const std::string& name, double bytes) {
          totals[name].bytes += bytes;
          totals[name].tokens += count;
        };
        add("fp16", static_cast<double>(chunk.kv.size()));
        add("int8", EightBitBytes(chunk.layout));
        totals["int8"].AddError(chunk, EightBitRoundTrip(chunk));
        std::vector<uint8_t> z(ZSTD_compressBound(chunk.kv.size()));
        add("zstd3_fp16", static_cast<double>(ZSTD_compress(z.data(), z.size(), chunk.kv.data(),
                                                            chunk.kv.size(), 3)));
        std::vector<char> l(LZ4_compressBound(static_cast<int>(chunk.kv.size())));
        add("lz4_fp16",
            LZ4_compress_default(reinterpret_cast<const char*>(chunk.kv.data()), l.data(),
                                 static_cast<int>(chunk.kv.size()), static_cast<int>(l.size())));
      }
      for (size_t k = 0; k < configs_.size(); ++k) {
        const CodecConfig& cfg = configs_[k];
        if (cfg.kvq) {
          codec::KvqOptions o = cfg.kvq_options;
          o.pool = pool_.get();
          // Tokens [mb, me) of the context go through the codec; the rest of the chunk stays
          // exact (cfg.exact_head / exact_tail).
          const uint32_t T = ctx.layout.num_tokens;
          const uint32_t mb = std::max(t, std::min(cfg.exact_head, t + count));
          const uint32_t me = std::max(mb, std::min(t + count, T - std::min(cfg.exact_tail, T)));
          KvChunk part = chunk;  // exact outside [mb, me)
          std::vector<uint8_t> container;
          codec::KvqInfo info;
          if (me > mb) {
            const KvChunk middle = Slice(ctx, mb, me - mb);
            KVSTASH_ASSIGN_OR_RETURN(container, codec::EncodeKvq(middle.layout, middle.kv, o));
            KVSTASH_ASSIGN_OR_RETURN(std::vector<uint8_t> decoded,
                                     codec::DecodeKvq(container, pool_.get()));
            PutSlice(part, KvChunk{middle.layout, std::move(decoded)}, mb - t);
            KVSTASH_ASSIGN_OR_RETURN(info, codec::ParseKvq(container));
          }
          if (full) {
            Totals& tt = totals[cfg.name];
            // The chunk's KV is count whole tokens, so this quotient is exact.
            const double token_bytes =
                static_cast<double>(chunk.kv.size()) / static_cast<double>(count);
            const double exact_bytes = static_cast<double>(count - (me - mb)) * token_bytes;
            tt.bytes += static_cast<double>(container.size()) + exact_bytes;
            tt.tokens += count;
            // KVQ sections in CacheGen's breakdown: bits as bins, frequency tables as CDFs,
            // min/step parameters and exact outliers as scales.
            codec::SizeBreakdown b;
            b.header = info.header;
            b.bins = info.bits;
            b.cdf = info.freqs;
            b.scales = info.params + info.outliers + static_cast<uint64_t>(exact_bytes);
            b.lengths = info.lengths;
            b.payload = info.payload;
            tt.AddParts(b);
            tt.AddError(chunk, part.kv);
          }
          PutSlice(out[first + k].second, part, t);
          continue;
        }
        codec::EncodeOptions o;
        o.level = cfg.level;
        o.row_bins = cfg.row_bins;
        o.mode = cfg.mode;
        o.profile = cfg.profile ? profile_ : nullptr;
        o.pool = pool_.get();
        KVSTASH_ASSIGN_OR_RETURN(std::vector<uint8_t> container,
                                 codec::EncodeCacheGen(chunk.layout, chunk.kv, o));
        codec::DecodeOptions d;
        d.profiles = &profiles_;
        d.pool = pool_.get();
        KVSTASH_ASSIGN_OR_RETURN(std::vector<uint8_t> decoded, codec::DecodeCacheGen(container, d));
        KvChunk part{chunk.layout, std::move(decoded)};
        if (full) {
          KVSTASH_ASSIGN_OR_RETURN(codec::ContainerView view, codec::ParseContainer(container));
          Totals& tt = totals[cfg.name];
          tt.bytes += static_cast<double>(container.size());
          tt.tokens += count;
          tt.AddParts(view.info.sizes);
          tt.AddError(chunk, part.kv);
        }
        PutSlice(out[first + k].second, part, t);
      }
    }
  }
  return out;
}

Status QualityRun::Calibrate(const std::vector<Prompt>& train) {
  bool wanted = false;
  for (const CodecConfig& cfg : configs_) wanted |= cfg.calibrated;
  if (!wanted) return absl::OkStatus();
  const uint32_t rows = 2 * layout_.num_layers;
  if (!a_.kvq_weights.empty()) {
    // Weights measured by an earlier run (e.g. on other texts, for a held-out evaluation).
    const size_t colon = a_.kvq_weights.rfind(':');
    if (colon == std::string::npos) return absl::InvalidArgumentError("--kvq-weights FILE:LABEL");
    std::ifstream in(a_.kvq_weights.substr(0, colon));
    const json root = json::parse(in, nullptr, /*allow_exceptions=*/false);
    const std::string label = a_.kvq_weights.substr(colon + 1);
    if (root.is_discarded() || !root.contains("models") || !root["models"].contains(label) ||
        !root["models"][label].contains("kvq_calibration")) {
      return absl::InvalidArgumentError("no kvq_calibration in " + a_.kvq_weights);
    }
    const json& cal = root["models"][label]["kvq_calibration"];
    if (cal["rows"].size() != rows) return absl::InvalidArgumentError("calibration row count");
    std::vector<float> w(rows);
    for (uint32_t r = 0; r < rows; ++r) w[r] = cal["rows"][r]["weight"].get<float>();
    for (CodecConfig& cfg : configs_) {
      if (cfg.calibrated) cfg.kvq_options.row_weights = w;
    }
    section_["kvq_calibration"] = cal;
    section_["kvq_calibration"]["from"] = a_.kvq_weights;
    return absl::OkStatus();
  }
  if (a_.calibrate < 1 || static_cast<size_t>(a_.calibrate) > train.size()) {
    return absl::InvalidArgumentError(
        "weights=cal needs --kvq-calibrate 1..train prompts or --kvq-weights");
  }
  const size_t vocab = eng_.config().vocab_size;
  const size_t row_elems = size_t{layout_.num_tokens} * layout_.heads() * layout_.head_dim;
  const size_t es = DTypeSize(layout_.dtype);
  auto row_offset = [&](uint32_t r) {  // bytes; rows as in kvq.h
    const uint32_t layer = r < layout_.num_layers ? r : r - layout_.num_layers;
    return (size_t{layer} * 2 + (r < layout_.num_layers ? 0 : 1)) * row_elems * es;
  };
  std::vector<double> kl(rows, 0), mse(rows, 0);
  codec::KvqOptions o_cal;  // rotation and sinks of the (first) calibrated configuration
  for (const CodecConfig& cfg : configs_) {
    if (!cfg.calibrated) continue;
    o_cal.rotate_keys = cfg.kvq_options.rotate_keys;
    o_cal.rotate_values = cfg.kvq_options.rotate_values;
    o_cal.sink_tokens = cfg.kvq_options.sink_tokens;
    break;
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < a_.calibrate; ++i) {
    const Prompt& p = train[i];
    auto seq = eng_.NewSequence();
    KVSTASH_ASSIGN_OR_RETURN(KvChunk ctx, PrefillContext(*seq, p));
    std::vector<int32_t> targets;
    std::vector<std::vector<double>> log_exact;
    KVSTASH_ASSIGN_OR_RETURN(
        std::vector<float> logits,
        eng_.Prefill(*seq, std::span<const int32_t>(p.tokens).subspan(a_.context, 1), a_.context));
    while (true) {
      targets.push_back(Argmax(logits));
      log_exact.push_back(LogSoftmax(logits));
      if (targets.size() == a_.gen) break;
      KVSTASH_ASSIGN_OR_RETURN(logits, eng_.Decode(*seq, targets.back()));
    }
    std::vector<int32_t> forced = {p.tokens[a_.context]};
    forced.insert(forced.end(), targets.begin(), targets.end() - 1);
    codec::KvqOptions o = o_cal;
    o.row_bits.assign(rows, static_cast<uint8_t>(a_.calibrate_bits));
    o.pool = pool_.get();
    KVSTASH_ASSIGN_OR_RETURN(std::vector<uint8_t> container,
                             codec::EncodeKvq(ctx.layout, ctx.kv, o));
    KVSTASH_ASSIGN_OR_RETURN(std::vector<uint8_t> quant, codec::DecodeKvq(container, pool_.get()));
    for (uint32_t r = 0; r < rows; ++r) {
      KvChunk v = ctx;
      std::memcpy(v.kv.data() + row_offset(r), quant.data() + row_offset(r), row_elems * es);
      double sq = 0;
      {
        // Mean squared error of the row alone, in f32.
        std::vector<float> xa(row_elems), xb(row_elems);
        std::vector<uint16_t> h(row_elems);
        if (es == 2) {
          std::memcpy(h.data(), ctx.kv.data() + row_offset(r), row_elems * 2);
          const auto widen = layout_.dtype == DType::kBF16
                                 ? static_cast<void (*)(const uint16_t*, float*, size_t)>(BF16ToF32)
                                 : static_cast<void (*)(const uint16_t*, float*, size_t)>(F16ToF32);
          widen(h.data(), xa.data(), row_elems);
          std::memcpy(h.data(), v.kv.data() + row_offset(r), row_elems * 2);
          widen(h.data(), xb.data(), row_elems);
        } else {
          std::memcpy(xa.data(), ctx.kv.data() + row_offset(r), row_elems * 4);
          std::memcpy(xb.data(), v.kv.data() + row_offset(r), row_elems * 4);
        }
        for (size_t k = 0; k < row_elems; ++k) {
          const double d = double{xa[k]} - double{xb[k]};
          sq += d * d;
        }
      }
      mse[r] += sq / static_cast<double>(row_elems);
      auto view = eng_.kv_cache().View();
      KVSTASH_RETURN_IF_ERROR(kernels::ScatterChunk(v.layout, v.kv.data(), seq->Span(0), view));
      engine::PrefillOptions po;
      po.logits = engine::LogitsMode::kAll;
      KVSTASH_ASSIGN_OR_RETURN(std::vector<float> out, eng_.Prefill(*seq, forced, a_.context, po));
      const PromptScore sc = Score(log_exact, out, targets, vocab);
      kl[r] += sc.kl_sum / static_cast<double>(sc.positions);
    }
    std::fprintf(stderr, "[codec_quality] calibration: prompt %d/%d (%s@%zu), %.0f s\n", i + 1,
                 a_.calibrate, p.text.c_str(), p.offset, Since(t0));
  }
  std::vector<float> w(rows);
  json rows_json = json::array();
  for (uint32_t r = 0; r < rows; ++r) {
    // A row whose error showed no effect keeps a small positive weight.
    w[r] = static_cast<float>(mse[r] > 0 ? std::max(kl[r], 1e-9) / mse[r] : 0.0);
    rows_json.push_back({{"row", r},
                         {"kl", kl[r] / a_.calibrate},
                         {"mse", mse[r] / a_.calibrate},
                         {"weight", w[r]}});
  }
  for (CodecConfig& cfg : configs_) {
    if (cfg.calibrated) cfg.kvq_options.row_weights = w;
  }
  section_["kvq_calibration"] = {
      {"prompts", a_.calibrate},          {"bits", a_.calibrate_bits},
      {"rotate_keys", o_cal.rotate_keys}, {"rotate_values", o_cal.rotate_values},
      {"sink_tokens", o_cal.sink_tokens}, {"rows", rows_json}};
  return absl::OkStatus();
}

Status QualityRun::RunPrompt(const Prompt& p, size_t index, size_t total) {
  const size_t vocab = eng_.config().vocab_size;
  auto seq = eng_.NewSequence();
  auto t0 = std::chrono::steady_clock::now();
  KVSTASH_ASSIGN_OR_RETURN(KvChunk ctx, PrefillContext(*seq, p));
  const double prefill_s = Since(t0);

  // Exact continuation: the last prompt token, then gen - 1 decode steps.
  t0 = std::chrono::steady_clock::now();
  std::vector<int32_t> targets;
  std::vector<std::vector<double>> log_exact;
  std::vector<float> exact_logits;
  KVSTASH_ASSIGN_OR_RETURN(
      std::vector<float> logits,
      eng_.Prefill(*seq, std::span<const int32_t>(p.tokens).subspan(a_.context, 1), a_.context));
  while (true) {
    targets.push_back(Argmax(logits));
    log_exact.push_back(LogSoftmax(logits));
    exact_logits.insert(exact_logits.end(), logits.begin(), logits.end());
    if (targets.size() == a_.gen) break;
    KVSTASH_ASSIGN_OR_RETURN(logits, eng_.Decode(*seq, targets.back()));
  }
  const double generate_s = Since(t0);

  // The batch every configuration prefills over its decoded context.
  std::vector<int32_t> forced = {p.tokens[a_.context]};
  forced.insert(forced.end(), targets.begin(), targets.end() - 1);

  t0 = std::chrono::steady_clock::now();
  KVSTASH_ASSIGN_OR_RETURN(auto variants, Variants(ctx));
  const double codec_s = Since(t0);
  if (variant_names_.empty()) {
    for (const auto& [name, kv] : variants) variant_names_.push_back(name);
  }

  t0 = std::chrono::steady_clock::now();
  json record = {{"text", p.text}, {"offset", p.offset}};
  std::vector<int> group(variants.size(), -1);
  size_t evaluated = 0;
  for (size_t i = 0; i < variants.size(); ++i) {
    for (size_t j = 0; j < i && group[i] < 0; ++j) {
      if (variants[j].second.kv == variants[i].second.kv) group[i] = group[j];
    }
    for (size_t j = 0; j < i; ++j) {
      auto key = std::make_pair(variants[j].first, variants[i].first);
      const bool same = group[i] >= 0 && group[i] == group[j];
      auto it = always_identical_.find(key);
      always_identical_[key] = (it == always_identical_.end() ? true : it->second) && same;
    }
    if (group[i] >= 0) continue;
    group[i] = static_cast<int>(i);
    ++evaluated;
  }
  std::map<int, std::pair<PromptScore, Totals>> scores;
  for (size_t i = 0; i < variants.size(); ++i) {
    if (group[i] != static_cast<int>(i)) continue;
    const KvChunk& kv = variants[i].second;
    auto view = eng_.kv_cache().View();
    KVSTASH_RETURN_IF_ERROR(kernels::ScatterChunk(kv.layout, kv.kv.data(), seq->Span(0), view));
    engine::PrefillOptions o;
    o.logits = engine::LogitsMode::kAll;
    KVSTASH_ASSIGN_OR_RETURN(std::vector<float> rows, eng_.Prefill(*seq, forced, a_.context, o));
    if (variants[i].first == "fp16") {
      for (size_t k = 0; k < rows.size(); ++k) {
        control_max_abs_logit_diff_ =
            std::max<double>(control_max_abs_logit_diff_, std::fabs(rows[k] - exact_logits[k]));
      }
    }
    Totals err;
    err.AddError(ctx, kv.kv);
    scores[static_cast<int>(i)] = {Score(log_exact, rows, targets, vocab), err};
  }
  for (size_t i = 0; i < variants.size(); ++i) {
    const auto& [score, err] = scores[group[i]];
    quality_[variants[i].first].Add(score, err);
    record["configs"][variants[i].first] = {
        {"agreement", static_cast<double>(score.matches) / static_cast<double>(score.positions)},
        {"first_divergence", score.first_divergence},
        {"kl_mean", score.kl_sum / static_cast<double>(score.positions)},
        {"kl_first", score.kl_first}};
  }
  const double eval_s = Since(t0);
  record["seconds"] = {
      {"prefill", prefill_s}, {"generate", generate_s}, {"codec", codec_s}, {"evaluate", eval_s}};
  per_prompt_.push_back(record);
  if (kept_.size() < static_cast<size_t>(a_.speed_prompts)) {
    if (!a_.dump_dir.empty()) {
      ObjectInfo info;
      info.layout = ctx.layout;
      std::filesystem::create_directories(a_.dump_dir);
      KVSTASH_RETURN_IF_ERROR(codec::WriteObjectFile(
          a_.dump_dir + "/context_" + std::to_string(index) + ".kvo", info, ctx.kv));
    }
    kept_.push_back(std::move(ctx));
  }

  std::fprintf(stderr,
               "[codec_quality] prompt %zu/%zu %s@%zu: prefill %.1f s, generate %.1f s, codec "
               "%.1f s, %zu evaluations %.1f s\n",
               index + 1, total, p.text.c_str(), p.offset, prefill_s, generate_s, codec_s,
               evaluated, eval_s);
  for (const auto& [name, c] : record["configs"].items()) {
    if (name.find('@') != std::string::npos &&
        name.find("@" + std::to_string(chunk_sizes_.front())) == std::string::npos) {
      continue;
    }
    std::fprintf(stderr, "[codec_quality]   %-40s agreement %.3f KL %.2e\n", name.c_str(),
                 c["agreement"].get<double>(), c["kl_mean"].get<double>());
  }
  section_["summary"] = Summary();
  section_["per_prompt"] = per_prompt_;
  return absl::OkStatus();
}

json QualityRun::Summary() const {
  json j;
  for (const auto& [cs, totals] : sizes_) {
    const double fp16 = totals.at("fp16").bytes / totals.at("fp16").tokens;
    const double int8 = totals.at("int8").bytes / totals.at("int8").tokens;
    json& s = j["sizes"][std::to_string(cs)];
    s["chunks"] = size_chunks_.at(cs);
    for (const auto& [name, t] : totals) {
      const bool lossy = name != "fp16" && name.find("_fp16") == std::string::npos;
      s["configs"][name] = SizeRow(t, fp16, int8, lossy);
    }
  }
  for (const std::string& name : variant_names_) {
    json q = quality_.at(name).ToJson();
    std::vector<std::string> same;
    for (const std::string& other : variant_names_) {
      if (other == name) continue;
      auto key = std::make_pair(name, other);
      auto it = always_identical_.find(key);
      if (it == always_identical_.end()) it = always_identical_.find({other, name});
      if (it != always_identical_.end() && it->second) same.push_back(other);
    }
    q["decoded_kv_identical_in_every_prompt_to"] = same;
    j["quality"][name] = q;
  }
  j["control_max_abs_logit_diff"] = control_max_abs_logit_diff_;
  return j;
}

Status QualityRun::MeasureSpeed() {
  for (uint32_t cs : chunk_sizes_) {
    std::vector<KvChunk> chunks;
    double raw = 0;
    for (const KvChunk& ctx : kept_) {
      for (KvChunk& c : Chunks(ctx, cs)) {
        raw += static_cast<double>(c.kv.size());
        chunks.push_back(std::move(c));
      }
    }
    json& out = section_["speed"][std::to_string(cs)];
    out["chunks"] = chunks.size();
    out["raw_bytes"] = raw;
    for (const size_t threads : {size_t{1}, threads_}) {
      std::unique_ptr<ThreadPool> tp =
          threads > 1 ? std::make_unique<ThreadPool>(threads - 1) : nullptr;
      const std::string tkey = std::to_string(threads) + "_threads";
      for (const CodecConfig& cfg : configs_) {
        if (cfg.kvq) {
          codec::KvqOptions o = cfg.kvq_options;
          o.pool = tp.get();
          std::vector<std::vector<uint8_t>> containers;
          for (const KvChunk& c : chunks) {
            KVSTASH_ASSIGN_OR_RETURN(auto e, codec::EncodeKvq(c.layout, c.kv, o));
            containers.push_back(std::move(e));
          }
          const double enc = MedianSeconds(a_.reps, [&] {
            for (const KvChunk& c : chunks) (void)codec::EncodeKvq(c.layout, c.kv, o);
          });
          std::vector<uint8_t> buf;
          const double dec = MedianSeconds(a_.reps, [&] {
            for (size_t i = 0; i < chunks.size(); ++i) {
              buf.resize(chunks[i].kv.size());
              (void)codec::DecodeKvq(containers[i], buf, tp.get());
            }
          });
          out[tkey][cfg.name] = {{"encode_GBps", raw / enc / 1e9},
                                 {"decode_GBps", raw / dec / 1e9},
                                 {"encode_GBps_per_core", raw / enc / 1e9 / threads},
                                 {"decode_GBps_per_core", raw / dec / 1e9 / threads}};
          std::fprintf(stderr,
                       "[codec_quality] speed %u-token chunks, %s, %zu thread(s): encode %.3f "
                       "GB/s, decode %.3f GB/s\n",
                       cs, cfg.name.c_str(), threads, raw / enc / 1e9, raw / dec / 1e9);
          continue;
        }
        if (cfg.mode != CacheGenMode::kReference || !cfg.row_bins.empty()) continue;
        codec::EncodeOptions o;
        o.level = cfg.level;
        o.row_bins = cfg.row_bins;
        o.profile = cfg.profile ? profile_ : nullptr;
        o.pool = tp.get();
        std::vector<std::vector<uint8_t>> containers;
        for (const KvChunk& c : chunks) {
          KVSTASH_ASSIGN_OR_RETURN(auto e, codec::EncodeCacheGen(c.layout, c.kv, o));
          containers.push_back(std::move(e));
        }
        const double enc = MedianSeconds(a_.reps, [&] {
          for (const KvChunk& c : chunks) (void)codec::EncodeCacheGen(c.layout, c.kv, o);
        });
        codec::DecodeOptions d;
        d.profiles = &profiles_;
        d.pool = tp.get();
        std::vector<uint8_t> buf;
        const double dec = MedianSeconds(a_.reps, [&] {
          for (size_t i = 0; i < chunks.size(); ++i) {
            buf.resize(chunks[i].kv.size());
            (void)codec::DecodeCacheGen(containers[i], buf, d);
          }
        });
        out[tkey][cfg.name] = {{"encode_GBps", raw / enc / 1e9},
                               {"decode_GBps", raw / dec / 1e9},
                               {"encode_GBps_per_core", raw / enc / 1e9 / threads},
                               {"decode_GBps_per_core", raw / dec / 1e9 / threads}};
        std::fprintf(stderr,
                     "[codec_quality] speed %u-token chunks, %s, %zu thread(s): encode %.3f GB/s, "
                     "decode %.3f GB/s\n",
                     cs, cfg.name.c_str(), threads, raw / enc / 1e9, raw / dec / 1e9);
      }
    }
    // Lossless baselines, one thread.
    std::vector<std::vector<uint8_t>> z(chunks.size());
    std::vector<std::vector<char>> l(chunks.size());
    const double zc = MedianSeconds(a_.reps, [&] {
      for (size_t i = 0; i < chunks.size(); ++i) {
        z[i].resize(ZSTD_compressBound(chunks[i].kv.size()));
        z[i].resize(
            ZSTD_compress(z[i].data(), z[i].size(), chunks[i].kv.data(), chunks[i].kv.size(), 3));
      }
    });
    std::vector<uint8_t> buf;
    const double zd = MedianSeconds(a_.reps, [&] {
      for (size_t i = 0; i < chunks.size(); ++i) {
        buf.resize(chunks[i].kv.size());
        (void)ZSTD_decompress(buf.data(), buf.size(), z[i].data(), z[i].size());
      }
    });
    const double lc = MedianSeconds(a_.reps, [&] {
      for (size_t i = 0; i < chunks.size(); ++i) {
        const int n = static_cast<int>(chunks[i].kv.size());
        l[i].resize(LZ4_compressBound(n));
        l[i].resize(LZ4_compress_default(reinterpret_cast<const char*>(chunks[i].kv.data()),
                                         l[i].data(), n, static_cast<int>(l[i].size())));
      }
    });
    const double ld = MedianSeconds(a_.reps, [&] {
      for (size_t i = 0; i < chunks.size(); ++i) {
        buf.resize(chunks[i].kv.size());
        (void)LZ4_decompress_safe(l[i].data(), reinterpret_cast<char*>(buf.data()),
                                  static_cast<int>(l[i].size()), static_cast<int>(buf.size()));
      }
    });
    out["1_threads"]["zstd3_fp16"] = {{"encode_GBps", raw / zc / 1e9},
                                      {"decode_GBps", raw / zd / 1e9}};
    out["1_threads"]["lz4_fp16"] = {{"encode_GBps", raw / lc / 1e9},
                                    {"decode_GBps", raw / ld / 1e9}};
  }
  return absl::OkStatus();
}

Status QualityRun::MeasureSsd() {
  for (uint32_t cs : chunk_sizes_) {
    std::vector<KvChunk> chunks;
    for (const KvChunk& ctx : kept_) {
      for (KvChunk& c : Chunks(ctx, cs)) chunks.push_back(std::move(c));
    }
    std::vector<EncodedSet> sets;
    for (const CodecConfig& cfg : configs_) {
      if (cfg.kvq) {
        EncodedSet set{cfg.name, {}};
        codec::KvqOptions o = cfg.kvq_options;
        o.pool = pool_.get();
        for (const KvChunk& c : chunks) {
          KVSTASH_ASSIGN_OR_RETURN(auto e, codec::EncodeKvq(c.layout, c.kv, o));
          set.containers.push_back(std::move(e));
        }
        sets.push_back(std::move(set));
        continue;
      }
      if (cfg.mode != CacheGenMode::kReference || !cfg.row_bins.empty() ||
          (!cfg.profile && cfg.level != 2)) {
        continue;
      }
      EncodedSet set{cfg.name, {}};
      for (const KvChunk& c : chunks) {
        codec::EncodeOptions o;
        o.level = cfg.level;
        o.row_bins = cfg.row_bins;
        o.profile = cfg.profile ? profile_ : nullptr;
        o.pool = pool_.get();
        KVSTASH_ASSIGN_OR_RETURN(auto e, codec::EncodeCacheGen(c.layout, c.kv, o));
        set.containers.push_back(std::move(e));
      }
      sets.push_back(std::move(set));
    }
    SsdLoadOptions o;
    o.dir = a_.ssd_dir;
    o.reps = a_.reps;
    o.threads = threads_;
    o.profiles = &profiles_;
    KVSTASH_ASSIGN_OR_RETURN(json r, MeasureSsdLoad(chunks, sets, o));
    std::fprintf(stderr, "[codec_quality] disk, %u-token chunks: raw read %.2f ms\n", cs,
                 1e3 * r["raw"]["read_s_median"].get<double>());
    for (const auto& [name, set] : r["sets"].items()) {
      std::fprintf(stderr,
                   "[codec_quality]   %s read + decode %.2f ms (1 thread), %.2f ms (%zu threads)\n",
                   name.c_str(), 1e3 * set["load_s_median_1_thread"].get<double>(),
                   1e3 * set["load_s_median_all_threads"].get<double>(), threads_);
    }
    section_["ssd_load"][std::to_string(cs)] = r;
  }
  return absl::OkStatus();
}

int Fail(const Status& s) {
  std::fprintf(stderr, "codec_quality: %s\n", s.ToString().c_str());
  return 1;
}

}  // namespace

int Main(int argc, char** argv) {
  CLI::App app{"CacheGen on real KV: sizes, output quality, speed, disk load"};
  Args a;
  app.add_option("--model", a.model, "GGUF file or llama2.c checkpoint")->required();
  app.add_option("--tokenizer", a.tokenizer, "llama2.c tokenizer file (llama2.c models)");
  app.add_option("--text", a.texts, "text files to cut prompts from")->required();
  app.add_option("--label", a.label, "section name in the JSON (default: the model id)");
  app.add_option("--prompts", a.prompts, "test prompts");
  app.add_option("--train-prompts", a.train_prompts, "prompts that train the profile");
  app.add_option("--context-tokens", a.context, "cached context tokens per prompt");
  app.add_option("--gen-tokens", a.gen, "greedy tokens compared per prompt");
  app.add_option("--chunk-sizes", a.chunk_sizes, "chunk sizes")->delimiter(',');
  app.add_option("--threads", a.threads, "engine and codec threads (0 = all cores)");
  app.add_option("--speed-prompts", a.speed_prompts, "contexts kept for speed and disk tests");
  app.add_option("--reps", a.reps, "repetitions of the speed and disk measurements");
  app.add_option("--bins", a.bins,
                 "extra configurations name=k1/k2/k3,v1/v2 (bins of the K and V layer groups)");
  app.add_option("--kvq", a.kvq,
                 "KVQ configurations name=L<level>|k1/k2/k3,v1/v2[:key=token|channel]"
                 "[:value=token|channel][:group=G][:outliers=N][:context=N][:subchunk=S]");
  app.add_option("--kvq-calibrate", a.calibrate,
                 "training prompts for the KVQ row-sensitivity calibration (weights=cal)");
  app.add_option("--kvq-calibrate-bits", a.calibrate_bits, "bits of the calibration rows");
  app.add_option("--kvq-weights", a.kvq_weights,
                 "FILE:LABEL: use the kvq_calibration of an earlier run instead of calibrating");
  app.add_flag("--no-cachegen", a.no_cachegen,
               "leave out the CacheGen levels (only --bins and --kvq configurations)");
  app.add_flag("--speed", a.speed, "measure encode/decode throughput on the real KV");
  app.add_option("--ssd-dir", a.ssd_dir, "directory on the disk to test (empty: skip)");
  app.add_option("--dump-dir", a.dump_dir,
                 "write the kept contexts' exact KV here as object files (for codec_eval --dump)");
  app.add_option("--out", a.out, "JSON results (the models.<label> section is replaced)");
  CLI11_PARSE(app, argc, argv);
  if (a.gen < 1 || a.context < 1 || a.prompts < 1 || a.train_prompts < 1) {
    std::fprintf(stderr, "codec_quality: counts must be positive\n");
    return 2;
  }

  auto model = engine::Model::Load(a.model);
  if (!model.ok()) return Fail(model.status());
  const engine::ModelConfig& config = (*model)->config();
  Result<std::unique_ptr<engine::Tokenizer>> tok =
      absl::InvalidArgumentError("llama2.c checkpoints need --tokenizer");
  if (!a.tokenizer.empty()) {
    tok = engine::LoadLlama2cTokenizer(a.tokenizer, config.vocab_size);
  } else if ((*model)->gguf() != nullptr) {
    tok = engine::LoadGgufTokenizer(*(*model)->gguf());
  }
  if (!tok.ok()) return Fail(tok.status());
  if (a.context + a.gen > config.max_seq_len) {
    std::fprintf(stderr, "codec_quality: context + gen tokens exceed the model's %u\n",
                 config.max_seq_len);
    return 2;
  }
  if (a.label.empty()) a.label = (*model)->model_id();

  engine::EngineOptions eo;
  eo.num_threads = a.threads;
  eo.kv.dtype = DType::kF16;
  eo.kv.num_blocks = (a.context + a.gen + 15) / 16 + 1;
  auto eng = engine::Engine::Create(*model, eo);
  if (!eng.ok()) return Fail(eng.status());

  auto prompts = CutPrompts(**tok, a);
  if (!prompts.ok()) return Fail(prompts.status());
  const auto& [train, test] = *prompts;

  std::vector<CodecConfig> configs;
  if (!a.no_cachegen) configs = LevelConfigs();
  for (const std::string& spec : a.bins) {
    auto extra = ParseBinsConfig(spec, config.num_layers);
    if (!extra.ok()) return Fail(extra.status());
    configs.insert(configs.end(), extra->begin(), extra->end());
  }
  for (const std::string& spec : a.kvq) {
    auto extra = ParseKvqConfig(spec, config.num_layers);
    if (!extra.ok()) return Fail(extra.status());
    configs.push_back(*extra);
  }
  QualityRun run(a, **eng, std::move(configs));
  json& section = run.section();
  section["model"] = (*model)->model_id();
  section["model_file"] = std::filesystem::path(a.model).filename().string();
  section["kernel_isa"] = engine::Engine::KernelIsa();
  section["kv_dtype"] = "f16";
  section["shape"] = {{"layers", config.num_layers},
                      {"kv_heads", config.num_kv_heads},
                      {"head_dim", config.head_dim}};
  section["prompts"] = {
      {"test", test.size()}, {"train", train.size()}, {"context_tokens", a.context},
      {"gen_tokens", a.gen}, {"texts", a.texts},      {"chunk_sizes", a.chunk_sizes}};
  const auto t0 = std::chrono::steady_clock::now();
  if (Status s = run.TrainProfile(train); !s.ok()) return Fail(s);
  if (Status s = run.Calibrate(train); !s.ok()) return Fail(s);
  for (size_t i = 0; i < test.size(); ++i) {
    if (Status s = run.RunPrompt(test[i], i, test.size()); !s.ok()) return Fail(s);
    section["elapsed_s"] = Since(t0);
    WriteJson(a.out, a.label, section);
  }
  if (a.speed) {
    if (Status s = run.MeasureSpeed(); !s.ok()) return Fail(s);
    WriteJson(a.out, a.label, section);
  }
  if (!a.ssd_dir.empty()) {
    if (Status s = run.MeasureSsd(); !s.ok()) return Fail(s);
  }
  section["elapsed_s"] = Since(t0);
  WriteJson(a.out, a.label, section);

  const json& q = section["summary"]["quality"];
  std::printf("\n| config | agreement | all %u match | KL mean | rel. MSE K | rel. MSE V |\n",
              a.gen);
  std::printf("|---|---:|---:|---:|---:|---:|\n");
  for (const auto& [name, r] : q.items()) {
    std::printf("| %s | %.4f | %.3f | %.3e | %.2e | %.2e |\n", name.c_str(),
                r["next_token_agreement"].get<double>(), r["all_tokens_match_share"].get<double>(),
                r["kl_mean"].get<double>(), r["rel_mse_k"].get<double>(),
                r["rel_mse_v"].get<double>());
  }
  for (const auto& [cs, s] : section["summary"]["sizes"].items()) {
    std::printf("\n%s-token chunks (%d)\n| config | bytes/token | vs fp16 | vs 8-bit |\n",
                cs.c_str(), s["chunks"].get<int>());
    std::printf("|---|---:|---:|---:|\n");
    for (const auto& [name, r] : s["configs"].items()) {
      std::printf("| %s | %.1f | %.2fx | %.2fx |\n", name.c_str(),
                  r["bytes_per_token"].get<double>(), r["ratio_vs_fp16"].get<double>(),
                  r["ratio_vs_int8"].get<double>());
    }
  }
  return 0;
}

}  // namespace kvstash::bench

// An exception (a file system or JSON error, say) ends the run with its message and status 1
// rather than std::terminate's abort.
int main(int argc, char** argv) {
  try {
    return kvstash::bench::Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "codec_quality: %s\n", e.what());
    return 1;
  }
}
