// SSD tier throughput against fio on the same directory.
//
// For each object size, in the same run:
//   ours write: N objects Put (Reserve + copy + Commit) by --threads producers into a store with
//               write-through, timed until Flush() returns (every file and index record synced).
//   ours read:  the store is closed and reopened (a cold arena); --readers threads Acquire every
//               object (promotion from SSD via io_uring, crc32c verified) and Release it.
//   fio write:  sequential O_DIRECT writes of N files of the object size, --threads jobs, one IO
//               per file (bs = object size), fsync on close (as our per-object fdatasync).
//   fio read:   sequential O_DIRECT reads of those files, --threads jobs, io_uring, blocks of
//               min(object, 1 MiB), --fio-iodepth (16) per job: 64 I/Os in flight by default,
//               against our 16 concurrent Acquires (each with up to 64 1 MiB reads in flight).
// Each measurement runs --reps times; medians, and the medians of the per-rep ratios ours/fio,
// go to --out as JSON.
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
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
  int readers = 16;
  int fio_iodepth = 16;
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
  o.prefault_arena = true;  // steady state: a serving arena has been touched long ago
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

struct Payload {
  std::vector<uint8_t> bytes;
  uint32_t crc = 0;
};

// Deleting hundreds of MB on a filesystem mounted with `discard` keeps the device busy for a
// while; let that settle so it does not land on whichever phase runs next.
void RemoveAndSettle(const std::string& dir) {
  fs::remove_all(dir);
  ::sync();
  std::this_thread::sleep_for(std::chrono::seconds(1));
}

Payload MakePayload(uint64_t size) {
  Payload p;
  p.bytes.resize(size);
  std::mt19937_64 rng(size);
  for (auto& b : p.bytes) b = static_cast<uint8_t>(rng());
  p.crc = kvstash::Crc32c(p.bytes.data(), size);
  return p;
}

// Our write phase: MB/s from the first Reserve until Flush() returned; leaves the store closed.
double OursWrite(const Config& c, const std::string& dir, const Payload& payload, uint64_t count) {
  RemoveAndSettle(dir);
  const uint64_t size = payload.bytes.size();
  const ObjectInfo info = InfoOf(size, payload.crc);
  auto opened = ObjectStore::Open(Options(c, dir));
  Check(opened.status(), "open");
  std::unique_ptr<ObjectStore> store = std::move(*opened);
  std::atomic<uint64_t> next{0};
  auto writer = [&] {
    for (uint64_t id; (id = next.fetch_add(1)) < count;) {
      auto r = store->Reserve(NameOf(id), info, 0, true);
      Check(r.status(), "reserve");
      std::memcpy(store->arena_base() + r->arena_offset, payload.bytes.data(), size);
      Check(store->Commit(r->id, payload.crc, false), "commit");
    }
  };
  double t0 = Now();
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(c.threads));
  for (int i = 0; i < c.threads; ++i) threads.emplace_back(writer);
  for (auto& t : threads) t.join();
  Check(store->Flush(), "flush");
  double seconds = Now() - t0;
  Check(store->Close(), "close");
  return static_cast<double>(size * count) / 1e6 / seconds;
}

// Our read phase on the store OursWrite left: reopened (a cold arena), every object Acquired
// (promoted from SSD, verified) and Released. Removes the store.
double OursRead(const Config& c, const std::string& dir, uint64_t size, uint64_t count) {
  auto opened = ObjectStore::Open(Options(c, dir));
  Check(opened.status(), "reopen");
  std::unique_ptr<ObjectStore> store = std::move(*opened);
  std::atomic<uint64_t> next{0};
  std::atomic<uint64_t> bad{0};
  auto reader = [&] {
    for (uint64_t id; (id = next.fetch_add(1)) < count;) {
      auto lease = store->Acquire(NameOf(id).storage_key, 0);
      Check(lease.status(), "acquire");
      if (lease->served_from != kvstash::storage::Tier::kSsd) ++bad;
      Check(store->Release(lease->id), "release");
    }
  };
  double t0 = Now();
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(c.readers));
  for (int i = 0; i < c.readers; ++i) threads.emplace_back(reader);
  for (auto& t : threads) t.join();
  double seconds = Now() - t0;
  if (bad > 0) std::cerr << "warning: " << bad << " reads were not served from SSD\n";
  Check(store->Close(), "close");
  store.reset();
  RemoveAndSettle(dir);
  return static_cast<double>(size * count) / 1e6 / seconds;
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

std::vector<std::string> FioCommon(const Config& c, const std::string& dir, uint64_t size,
                                   uint64_t count) {
  uint64_t per_job = std::max<uint64_t>(1, count / c.threads);
  return {"--name=kvstash",
          "--directory=" + dir,
          "--direct=1",
          "--numjobs=" + std::to_string(c.threads),
          "--filesize=" + std::to_string(size),
          "--nrfiles=" + std::to_string(per_job),
          "--size=" + std::to_string(size * per_job),
          "--file_service_type=sequential",
          "--group_reporting"};
}

// fio's write phase over the same bytes in the same directory; leaves the files for FioRead.
double FioWrite(const Config& c, const std::string& dir, uint64_t size, uint64_t count) {
  RemoveAndSettle(dir);
  fs::create_directories(dir);
  auto w = FioCommon(c, dir, size, count);
  for (const char* a : {"--rw=write", "--ioengine=psync", "--fsync_on_close=1"}) w.emplace_back(a);
  w.push_back("--bs=" + std::to_string(size));
  return RunFio(c, w)["jobs"][0]["write"]["bw_bytes"].get<double>() / 1e6;
}

double FioRead(const Config& c, const std::string& dir, uint64_t size, uint64_t count) {
  auto r = FioCommon(c, dir, size, count);
  for (const char* a : {"--rw=read", "--ioengine=io_uring"}) r.emplace_back(a);
  r.push_back("--iodepth=" + std::to_string(c.fio_iodepth));
  r.push_back("--bs=" + std::to_string(std::min<uint64_t>(size, 1 << 20)));
  double mbps = RunFio(c, r)["jobs"][0]["read"]["bw_bytes"].get<double>() / 1e6;
  RemoveAndSettle(dir);
  return mbps;
}

int Main(int argc, char** argv) {
  Config c;
  CLI::App app{"SSD tier throughput vs fio"};
  app.add_option("--dir", c.dir, "directory on the disk under test (created, then removed)");
  app.add_option("--total-mib", c.total_mib, "bytes written per object size, MiB");
  app.add_option("--threads", c.threads, "ssd_io_threads and writer threads; fio numjobs");
  app.add_option("--readers", c.readers, "concurrent Acquire threads of our read phase");
  app.add_option("--fio-iodepth", c.fio_iodepth, "fio read iodepth per job");
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
  results["readers"] = c.readers;
  results["fio_read_iodepth"] = c.fio_iodepth;
  results["total_mib_per_size"] = c.total_mib;
  results["reps"] = c.reps;
  printf("%-8s %8s | %10s %10s %6s | %10s %10s %6s  (MB/s medians; ratio: median per-rep)\n",
         "size", "objects", "ours w", "fio w", "ratio", "ours r", "fio r", "ratio");
  for (const std::string& s : c.sizes) {
    uint64_t size = ParseSize(s);
    uint64_t count = std::max<uint64_t>(c.threads, (c.total_mib << 20) / size);
    count = count / c.threads * c.threads;
    std::vector<double> ow, orr, fw, fr;
    Payload payload = MakePayload(size);
    const std::string ours_dir = c.dir + "/store", fio_dir = c.dir + "/fio";
    for (int rep = 0; rep < c.reps; ++rep) {
      // Each phase runs back to back with its fio counterpart, the first one alternating, so
      // neither side always runs on a warmer (or busier) machine.
      if (rep % 2 == 0) {
        ow.push_back(OursWrite(c, ours_dir, payload, count));
        fw.push_back(FioWrite(c, fio_dir, size, count));
        orr.push_back(OursRead(c, ours_dir, size, count));
        fr.push_back(FioRead(c, fio_dir, size, count));
      } else {
        fw.push_back(FioWrite(c, fio_dir, size, count));
        ow.push_back(OursWrite(c, ours_dir, payload, count));
        fr.push_back(FioRead(c, fio_dir, size, count));
        orr.push_back(OursRead(c, ours_dir, size, count));
      }
    }
    nlohmann::json row;
    row["object_size"] = s;
    row["object_bytes"] = size;
    row["objects"] = count;
    // The ratio within a rep (both sides back to back) is the least disturbed by other load on
    // a shared machine; the headline ratio is the median of those.
    std::vector<double> wr, rr;
    for (size_t i = 0; i < ow.size(); ++i) {
      wr.push_back(ow[i] / fw[i]);
      rr.push_back(orr[i] / fr[i]);
    }
    row["ours_write_MBps"] = Median(ow);
    row["fio_write_MBps"] = Median(fw);
    row["write_ratio"] = Median(wr);
    row["ours_read_MBps"] = Median(orr);
    row["fio_read_MBps"] = Median(fr);
    row["read_ratio"] = Median(rr);
    row["runs"] = {{"ours_write_MBps", ow}, {"fio_write_MBps", fw}, {"write_ratio", wr},
                   {"ours_read_MBps", orr}, {"fio_read_MBps", fr},  {"read_ratio", rr}};
    results["sizes"].push_back(row);
    printf("%-8s %8llu | %10.0f %10.0f %5.0f%% | %10.0f %10.0f %5.0f%%\n", s.c_str(),
           static_cast<unsigned long long>(count), Median(ow), Median(fw), 100 * Median(wr),
           Median(orr), Median(fr), 100 * Median(rr));
    fflush(stdout);
  }
  fs::remove_all(c.dir);
  fs::create_directories(fs::path(c.out).parent_path());
  std::ofstream(c.out) << results.dump(2) << "\n";
  printf("wrote %s\n", c.out.c_str());
  return 0;
}

}  // namespace

// An exception (a file system or JSON error, say) ends the run with its message and status 1
// rather than std::terminate's abort.
int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ssd_tier_bench: %s\n", e.what());
    return 1;
  }
}
