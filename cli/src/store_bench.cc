// `kvstash bench`: put/get throughput and latency of a running cachesvc, per data path.
// The comparison against memcpy and Redis lives in bench/service; this is the quick field check.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "commands.h"
#include "file_object.h"
#include "kvstash/client/kv_client.h"
#include "kvstash/common/byte_size.h"
#include "progress.h"

namespace kvstash::cli {
namespace {

using Clock = std::chrono::steady_clock;

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(std::lround(p * static_cast<double>(v.size() - 1)));
  return v[std::min(i, v.size() - 1)];
}

struct PathResult {
  double put_gbps = 0, get_gbps = 0;
  std::vector<double> put_ms, get_ms;
};

Status BenchPath(client::KvClient& kv, bool shm, const std::string& name_space,
                 const ObjectInfo& info, const std::vector<uint8_t>& payload, int count,
                 PathResult* out) {
  std::vector<ObjectName> names;
  for (int i = -1; i < count; ++i) {  // index -1 is the warm-up object
    KVSTASH_ASSIGN_OR_RETURN(
        ObjectName name,
        ParseUserKey(absl::StrCat("bench/", ::getpid(), shm ? "/shm/" : "/stream/", i), name_space,
                     "kvstash-cli-bench"));
    names.push_back(name);
  }
  client::PutOptions put_options;
  put_options.path = shm ? client::DataPath::kSharedMemory : client::DataPath::kStream;
  put_options.overwrite = true;
  std::vector<uint8_t> sink(payload.size());
  auto get_one = [&](const ObjectName& name) -> Status {
    if (shm) {
      KVSTASH_ASSIGN_OR_RETURN(client::ReadLease lease, kv.Acquire(name));
      std::memcpy(sink.data(), lease.data().data(), lease.data().size());
      return lease.Release();
    }
    KVSTASH_ASSIGN_OR_RETURN(client::GetReply reply, kv.Get(name));
    sink = std::move(reply.payload);
    return OkStatus();
  };
  KVSTASH_RETURN_IF_ERROR(kv.Put(names[0], info, payload, put_options));
  KVSTASH_RETURN_IF_ERROR(get_one(names[0]));

  const uint64_t total_bytes = uint64_t{payload.size()} * static_cast<uint64_t>(count);
  Progress put_bar(shm ? "put shm" : "put stream", total_bytes);
  auto start = Clock::now();
  for (int i = 1; i <= count; ++i) {
    auto t0 = Clock::now();
    KVSTASH_RETURN_IF_ERROR(kv.Put(names[i], info, payload, put_options));
    out->put_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    put_bar.Add(payload.size());
  }
  double put_s = std::chrono::duration<double>(Clock::now() - start).count();
  put_bar.Finish();
  Progress get_bar(shm ? "get shm" : "get stream", total_bytes);
  start = Clock::now();
  for (int i = 1; i <= count; ++i) {
    auto t0 = Clock::now();
    KVSTASH_RETURN_IF_ERROR(get_one(names[i]));
    out->get_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    get_bar.Add(payload.size());
  }
  double get_s = std::chrono::duration<double>(Clock::now() - start).count();
  get_bar.Finish();
  if (sink.size() != payload.size() || std::memcmp(sink.data(), payload.data(), sink.size()) != 0) {
    return absl::DataLossError("read back different bytes than were written");
  }
  double total = static_cast<double>(payload.size()) * count;
  out->put_gbps = total / put_s / 1e9;
  out->get_gbps = total / get_s / 1e9;
  (void)kv.Delete(names);
  return OkStatus();
}

}  // namespace

int RunStoreBench(const std::string& target, const std::string& name_space, uint64_t size,
                  int count, const std::string& path, const client::ClientOptions& options) {
  auto kv = client::KvClient::Connect(target, options);
  if (!kv.ok()) {
    std::fprintf(stderr, "kvstash bench: %s\n", kv.status().ToString().c_str());
    return 1;
  }
  // A raw f16 layout of exactly `size` bytes (rounded up to 256): 1 layer, 1 head of dim 64.
  auto info = WrappedInfo(std::max<uint64_t>(size, 256) - kFileTrailerBytes);
  if (!info.ok()) {
    std::fprintf(stderr, "kvstash bench: %s\n", info.status().ToString().c_str());
    return 1;
  }
  std::vector<uint8_t> payload(info->payload_bytes);
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (auto& b : payload) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = static_cast<uint8_t>(x);
  }
  std::vector<bool> paths;
  if (path == "shm" || path == "both") {
    if ((*kv)->shared_memory_attached()) {
      paths.push_back(true);
    } else if (path == "shm") {
      std::fprintf(stderr, "kvstash bench: shared memory not attached: %s\n",
                   (*kv)->shared_memory_status().ToString().c_str());
      return 1;
    } else {
      std::printf("(shared memory not attached; benchmarking the stream path only)\n");
    }
  }
  if (path == "stream" || path == "both") paths.push_back(false);
  std::printf("target %s, %d objects of %s per path\n", target.c_str(), count,
              FormatByteSize(payload.size()).c_str());
  std::printf("%-7s %-4s %9s %10s %10s\n", "path", "op", "GB/s", "p50 ms", "p99 ms");
  for (bool shm : paths) {
    PathResult r;
    Status s = BenchPath(**kv, shm, name_space, *info, payload, count, &r);
    if (!s.ok()) {
      std::fprintf(stderr, "kvstash bench: %s\n", s.ToString().c_str());
      return 1;
    }
    const char* name = shm ? "shm" : "stream";
    std::printf("%-7s %-4s %9.2f %10.3f %10.3f\n", name, "put", r.put_gbps,
                Percentile(r.put_ms, 0.5), Percentile(r.put_ms, 0.99));
    std::printf("%-7s %-4s %9.2f %10.3f %10.3f\n", name, "get", r.get_gbps,
                Percentile(r.get_ms, 0.5), Percentile(r.get_ms, 0.99));
  }
  return 0;
}

}  // namespace kvstash::cli
