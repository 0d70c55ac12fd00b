// gRPC's own per-call floor on this machine, without cachesvc: a minimal async generic server
// that answers each call with N bytes from memory, and a client that times whole calls (request,
// reply, status), both with or without polling gRPC before blocking. It bounds what the service's
// byte-stream path could reach if its gRPC side were driven the same way, e.g. against Redis's
// round trip (service_paths_bench).
//   ./build/release/bench/service/grpc_floor_bench --rounds 2 --out /tmp/grpc_floor.json
// The server runs as a child process (this binary with --serve).
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "child_process.h"
#include "kvstash/common/byte_size.h"
#include "kvstash/proto/completion_poll.h"

namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kMaxReply = size_t{64} << 20;

bool NextEvent(grpc::CompletionQueue* cq, void** tag, bool* ok, int poll_us) {
  return kvstash::NextEvent(cq, tag, ok, std::chrono::microseconds(poll_us));
}

std::string Text(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  (void)buffer.Dump(&slices);
  std::string text;
  for (const auto& s : slices) text.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return text;
}

// One call on the server: read the request (the reply size in decimal), write the reply, finish.
struct ServerCall {
  grpc::GenericServerContext ctx;
  grpc::GenericServerAsyncReaderWriter stream{&ctx};
  grpc::ByteBuffer request;
  enum { kNew, kRead, kWritten, kFinished } state = kNew;
};

int Serve(const std::string& address, int poll_us) {
  static std::vector<char> reply_bytes(kMaxReply, 'k');
  grpc::AsyncGenericService service;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials());
  builder.RegisterAsyncGenericService(&service);
  builder.SetMaxSendMessageSize(static_cast<int>(kMaxReply));
  std::unique_ptr<grpc::ServerCompletionQueue> cq = builder.AddCompletionQueue();
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) return 1;
  auto await_call = [&] {
    auto* call = new ServerCall;
    service.RequestCall(&call->ctx, &call->stream, cq.get(), cq.get(), call);
  };
  await_call();
  void* tag = nullptr;
  bool ok = false;
  while (NextEvent(cq.get(), &tag, &ok, poll_us)) {
    auto* call = static_cast<ServerCall*>(tag);
    if (!ok && call->state == ServerCall::kNew) return 0;  // shutting down
    if (!ok || call->state == ServerCall::kFinished) {
      delete call;
      continue;
    }
    switch (call->state) {
      case ServerCall::kNew:
        await_call();
        call->state = ServerCall::kRead;
        call->stream.Read(&call->request, call);
        break;
      case ServerCall::kRead: {
        const size_t n =
            std::min<size_t>(std::strtoull(Text(call->request).c_str(), nullptr, 10), kMaxReply);
        grpc::Slice slice(reply_bytes.data(), n, grpc::Slice::STATIC_SLICE);
        call->state = ServerCall::kWritten;
        call->stream.Write(grpc::ByteBuffer(&slice, 1), call);
        break;
      }
      case ServerCall::kWritten:
        call->state = ServerCall::kFinished;
        call->stream.Finish(grpc::Status::OK, call);
        break;
      case ServerCall::kFinished:
        break;
    }
  }
  return 0;
}

// p50 and p90 in ms of `calls` whole calls of `bytes` each (the first 50 not counted).
struct Latency {
  double p50 = 0, p90 = 0;
};

Latency TimeCalls(grpc::GenericStub* stub, size_t bytes, int calls, int poll_us, bool* failed) {
  std::vector<double> ms;
  std::vector<uint8_t> reader(bytes);
  for (int i = 0; i < calls + 50; ++i) {
    const auto start = Clock::now();
    grpc::ClientContext ctx;
    ctx.set_initial_metadata_corked(true);
    grpc::CompletionQueue cq;
    auto call = stub->PrepareCall(&ctx, "/floor.Floor/Get", &cq);
    call->StartCall(nullptr);
    void* tag = nullptr;
    bool ok = false;
    grpc::Slice request(std::to_string(bytes));
    call->Write(grpc::ByteBuffer(&request, 1), grpc::WriteOptions().set_last_message(), nullptr);
    (void)NextEvent(&cq, &tag, &ok, poll_us);
    grpc::ByteBuffer reply;
    call->Read(&reply, nullptr);
    (void)NextEvent(&cq, &tag, &ok, poll_us);
    std::vector<grpc::Slice> slices;
    size_t got = 0;
    if (ok && reply.Dump(&slices).ok()) {
      for (const auto& s : slices) {
        std::memcpy(reader.data() + got, s.begin(), std::min(s.size(), bytes - got));
        got += s.size();
      }
    }
    grpc::Status status;
    call->Finish(&status, nullptr);
    (void)NextEvent(&cq, &tag, &ok, poll_us);
    kvstash::ShutdownAndDrain(&cq);
    if (!status.ok() || got != bytes) {
      std::fprintf(stderr, "grpc_floor_bench: call failed (%s, %zu of %zu bytes)\n",
                   status.error_message().c_str(), got, bytes);
      *failed = true;
      return {};
    }
    if (i >= 50)
      ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms[ms.size() * 9 / 10]};
}

int Run(int argc, char** argv) {
  CLI::App app{"gRPC's per-call floor: async generic server and client, polling or blocking"};
  std::string serve;
  int server_poll_us = 0;
  std::vector<std::string> sizes = {"4KiB", "256KiB", "2MiB"};
  int calls = 2000;
  int rounds = 2;
  std::string out;
  app.add_option("--serve", serve, "run the server on this address (internal)");
  app.add_option("--server-poll-us", server_poll_us, "with --serve: poll window")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--sizes", sizes, "reply sizes")->capture_default_str();
  app.add_option("--calls", calls, "timed calls per size and setting")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--rounds", rounds, "rounds of all settings")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--out", out, "JSON results file");
  CLI11_PARSE(app, argc, argv);
  if (!serve.empty()) return Serve(serve, server_poll_us);

  std::vector<size_t> bytes;
  for (const auto& text : sizes) {
    auto parsed = kvstash::ParseByteSize(text);
    if (!parsed.ok() || *parsed == 0 || *parsed > kMaxReply) {
      std::fprintf(stderr, "grpc_floor_bench: bad size %s\n", text.c_str());
      return 2;
    }
    bytes.push_back(*parsed);
  }
  char dir_template[] = "/tmp/grpc_floor_XXXXXX";
  const char* dir = mkdtemp(dir_template);
  if (dir == nullptr) return 1;
  const std::string address = std::string("unix://") + dir + "/floor.sock";
  struct Setting {
    const char* name;
    int server_poll_us, client_poll_us;
  };
  const Setting settings[] = {{"both block", 0, 0},
                              {"client polls 200 us", 0, 200},
                              {"both poll (server 1000 us, client 200 us)", 1000, 200}};
  nlohmann::json results = nlohmann::json::array();
  std::printf("| round | setting | size | p50 ms | p90 ms |\n|---|---|---|---:|---:|\n");
  bool failed = false;
  for (int round = 1; round <= rounds && !failed; ++round) {
    for (const Setting& setting : settings) {
      pid_t server =
          kvstash::bench::Spawn({"/proc/self/exe", "--serve", address, "--server-poll-us",
                                 std::to_string(setting.server_poll_us)},
                                std::string(dir) + "/server.log");
      grpc::ChannelArguments args;
      args.SetMaxReceiveMessageSize(static_cast<int>(kMaxReply));
      auto channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
      if (server < 0 ||
          !channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
        std::fprintf(stderr, "grpc_floor_bench: the server did not come up\n");
        kvstash::bench::Reap(server, SIGKILL);
        return 1;
      }
      grpc::GenericStub stub(channel);
      for (size_t n : bytes) {
        Latency l = TimeCalls(&stub, n, calls, setting.client_poll_us, &failed);
        if (failed) break;
        std::printf("| %d | %s | %s | %.3f | %.3f |\n", round, setting.name,
                    kvstash::FormatByteSize(n).c_str(), l.p50, l.p90);
        std::fflush(stdout);
        results.push_back({{"round", round},
                           {"server_poll_us", setting.server_poll_us},
                           {"client_poll_us", setting.client_poll_us},
                           {"bytes", n},
                           {"p50_ms", l.p50},
                           {"p90_ms", l.p90}});
      }
      kvstash::bench::Reap(server, SIGTERM);
      if (failed) break;
    }
  }
  std::remove((std::string(dir) + "/server.log").c_str());
  rmdir(dir);
  if (!out.empty()) {
    nlohmann::json doc = {{"bench", "grpc_floor"},
                          {"calls", calls},
                          {"results", results},
                          {"command", "grpc_floor_bench --rounds " + std::to_string(rounds)}};
    std::ofstream(out) << doc.dump(2) << "\n";
  }
  return failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {  // CLI11 and nlohmann::json report misuse by throwing
    std::fprintf(stderr, "grpc_floor_bench: %s\n", e.what());
    return 1;
  }
}
