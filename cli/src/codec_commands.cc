// `kvstash codec ...`: encode/decode KV dumps (object files) with CacheGen, inspect containers
// and profiles, learn model-level CDF profiles. On a terminal, encode and decode show a bar on
// stderr while the codec runs (the time elapsed, then the rate).
#include <cstdio>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "commands.h"
#include "kvstash/codec/cachegen.h"
#include "kvstash/codec/object_file.h"
#include "kvstash/codec/profile.h"
#include "kvstash/common/thread_pool.h"
#include "progress.h"

namespace kvstash::cli {
namespace {

using codec::CacheGenMode;

int Fail(const char* cmd, const Status& s) {
  std::fprintf(stderr, "kvstash codec %s: %s\n", cmd, s.ToString().c_str());
  return 1;
}

Result<std::vector<uint8_t>> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(path + ": cannot open");
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
}

Status WriteFile(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  if (!out) return absl::ResourceExhaustedError(path + ": write failed");
  return OkStatus();
}

Status LoadProfiles(const std::vector<std::string>& paths, codec::ProfileSet* set,
                    const codec::CdfProfile** first) {
  for (const std::string& path : paths) {
    KVSTASH_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, ReadFile(path));
    auto profile = codec::CdfProfile::Parse(bytes);
    if (!profile.ok()) {
      return absl::Status(profile.status().code(),
                          path + ": " + std::string(profile.status().message()));
    }
    const codec::CdfProfile* added = set->Add(*std::move(profile));
    if (*first == nullptr) *first = added;
  }
  return OkStatus();
}

std::string Bytes(uint64_t n) {
  char buf[64];
  if (n >= (1u << 20)) {
    std::snprintf(buf, sizeof(buf), "%llu (%.2f MiB)", static_cast<unsigned long long>(n),
                  n / 1048576.0);
  } else {
    std::snprintf(buf, sizeof(buf), "%llu", static_cast<unsigned long long>(n));
  }
  return buf;
}

struct EncodeArgs {
  std::string in, out, profile;
  int level = 2;
  bool delta = false;
  uint32_t subchunk = 256;
  uint32_t model_layers = 0;
  size_t threads = 0;
};

int RunEncode(const EncodeArgs& a) {
  auto dump = codec::ReadObjectFile(a.in);
  if (!dump.ok()) return Fail("encode", dump.status());
  if (dump->info.encoding != Encoding::kRaw) {
    return Fail("encode", absl::InvalidArgumentError(a.in + " is not a raw KV dump"));
  }
  codec::ProfileSet profiles;
  const codec::CdfProfile* profile = nullptr;
  if (!a.profile.empty()) {
    Status s = LoadProfiles({a.profile}, &profiles, &profile);
    if (!s.ok()) return Fail("encode", s);
  }
  ThreadPool pool(a.threads);
  codec::EncodeOptions options;
  options.level = a.level;
  options.mode = a.delta ? CacheGenMode::kDelta : CacheGenMode::kReference;
  options.subchunk_tokens = a.subchunk;
  options.model_layers = a.model_layers;
  options.profile = profile;
  options.pool = &pool;
  Result<std::vector<uint8_t>> container = absl::UnknownError("not run");
  {
    // The encoder reports no progress of its own: the bar shows the time taken, then the rate.
    Progress bar("encode " + a.in, dump->payload.size());
    bar.RunBusy(
        [&] { container = codec::EncodeCacheGen(dump->info.layout, dump->payload, options); });
    if (container.ok()) {
      bar.Finish();
    } else {
      bar.Clear();  // the error is printed on a clean line
    }
  }
  if (!container.ok()) return Fail("encode", container.status());
  ObjectInfo info = dump->info;
  info.encoding = Encoding::kCacheGen;
  info.encoding_level = static_cast<uint8_t>(a.level);
  Status s = codec::WriteObjectFile(a.out, info, *container);
  if (!s.ok()) return Fail("encode", s);
  std::printf("%s: %s -> %s bytes (%.2fx smaller than %s)\n", a.out.c_str(),
              Bytes(dump->payload.size()).c_str(), Bytes(container->size()).c_str(),
              static_cast<double>(dump->payload.size()) / container->size(),
              std::string(DTypeName(info.layout.dtype)).c_str());
  return 0;
}

int RunDecode(const std::string& in, const std::string& out,
              const std::vector<std::string>& profile_paths, size_t threads) {
  auto obj = codec::ReadObjectFile(in);
  if (!obj.ok()) return Fail("decode", obj.status());
  if (obj->info.encoding != Encoding::kCacheGen) {
    return Fail("decode", absl::InvalidArgumentError(in + " is not a CacheGen object"));
  }
  auto view = codec::ParseContainer(obj->payload);
  if (!view.ok()) return Fail("decode", view.status());
  const KvLayout& l = obj->info.layout;
  const codec::ContainerInfo& ci = view->info;
  if (ci.num_layers != l.num_layers || ci.num_heads != l.heads() || ci.head_dim != l.head_dim ||
      ci.num_tokens != l.num_tokens || ci.dtype != l.dtype) {
    return Fail("decode", absl::InvalidArgumentError(
                              "container shape does not match the object header's layout"));
  }
  codec::ProfileSet profiles;
  const codec::CdfProfile* first = nullptr;
  Status s = LoadProfiles(profile_paths, &profiles, &first);
  if (!s.ok()) return Fail("decode", s);
  ThreadPool pool(threads);
  codec::DecodeOptions options;
  options.profiles = &profiles;
  options.pool = &pool;
  std::vector<uint8_t> kv(ci.RawBytes());
  {
    Progress bar("decode " + in, kv.size());
    bar.RunBusy([&] { s = codec::DecodeCacheGen(obj->payload, kv, options); });
    if (s.ok()) {
      bar.Finish();
    } else {
      bar.Clear();  // the error is printed on a clean line
    }
  }
  if (!s.ok()) return Fail("decode", s);
  ObjectInfo info = obj->info;
  info.encoding = Encoding::kRaw;
  info.encoding_level = 0;
  s = codec::WriteObjectFile(out, info, kv);
  if (!s.ok()) return Fail("decode", s);
  std::printf("%s: %s bytes of %s KV\n", out.c_str(), Bytes(kv.size()).c_str(),
              std::string(DTypeName(l.dtype)).c_str());
  return 0;
}

void PrintProfile(const codec::CdfProfile& p) {
  const auto& s = p.shape();
  std::printf("CacheGen profile %s\n", p.id().ToHex().c_str());
  std::printf("  layers %u..%u, heads %u..%u, head_dim %u, %zu bytes\n", s.layer_begin,
              s.layer_begin + s.num_layers - 1, s.head_begin, s.head_begin + s.num_heads - 1,
              s.head_dim, p.bytes().size());
  for (const auto& t : p.tables()) {
    std::printf("  table: %s mode, level %d, lp %d\n", codec::CacheGenModeName(t.mode).c_str(),
                t.level, t.lp);
  }
}

int RunInspect(const std::string& path) {
  auto bytes = ReadFile(path);
  if (!bytes.ok()) return Fail("inspect", bytes.status());
  if (bytes->size() >= 4 && std::string(bytes->begin(), bytes->begin() + 4) == "KVCP") {
    auto p = codec::CdfProfile::Parse(*bytes);
    if (!p.ok()) return Fail("inspect", p.status());
    PrintProfile(*p);
    return 0;
  }
  auto obj = codec::ReadObjectFile(path);
  if (!obj.ok()) return Fail("inspect", obj.status());
  const KvLayout& l = obj->info.layout;
  std::printf("object: %u layers from %u, heads %u..%u of %u, head_dim %u, %u tokens, %s, %s\n",
              l.num_layers, l.layer_begin, l.head_begin, l.head_end - 1, l.total_kv_heads,
              l.head_dim, l.num_tokens, std::string(DTypeName(l.dtype)).c_str(),
              std::string(EncodingName(obj->info.encoding)).c_str());
  const double raw = static_cast<double>(l.RawBytes());
  const double tokens = l.num_tokens;
  if (obj->info.encoding != Encoding::kCacheGen) {
    std::printf("payload: %s bytes (%.1f bytes/token)\n", Bytes(obj->payload.size()).c_str(),
                obj->payload.size() / tokens);
    return 0;
  }
  auto view = codec::ParseContainer(obj->payload);
  if (!view.ok()) return Fail("inspect", view.status());
  const codec::ContainerInfo& ci = view->info;
  std::printf("CacheGen v%d: %s mode, level %d, lp %d, sub-chunks of %u tokens", 1,
              codec::CacheGenModeName(ci.mode).c_str(), ci.level, ci.lp, ci.subchunk_tokens);
  if (ci.mode == CacheGenMode::kDelta) std::printf(", anchor every %u", ci.delta_group_tokens);
  std::printf("\nCDF: %s\n", ci.cdf_source == codec::CdfSource::kInline
                                 ? "inline"
                                 : ("profile " + ci.profile_id.ToHex()).c_str());
  const auto& s = ci.sizes;
  const double total = static_cast<double>(s.total());
  auto row = [&](const char* name, uint64_t n) {
    std::printf("  %-16s %14llu  %6.2f%%  %10.2f B/token\n", name,
                static_cast<unsigned long long>(n), 100.0 * n / total, n / tokens);
  };
  std::printf("size breakdown:\n");
  row("payload", s.payload);
  row("CDFs", s.cdf);
  row("stream lengths", s.lengths);
  row("scales", s.scales);
  row("anchors", s.anchors);
  row("header + bins", s.header + s.bins);
  row("total", s.total());
  const double eight_bit = raw / DTypeSize(l.dtype) + 2.0 * l.num_layers * l.num_tokens * 2;
  std::printf("ratio: %.2fx vs %s (%s bytes), %.2fx vs 8-bit quantisation\n", raw / total,
              std::string(DTypeName(l.dtype)).c_str(), Bytes(l.RawBytes()).c_str(),
              eight_bit / total);
  return 0;
}

int RunProfile(const std::string& out, const std::vector<std::string>& dumps,
               const std::vector<int>& levels, bool delta, uint32_t model_layers) {
  if (dumps.empty()) return Fail("profile", absl::InvalidArgumentError("no KV dumps given"));
  std::vector<codec::CdfProfileBuilder::TableSpec> specs;
  for (int level : levels) {
    specs.push_back({CacheGenMode::kReference, level, {}});
    if (delta) specs.push_back({CacheGenMode::kDelta, level, {}});
  }
  std::optional<codec::CdfProfileBuilder> builder;
  for (const std::string& path : dumps) {
    auto dump = codec::ReadObjectFile(path);
    if (!dump.ok()) return Fail("profile", dump.status());
    if (dump->info.encoding != Encoding::kRaw) {
      return Fail("profile", absl::InvalidArgumentError(path + " is not a raw KV dump"));
    }
    if (!builder) {
      auto b = codec::CdfProfileBuilder::Create(codec::ProfileShape::Of(dump->info.layout), specs,
                                                model_layers);
      if (!b.ok()) return Fail("profile", b.status());
      builder.emplace(*std::move(b));
    }
    Status s = builder->Add(dump->info.layout, dump->payload);
    if (!s.ok()) {
      return Fail("profile", absl::Status(s.code(), path + ": " + std::string(s.message())));
    }
  }
  auto profile = builder->Build();
  if (!profile.ok()) return Fail("profile", profile.status());
  Status s = WriteFile(out, profile->bytes());
  if (!s.ok()) return Fail("profile", s);
  std::printf("learned from %zu chunks -> %s\n", dumps.size(), out.c_str());
  PrintProfile(*profile);
  return 0;
}

}  // namespace

void RegisterCodecCommands(CLI::App& app) {
  CLI::App* codec = app.add_subcommand("codec", "CacheGen KV compression tools");
  codec->require_subcommand(1);

  auto enc = std::make_shared<EncodeArgs>();
  CLI::App* encode = codec->add_subcommand("encode", "encode a raw KV dump (object file)");
  encode->add_option("IN", enc->in, "raw KV dump")->required()->check(CLI::ExistingFile);
  encode->add_option("OUT", enc->out, "encoded object file")->required();
  encode->add_option("--level", enc->level, "quantisation level 1..3")->check(CLI::Range(1, 3));
  encode->add_option("--profile", enc->profile, "code with this CDF profile")
      ->check(CLI::ExistingFile);
  encode->add_flag("--delta", enc->delta, "delta-to-anchor mode");
  encode->add_option("--subchunk", enc->subchunk, "tokens per stream")->check(CLI::Range(1, 65535));
  encode->add_option("--model-layers", enc->model_layers,
                     "layers of the whole model (default: last held layer + 1)");
  encode->add_option("--threads", enc->threads, "worker threads (0: all cores)");
  encode->callback([enc] { ExitCode() = RunEncode(*enc); });

  auto dec_in = std::make_shared<std::string>();
  auto dec_out = std::make_shared<std::string>();
  auto dec_profiles = std::make_shared<std::vector<std::string>>();
  auto dec_threads = std::make_shared<size_t>(0);
  CLI::App* decode = codec->add_subcommand("decode", "decode a CacheGen object to a raw KV dump");
  decode->add_option("IN", *dec_in, "CacheGen object file")->required()->check(CLI::ExistingFile);
  decode->add_option("OUT", *dec_out, "raw KV dump")->required();
  decode->add_option("--profile", *dec_profiles, "CDF profiles the container may reference");
  decode->add_option("--threads", *dec_threads, "worker threads (0: all cores)");
  decode->callback([=] { ExitCode() = RunDecode(*dec_in, *dec_out, *dec_profiles, *dec_threads); });

  auto ins_path = std::make_shared<std::string>();
  CLI::App* inspect =
      codec->add_subcommand("inspect", "print a CacheGen object's size breakdown or a profile");
  inspect->add_option("FILE", *ins_path, "object or profile file")->required();
  inspect->callback([=] { ExitCode() = RunInspect(*ins_path); });

  auto prof_out = std::make_shared<std::string>();
  auto prof_dumps = std::make_shared<std::vector<std::string>>();
  auto prof_levels = std::make_shared<std::vector<int>>(std::vector<int>{1, 2, 3});
  auto prof_delta = std::make_shared<bool>(false);
  auto prof_layers = std::make_shared<uint32_t>(0);
  CLI::App* profile =
      codec->add_subcommand("profile", "learn a model-level CDF profile from raw KV dumps");
  profile->add_option("--out", *prof_out, "profile file to write")->required();
  profile->add_option("DUMP", *prof_dumps, "raw KV dumps of one model and layout")->required();
  profile->add_option("--levels", *prof_levels, "levels to learn tables for")
      ->delimiter(',')
      ->check(CLI::Range(1, 3));
  profile->add_flag("--delta", *prof_delta, "also learn delta-mode tables");
  profile->add_option("--model-layers", *prof_layers, "layers of the whole model");
  profile->callback([=] {
    ExitCode() = RunProfile(*prof_out, *prof_dumps, *prof_levels, *prof_delta, *prof_layers);
  });
}

}  // namespace kvstash::cli
