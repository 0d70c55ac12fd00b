// SSD tier throughput against fio on the same directory.
//
// For each object size, in the same run:
//   ours write: N objects Put (Reserve + copy + Commit) by --threads producers into a store with
//               write-through, timed until Flush() returns (every file and index record synced).
//   ours read:  the store is closed and reopened (a cold arena); --threads readers Acquire every
//               object (promotion from SSD via io_uring, crc32c verified) and Release it.
//   fio write:  sequential O_DIRECT writes of N files of the object size, --threads jobs, one IO
//               per file (bs = object size), fsync on close (as our per-object fdatasync).
//   fio read:   sequential O_DIRECT reads of those files, io_uring, 1 MiB blocks, iodepth 16.
// Each measurement runs --reps times; medians and the ratios ours/fio go to --out as JSON.
#include <sys/wait.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "kvstash/common/crc32c.h"
#include "kvstash/storage/object_store.h"

namespace fs = std::filesystem;
using kvstash::Hash128;
using kvstash::ObjectInfo;
using kvstash::Status;
using kvstash::storage::ObjectStore;
using kvstash::storage::StoredName;
using kvstash::storage::StoreOptions;

namespace {

struct Config {
  std::string dir = "./build/bench-ssd";
  uint64_t total_mib = 1024;
  int threads = 4;
  int reps = 3;
  std::vector<std::string> sizes = {"256K", "2M", "32M"};
  std::string out = "bench/results/ssd_tier.json";
  std::string fio = "fio";
};

uint64_t ParseSize(const std::string& s) {
  uint64_t n = std::stoull(s);
  char unit = s.back();
  if (unit == 'K' || unit == 'k') return n << 10;
  if (unit == 'M' || unit == 'm') return n << 20;
  if (unit == 'G' || unit == 'g') return n << 30;
  return n;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

StoredName NameOf(uint64_t id) {
  StoredName n;
  n.name_space = "bench";
  n.model_fingerprint = Hash128{1, 2};
  n.token_hash = Hash128{id + 1, id};
  n.storage_key = kvstash::ObjectKey(n.name_space, n.model_fingerprint, n.token_hash);
  return n;
}

ObjectInfo InfoOf(uint64_t bytes, uint32_t crc) {
  ObjectInfo info;
  auto& l = info.layout;
  l.num_layers = 1;
  l.total_kv_heads = 1;
  l.head_end = 1;
  l.head_dim = 64;
  l.num_tokens = 256;
  info.encoding = kvstash::Encoding::kCacheGen;
  info.encoding_level = 1;
  info.payload_bytes = bytes;
  info.payload_crc32c = crc;
  return info;
}

StoreOptions Options(const Config& c, const std::string& dir) {
  StoreOptions o;
  o.data_dir = dir;
  o.cpu_capacity_bytes = 512ull << 20;
  o.ssd_capacity_bytes = 64ull << 30;
  o.ssd_io_threads = c.threads;
  return o;
}

void Check(const Status& s, const char* what) {
  if (!s.ok()) {
    std::cerr << what << ": " << s << "\n";
    std::exit(1);
  }
}

// Returns {write MB/s, read MB/s} of our store.
std::pair<double, double> RunOurs(const Config& c, const std::string& dir, uint64_t size,
                                  uint64_t count) {
  fs::remove_all(dir);
  std::vector<uint8_t> payload(size);
  std::mt19937_64 rng(size);
  for (auto& b : payload) b = static_cast<uint8_t>(rng());
  const uint32_t crc = kvstash::Crc32c(payload.data(), size);
  const ObjectInfo info = InfoOf(size, crc);
  auto opened = ObjectStore::Open(Options(c, dir));
  Check(opened.status(), "open");
  std::unique_ptr<ObjectStore> store = std::move(*opened);

  std::atomic<uint64_t> next{0};
  auto writer = [&] {
    for (uint64_t id; (id = next.fetch_add(1)) < count;) {
      auto r = store->Reserve(NameOf(id), info, 0, true);
      Check(r.status(), "reserve");
      std::memcpy(store->arena_base() + r->arena_offset, payload.data(), size);
      Check(store->Commit(r->id, crc, false), "commit");
    }
  };
  double t0 = Now();
  std::vector<std::thread> threads;
  for (int i = 0; i < c.threads; ++i) threads.emplace_back(writer);
  for (auto& t : threads) t.join();
  Check(store->Flush(), "flush");
  double write_s = Now() - t0;
  Check(store->Close(), "close");
  store.reset();

  opened = ObjectStore::Open(Options(c, dir));
  Check(opened.status(), "reopen");
  store = std::move(*opened);
  next = 0;
  std::atomic<uint64_t> bad{0};
  auto reader = [&] {
    for (uint64_t id; (id = next.fetch_add(1)) < count;) {
      auto lease = store->Acquire(NameOf(id).storage_key, 0);
      Check(lease.status(), "acquire");
      if (lease->served_from != kvstash::storage::Tier::kSsd) ++bad;
      Check(store->Release(lease->id), "release");
    }
  };
  threads.clear();
  t0 = Now();
  for (int i = 0; i < c.threads; ++i) threads.emplace_back(reader);
  for (auto& t : threads) t.join();
  double read_s = Now() - t0;
  if (bad > 0) std::cerr << "warning: " << bad << " reads were not served from SSD\n";
  Check(store->Close(), "close");
  store.reset();
  fs::remove_all(dir);
  double mb = static_cast<double>(size * count) / 1e6;
  return {mb / write_s, mb / read_s};
}

nlohmann::json RunFio(const Config& c, const std::vector<std::string>& args) {
  std::string cmd = c.fio;
  for (const auto& a : args) cmd += " " + a;
  cmd += " --output-format=json 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) {
    std::cerr << "cannot run fio\n";
    std::exit(1);
  }
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof(buf), p)) out.append(buf, n);
  int rc = pclose(p);
  if (rc != 0) {
    std::cerr << "fio failed (" << rc << "): " << cmd << "\n";
    std::exit(1);
  }
  return nlohmann::json::parse(out.substr(out.find('{')));
}

// Returns {write MB/s, read MB/s} of fio over the same bytes in the same directory.
std::pair<double, double> RunFioPair(const Config& c, const std::string& dir, uint64_t size,
                                     uint64_t count) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  uint64_t per_job = std::max<uint64_t>(1, count / c.threads);
  std::vector<std::string> common = {"--name=kvstash",
                                     "--directory=" + dir,
                                     "--direct=1",
                                     "--numjobs=" + std::to_string(c.threads),
                                     "--filesize=" + std::to_string(size),
                                     "--nrfiles=" + std::to_string(per_job),
                                     "--size=" + std::to_string(size * per_job),
                                     "--file_service_type=sequential",
                                     "--group_reporting"};
  auto w = common;
  for (const char* a : {"--rw=write", "--ioengine=psync", "--fsync_on_close=1"}) w.push_back(a);
  w.push_back("--bs=" + std::to_string(size));
  nlohmann::json wj = RunFio(c, w);
  auto r = common;
  for (const char* a : {"--rw=read", "--ioengine=io_uring", "--iodepth=16"}) r.push_back(a);
  r.push_back("--bs=" + std::to_string(std::min<uint64_t>(size, 1 << 20)));
  nlohmann::json rj = RunFio(c, r);
  fs::remove_all(dir);
  double wbw = wj["jobs"][0]["write"]["bw_bytes"].get<double>() / 1e6;
  double rbw = rj["jobs"][0]["read"]["bw_bytes"].get<double>() / 1e6;
  return {wbw, rbw};
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  CLI::App app{"SSD tier throughput vs fio"};
  app.add_option("--dir", c.dir, "directory on the disk under test (created, then removed)");
  app.add_option("--total-mib", c.total_mib, "bytes written per object size, MiB");
  app.add_option("--threads", c.threads, "ssd_io_threads of the store; fio numjobs");
  app.add_option("--reps", c.reps, "repetitions (medians are reported)");
  app.add_option("--sizes", c.sizes, "object sizes, e.g. 256K 2M 32M");
  app.add_option("--out", c.out, "JSON results file");
  app.add_option("--fio", c.fio, "fio binary");
  CLI11_PARSE(app, argc, argv);

  nlohmann::json results;
  results["benchmark"] = "ssd_tier";
  std::string command;
  for (int i = 0; i < argc; ++i) command += (i ? " " : "") + std::string(argv[i]);
  results["command"] = command;
  results["threads"] = c.threads;
  results["total_mib_per_size"] = c.total_mib;
  results["reps"] = c.reps;
  printf("%-8s %8s | %10s %10s %6s | %10s %10s %6s\n", "size", "objects", "ours w MB/s",
         "fio w MB/s", "ratio", "ours r MB/s", "fio r MB/s", "ratio");
  for (const std::string& s : c.sizes) {
    uint64_t size = ParseSize(s);
    uint64_t count = std::max<uint64_t>(c.threads, (c.total_mib << 20) / size);
    count = count / c.threads * c.threads;
    std::vector<double> ow, orr, fw, fr;
    for (int rep = 0; rep < c.reps; ++rep) {
      // Alternate the order so neither side always runs on a warmer (or more worn) device.
      if (rep % 2 == 0) {
        auto [w, r] = RunOurs(c, c.dir + "/store", size, count);
        auto [w2, r2] = RunFioPair(c, c.dir + "/fio", size, count);
        ow.push_back(w), orr.push_back(r), fw.push_back(w2), fr.push_back(r2);
      } else {
        auto [w2, r2] = RunFioPair(c, c.dir + "/fio", size, count);
        auto [w, r] = RunOurs(c, c.dir + "/store", size, count);
        ow.push_back(w), orr.push_back(r), fw.push_back(w2), fr.push_back(r2);
      }
    }
    nlohmann::json row;
    row["object_size"] = s;
    row["object_bytes"] = size;
    row["objects"] = count;
    row["ours_write_MBps"] = Median(ow);
    row["fio_write_MBps"] = Median(fw);
    row["write_ratio"] = Median(ow) / Median(fw);
    row["ours_read_MBps"] = Median(orr);
    row["fio_read_MBps"] = Median(fr);
    row["read_ratio"] = Median(orr) / Median(fr);
    row["runs"] = {{"ours_write_MBps", ow},
                   {"fio_write_MBps", fw},
                   {"ours_read_MBps", orr},
                   {"fio_read_MBps", fr}};
    results["sizes"].push_back(row);
    printf("%-8s %8llu | %10.0f %10.0f %5.0f%% | %10.0f %10.0f %5.0f%%\n", s.c_str(),
           static_cast<unsigned long long>(count), Median(ow), Median(fw),
           100 * Median(ow) / Median(fw), Median(orr), Median(fr), 100 * Median(orr) / Median(fr));
    fflush(stdout);
  }
  fs::remove_all(c.dir);
  fs::create_directories(fs::path(c.out).parent_path());
  std::ofstream(c.out) << results.dump(2) << "\n";
  printf("wrote %s\n", c.out.c_str());
  return 0;
}
