#include "kvstash/cachesvc/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "testing/status_matchers.h"

using ::kvstash::testing::IsOkAndHolds;
using ::kvstash::testing::StatusIs;

namespace kvstash::cachesvc {
namespace {

using ::testing::HasSubstr;

ParsedCommandLine Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "cachesvc");
  std::vector<const char*> argv;
  argv.reserve(args.size());
  for (const auto& a : args) argv.push_back(a.c_str());
  return ParseCommandLine(static_cast<int>(argv.size()), argv.data());
}

std::string WriteTemp(const std::string& text) {
  static int n = 0;
  auto path =
      std::filesystem::temp_directory_path() /
      ("cachesvc_config_test_" + std::to_string(::getpid()) + "_" + std::to_string(n++) + ".yaml");
  std::ofstream(path) << text;
  return path.string();
}

TEST(Config, EmbeddedDefaultIsSingleNodeWithCpuAndSsdInData) {
  ParsedCommandLine p = Parse({});
  ASSERT_TRUE(p.config) << p.output;
  EXPECT_EQ(p.config->listen, "unix:///tmp/kvstash.sock");
  EXPECT_EQ(p.config->store.data_dir, "./data");
  EXPECT_GT(p.config->store.cpu_capacity_bytes, 0u);
  EXPECT_GT(p.config->store.ssd_capacity_bytes, 0u);
  EXPECT_OK(ValidateConfig(*p.config));
  // The embedded text and the struct defaults agree.
  auto from_text = ApplyYaml(EmbeddedDefaultConfigYaml(), ServiceConfig{});
  ASSERT_OK(from_text);
  EXPECT_EQ(from_text->store.cpu_capacity_bytes, ServiceConfig{}.store.cpu_capacity_bytes);
  EXPECT_EQ(from_text->store.ssd_capacity_bytes, ServiceConfig{}.store.ssd_capacity_bytes);
  EXPECT_EQ(from_text->metrics_port, ServiceConfig{}.metrics_port);
  EXPECT_TRUE(from_text->store.prefault_arena);
  EXPECT_TRUE(ServiceConfig{}.store.prefault_arena);
  auto off = ApplyYaml("storage:\n  prefault_arena: false\n", ServiceConfig{});
  ASSERT_OK(off);
  EXPECT_FALSE(off->store.prefault_arena);
  EXPECT_THAT(ApplyYaml("storage:\n  prefault_arena: maybe\n", ServiceConfig{}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(from_text->store.background_commit_checks);
  EXPECT_TRUE(ServiceConfig{}.store.background_commit_checks);
  ParsedCommandLine first_read = Parse({"--background-commit-checks", "false"});
  ASSERT_TRUE(first_read.config) << first_read.output;
  EXPECT_FALSE(first_read.config->store.background_commit_checks);
  EXPECT_EQ(from_text->local_control_poll_us, ServiceConfig{}.local_control_poll_us);
  EXPECT_EQ(ServiceConfig{}.local_control_poll_us, 1000u);
  ParsedCommandLine no_poll = Parse({"--local-control-poll-us", "0"});
  ASSERT_TRUE(no_poll.config) << no_poll.output;
  EXPECT_EQ(no_poll.config->local_control_poll_us, 0u);
  EXPECT_FALSE(Parse({"--local-control-poll-us", "-5"}).config);
  EXPECT_EQ(from_text->stream_threads, ServiceConfig{}.stream_threads);
  EXPECT_EQ(from_text->stream_poll_us, ServiceConfig{}.stream_poll_us);
  EXPECT_EQ(ServiceConfig{}.stream_threads, 2);
  EXPECT_EQ(ServiceConfig{}.stream_poll_us, 1000u);
  ParsedCommandLine streams = Parse({"--stream-threads", "4", "--stream-poll-us", "0"});
  ASSERT_TRUE(streams.config) << streams.output;
  EXPECT_EQ(streams.config->stream_threads, 4);
  EXPECT_EQ(streams.config->stream_poll_us, 0u);
  EXPECT_FALSE(Parse({"--stream-threads", "0"}).config);
  EXPECT_FALSE(Parse({"--stream-poll-us", "-1"}).config);
}

TEST(Config, FlagsOverrideTheFile) {
  std::string file = WriteTemp(
      "listen: 127.0.0.1:7000\n"
      "metrics:\n  port: 9100\n"
      "storage:\n  data_dir: /var/lib/kvstash\n  cpu_capacity: 2GiB\n  ssd_capacity: 64GiB\n");
  ParsedCommandLine p =
      Parse({"--config", file, "--cpu-capacity", "512MiB", "--metrics-port", "0"});
  ASSERT_TRUE(p.config) << p.output;
  EXPECT_EQ(p.config->listen, "127.0.0.1:7000");                // from the file
  EXPECT_EQ(p.config->store.data_dir, "/var/lib/kvstash");      // from the file
  EXPECT_EQ(p.config->store.ssd_capacity_bytes, 64ull << 30);   // from the file
  EXPECT_EQ(p.config->store.cpu_capacity_bytes, 512ull << 20);  // flag wins
  EXPECT_EQ(p.config->metrics_port, 0);                         // flag wins
  std::filesystem::remove(file);
}

TEST(Config, UnknownKeyNamesThePath) {
  std::string file = WriteTemp("storage:\n  cpu_capacty: 1GiB\n");
  ParsedCommandLine p = Parse({"--config", file});
  EXPECT_FALSE(p.config);
  EXPECT_EQ(p.exit_code, 2);
  EXPECT_THAT(p.output, HasSubstr("storage.cpu_capacty"));
  EXPECT_THAT(p.output, HasSubstr("unknown configuration key"));
  std::filesystem::remove(file);
}

TEST(Config, BadValuesGiveClearErrors) {
  struct Case {
    std::vector<std::string> args;
    std::string expect;
  };
  std::vector<Case> cases = {
      {{"--cpu-capacity", "lots"}, "--cpu-capacity: 'lots' is not a byte size"},
      {{"--metrics-port", "70000"}, "--metrics-port: 70000 is out of range"},
      {{"--metrics-port", "x"}, "--metrics-port: 'x' is not a valid number"},
      {{"--high-watermark", "1.5"}, "--high-watermark: 1.5 is not in (0, 1]"},
      {{"--low-watermark", "0.95"}, "low_watermark: must be below storage.high_watermark"},
      {{"--listen", "nonsense"}, "neither unix:PATH nor HOST:PORT"},
      {{"--log-level", "loud"}, "unknown level 'loud'"},
      {{"--cpu-capacity", "1KiB"}, "must be at least 1MiB"},
      {{"--listen", "unix://" + std::string(200, 'x')}, "longer than 107 bytes"},
  };
  for (const Case& c : cases) {
    ParsedCommandLine p = Parse(c.args);
    EXPECT_FALSE(p.config) << c.expect;
    EXPECT_EQ(p.exit_code, 2) << c.expect;
    EXPECT_THAT(p.output, HasSubstr(c.expect));
  }
}

TEST(Config, SsdTierEncodingDefaultsToRawAndParsesFromYamlAndFlags) {
  ParsedCommandLine defaults = Parse({});
  ASSERT_TRUE(defaults.config) << defaults.output;
  EXPECT_EQ(defaults.config->ssd_encoding.encoding, Encoding::kRaw);
  EXPECT_EQ(defaults.config->ssd_encoding.level, 2);

  auto yaml = ApplyYaml("tiers:\n  ssd:\n    encoding: cachegen\n    level: 3\n", ServiceConfig{});
  ASSERT_OK(yaml);
  EXPECT_EQ(yaml->ssd_encoding.encoding, Encoding::kCacheGen);
  EXPECT_EQ(yaml->ssd_encoding.level, 3);

  // Flags override the file.
  std::string path = WriteTemp("tiers:\n  ssd:\n    encoding: cachegen\n    level: 3\n");
  ParsedCommandLine p = Parse({"--config", path, "--ssd-encoding-level", "1"});
  ASSERT_TRUE(p.config) << p.output;
  EXPECT_EQ(p.config->ssd_encoding.encoding, Encoding::kCacheGen);
  EXPECT_EQ(p.config->ssd_encoding.level, 1);
  p = Parse({"--config", path, "--ssd-encoding", "raw"});
  ASSERT_TRUE(p.config) << p.output;
  EXPECT_EQ(p.config->ssd_encoding.encoding, Encoding::kRaw);
  std::filesystem::remove(path);
}

TEST(Config, TransferEncodingDefaultsToCacheGenLevel2) {
  ParsedCommandLine defaults = Parse({});
  ASSERT_TRUE(defaults.config) << defaults.output;
  EXPECT_EQ(defaults.config->transfer_encoding.encoding, Encoding::kCacheGen);
  EXPECT_EQ(defaults.config->transfer_encoding.level, 2);
  auto yaml = ApplyYaml("tiers:\n  transfer:\n    encoding: raw\n    level: 1\n", ServiceConfig{});
  ASSERT_OK(yaml);
  EXPECT_EQ(yaml->transfer_encoding.encoding, Encoding::kRaw);
  EXPECT_EQ(yaml->transfer_encoding.level, 1);
  ParsedCommandLine p = Parse({"--transfer-encoding-level", "3"});
  ASSERT_TRUE(p.config) << p.output;
  EXPECT_EQ(p.config->transfer_encoding.level, 3);
  p = Parse({"--transfer-encoding", "lz4"});
  EXPECT_FALSE(p.config);
  EXPECT_THAT(p.output,
              HasSubstr("--transfer-encoding: unknown encoding 'lz4' (raw, cachegen or kvq)"));
}

TEST(Config, KvqIsAnSsdTierAndATransferEncoding) {
  ParsedCommandLine p = Parse({"--ssd-encoding", "kvq", "--ssd-encoding-level", "3"});
  ASSERT_TRUE(p.config) << p.output;
  EXPECT_EQ(p.config->ssd_encoding.encoding, Encoding::kCacheGen);
  EXPECT_TRUE(p.config->ssd_encoding.kvq);
  EXPECT_EQ(p.config->ssd_encoding.level, 3);
  EXPECT_FALSE(p.config->transfer_encoding.kvq);
  p = Parse({"--transfer-encoding", "kvq"});
  ASSERT_TRUE(p.config) << p.output;
  EXPECT_EQ(p.config->transfer_encoding.encoding, Encoding::kCacheGen);
  EXPECT_TRUE(p.config->transfer_encoding.kvq);
  p = Parse({"--transfer-encoding", "zstd"});
  EXPECT_FALSE(p.config);
  EXPECT_THAT(p.output,
              HasSubstr("--transfer-encoding: unknown encoding 'zstd' (raw, cachegen or kvq)"));
}

TEST(Config, SsdEncodingAutoIsChosenAtStartUpWithAnOptionalReadRate) {
  ParsedCommandLine defaults = Parse({});
  ASSERT_TRUE(defaults.config) << defaults.output;
  EXPECT_FALSE(defaults.config->ssd_encoding.choose);
  EXPECT_EQ(defaults.config->ssd_read_mbps, 0u);

  ParsedCommandLine p = Parse({"--ssd-encoding", "auto", "--ssd-encoding-level", "3"});
  ASSERT_TRUE(p.config) << p.output;
  EXPECT_TRUE(p.config->ssd_encoding.choose);
  // Until the service chooses, nothing is encoded; the level is the quality floor.
  EXPECT_EQ(p.config->ssd_encoding.encoding, Encoding::kRaw);
  EXPECT_FALSE(p.config->ssd_encoding.kvq);
  EXPECT_EQ(p.config->ssd_encoding.level, 3);
  EXPECT_EQ(p.config->ssd_read_mbps, 0u);  // measured at start-up

  auto yaml =
      ApplyYaml("tiers:\n  ssd:\n    encoding: auto\n    read_mbps: 4000\n", ServiceConfig{});
  ASSERT_OK(yaml);
  EXPECT_TRUE(yaml->ssd_encoding.choose);
  EXPECT_EQ(yaml->ssd_read_mbps, 4000u);

  // A later concrete encoding replaces auto (flags override the file).
  std::string path = WriteTemp("tiers:\n  ssd:\n    encoding: auto\n");
  p = Parse({"--config", path, "--ssd-encoding", "kvq"});
  ASSERT_TRUE(p.config) << p.output;
  EXPECT_FALSE(p.config->ssd_encoding.choose);
  EXPECT_TRUE(p.config->ssd_encoding.kvq);
  p = Parse({"--config", path, "--ssd-read-mbps", "800"});
  ASSERT_TRUE(p.config) << p.output;
  EXPECT_TRUE(p.config->ssd_encoding.choose);
  EXPECT_EQ(p.config->ssd_read_mbps, 800u);
  std::filesystem::remove(path);
}

TEST(Config, SsdEncodingAutoRefusesBadValues) {
  struct Case {
    std::vector<std::string> args;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {{"--ssd-encoding", "fastest"},
       "--ssd-encoding: unknown encoding 'fastest' (raw, cachegen, kvq or auto)"},
      {{"--ssd-encoding", "auto", "--ssd-read-mbps", "-1"}, "--ssd-read-mbps"},
      {{"--ssd-encoding", "auto", "--ssd-read-mbps", "fast"}, "--ssd-read-mbps"},
      {{"--ssd-encoding", "auto", "--ssd-read-mbps", "10000001"}, "--ssd-read-mbps"},
      {{"--ssd-read-mbps", "4000"},
       "tiers.ssd.read_mbps: is used only with tiers.ssd.encoding auto"},
      {{"--ssd-encoding", "cachegen", "--ssd-read-mbps", "4000"},
       "tiers.ssd.read_mbps: is used only with tiers.ssd.encoding auto"},
      {{"--ssd-encoding", "auto", "--ssd-capacity", "0"},
       "tiers.ssd.encoding: is set but the SSD tier is disabled"},
      {{"--ssd-encoding", "auto", "--ssd-encoding-level", "4"},
       "--ssd-encoding-level: '4' is not a CacheGen level"},
      // auto is the SSD tier's; streaming Gets keep their configured encoding.
      {{"--transfer-encoding", "auto"},
       "--transfer-encoding: unknown encoding 'auto' (raw, cachegen or kvq)"},
  };
  for (const Case& c : cases) {
    ParsedCommandLine p = Parse(c.args);
    EXPECT_FALSE(p.config) << c.expect;
    EXPECT_EQ(p.exit_code, 2) << c.expect;
    EXPECT_THAT(p.output, HasSubstr(c.expect));
  }
  auto yaml =
      ApplyYaml("tiers:\n  ssd:\n    encoding: auto\n    read_mbps: lots\n", ServiceConfig{});
  ASSERT_THAT(yaml, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(yaml.status().message()), HasSubstr("tiers.ssd.read_mbps"));
}

TEST(Config, PeerTransferEncodingIsRawUnlessAsked) {
  ParsedCommandLine defaults = Parse({});
  ASSERT_TRUE(defaults.config) << defaults.output;
  EXPECT_EQ(defaults.config->peers.transfer_encoding, PeerTransferEncoding::kRaw);
  EXPECT_EQ(defaults.config->peers.link_mbps, 0u);
  ParsedCommandLine p = Parse({"--peer-transfer-encoding", "auto", "--peer-link-mbps", "1000"});
  ASSERT_TRUE(p.config) << p.output;
  EXPECT_EQ(p.config->peers.transfer_encoding, PeerTransferEncoding::kAuto);
  EXPECT_EQ(p.config->peers.link_mbps, 1000u);
  auto yaml = ApplyYaml("peers:\n  transfer_encoding: cachegen\n", ServiceConfig{});
  ASSERT_OK(yaml);
  EXPECT_EQ(yaml->peers.transfer_encoding, PeerTransferEncoding::kCacheGen);
  p = Parse({"--peer-transfer-encoding", "kvq"});
  ASSERT_TRUE(p.config) << p.output;
  EXPECT_EQ(p.config->peers.transfer_encoding, PeerTransferEncoding::kKvq);
  p = Parse({"--peer-transfer-encoding", "lz4"});
  EXPECT_FALSE(p.config);
  EXPECT_THAT(p.output, HasSubstr("--peer-transfer-encoding: unknown transfer encoding 'lz4' "
                                  "(raw, cachegen, kvq or auto)"));
}

TEST(Config, GpuPoolIsOffUnlessAsked) {
  ParsedCommandLine defaults = Parse({});
  ASSERT_TRUE(defaults.config) << defaults.output;
  EXPECT_EQ(defaults.config->gpu_pool_bytes, 0u);
  EXPECT_EQ(defaults.config->gpu_device, 0);
  ParsedCommandLine p = Parse({"--gpu-pool-capacity", "2GiB", "--gpu-device", "1"});
  ASSERT_TRUE(p.config) << p.output;
  EXPECT_EQ(p.config->gpu_pool_bytes, 2ull << 30);
  EXPECT_EQ(p.config->gpu_device, 1);
  auto yaml = ApplyYaml("storage:\n  gpu_pool_capacity: 64MiB\n", ServiceConfig{});
  ASSERT_OK(yaml);
  EXPECT_EQ(yaml->gpu_pool_bytes, 64ull << 20);
  EXPECT_THAT(ApplyYaml("storage:\n  gpu_device: -1\n", ServiceConfig{}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(Config, PeerTransferEncodingIsParsedOnceAndBadValuesAreRefused) {
  for (PeerTransferEncoding e : {PeerTransferEncoding::kRaw, PeerTransferEncoding::kCacheGen,
                                 PeerTransferEncoding::kAuto, PeerTransferEncoding::kKvq}) {
    EXPECT_THAT(ParsePeerTransferEncoding(PeerTransferEncodingName(e)), IsOkAndHolds(e));
  }
  EXPECT_THAT(ParsePeerTransferEncoding("RAW"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParsePeerTransferEncoding(""), StatusIs(absl::StatusCode::kInvalidArgument));

  auto yaml = ApplyYaml("peers:\n  transfer_encoding: gzip\n", ServiceConfig{});
  ASSERT_THAT(yaml, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(yaml.status().message()),
              HasSubstr("peers.transfer_encoding: unknown transfer encoding 'gzip'"));

  // A config built in code with a value outside the enum is refused by validation.
  ParsedCommandLine defaults = Parse({});
  ASSERT_TRUE(defaults.config) << defaults.output;
  ServiceConfig config = *defaults.config;
  ASSERT_OK(ValidateConfig(config));
  config.peers.transfer_encoding = static_cast<PeerTransferEncoding>(7);
  Status bad = ValidateConfig(config);
  EXPECT_THAT(bad, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(bad.message()), HasSubstr("peers.transfer_encoding"));
}

TEST(Config, ReplicationModeIsParsedOnceAndBadValuesAreRefused) {
  for (ReplicationMode m : {ReplicationMode::kAsync, ReplicationMode::kSync}) {
    EXPECT_THAT(ParseReplicationMode(ReplicationModeName(m)), IsOkAndHolds(m));
  }
  EXPECT_THAT(ParseReplicationMode("SYNC"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseReplicationMode(""), StatusIs(absl::StatusCode::kInvalidArgument));

  ParsedCommandLine defaults = Parse({});
  ASSERT_TRUE(defaults.config) << defaults.output;
  EXPECT_EQ(defaults.config->cluster.replication_mode, ReplicationMode::kAsync);
  ParsedCommandLine p = Parse({"--replication-mode", "sync"});
  ASSERT_TRUE(p.config) << p.output;
  EXPECT_EQ(p.config->cluster.replication_mode, ReplicationMode::kSync);
  auto yaml = ApplyYaml("cluster:\n  replication_mode: sync\n", ServiceConfig{});
  ASSERT_OK(yaml);
  EXPECT_EQ(yaml->cluster.replication_mode, ReplicationMode::kSync);

  p = Parse({"--replication-mode", "quorum"});
  EXPECT_FALSE(p.config);
  EXPECT_EQ(p.exit_code, 2);
  EXPECT_THAT(p.output,
              HasSubstr("--replication-mode: unknown replication mode 'quorum' (async or sync)"));
  auto bad_yaml = ApplyYaml("cluster:\n  replication_mode: Sync\n", ServiceConfig{});
  ASSERT_THAT(bad_yaml, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(bad_yaml.status().message()),
              HasSubstr("cluster.replication_mode: unknown replication mode 'Sync'"));

  // A config built in code with a value outside the enum is refused by validation.
  ServiceConfig config = *defaults.config;
  ASSERT_OK(ValidateConfig(config));
  config.cluster.replication_mode = static_cast<ReplicationMode>(9);
  Status bad = ValidateConfig(config);
  EXPECT_THAT(bad, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(bad.message()), HasSubstr("cluster.replication_mode"));
}

TEST(Config, SsdTierEncodingBadValuesGiveClearErrors) {
  auto level7 = ApplyYaml("tiers:\n  ssd:\n    level: 7\n", ServiceConfig{});
  ASSERT_THAT(level7, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(level7.status().message()), HasSubstr("tiers.ssd.level"));
  EXPECT_THAT(std::string(level7.status().message()), HasSubstr("'7' is not a CacheGen level"));

  auto zstd = ApplyYaml("tiers:\n  ssd:\n    encoding: zstd\n", ServiceConfig{});
  ASSERT_THAT(zstd, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(
      std::string(zstd.status().message()),
      HasSubstr("tiers.ssd.encoding: unknown encoding 'zstd' (raw, cachegen, kvq or auto)"));

  auto remote = ApplyYaml("tiers:\n  remote:\n    encoding: cachegen\n", ServiceConfig{});
  ASSERT_THAT(remote, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(remote.status().message()), HasSubstr("tiers.remote.encoding"));

  ParsedCommandLine p = Parse({"--ssd-encoding-level", "0"});
  EXPECT_FALSE(p.config);
  EXPECT_EQ(p.exit_code, 2);
  EXPECT_THAT(p.output, HasSubstr("--ssd-encoding-level: '0' is not a CacheGen level"));

  p = Parse({"--ssd-encoding", "cachegen", "--ssd-capacity", "0"});
  EXPECT_FALSE(p.config);
  EXPECT_THAT(p.output, HasSubstr("tiers.ssd.encoding"));
  EXPECT_THAT(p.output, HasSubstr("SSD tier is disabled"));
}

TEST(Config, MalformedYamlAndWrongShapes) {
  auto bad_yaml = ApplyYaml("storage: [1, 2", ServiceConfig{});
  ASSERT_THAT(bad_yaml, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(bad_yaml.status().message()), HasSubstr("not valid YAML"));
  auto list_value = ApplyYaml("listen: [a, b]\n", ServiceConfig{});
  ASSERT_THAT(list_value, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(list_value.status().message()), HasSubstr("listen: expected a scalar"));
  auto scalar_root = ApplyYaml("just text", ServiceConfig{});
  EXPECT_THAT(scalar_root, StatusIs(absl::StatusCode::kInvalidArgument));
  auto empty = ApplyYaml("", ServiceConfig{});
  EXPECT_OK(empty);
}

TEST(Config, MissingConfigFileIsAUsageError) {
  ParsedCommandLine p = Parse({"--config", "/nonexistent/kvstash.yaml"});
  EXPECT_FALSE(p.config);
  EXPECT_NE(p.exit_code, 0);
  EXPECT_THAT(p.output, HasSubstr("/nonexistent/kvstash.yaml"));
}

TEST(Config, HelpAndPrintDefaultExitZero) {
  ParsedCommandLine help = Parse({"--help"});
  EXPECT_FALSE(help.config);
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.output, HasSubstr("--ssd-capacity"));
  ParsedCommandLine dump = Parse({"--print-default-config"});
  EXPECT_FALSE(dump.config);
  EXPECT_EQ(dump.exit_code, 0);
  EXPECT_EQ(dump.output, std::string(EmbeddedDefaultConfigYaml()));
}

}  // namespace
}  // namespace kvstash::cachesvc

namespace kvstash::cachesvc {
namespace {

TEST(Config, PeersFromFlagsAndYaml) {
  const char* argv[] = {"cachesvc",
                        "--listen",
                        "127.0.0.1:0",
                        "--peer",
                        "10.0.0.1:7100",
                        "--peer",
                        "node-b.example:7100",
                        "--peer-secret-file",
                        "/etc/secret",
                        "--peer-timeout-ms",
                        "500",
                        "--remote-promote",
                        "false",
                        "--peer-data-plane",
                        "grpc",
                        "--peer-ucx-fetch",
                        "false"};
  EXPECT_EQ(ServiceConfig{}.peers.ucx_fetch, "auto");
  ParsedCommandLine p = ParseCommandLine(sizeof argv / sizeof argv[0], argv);
  ASSERT_TRUE(p.config.has_value()) << p.output;
  EXPECT_THAT(p.config->peers.addresses,
              ::testing::ElementsAre("10.0.0.1:7100", "node-b.example:7100"));
  EXPECT_EQ(p.config->peers.secret_file, "/etc/secret");
  EXPECT_EQ(p.config->peers.timeout_ms, 500u);
  EXPECT_FALSE(p.config->peers.promote);
  EXPECT_EQ(p.config->peers.data_plane, "grpc");
  EXPECT_EQ(p.config->peers.ucx_fetch, "false");
  EXPECT_EQ(ServiceConfig{}.peers.ucx_connect, "auto");
  ParsedCommandLine connect = Parse({"--peer-ucx-connect", "reader_first"});
  ASSERT_TRUE(connect.config.has_value()) << connect.output;
  EXPECT_EQ(connect.config->peers.ucx_connect, "reader_first");
  auto connect_yaml = ApplyYaml("peers:\n  ucx_connect: serving_first\n", ServiceConfig{});
  ASSERT_OK(connect_yaml);
  EXPECT_EQ(connect_yaml->peers.ucx_connect, "serving_first");

  auto yaml = ApplyYaml("peers:\n  addresses: [a:1, b:2]\n  secret_file: /s\n", ServiceConfig{});
  ASSERT_OK(yaml);
  EXPECT_THAT(yaml->peers.addresses, ::testing::ElementsAre("a:1", "b:2"));
  auto joined = ApplyYaml("peers:\n  addresses: a:1,b:2\n", ServiceConfig{});
  ASSERT_OK(joined);
  EXPECT_EQ(joined->peers.addresses.size(), 2u);
}

TEST(Config, BadPeerSettingsAreRefusedWithTheirName) {
  auto unix_peer = ApplyYaml("peers:\n  addresses: [unix:///x]\n", ServiceConfig{});
  EXPECT_THAT(unix_peer, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(unix_peer.status().message()), ::testing::HasSubstr("HOST:PORT"));
  ServiceConfig no_secret;
  no_secret.peers.addresses = {"a:1"};
  Status s = ValidateConfig(no_secret);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("peers.secret_file"));
  ServiceConfig bad_plane;
  bad_plane.peers.data_plane = "carrier-pigeon";
  EXPECT_THAT(std::string(ValidateConfig(bad_plane).message()),
              ::testing::HasSubstr("peers.data_plane"));
  ServiceConfig bad_fetch;
  bad_fetch.peers.ucx_fetch = "sometimes";
  EXPECT_THAT(std::string(ValidateConfig(bad_fetch).message()),
              ::testing::HasSubstr("peers.ucx_fetch"));
  ServiceConfig in_place;
  in_place.peers.ucx_fetch = "inplace";
  EXPECT_OK(ValidateConfig(in_place));
  ServiceConfig bad_connect;
  bad_connect.peers.ucx_connect = "whoever";
  EXPECT_THAT(ValidateConfig(bad_connect), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(ValidateConfig(bad_connect).message()),
              ::testing::HasSubstr("peers.ucx_connect"));
  ServiceConfig handoff;
  handoff.peers.handoff_ms = 10'000;
  handoff.peers.max_handoff_ms = 1'000;
  EXPECT_THAT(std::string(ValidateConfig(handoff).message()),
              ::testing::HasSubstr("peers.handoff_ms"));
  const char* argv[] = {"cachesvc", "--peer-timeout-ms", "5"};
  ParsedCommandLine p = ParseCommandLine(3, argv);
  EXPECT_FALSE(p.config.has_value());
  EXPECT_THAT(p.output, ::testing::HasSubstr("--peer-timeout-ms"));
}

TEST(Config, ReplicateOffersDefaultOnAndParsed) {
  EXPECT_TRUE(ServiceConfig{}.cluster.replicate_offers);
  ParsedCommandLine defaults = Parse({});
  ASSERT_TRUE(defaults.config) << defaults.output;
  EXPECT_TRUE(defaults.config->cluster.replicate_offers);
  ParsedCommandLine off = Parse({"--replicate-offers", "false"});
  ASSERT_TRUE(off.config) << off.output;
  EXPECT_FALSE(off.config->cluster.replicate_offers);
  auto yaml = ApplyYaml("cluster:\n  replicate_offers: false\n", ServiceConfig{});
  ASSERT_OK(yaml);
  EXPECT_FALSE(yaml->cluster.replicate_offers);
  EXPECT_THAT(ApplyYaml("cluster:\n  replicate_offers: sometimes\n", ServiceConfig{}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(Config, CheckConfigOnlyChecks) {
  ParsedCommandLine ok = Parse({"--check-config", "--listen", "127.0.0.1:7000"});
  EXPECT_FALSE(ok.config);
  EXPECT_EQ(ok.exit_code, 0);
  EXPECT_EQ(ok.output, "cachesvc: configuration OK\n");
  // Invalid: exit 1 with the message, from flags or from the file.
  ParsedCommandLine bad =
      Parse({"--check-config", "--listen", "unix:///a.sock", "--local-listen", "unix:///b.sock"});
  EXPECT_FALSE(bad.config);
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_THAT(bad.output, HasSubstr("two unix listeners are not supported"));
  std::string file = WriteTemp("listen: unix:///run/kv.sock\ncluster:\n  etcd: [http://e:2379]\n");
  ParsedCommandLine member = Parse({"--check-config", "--config", file});
  EXPECT_EQ(member.exit_code, 1);
  EXPECT_THAT(member.output, HasSubstr("peers.secret_file"));
  std::filesystem::remove(file);
  ParsedCommandLine connect = Parse({"--check-config", "--peer-ucx-connect", "reader-first"});
  EXPECT_EQ(connect.exit_code, 1);
  EXPECT_THAT(connect.output, HasSubstr("peers.ucx_connect"));
  ParsedCommandLine unknown = Parse({"--check-config", "--no-such-flag"});  // a usage error
  EXPECT_FALSE(unknown.config);
  EXPECT_NE(unknown.exit_code, 0);
}

TEST(Config, LocalListenIsAUnixListenerBesideATcpOne) {
  EXPECT_TRUE(ServiceConfig{}.local_listen.empty());
  ParsedCommandLine flags =
      Parse({"--listen", "127.0.0.1:7000", "--local-listen", "unix:///run/kvstash/kv.sock"});
  ASSERT_TRUE(flags.config) << flags.output;
  EXPECT_EQ(flags.config->local_listen, "unix:///run/kvstash/kv.sock");
  auto yaml = ApplyYaml("listen: 127.0.0.1:7000\nlocal_listen: unix:///tmp/kv-local.sock\n",
                        ServiceConfig{});
  ASSERT_OK(yaml);
  EXPECT_EQ(yaml->local_listen, "unix:///tmp/kv-local.sock");
  EXPECT_OK(ValidateConfig(*yaml));

  // A cluster member: TCP for peers, the unix socket for same-node engines.
  std::string secret = WriteTemp("kvstash-cluster-secret-0123456789\n");
  ParsedCommandLine member = Parse({"--listen", "0.0.0.0:7100", "--insecure-tcp", "--local-listen",
                                    "unix:///run/kvstash/kv.sock", "--etcd", "http://etcd:2379",
                                    "--peer-secret-file", secret});
  ASSERT_TRUE(member.config) << member.output;
  EXPECT_EQ(member.config->listen, "0.0.0.0:7100");
  EXPECT_EQ(member.config->local_listen, "unix:///run/kvstash/kv.sock");
  // ... and without a TCP listener it is still refused, naming --local-listen as the way out.
  ParsedCommandLine unix_member = Parse({"--listen", "unix:///run/kvstash/kv.sock", "--etcd",
                                         "http://etcd:2379", "--peer-secret-file", secret});
  EXPECT_EQ(unix_member.exit_code, 2);
  EXPECT_THAT(unix_member.output, HasSubstr("a cluster member needs a TCP listener"));
  EXPECT_THAT(unix_member.output, HasSubstr("--local-listen"));
  std::filesystem::remove(secret);

  struct Case {
    std::vector<std::string> args;
    std::string expect;
  };
  const std::vector<Case> refused = {
      {{"--listen", "127.0.0.1:7000", "--local-listen", "127.0.0.1:7001"},
       "local_listen: '127.0.0.1:7001' is not a unix socket"},
      {{"--listen", "127.0.0.1:7000", "--local-listen", "0.0.0.0:7001", "--insecure-tcp"},
       "is not a unix socket (unix:///path)"},
      {{"--listen", "unix:///tmp/a.sock", "--local-listen", "unix:///tmp/b.sock"},
       "two unix listeners are not supported"},
      {{"--listen", "127.0.0.1:7000", "--local-listen", "unix://"},
       "local_listen: unix socket path is empty"},
      {{"--listen", "127.0.0.1:7000", "--local-listen", "unix://" + std::string(200, 'x')},
       "local_listen: unix socket path is longer than 107 bytes"},
  };
  for (const Case& c : refused) {
    ParsedCommandLine p = Parse(c.args);
    EXPECT_FALSE(p.config) << c.expect;
    EXPECT_EQ(p.exit_code, 2) << c.expect;
    EXPECT_THAT(p.output, HasSubstr(c.expect));
  }
  ServiceConfig tcp_local;
  tcp_local.listen = "127.0.0.1:1";
  tcp_local.local_listen = "[::1]:2";
  EXPECT_THAT(ValidateConfig(tcp_local), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(Config, TlsFilesGoTogetherAndPlainTcpBeyondLoopbackIsOptIn) {
  ParsedCommandLine tls = Parse({"--listen", "0.0.0.0:7000", "--tls-cert", "c.pem", "--tls-key",
                                 "k.pem", "--tls-ca", "ca.pem", "--tokens-file", "t.txt"});
  ASSERT_TRUE(tls.config) << tls.output;
  EXPECT_TRUE(tls.config->tls.enabled());
  EXPECT_EQ(tls.config->tls.ca_file, "ca.pem");
  EXPECT_EQ(tls.config->tokens_file, "t.txt");
  EXPECT_FALSE(tls.config->insecure_tcp);

  ParsedCommandLine partial = Parse({"--listen", "127.0.0.1:7000", "--tls-cert", "c.pem"});
  EXPECT_EQ(partial.exit_code, 2);
  EXPECT_THAT(partial.output, HasSubstr("go together"));

  for (const char* address : {"0.0.0.0:7000", "10.1.2.3:7000", "[::]:7000", "node-a:7000"}) {
    ParsedCommandLine plain = Parse({"--listen", address});
    EXPECT_EQ(plain.exit_code, 2) << address;
    EXPECT_THAT(plain.output, HasSubstr("--insecure-tcp")) << address;
    ParsedCommandLine opted = Parse({"--listen", address, "--insecure-tcp"});
    EXPECT_TRUE(opted.config) << address << ": " << opted.output;
  }
  for (const char* address : {"127.0.0.1:0", "localhost:7000", "[::1]:7000"}) {
    EXPECT_TRUE(Parse({"--listen", address}).config) << address;
  }
  auto yaml = ApplyYaml("listen: 0.0.0.0:1\ntls:\n  insecure_tcp: true\n", ServiceConfig{});
  ASSERT_OK(yaml);
  EXPECT_TRUE(yaml->insecure_tcp);
  EXPECT_OK(ValidateConfig(*yaml));
}

}  // namespace
}  // namespace kvstash::cachesvc
