// `kvstash put | get | stat | ls | rm | bench`: the store subcommands, over KvClient
// (`get --slo-ms`: slo_get.h).
// Key and file mapping rules: file_object.h and docs/cli.md.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client_flags.h"
#include "commands.h"
#include "file_object.h"
#include "kvstash/client/kv_client.h"
#include "kvstash/common/byte_size.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/common/half.h"
#include "kvstash/common/object_header.h"
#include "progress.h"
#include "slo_get.h"

namespace kvstash::cli {
namespace {

using client::KvClient;

struct CommonOptions {
  std::string target = "unix:///tmp/kvstash.sock";
  std::string name_space;
  std::string model = kDefaultCliModel;
  bool no_shm = false;
  int timeout_ms = 10'000;
  ClientFlags client;  // TLS and bearer token
};

void AddCommon(CLI::App* cmd, CommonOptions& o) {
  cmd->add_option("--target", o.target, "cachesvc address: unix:///path or host:port")
      ->capture_default_str();
  cmd->add_option("--namespace", o.name_space, "tenant namespace of the keys");
  cmd->add_option("--model", o.model, "model name whose fingerprint names KEYs (not for FP/TH)")
      ->capture_default_str();
  cmd->add_flag("--no-shm", o.no_shm, "use gRPC byte streams even on a local unix socket");
  cmd->add_option("--timeout-ms", o.timeout_ms, "deadline of each RPC")->capture_default_str();
  AddClientFlags(cmd, o.client);
}

int Fail(const char* cmd, const Status& s) {
  std::fprintf(stderr, "kvstash %s: %s\n", cmd, std::string(s.ToString()).c_str());
  return 1;
}

// The client options of the common flags (deadlines, shared memory, TLS, token).
Result<client::ClientOptions> OptionsFor(const CommonOptions& o) {
  client::ClientOptions options;
  options.rpc_timeout = std::chrono::milliseconds(o.timeout_ms);
  options.stream_timeout = std::chrono::milliseconds(std::max(o.timeout_ms, 60'000));
  options.connect_timeout = std::chrono::milliseconds(std::min(o.timeout_ms, 5'000));
  options.use_shared_memory = !o.no_shm;
  KVSTASH_RETURN_IF_ERROR(ApplyClientFlags(o.client, &options));
  return options;
}

Result<std::unique_ptr<KvClient>> ConnectWith(const CommonOptions& o) {
  KVSTASH_ASSIGN_OR_RETURN(client::ClientOptions options, OptionsFor(o));
  return KvClient::Connect(o.target, options);
}

std::string LayoutText(const ObjectInfo& info) {
  const KvLayout& l = info.layout;
  return absl::StrCat(
      l.num_layers, "L x ", l.num_tokens, "tok x heads[", l.head_begin, ",", l.head_end, ")/",
      l.total_kv_heads, " x ", l.head_dim, " ", std::string(DTypeName(l.dtype)), " ",
      std::string(EncodingName(info.encoding)),
      info.encoding == Encoding::kCacheGen ? absl::StrCat("-L", info.encoding_level) : "");
}

Result<std::vector<uint8_t>> ReadInput(const std::string& path) {
  std::vector<uint8_t> bytes;
  if (path == "-") {
    bytes.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    return bytes;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) {  // not a regular file (a FIFO, a device): as a stream
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  } else {
    // In blocks, so that a large file shows its progress on a terminal.
    bytes.resize(size);
    Progress bar(absl::StrCat("read ", path), size);
    constexpr size_t kBlock = size_t{8} << 20;
    size_t done = 0;
    while (done < size && in.read(reinterpret_cast<char*>(bytes.data() + done),
                                  static_cast<std::streamsize>(std::min(kBlock, size - done)))) {
      done += static_cast<size_t>(in.gcount());
      bar.Update(done);
    }
    done += in.eof() ? static_cast<size_t>(in.gcount()) : 0;
    bytes.resize(done);  // the file may have shrunk since file_size()
    bar.Finish();
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path));
  return bytes;
}

// Writes through a temporary file and renames, so FILE is never left half-written.
Status WriteOutput(const std::string& path, std::span<const uint8_t> bytes) {
  if (path == "-") {
    if (std::fwrite(bytes.data(), 1, bytes.size(), stdout) != bytes.size()) {
      return absl::DataLossError("error writing to stdout");
    }
    std::fflush(stdout);
    return OkStatus();
  }
  std::string tmp = absl::StrCat(path, ".kvstash-tmp-", ::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    // In blocks, so that a large file shows its progress on a terminal.
    Progress bar(absl::StrCat("write ", path), bytes.size());
    constexpr size_t kBlock = size_t{8} << 20;
    for (size_t done = 0; done < bytes.size() && out.good();) {
      const size_t n = std::min(kBlock, bytes.size() - done);
      out.write(reinterpret_cast<const char*>(bytes.data() + done),
                static_cast<std::streamsize>(n));
      done += n;
      bar.Update(done);
    }
    bar.Finish();
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

// ---- put / get -----------------------------------------------------------------

struct PutArgs {
  CommonOptions common;
  std::string key, file;
  bool wrap = false, durable = false, overwrite = false;
};

int RunPut(const PutArgs& a) {
  auto name = ParseUserKey(a.key, a.common.name_space, a.common.model);
  if (!name.ok()) return Fail("put", name.status());
  auto bytes = ReadInput(a.file);
  if (!bytes.ok()) return Fail("put", bytes.status());
  size_t file_bytes = bytes->size();
  auto object = FileToObject(std::move(*bytes), a.wrap);
  if (!object.ok()) return Fail("put", object.status());
  auto kv = ConnectWith(a.common);
  if (!kv.ok()) return Fail("put", kv.status());
  client::PutOptions options;
  options.durable = a.durable;
  options.overwrite = a.overwrite;
  Status s;
  {
    // One client call, no progress of its own: the bar shows the time taken, then the rate.
    Progress bar(absl::StrCat("put ", a.key), object->payload.size());
    bar.RunBusy([&] { s = (*kv)->Put(*name, object->info, object->payload, options); });
    if (s.ok()) {
      bar.Finish();
    } else {
      bar.Clear();  // the error is printed on a clean line
    }
  }
  if (!s.ok()) return Fail("put", s);
  const char* path = (*kv)->shared_memory_writable() ? "shared memory" : "gRPC stream";
  if (object->wrapped) {
    std::printf("stored %s (%s): %s file, wrapped in the file layout (%s), via %s\n",
                FormatUserKey(*name).c_str(), a.key.c_str(), FormatByteSize(file_bytes).c_str(),
                LayoutText(object->info).c_str(), path);
  } else {
    std::printf("stored %s (%s): object %s, %s payload, via %s\n", FormatUserKey(*name).c_str(),
                a.key.c_str(), LayoutText(object->info).c_str(),
                FormatByteSize(object->info.payload_bytes).c_str(), path);
  }
  return 0;
}

struct GetArgs {
  CommonOptions common;
  std::vector<std::string> operands;  // KEY FILE, or with --slo-ms KEY...
  std::string key, file;
  bool raw = false;
  int cachegen_level = -1;  // >= 0: stream, accepting a CacheGen transfer (0: service's level)
  bool slo = false;         // --slo-ms given: a StreamedLoad of every KEY (slo_get.h)
  SloGetArgs slo_args;
  bool slo_only_options = false;  // --out-dir, --codecs or --simulate-link-mbps given
};

int Usage(const char* cmd, const std::string& message) {
  std::fprintf(stderr, "kvstash %s: %s\n", cmd, message.c_str());
  return 2;
}

int RunSloGetCommand(GetArgs a) {
  a.slo_args.keys = a.operands;
  a.slo_args.raw = a.raw;
  if (a.cachegen_level >= 0) return Usage("get", "--cachegen and --slo-ms exclude each other");
  Status usage = CheckSloGetArgs(a.slo_args);
  if (!usage.ok()) return Usage("get", std::string(usage.message()));
  std::vector<ObjectName> names;
  for (const std::string& key : a.operands) {
    auto name = ParseUserKey(key, a.common.name_space, a.common.model);
    if (!name.ok()) return Fail("get", name.status());
    names.push_back(*name);
  }
  auto kv = ConnectWith(a.common);
  if (!kv.ok()) return Fail("get", kv.status());
  return RunSloGet(**kv, names, a.slo_args);
}

int RunGet(GetArgs a) {
  if (a.slo) return RunSloGetCommand(std::move(a));
  if (a.slo_only_options) {
    return Usage("get", "--out-dir, --codecs and --simulate-link-mbps go with --slo-ms");
  }
  if (a.operands.size() != 2) {
    return Usage("get", absl::StrCat("expected KEY FILE (", a.operands.size(),
                                     " operands given); several KEYs need --slo-ms and --out-dir"));
  }
  a.key = a.operands[0];
  a.file = a.operands[1];
  auto name = ParseUserKey(a.key, a.common.name_space, a.common.model);
  if (!name.ok()) return Fail("get", name.status());
  auto kv = ConnectWith(a.common);
  if (!kv.ok()) return Fail("get", kv.status());
  Result<std::vector<uint8_t>> out = absl::UnknownError("unset");
  if (a.cachegen_level >= 0) {  // as a remote client would: a byte stream, encoded if possible
    client::GetOptions options;
    options.accept_encoding = Encoding::kCacheGen;
    options.level = a.cachegen_level;
    auto reply = (*kv)->Get(*name, options);
    if (!reply.ok()) return Fail("get", reply.status());
    // An encoded transfer is always smaller than the object (the service sends raw otherwise);
    // info.lossy alone would also flag an object read back from a CacheGen SSD tier.
    const bool encoded = reply->wire_bytes < reply->info.payload_bytes;
    const double ratio = static_cast<double>(reply->info.payload_bytes) /
                         static_cast<double>(std::max<uint64_t>(reply->wire_bytes, 1));
    std::fprintf(stderr, "received %s on the wire for %s (%s, %.2fx)\n",
                 FormatByteSize(reply->wire_bytes).c_str(),
                 FormatByteSize(reply->info.payload_bytes).c_str(),
                 encoded ? "CacheGen, lossy" : "raw", ratio);
    out = ObjectToFile(reply->info, reply->payload, a.raw);
  } else if ((*kv)->shared_memory_attached()) {
    auto lease = (*kv)->Acquire(*name);
    if (!lease.ok()) return Fail("get", lease.status());
    out = ObjectToFile(lease->info(), lease->data(), a.raw);
    (void)lease->Release();
  } else {
    auto reply = (*kv)->Get(*name);
    if (!reply.ok()) return Fail("get", reply.status());
    out = ObjectToFile(reply->info, reply->payload, a.raw);
  }
  if (!out.ok()) return Fail("get", out.status());
  Status s = WriteOutput(a.file, *out);
  if (!s.ok()) return Fail("get", s);
  if (a.file != "-") {
    std::printf("wrote %s to %s\n", FormatByteSize(out->size()).c_str(), a.file.c_str());
  }
  return 0;
}

// ---- stat / ls / rm ------------------------------------------------------------

struct StatArgs {
  CommonOptions common;
  std::vector<std::string> keys;
};

int RunStat(const StatArgs& a) {
  auto kv = ConnectWith(a.common);
  if (!kv.ok()) return Fail("stat", kv.status());
  if (!a.keys.empty()) {
    std::vector<ObjectName> names;
    for (const std::string& k : a.keys) {
      auto name = ParseUserKey(k, a.common.name_space, a.common.model);
      if (!name.ok()) return Fail("stat", name.status());
      names.push_back(*name);
    }
    auto reply = (*kv)->Lookup(names);
    if (!reply.ok()) return Fail("stat", reply.status());
    int missing = 0;
    for (size_t i = 0; i < names.size(); ++i) {
      const auto& r = reply->results[i];
      if (!r.present) {
        ++missing;
        std::printf("%s  absent\n", a.keys[i].c_str());
        continue;
      }
      std::printf("%s  %s  tier=%s  %s  crc32c=%08x%s\n", a.keys[i].c_str(),
                  FormatUserKey(names[i]).c_str(), std::string(TierName(r.tier)).c_str(),
                  FormatByteSize(r.payload_bytes).c_str(), r.info.payload_crc32c,
                  r.info.lossy ? "  lossy" : "");
      std::printf("    layout %s\n", LayoutText(r.info).c_str());
    }
    std::printf("longest present prefix: %zu of %zu\n", reply->longest_prefix, names.size());
    return missing == 0 ? 0 : 1;
  }
  auto stats = (*kv)->Stats();
  if (!stats.ok()) return Fail("stat", stats.status());
  const std::string shared_memory =
      !(*kv)->shared_memory_attached()
          ? "not attached"
          : absl::StrCat("attached", (*kv)->shared_memory_writable() ? "" : " read-only",
                         (*kv)->local_control_active() ? " (control calls on the local channel)"
                                                       : " (control calls over gRPC)");
  std::printf("cachesvc %s at %s, up %.1f s, shared memory %s\n", stats->version.c_str(),
              a.common.target.c_str(), stats->uptime_ms / 1000.0, shared_memory.c_str());
  std::printf("%-5s %12s %12s %9s %9s %9s %9s %12s %12s\n", "tier", "capacity", "used", "objects",
              "hits", "misses", "evicted", "read", "written");
  for (const auto& t : stats->tiers) {
    std::printf("%-5s %12s %12s %9" PRIu64 " %9" PRIu64 " %9" PRIu64 " %9" PRIu64 " %12s %12s\n",
                std::string(TierName(t.tier)).c_str(), FormatByteSize(t.capacity_bytes).c_str(),
                FormatByteSize(t.used_bytes).c_str(), t.objects, t.hits, t.misses, t.evictions,
                FormatByteSize(t.bytes_read).c_str(), FormatByteSize(t.bytes_written).c_str());
    if (t.logical_bytes > t.used_bytes && t.used_bytes > 0) {
      std::printf("      %s of objects stored in %s: %.2fx (tier encoding)\n",
                  FormatByteSize(t.logical_bytes).c_str(), FormatByteSize(t.used_bytes).c_str(),
                  static_cast<double>(t.logical_bytes) / static_cast<double>(t.used_bytes));
    }
  }
  std::printf("checksum failures %" PRIu64 ", reservations active %" PRIu64 " expired %" PRIu64
              ", leases active %" PRIu64 ", pinned objects %" PRIu64 "\n",
              stats->checksum_failures, stats->reservations_active, stats->reservations_expired,
              stats->leases_active, stats->pinned_objects);
  return 0;
}

struct ClusterArgs {
  CommonOptions common;
  bool json = false;
};

// `kvstash cluster status`: the members as the --target node sees them.
int RunClusterStatus(const ClusterArgs& a) {
  auto kv = ConnectWith(a.common);
  if (!kv.ok()) return Fail("cluster status", kv.status());
  auto st = (*kv)->ClusterStatus();
  if (!st.ok()) {
    if (st.status().code() == absl::StatusCode::kUnimplemented) {
      return Fail("cluster status", absl::FailedPreconditionError(
                                        "the node is not a cluster member (cachesvc --etcd)"));
    }
    return Fail("cluster status", st.status());
  }
  uint64_t under = 0;
  for (const auto& n : st->nodes) under += n.under_replicated;
  if (a.json) {
    std::printf(
        "{\"cluster\":\"%s\",\"replicas\":%u,\"node\":\"%s\",\"fenced\":%s,"
        "\"under_replicated\":%llu,\"nodes\":[",
        st->cluster.c_str(), st->replicas, st->node_id.c_str(), st->fenced ? "true" : "false",
        static_cast<unsigned long long>(under));
    for (size_t i = 0; i < st->nodes.size(); ++i) {
      const auto& n = st->nodes[i];
      std::printf(
          "%s{\"id\":\"%s\",\"address\":\"%s\",\"zone\":\"%s\",\"state\":\"%s\","
          "\"capacity_bytes\":%llu,\"epoch\":%llu,\"objects\":%llu,"
          "\"under_replicated\":%llu,\"replication_pending\":%llu}",
          i == 0 ? "" : ",", n.id.c_str(), n.grpc_address.c_str(), n.zone.c_str(), n.state.c_str(),
          static_cast<unsigned long long>(n.capacity_bytes),
          static_cast<unsigned long long>(n.epoch), static_cast<unsigned long long>(n.objects),
          static_cast<unsigned long long>(n.under_replicated),
          static_cast<unsigned long long>(n.replication_pending));
    }
    std::printf("]}\n");
    return 0;
  }
  std::printf("cluster %s  replicas %u  asked %s%s  nodes %zu  under-replicated %llu\n",
              st->cluster.c_str(), st->replicas, st->node_id.c_str(), st->fenced ? " (fenced)" : "",
              st->nodes.size(), static_cast<unsigned long long>(under));
  std::printf("%-16s %-22s %-10s %-11s %10s %9s %16s %8s\n", "NODE", "ADDRESS", "ZONE", "STATE",
              "CAPACITY", "OBJECTS", "UNDER-REPLICATED", "PENDING");
  for (const auto& n : st->nodes) {
    std::printf("%-16s %-22s %-10s %-11s %9.1fG %9llu %16llu %8llu\n", n.id.c_str(),
                n.grpc_address.c_str(), n.zone.empty() ? "-" : n.zone.c_str(), n.state.c_str(),
                static_cast<double>(n.capacity_bytes) / (1ull << 30),
                static_cast<unsigned long long>(n.objects),
                static_cast<unsigned long long>(n.under_replicated),
                static_cast<unsigned long long>(n.replication_pending));
  }
  return 0;
}

struct LsArgs {
  CommonOptions common;
  bool all_namespaces = false;
  uint32_t limit = 0;  // 0: everything
};

int RunLs(const LsArgs& a) {
  auto kv = ConnectWith(a.common);
  if (!kv.ok()) return Fail("ls", kv.status());
  std::string token;
  uint64_t shown = 0, bytes = 0;
  std::printf("%-65s %-4s %10s %3s %6s  %s%s\n", "FP/TH", "tier", "size", "pin", "hits",
              a.all_namespaces ? "namespace  " : "", "layout");
  do {
    uint32_t page = a.limit == 0 ? 1000 : std::min<uint64_t>(1000, a.limit - shown);
    auto reply = (*kv)->List(a.common.name_space, page, token, a.all_namespaces);
    if (!reply.ok()) return Fail("ls", reply.status());
    for (const auto& o : reply->objects) {
      std::printf("%-65s %-4s %10s %3s %6" PRIu64 "  %s%s\n", FormatUserKey(o.name).c_str(),
                  std::string(TierName(o.tier)).c_str(),
                  FormatByteSize(o.info.payload_bytes).c_str(), o.pinned ? "yes" : "-", o.hits,
                  a.all_namespaces ? absl::StrCat("'", o.name.name_space, "'  ").c_str() : "",
                  LayoutText(o.info).c_str());
      ++shown;
      bytes += o.info.payload_bytes;
    }
    token = reply->next_page_token;
  } while (!token.empty() && (a.limit == 0 || shown < a.limit));
  std::printf("%" PRIu64 " objects, %s\n", shown, FormatByteSize(bytes).c_str());
  return 0;
}

struct RmArgs {
  CommonOptions common;
  std::vector<std::string> keys;
};

int RunRm(const RmArgs& a) {
  std::vector<ObjectName> names;
  for (const std::string& k : a.keys) {
    auto name = ParseUserKey(k, a.common.name_space, a.common.model);
    if (!name.ok()) return Fail("rm", name.status());
    names.push_back(*name);
  }
  auto kv = ConnectWith(a.common);
  if (!kv.ok()) return Fail("rm", kv.status());
  auto results = (*kv)->Delete(names);
  if (!results.ok()) return Fail("rm", results.status());
  int failed = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    const Status& s = (*results)[i];
    if (s.ok()) {
      std::printf("removed %s\n", a.keys[i].c_str());
    } else {
      ++failed;
      std::fprintf(stderr, "kvstash rm: %s: %s\n", a.keys[i].c_str(), s.ToString().c_str());
    }
  }
  return failed == 0 ? 0 : 1;
}

// ---- synth ---------------------------------------------------------------------

struct SynthArgs {
  std::string file;
  uint32_t layers = 30, tokens = 256, kv_heads = 3, head_dim = 64;
  uint64_t seed = 0;
};

// A KV-shaped object file with deterministic, smooth f16 content: value(layer, K|V, token, head,
// dim) is a sum of sinusoids, so chunks look like activations, differ per seed and compress like
// real KV rather than like noise.
int RunSynth(const SynthArgs& a) {
  ObjectInfo info;
  KvLayout& l = info.layout;
  l.num_layers = a.layers;
  l.total_kv_heads = a.kv_heads;
  l.head_begin = 0;
  l.head_end = a.kv_heads;
  l.head_dim = a.head_dim;
  l.dtype = DType::kF16;
  l.num_tokens = a.tokens;
  l.rope = RopeConvention::kNeox;
  l.rope_theta = 100000.0f;
  l.position_start = static_cast<int64_t>(a.seed) * a.tokens;
  info.payload_bytes = l.RawBytes();
  if (Status s = info.Validate(); !s.ok()) return Fail("synth", s);
  std::vector<uint8_t> file(kObjectHeaderBytes + info.payload_bytes);
  auto* out = reinterpret_cast<uint16_t*>(file.data() + kObjectHeaderBytes);
  size_t i = 0;
  for (uint32_t layer = 0; layer < a.layers; ++layer) {
    for (uint32_t kv = 0; kv < 2; ++kv) {
      for (uint32_t t = 0; t < a.tokens; ++t) {
        double pos = static_cast<double>(l.position_start + t);
        for (uint32_t h = 0; h < a.kv_heads; ++h) {
          for (uint32_t d = 0; d < a.head_dim; ++d) {
            double v = std::sin(0.013 * pos * (d + 1) + 0.7 * layer + 1.3 * h + 2.1 * kv) +
                       0.25 * std::cos(0.17 * d + 0.31 * static_cast<double>(a.seed));
            out[i++] = F32ToF16(static_cast<float>(v));
          }
        }
      }
    }
  }
  info.payload_crc32c = Crc32c(file.data() + kObjectHeaderBytes, info.payload_bytes);
  auto header = EncodeObjectHeader(info);
  if (!header.ok()) return Fail("synth", header.status());
  std::memcpy(file.data(), header->data(), header->size());
  if (Status s = WriteOutput(a.file, file); !s.ok()) return Fail("synth", s);
  if (a.file != "-") {
    std::printf("wrote %s: object %s, %s payload, crc32c %08x\n", a.file.c_str(),
                LayoutText(info).c_str(), FormatByteSize(info.payload_bytes).c_str(),
                info.payload_crc32c);
  }
  return 0;
}

}  // namespace

int RunStoreBench(const std::string& target, const std::string& name_space, uint64_t size,
                  int count, const std::string& path, const client::ClientOptions& options);

void RegisterStoreCommands(CLI::App& app) {
  // The store options go before or after the subcommand, as with kubectl: `kvstash --target X
  // put KEY FILE` and `kvstash put KEY FILE --target X` are the same. Both spellings write this
  // one CommonOptions (the app's group and every store subcommand bind the same variables); the
  // subcommand that runs copies it into its arguments.
  auto common = std::make_shared<CommonOptions>();
  CLI::Option_group* global = app.add_option_group(
      "Store options", "for put, get, stat, ls, rm and bench; before or after the subcommand");
  AddCommon(global, *common);
  std::vector<CLI::App*> store_cmds;

  auto put = std::make_shared<PutArgs>();
  CLI::App* cmd =
      app.add_subcommand("put", "store FILE under KEY (docs/cli.md: key and file rules)");
  cmd->add_option("KEY", put->key, "name, or FP/TH as printed by ls")->required();
  cmd->add_option("FILE", put->file, "file to store; - for stdin")->required();
  cmd->add_flag("--wrap", put->wrap, "wrap the file even if it already is an object");
  cmd->add_flag("--durable", put->durable, "return only once the object is synced to SSD");
  cmd->add_flag("--overwrite", put->overwrite, "replace an existing object with this key");
  AddCommon(cmd, *common);
  store_cmds.push_back(cmd);
  cmd->callback([put, common] {
    put->common = *common;
    ExitCode() = RunPut(*put);
  });

  auto get = std::make_shared<GetArgs>();
  cmd = app.add_subcommand(
      "get", "write the object under KEY to FILE; with --slo-ms, load several KEYs to a budget");
  cmd->add_option("KEY", get->operands,
                  "KEY (name, or FP/TH as printed by ls) and FILE (output; - for stdout); with "
                  "--slo-ms: KEY... written under --out-dir")
      ->required();
  cmd->add_flag("--raw", get->raw, "write header + payload even for a wrapped file");
  cmd->add_option("--cachegen", get->cachegen_level,
                  "stream it and accept a CacheGen-encoded (lossy) transfer at this level; "
                  "0: the service's level")
      ->check(CLI::Range(0, 3));
  CLI::Option* slo_ms =
      cmd->add_option("--slo-ms", get->slo_args.slo_ms,
                      "load every KEY in order within this many ms, each at the most exact "
                      "encoding that fits (client::StreamedLoad; docs/cli.md)");
  std::vector<CLI::Option*> slo_only = {
      cmd->add_option("--out-dir", get->slo_args.out_dir,
                      "with --slo-ms: the directory each KEY's file is written to"),
      cmd->add_option("--codecs", get->slo_args.codecs,
                      "with --slo-ms: candidates, comma-separated: cachegen-l1..l3, kvq-l1..l4, "
                      "cachegen, kvq (default: calibrated CacheGen L2 and the KVQ levels at least "
                      "as exact)"),
      cmd->add_option("--simulate-link-mbps", get->slo_args.simulate_link_mbps,
                      "with --slo-ms: assume a link of this rate and charge each chunk its wire "
                      "bytes at it (a stand-in for a slow link)")};
  AddCommon(cmd, *common);
  store_cmds.push_back(cmd);
  cmd->callback([get, common, slo_ms, slo_only] {
    get->common = *common;
    get->slo = slo_ms->count() > 0;
    get->slo_only_options = false;
    for (const CLI::Option* o : slo_only) get->slo_only_options |= o->count() > 0;
    ExitCode() = RunGet(*get);
  });

  auto stat = std::make_shared<StatArgs>();
  cmd = app.add_subcommand("stat", "service statistics, or presence of KEYs");
  cmd->add_option("KEY", stat->keys, "keys to look up (in prefix order)");
  AddCommon(cmd, *common);
  store_cmds.push_back(cmd);
  cmd->callback([stat, common] {
    stat->common = *common;
    ExitCode() = RunStat(*stat);
  });

  auto cluster = std::make_shared<ClusterArgs>();
  CLI::App* cluster_cmd = app.add_subcommand("cluster", "cluster through etcd (cachesvc --etcd)");
  cluster_cmd->require_subcommand(1);
  cmd = cluster_cmd->add_subcommand(
      "status", "members, state, capacity, objects, under-replicated objects, queued forwards");
  cmd->add_flag("--json", cluster->json, "one JSON object instead of the table");
  AddCommon(cmd, cluster->common);
  cmd->callback([cluster] { ExitCode() = RunClusterStatus(*cluster); });

  auto ls = std::make_shared<LsArgs>();
  cmd = app.add_subcommand("ls", "list stored objects of the namespace");
  cmd->add_flag("--all-namespaces", ls->all_namespaces, "list every tenant's objects");
  cmd->add_option("--limit", ls->limit, "stop after N objects (0: all)");
  AddCommon(cmd, *common);
  store_cmds.push_back(cmd);
  cmd->callback([ls, common] {
    ls->common = *common;
    ExitCode() = RunLs(*ls);
  });

  auto rm = std::make_shared<RmArgs>();
  cmd = app.add_subcommand("rm", "delete objects");
  cmd->add_option("KEY", rm->keys, "keys to delete")->required();
  AddCommon(cmd, *common);
  store_cmds.push_back(cmd);
  cmd->callback([rm, common] {
    rm->common = *common;
    ExitCode() = RunRm(*rm);
  });

  auto synth = std::make_shared<SynthArgs>();
  cmd = app.add_subcommand("synth", "write a KV-shaped test object file (deterministic content)");
  cmd->add_option("FILE", synth->file, "output object file; - for stdout")->required();
  cmd->add_option("--layers", synth->layers, "layers")->capture_default_str();
  cmd->add_option("--tokens", synth->tokens, "tokens")->capture_default_str();
  cmd->add_option("--kv-heads", synth->kv_heads, "KV heads")->capture_default_str();
  cmd->add_option("--head-dim", synth->head_dim, "head dimension")->capture_default_str();
  cmd->add_option("--seed", synth->seed, "content seed; also the chunk index (positions)")
      ->capture_default_str();
  cmd->callback([synth] { ExitCode() = RunSynth(*synth); });

  struct BenchArgs {
    CommonOptions common;
    std::string size = "2MiB";
    int count = 32;
    std::string path = "both";
  };
  auto bench = std::make_shared<BenchArgs>();
  cmd = app.add_subcommand("bench", "measure put/get throughput and latency against --target");
  cmd->add_option("--size", bench->size, "object size (e.g. 256KiB, 2MiB, 32MiB)")
      ->capture_default_str();
  cmd->add_option("--count", bench->count, "objects per path")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--path", bench->path, "shm, stream or both")
      ->check(CLI::IsMember({"shm", "stream", "both"}))
      ->capture_default_str();
  AddCommon(cmd, *common);
  store_cmds.push_back(cmd);
  cmd->callback([bench, common] {
    bench->common = *common;
    auto size = ParseByteSize(bench->size);
    if (!size.ok()) {
      ExitCode() = Fail("bench", size.status());
      return;
    }
    auto options = OptionsFor(bench->common);
    if (!options.ok()) {
      ExitCode() = Fail("bench", options.status());
      return;
    }
    ExitCode() = RunStoreBench(bench->common.target, bench->common.name_space, *size, bench->count,
                               bench->path, *options);
  });

  // Store options before another subcommand (`kvstash --model M generate`) would be ignored
  // silently; refuse them instead. Runs after parsing, before any subcommand's callback.
  app.parse_complete_callback([global, store_cmds] {
    if (global->count_all() == 0) return;
    for (const CLI::App* c : store_cmds) {
      if (c->parsed()) return;
    }
    throw CLI::ValidationError(
        "store options (--target, --namespace, --model, ...) before the subcommand apply to put, "
        "get, stat, ls, rm and bench; give the other subcommands their own options after them");
  });
}

}  // namespace kvstash::cli
