// tier_load: loading KV chunks from cachesvc's SSD tier, raw against CacheGen-encoded
// (--ssd-encoding cachegen), through the real store: ObjectStore with the service's TierCodec.
// Each configuration puts the same chunks durably, reopens the store (CPU tier empty) and times
// Acquire of every chunk, which promotes it: SSD read (O_DIRECT where the file system allows it,
// verified) and, for the encoded tier, CacheGen decode on the codec's pool + crc32c of the result.
// bench/codec/ssd_load.cc measures the same trade-off on plain files without the store; this
// driver shows what the service adds (index, verification, arena).
//
//   tier_load --chunks 8 --reps 3 --dir /path/on/ssd [--dump context.kvo] [--json out.json]
//
// --read-mbps R simulates a slower device: each promotion first sleeps for the chunk's bytes on
// SSD (the tier's average) / R, then reads for real; --auto compares raw only with what
// `cachesvc --ssd-encoding auto --ssd-read-mbps R` chooses on this host (the service's own
// calibration, cachesvc/src/ssd_encoding_choice.h).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "cachegen_tier_codec.h"
#include "kv_corpus.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/common/half.h"
#include "kvstash/storage/object_store.h"
#include "ssd_encoding_choice.h"

namespace kvstash::bench {
namespace {

using json = nlohmann::json;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

storage::StoredName NameOf(size_t i) {
  storage::StoredName n;
  n.name_space = "tier-load";
  n.model_fingerprint = Hash128{0x7469657220ull, 1};
  n.token_hash = Hash128{i + 1, i * 7 + 3};
  n.storage_key = ObjectKey(n.name_space, n.model_fingerprint, n.token_hash);
  return n;
}

struct ErrorStats {
  double max_abs = 0;
  double max_abs_value = 0;  // of the original
};

void AddErrors(const std::vector<uint8_t>& a, const uint8_t* b, size_t n, ErrorStats& e) {
  for (size_t i = 0; i + 1 < n; i += 2) {
    uint16_t x, y;
    std::memcpy(&x, a.data() + i, 2);
    std::memcpy(&y, b + i, 2);
    const float fx = F16ToF32(x), fy = F16ToF32(y);
    e.max_abs = std::max(e.max_abs, static_cast<double>(std::fabs(fx - fy)));
    e.max_abs_value = std::max(e.max_abs_value, static_cast<double>(std::fabs(fx)));
  }
}

Result<json> Measure(const std::vector<KvChunk>& chunks, cachesvc::TierEncoding encoding,
                     const std::string& dir, int reps, size_t decode_threads, uint32_t read_mbps) {
  std::filesystem::remove_all(dir);
  cachesvc::CacheGenTierCodec codec(encoding, decode_threads);
  storage::StoreOptions o;
  o.data_dir = dir;
  uint64_t raw_bytes = 0;
  for (const KvChunk& c : chunks) raw_bytes += c.kv.size();
  o.cpu_capacity_bytes = std::max<uint64_t>(raw_bytes * 2, 64ull << 20);
  o.ssd_capacity_bytes = raw_bytes * 4;
  o.ssd_codec = &codec;
  double stored_per_chunk = 0;  // bytes on SSD, the tier's average
  {
    KVSTASH_ASSIGN_OR_RETURN(auto store, storage::ObjectStore::Open(o));
    for (size_t i = 0; i < chunks.size(); ++i) {
      ObjectInfo info;
      info.layout = chunks[i].layout;
      info.encoding = Encoding::kRaw;
      info.payload_bytes = chunks[i].kv.size();
      info.payload_crc32c = Crc32c(chunks[i].kv.data(), chunks[i].kv.size());
      KVSTASH_ASSIGN_OR_RETURN(auto r, store->Reserve(NameOf(i), info, 0, false));
      std::memcpy(store->arena_base() + r.arena_offset, chunks[i].kv.data(), chunks[i].kv.size());
      KVSTASH_RETURN_IF_ERROR(store->Commit(r.id, info.payload_crc32c, /*durable=*/true));
    }
    for (const auto& t : store->Stats().tiers) {
      if (t.tier == storage::Tier::kSsd) {
        stored_per_chunk = static_cast<double>(t.used_bytes) / static_cast<double>(chunks.size());
      }
    }
    KVSTASH_RETURN_IF_ERROR(store->Close());
  }
  const auto simulated_read = std::chrono::duration<double>(
      read_mbps > 0 ? stored_per_chunk * 8 / (static_cast<double>(read_mbps) * 1e6) : 0.0);
  std::vector<double> per_chunk_ms;
  ErrorStats errors;
  uint64_t ssd_used = 0, ssd_logical = 0, checksum_failures = 0;
  for (int rep = 0; rep < reps; ++rep) {
    KVSTASH_ASSIGN_OR_RETURN(auto store, storage::ObjectStore::Open(o));  // CPU tier empty
    for (size_t i = 0; i < chunks.size(); ++i) {
      auto start = std::chrono::steady_clock::now();
      if (read_mbps > 0) std::this_thread::sleep_for(simulated_read);
      KVSTASH_ASSIGN_OR_RETURN(storage::Lease lease, store->Acquire(NameOf(i).storage_key, 0));
      double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
              .count();
      if (lease.served_from != storage::Tier::kSsd) {
        return absl::InternalError("chunk was not served from SSD");
      }
      per_chunk_ms.push_back(ms);
      if (rep == 0) {
        AddErrors(chunks[i].kv, store->arena_base() + lease.arena_offset, chunks[i].kv.size(),
                  errors);
      }
      KVSTASH_RETURN_IF_ERROR(store->Release(lease.id));
    }
    for (const auto& t : store->Stats().tiers) {
      if (t.tier == storage::Tier::kSsd) {
        ssd_used = t.used_bytes;
        ssd_logical = t.logical_bytes;
      }
    }
    checksum_failures += store->Stats().checksum_failures;
  }
  std::filesystem::remove_all(dir);
  const double median_ms = Median(per_chunk_ms);
  const double chunk_mb = static_cast<double>(chunks[0].kv.size()) / 1e6;
  return json{{"encoding", codec.name()},
              {"chunks", chunks.size()},
              {"chunk_bytes", chunks[0].kv.size()},
              {"ssd_used_bytes", ssd_used},
              {"ssd_logical_bytes", ssd_logical},
              {"ratio", ssd_used > 0 ? static_cast<double>(ssd_logical) / ssd_used : 0.0},
              {"promote_ms_median", median_ms},
              {"promote_gb_s_logical", median_ms > 0 ? chunk_mb / median_ms : 0.0},
              {"max_abs_error", errors.max_abs},
              {"max_abs_value", errors.max_abs_value},
              {"checksum_failures", checksum_failures},
              {"samples", per_chunk_ms.size()},
              {"simulated_read_mbps", read_mbps}};
}

int Run(int argc, char** argv) {
  CLI::App app{"Promotion of KV chunks from cachesvc's SSD tier: raw vs CacheGen-encoded"};
  int chunks = 8, reps = 3, tokens = 256;
  size_t threads = 0;
  std::string dir = "tier_load.tmp", dump, out;
  std::vector<int> levels = {1, 2, 3};
  std::vector<int> kvq_levels;
  uint32_t read_mbps = 0;
  bool auto_choice = false;
  app.add_option("--chunks", chunks, "chunks of SmolLM2-135M shape (synthetic unless --dump)");
  app.add_option("--tokens", tokens, "tokens per chunk");
  app.add_option("--reps", reps, "reopen + read passes");
  app.add_option("--levels", levels, "CacheGen levels to compare with raw")->delimiter(',');
  app.add_option("--kvq-levels", kvq_levels, "KVQ levels to compare too (--ssd-encoding kvq)")
      ->delimiter(',');
  app.add_option("--threads", threads, "decode threads (0: min(cores, 8))");
  app.add_option("--dir", dir, "data directory (put it on the disk to test)");
  app.add_option("--dump", dump, "raw KV dump (object file) to cut chunks from, e.g. real KV");
  app.add_option("--json", out, "write the results here");
  app.add_option("--read-mbps", read_mbps,
                 "simulated SSD read rate, Mbit/s: each promotion first sleeps (bytes on SSD) / "
                 "rate (0: the disk as it is)");
  app.add_flag("--auto", auto_choice,
               "compare raw with what --ssd-encoding auto chooses at --read-mbps on this host");
  CLI11_PARSE(app, argc, argv);

  std::vector<KvChunk> set;
  std::string source = "synthetic SmolLM2-135M shape";
  if (!dump.empty()) {
    auto ctx = LoadDump(dump);
    if (!ctx.ok()) {
      std::fprintf(stderr, "tier_load: %s\n", ctx.status().ToString().c_str());
      return 1;
    }
    set = Chunks(*ctx, static_cast<uint32_t>(tokens));
    if (static_cast<int>(set.size()) > chunks) set.resize(chunks);
    source = dump;
  } else {
    for (int i = 0; i < chunks; ++i) {
      set.push_back(SyntheticContext(ContextLayout(30, 3, 64, static_cast<uint32_t>(tokens)),
                                     1000 + static_cast<uint64_t>(i)));
    }
  }
  if (set.empty()) {
    std::fprintf(stderr, "tier_load: no chunks\n");
    return 1;
  }
  json results = json::array();
  std::vector<cachesvc::TierEncoding> configs = {cachesvc::TierEncoding{}};
  for (int l : levels) configs.push_back(cachesvc::TierEncoding{Encoding::kCacheGen, l});
  for (int l : kvq_levels) configs.push_back(cachesvc::TierEncoding{Encoding::kCacheGen, l, true});
  std::string auto_log;
  if (auto_choice) {
    if (read_mbps == 0) {
      std::fprintf(stderr, "tier_load: --auto needs --read-mbps\n");
      return 1;
    }
    cachesvc::ServiceConfig sc;
    sc.ssd_encoding.choose = true;
    sc.ssd_read_mbps = read_mbps;
    const size_t decode_threads =
        threads > 0 ? threads : std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 8);
    auto choice = cachesvc::ChooseSsdEncoding(sc, decode_threads);
    if (!choice.ok()) {
      std::fprintf(stderr, "tier_load: %s\n", choice.status().ToString().c_str());
      return 1;
    }
    auto_log = cachesvc::DescribeCodecCandidates(choice->candidates, codec::CostModel::kStored);
    std::printf("auto at %u Mbit/s chooses %s; candidates %s\n", read_mbps,
                cachesvc::TierEncodingName(choice->encoding).c_str(), auto_log.c_str());
    configs = {cachesvc::TierEncoding{}};
    if (choice->encoding.encoding != Encoding::kRaw) configs.push_back(choice->encoding);
  }
  std::printf("%zu chunks of %.2f MB (%s), %d reps, median per-chunk promotion\n", set.size(),
              set[0].kv.size() / 1e6, source.c_str(), reps);
  std::printf("%-14s %10s %8s %12s %10s %12s %10s\n", "ssd encoding", "SSD MB", "ratio",
              "promote ms", "vs raw", "max |err|", "max |x|");
  double raw_ms = 0;
  for (const auto& c : configs) {
    auto r = Measure(set, c, dir, reps, threads, read_mbps);
    if (!r.ok()) {
      std::fprintf(stderr, "tier_load: %s\n", r.status().ToString().c_str());
      return 1;
    }
    double ms = (*r)["promote_ms_median"].get<double>();
    if (c.encoding == Encoding::kRaw) raw_ms = ms;
    std::printf("%-14s %10.2f %8.2f %12.2f %9.2fx %12.4g %10.4g\n",
                (*r)["encoding"].get<std::string>().c_str(),
                (*r)["ssd_used_bytes"].get<uint64_t>() / 1e6, (*r)["ratio"].get<double>(), ms,
                raw_ms > 0 ? ms / raw_ms : 0.0, (*r)["max_abs_error"].get<double>(),
                (*r)["max_abs_value"].get<double>());
    results.push_back(*r);
  }
  if (!out.empty()) {
    json root = {{"source", source}, {"reps", reps}, {"results", results}};
    if (auto_choice) root["auto_candidates"] = auto_log;
    std::ofstream(out) << root.dump(2) << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace kvstash::bench

// An exception (a file system or JSON error, say) ends the run with its message and status 1
// rather than std::terminate's abort.
int main(int argc, char** argv) {
  try {
    return kvstash::bench::Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tier_load: %s\n", e.what());
    return 1;
  }
}
