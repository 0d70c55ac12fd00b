#include "slo_get.h"

#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "file_object.h"
#include "kvstash/client/streamed_load.h"
#include "kvstash/codec/codec_choice.h"
#include "kvstash/codec/kvq.h"

namespace kvstash::cli {
namespace {

using Clock = std::chrono::steady_clock;

codec::CodecRates Candidate(codec::CodecKind kind, int level) {
  codec::CodecRates r;
  r.kind = kind;
  r.level = level;
  return r;
}

// Through a temporary file and a rename, so a file is never left half-written. No progress bar:
// a load writes several files, each once its chunk is in.
Status WriteFileAtomically(const std::string& path, std::span<const uint8_t> bytes) {
  const std::string tmp = absl::StrCat(path, ".kvstash-tmp-", ::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    if (!out.good()) {
      std::filesystem::remove(tmp);
      return absl::DataLossError(absl::StrCat("error writing ", tmp));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp);
    return absl::DataLossError(absl::StrCat("cannot rename to ", path, ": ", ec.message()));
  }
  return OkStatus();
}

}  // namespace

Result<std::vector<codec::CodecRates>> ParseCodecList(const std::string& list) {
  // Names as codec::CodecName writes them: "cachegen" / "kvq" for every level of the codec,
  // "cachegen-lN" / "kvq-lN" for one.
  struct Codec {
    codec::CodecKind kind;
    int max_level;
  };
  constexpr Codec kCodecs[] = {{codec::CodecKind::kCacheGen, 3},
                               {codec::CodecKind::kKvq, codec::kKvqMaxLevel}};
  std::vector<codec::CodecRates> out;
  for (absl::string_view part : absl::StrSplit(list, ',')) {
    const std::string name(part);
    bool found = false;
    for (const Codec& c : kCodecs) {
      const bool all_levels = name == codec::CodecName(c.kind, 0);
      for (int level = 1; level <= c.max_level; ++level) {
        if (all_levels || name == codec::CodecName(c.kind, level)) {
          out.push_back(Candidate(c.kind, level));
          found = true;
        }
      }
    }
    if (!found) {
      return absl::InvalidArgumentError(
          absl::StrCat("--codecs: unknown codec '", name,
                       "' (cachegen-l1..cachegen-l3, kvq-l1..kvq-l4, cachegen, kvq)"));
    }
  }
  return out;
}

std::string OutputFileName(const std::string& key) {
  std::string out = key;
  for (char& c : out) {
    const bool keep = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                      c == '.' || c == '_' || c == '-';
    if (!keep) c = '_';
  }
  // assign(1, '_'), not = "_": GCC 12 under ASan reports a false -Wrestrict on the latter.
  if (out == "." || out == "..") out.assign(1, '_');
  return out;
}

Status CheckSloGetArgs(const SloGetArgs& args) {
  if (!(args.slo_ms > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--slo-ms must be a positive number of milliseconds (got ", args.slo_ms, ")"));
  }
  if (args.keys.empty()) {
    return absl::InvalidArgumentError("--slo-ms needs at least one KEY");
  }
  if (args.out_dir.empty()) {
    return absl::InvalidArgumentError("--slo-ms needs --out-dir DIR (each KEY is written there)");
  }
  if (args.simulate_link_mbps < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--simulate-link-mbps must not be negative (got ", args.simulate_link_mbps, ")"));
  }
  if (!args.codecs.empty()) {
    KVSTASH_RETURN_IF_ERROR(ParseCodecList(args.codecs).status());
  }
  std::set<std::string> files;
  for (const std::string& key : args.keys) {
    if (!files.insert(OutputFileName(key)).second) {
      return absl::InvalidArgumentError(absl::StrCat("two KEYs would be written to the same file ",
                                                     args.out_dir, "/", OutputFileName(key), " (",
                                                     key, " is one)"));
    }
  }
  return OkStatus();
}

int RunSloGet(client::KvClient& kv, std::span<const ObjectName> names, const SloGetArgs& args) {
  // The candidates' rates come from a calibration on this host's synthetic 1 MiB KV sample
  // (codec_choice.h), not from the chunks: nothing needs to be fetched to calibrate.
  codec::CalibrationOptions calibration;
  const Clock::time_point t0 = Clock::now();
  Result<std::vector<codec::CodecRates>> candidates = absl::UnknownError("unset");
  if (args.codecs.empty()) {
    candidates = codec::CalibrateCodecs(calibration);
  } else {
    Result<std::vector<codec::CodecRates>> wanted = ParseCodecList(args.codecs);
    candidates = wanted.ok() ? codec::CalibrateCodecsAt(*wanted, calibration) : wanted.status();
  }
  if (!candidates.ok()) {
    std::fprintf(stderr, "kvstash get: calibration: %s\n",
                 std::string(candidates.status().ToString()).c_str());
    return 1;
  }
  const double calibration_ms = std::chrono::duration<double>(Clock::now() - t0).count() * 1e3;
  std::printf("candidates (calibrated on this host, 1 MiB synthetic KV, best of %d, %.0f ms): raw",
              calibration.reps, calibration_ms);
  for (const codec::CodecRates& c : *candidates) {
    std::printf(", %s (%.2fx, error %.4f)", codec::CodecRatesName(c).c_str(), c.ratio, c.rel_error);
  }
  std::printf("\n");

  client::StreamedLoadOptions options;
  options.budget_s = args.slo_ms / 1e3;
  options.candidates = *candidates;
  options.link_bytes_per_s = args.simulate_link_mbps * 1e6 / 8;
  if (options.link_bytes_per_s > 0) {
    std::printf("simulated link: %.1f Mbit/s (each chunk charged its wire bytes at that rate)\n",
                args.simulate_link_mbps);
  }
  Result<client::StreamedLoadReply> load = client::StreamedLoad(kv, names, options);
  if (!load.ok()) {
    std::fprintf(stderr, "kvstash get: %s\n", std::string(load.status().ToString()).c_str());
    return 1;
  }
  std::error_code ec;
  std::filesystem::create_directories(args.out_dir, ec);
  if (ec) {
    std::fprintf(stderr, "kvstash get: cannot create %s: %s\n", args.out_dir.c_str(),
                 ec.message().c_str());
    return 1;
  }
  int code = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    const client::StreamedChunk& c = load->chunks[i];
    const std::string& key = args.keys[i];
    if (!c.status.ok()) {
      std::printf("chunk %zu %s: failed after %.1f ms\n", i, key.c_str(), c.seconds * 1e3);
      std::fprintf(stderr, "kvstash get: %s: %s\n", key.c_str(),
                   std::string(c.status.ToString()).c_str());
      code = 1;
      continue;
    }
    const std::string path = (std::filesystem::path(args.out_dir) / OutputFileName(key)).string();
    Result<std::vector<uint8_t>> file = ObjectToFile(c.info, c.payload, args.raw);
    Status written = file.ok() ? WriteFileAtomically(path, *file) : file.status();
    // The link the decision assumed: unknown (0) until a chunk has measured it.
    char link[32] = "unknown";
    if (c.bandwidth_bps > 0) {
      std::snprintf(link, sizeof(link), "%.1f Mbit/s", c.bandwidth_bps * 8 / 1e6);
    }
    std::printf(
        "chunk %zu %s: chose %s, received %s, %" PRIu64
        " bytes on the wire, %.1f ms (predicted %.1f ms at link %s; service encode %.1f ms, "
        "decode %.1f ms) -> %s\n",
        i, key.c_str(), c.chosen.c_str(), c.received.c_str(), c.wire_bytes, c.seconds * 1e3,
        c.predicted_s * 1e3, link, c.encode_s * 1e3, c.decode_s * 1e3, path.c_str());
    if (!written.ok()) {
      std::fprintf(stderr, "kvstash get: %s: %s\n", key.c_str(),
                   std::string(written.ToString()).c_str());
      code = 1;
    }
  }
  std::printf("total %.1f ms against a budget of %.1f ms: %s\n", load->total_s * 1e3, args.slo_ms,
              load->within_budget ? "within the budget" : "over the budget");
  return code;
}

}  // namespace kvstash::cli
