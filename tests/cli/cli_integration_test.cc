// The `kvstash` store subcommands against the real cachesvc binary.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "kvstash/common/crc32c.h"
#include "kvstash/common/object_header.h"
#include "service_process.h"
#include "test_objects.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using ::testing::HasSubstr;

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
}

void WriteFile(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto svc = ServiceProcess::Start(dir_.path());
    ASSERT_OK(svc);
    svc_ = std::move(*svc);
  }
  int Kvstash(std::vector<std::string> args, std::string* out) {
    args.insert(args.begin(), BinaryPath("cli/kvstash"));
    args.emplace_back("--target");
    args.push_back(svc_->target());
    return RunProgram(args, out);
  }
  TempDir dir_;
  std::unique_ptr<ServiceProcess> svc_;
};

TEST_F(CliTest, PutGetStatLsRmRoundTrip) {
  std::string in = dir_.path() + "/notes.txt";
  std::string out_path = dir_.path() + "/back.txt";
  std::vector<uint8_t> text = TestPayload(1, 123'457);  // an arbitrary file, odd size
  WriteFile(in, text);
  std::string out;
  ASSERT_EQ(Kvstash({"put", "my-notes", in}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("wrapped in the file layout"));
  EXPECT_THAT(out, HasSubstr("via shared memory"));
  ASSERT_EQ(Kvstash({"get", "my-notes", out_path}, &out), 0) << out;
  EXPECT_EQ(ReadFile(out_path), text);
  // The stream path gives the same bytes.
  ASSERT_EQ(Kvstash({"get", "my-notes", out_path + ".2", "--no-shm"}, &out), 0) << out;
  EXPECT_EQ(ReadFile(out_path + ".2"), text);

  ASSERT_EQ(Kvstash({"put", "my-notes", in}, &out), 1);
  EXPECT_THAT(out, HasSubstr("ALREADY_EXISTS"));

  ASSERT_EQ(Kvstash({"stat"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("shared memory attached (control calls on the local channel)"));
  EXPECT_THAT(out, HasSubstr("cpu"));
  ASSERT_EQ(Kvstash({"stat", "my-notes", "other"}, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("tier=cpu"));
  EXPECT_THAT(out, HasSubstr("other  absent"));
  EXPECT_THAT(out, HasSubstr("longest present prefix: 1 of 2"));

  ASSERT_EQ(Kvstash({"ls"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("1 objects"));
  // ls prints FP/TH keys that name the object exactly.
  std::string line = out.substr(out.find('\n') + 1);
  std::string fpth = line.substr(0, 65);
  ASSERT_EQ(Kvstash({"get", fpth, out_path + ".3"}, &out), 0) << out;
  EXPECT_EQ(ReadFile(out_path + ".3"), text);
  ASSERT_EQ(Kvstash({"ls", "--namespace", "other"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("0 objects"));

  ASSERT_EQ(Kvstash({"rm", "my-notes", "never-stored"}, &out), 1);
  EXPECT_THAT(out, HasSubstr("removed my-notes"));
  EXPECT_THAT(out, HasSubstr("never-stored: NOT_FOUND"));
  ASSERT_EQ(Kvstash({"get", "my-notes", out_path}, &out), 1);
  EXPECT_THAT(out, HasSubstr("NOT_FOUND"));
}

TEST_F(CliTest, ObjectFilesKeepTheirLayoutAndRoundTripExactly) {
  ObjectInfo info = SmolChunkInfo();
  auto payload = TestPayload(2, info.payload_bytes);
  info = WithCrc(info, payload);
  auto header = EncodeObjectHeader(info);
  ASSERT_OK(header);
  std::vector<uint8_t> file(header->begin(), header->end());
  file.insert(file.end(), payload.begin(), payload.end());
  std::string in = dir_.path() + "/chunk.kvo";
  WriteFile(in, file);
  std::string out;
  ASSERT_EQ(Kvstash({"put", "chunk-0", in, "--namespace", "t1", "--durable"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("object 30L x 256tok x heads[0,3)/3 x 64 f16 raw"));
  ASSERT_EQ(Kvstash({"get", "chunk-0", dir_.path() + "/back.kvo", "--namespace", "t1"}, &out), 0)
      << out;
  EXPECT_EQ(ReadFile(dir_.path() + "/back.kvo"), file);
  // Another namespace cannot see it.
  ASSERT_EQ(Kvstash({"get", "chunk-0", dir_.path() + "/x", "--namespace", "t2"}, &out), 1);
  EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/x"));
  // A file with an object header but a damaged payload is refused, not stored.
  file[5000] ^= 1;
  WriteFile(in, file);
  ASSERT_EQ(Kvstash({"put", "chunk-1", in}, &out), 1);
  EXPECT_THAT(out, HasSubstr("fails the crc32c"));
}

// get --cachegen: streamed as a remote client would, accepting a CacheGen transfer.
TEST_F(CliTest, GetAcceptingCacheGenReportsTheWireBytes) {
  const std::string kv = dir_.path() + "/kv.kvo", back = dir_.path() + "/back.kvo";
  std::string out;
  ASSERT_EQ(RunProgram({BinaryPath("cli/kvstash"), "synth", kv, "--layers", "30", "--tokens", "256",
                        "--kv-heads", "3", "--head-dim", "64"},
                       &out),
            0)
      << out;
  ASSERT_EQ(Kvstash({"put", "kv", kv}, &out), 0) << out;
  ASSERT_EQ(Kvstash({"get", "kv", back, "--cachegen", "2"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("on the wire for 5.6 MiB (CacheGen, lossy,"));
  EXPECT_EQ(ReadFile(back).size(), ReadFile(kv).size());
  // Bytes the codec does not take come back raw and exact.
  ObjectInfo info = SmolChunkInfo();
  auto noise = TestPayload(3, info.payload_bytes);
  auto header = EncodeObjectHeader(WithCrc(info, noise));
  ASSERT_OK(header);
  std::vector<uint8_t> file(header->begin(), header->end());
  file.insert(file.end(), noise.begin(), noise.end());
  WriteFile(dir_.path() + "/noise.kvo", file);
  ASSERT_EQ(Kvstash({"put", "noise", dir_.path() + "/noise.kvo"}, &out), 0) << out;
  ASSERT_EQ(Kvstash({"get", "noise", back, "--cachegen", "0"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("(raw, 1.00x)"));
  EXPECT_EQ(ReadFile(back), file);
  EXPECT_NE(Kvstash({"get", "kv", back, "--cachegen", "4"}, &out), 0);
  EXPECT_THAT(out, HasSubstr("--cachegen"));
}

TEST_F(CliTest, BenchAndUsageErrors) {
  std::string out;
  ASSERT_EQ(Kvstash({"bench", "--size", "256KiB", "--count", "4"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("shm"));
  EXPECT_THAT(out, HasSubstr("stream"));
  EXPECT_NE(Kvstash({"bench", "--path", "carrier-pigeon"}, &out), 0);
  ASSERT_EQ(RunProgram({BinaryPath("cli/kvstash"), "stat", "--target",
                        "unix://" + dir_.path() + "/nobody.sock", "--timeout-ms", "300"},
                       &out),
            1);
  EXPECT_THAT(out, HasSubstr("UNAVAILABLE"));
}

// Store options go before or after the subcommand (as kubectl's): `kvstash --target X put KEY
// FILE` used to fail with "arguments were not expected".
TEST_F(CliTest, StoreOptionsBeforeOrAfterTheSubcommand) {
  const std::string kvstash = BinaryPath("cli/kvstash");
  const std::string in = dir_.path() + "/before.txt", back = dir_.path() + "/back.txt";
  const std::vector<uint8_t> text = TestPayload(4, 4'321);
  WriteFile(in, text);
  std::string out;
  ASSERT_EQ(
      RunProgram({kvstash, "--target", svc_->target(), "--namespace", "t9", "put", "k", in}, &out),
      0)
      << out;
  // Mixed: the target before, the namespace after.
  ASSERT_EQ(RunProgram({kvstash, "--target", svc_->target(), "get", "k", back, "--namespace", "t9"},
                       &out),
            0)
      << out;
  EXPECT_EQ(ReadFile(back), text);
  // The namespace really applied: without it the key is another object.
  EXPECT_EQ(RunProgram({kvstash, "get", "k", back + ".2", "--target", svc_->target()}, &out), 1);
  EXPECT_THAT(out, HasSubstr("NOT_FOUND"));
  ASSERT_EQ(RunProgram({kvstash, "--target", svc_->target(), "--namespace", "t9", "ls"}, &out), 0)
      << out;
  EXPECT_THAT(out, HasSubstr("1 objects"));
  // After the subcommand wins over before it.
  ASSERT_EQ(RunProgram({kvstash, "--namespace", "nobody", "ls", "--namespace", "t9", "--target",
                        svc_->target()},
                       &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("1 objects"));
  // Before a subcommand that does not take them they would be ignored: a usage error instead.
  EXPECT_EQ(
      RunProgram({kvstash, "--target", svc_->target(), "synth", dir_.path() + "/s.kvo"}, &out), 2);
  EXPECT_THAT(out, HasSubstr("store options"));
}

// A multi-tenant cachesvc (tokens file): a read-only token maps its tenant's arena only when the
// command asks for a read-only attach (--read-only, also spelt --attach-read-only), reads through
// it, and its writes are refused by the service.
class CliTenantTest : public ::testing::Test {
 protected:
  static constexpr char kWriter[] = "cli-alpha-writer-token-0123456789";
  static constexpr char kReader[] = "cli-alpha-reader-token-0123456789";

  void SetUp() override {
    std::ofstream(dir_.path() + "/tokens.txt") << "token " << kWriter << " alpha\n"
                                               << "token " << kReader << " alpha ro\n"
                                               << "quota alpha cpu=4MiB\n";
    std::ofstream(writer_) << kWriter << "\n";
    std::ofstream(reader_) << kReader << "\n";
    ServiceOptions opts;
    opts.extra_args = {"--tokens-file", dir_.path() + "/tokens.txt"};
    ASSERT_OK_AND_ASSIGN(svc_, ServiceProcess::Start(dir_.path(), opts));
  }
  int Kvstash(std::vector<std::string> args, const std::string& token_file, std::string* out) {
    args.insert(args.begin(), BinaryPath("cli/kvstash"));
    args.insert(args.end(), {"--target", svc_->target(), "--token-file", token_file});
    return RunProgram(args, out);
  }
  TempDir dir_;
  const std::string writer_ = dir_.path() + "/writer.token";
  const std::string reader_ = dir_.path() + "/reader.token";
  std::unique_ptr<ServiceProcess> svc_;
};

TEST_F(CliTenantTest, ReadOnlyAttachWithAReadOnlyToken) {
  const std::string in = dir_.path() + "/in.txt", back = dir_.path() + "/back.txt";
  const std::vector<uint8_t> text = TestPayload(5, 54'321);
  WriteFile(in, text);
  std::string out;
  ASSERT_EQ(Kvstash({"put", "doc", in}, writer_, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("via shared memory"));

  // Without asking for a read-only attach the reader gets no mapping (its writable attach is
  // refused), so it reads over the byte stream.
  ASSERT_EQ(Kvstash({"stat"}, reader_, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("shared memory not attached"));
  ASSERT_EQ(Kvstash({"stat", "--read-only"}, reader_, &out), 0) << out;
  EXPECT_THAT(out,
              HasSubstr("shared memory attached read-only (control calls on the local channel)"));
  ASSERT_EQ(Kvstash({"get", "doc", back, "--read-only"}, reader_, &out), 0) << out;
  EXPECT_EQ(ReadFile(back), text);
  // The other spelling, before the subcommand.
  ASSERT_EQ(RunProgram({BinaryPath("cli/kvstash"), "--attach-read-only", "--target", svc_->target(),
                        "--token-file", reader_, "stat", "doc"},
                       &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("tier=cpu"));

  // Writes: the read-only mapping sends the put over the byte stream, which the service refuses
  // for a read-only token; so is a delete. The object is unchanged.
  ASSERT_EQ(Kvstash({"put", "doc2", in, "--read-only"}, reader_, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("PERMISSION_DENIED"));
  ASSERT_EQ(Kvstash({"rm", "doc", "--read-only"}, reader_, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("PERMISSION_DENIED"));
  // A writer that asks for a read-only attach still reads through the mapping and puts over
  // the byte stream.
  ASSERT_EQ(Kvstash({"put", "doc3", in, "--read-only"}, writer_, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("via gRPC stream"));
  ASSERT_EQ(Kvstash({"get", "doc", back + ".2", "--read-only"}, reader_, &out), 0) << out;
  EXPECT_EQ(ReadFile(back + ".2"), text);
}

}  // namespace
}  // namespace kvstash::testing
