// C++ twin of bench/python/put_get_bench.py: what the Python package's put_many and get_many do
// (PutMany with overwrite; AcquireMany then one copy per object into the caller's buffer), timed
// the same way, so the script can divide one by the other.
//
//   python_put_get_twin <target> <objects> <object_bytes> <reps>
// Prints one JSON line: {"put_gbps": [...], "get_gbps": [...]} (one value per rep).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kvstash/client/kv_client.h"
#include "kvstash/common/key.h"

using namespace kvstash;

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s <target> <objects> <object_bytes> <reps>\n", argv[0]);
    return 2;
  }
  const std::string target = argv[1];
  const size_t n = std::strtoull(argv[2], nullptr, 10);
  const size_t bytes = std::strtoull(argv[3], nullptr, 10);
  const int reps = std::atoi(argv[4]);
  auto client = client::KvClient::Connect(target);
  if (!client.ok() || !(*client)->shared_memory_attached()) {
    std::fprintf(stderr, "connect: %s\n", std::string(client.status().message()).c_str());
    return 1;
  }
  // The script's layout: f16, 8 layers, 8 heads, 64 dims; num_tokens makes `bytes`.
  KvLayout layout;
  layout.num_layers = 8;
  layout.total_kv_heads = 8;
  layout.head_end = 8;
  layout.head_dim = 64;
  layout.dtype = DType::kF16;
  layout.num_tokens = static_cast<uint32_t>(bytes / (8 * 2 * 8 * 64 * 2));
  ObjectInfo info;
  info.layout = layout;
  info.payload_bytes = layout.RawBytes();
  if (info.payload_bytes != bytes) {
    std::fprintf(stderr, "object_bytes must be a multiple of %d\n", 8 * 2 * 8 * 64 * 2);
    return 2;
  }
  Hash128 fp{0x7077696e, 1};  // "twin": its own names, apart from the script's
  std::vector<ObjectName> names;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t token = static_cast<uint32_t>(i);
    names.push_back(MakeObjectName("bench-twin", fp, IndependentTokenHash({&token, 1})));
  }
  std::vector<std::vector<uint8_t>> src(n, std::vector<uint8_t>(bytes));
  std::vector<std::vector<uint8_t>> dst(n, std::vector<uint8_t>(bytes));
  for (size_t i = 0; i < n; ++i) {
    for (size_t b = 0; b < bytes; ++b) src[i][b] = static_cast<uint8_t>(b * 31 + i);
  }
  std::vector<client::PutItem> items(n);
  for (size_t i = 0; i < n; ++i) items[i] = {names[i], info, src[i]};
  client::PutOptions put_options;
  put_options.overwrite = true;
  std::string put = "[", get = "[";
  using Clock = std::chrono::steady_clock;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    for (const Status& s : (*client)->PutMany(items, put_options)) {
      if (!s.ok()) {
        std::fprintf(stderr, "put: %s\n", std::string(s.message()).c_str());
        return 1;
      }
    }
    auto t1 = Clock::now();
    auto leases = (*client)->AcquireMany(names);
    if (!leases.ok()) return 1;
    for (size_t i = 0; i < n; ++i) {
      if (!(*leases)[i].ok()) return 1;
      std::memcpy(dst[i].data(), (*leases)[i]->data().data(), bytes);
    }
    leases->clear();  // releases without waiting, as the binding does
    auto t2 = Clock::now();
    const double total = static_cast<double>(n * bytes);
    put += (r ? "," : "") +
           std::to_string(total / std::chrono::duration<double>(t1 - t0).count() / 1e9);
    get += (r ? "," : "") +
           std::to_string(total / std::chrono::duration<double>(t2 - t1).count() / 1e9);
  }
  if (dst[n - 1] != src[n - 1]) return 1;
  std::printf("{\"put_gbps\": %s], \"get_gbps\": %s]}\n", put.c_str(), get.c_str());
  return 0;
}
