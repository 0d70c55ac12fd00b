// A client that dies mid-put: started by kv_client_test, it begins a put, prints "MIDWAY" and
// then waits to be killed with SIGKILL.
//   vanishing_client TARGET stream|shm|shm-grpc KEY_INDEX
// shm: a shared-memory put whose control calls use the local control channel (the service aborts
// the reservation when the client's connections close); shm-grpc: the same over gRPC only (the
// reservation expires after its 300 ms lease).
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "kvstash/client/kv_client.h"
#include "kvstash/proto/convert.h"
#include "kvstash/v1/kvstash.grpc.pb.h"
#include "test_objects.h"

using namespace kvstash;

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: vanishing_client TARGET stream|shm|shm-grpc KEY_INDEX\n");
    return 2;
  }
  std::string target = argv[1];
  std::string mode = argv[2];
  uint64_t index = std::strtoull(argv[3], nullptr, 10);
  ObjectInfo info = testing::TestInfo(32768);  // 8 MiB
  auto payload = testing::TestPayload(index, info.payload_bytes);
  info = testing::WithCrc(info, payload);
  ObjectName name = testing::TestName(index);

  if (mode == "stream") {
    auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
    auto stub = v1::KvStash::NewStub(channel);
    grpc::ClientContext ctx;
    v1::PutResponse resp;
    auto writer = stub->Put(&ctx, &resp);
    v1::PutChunk msg;
    ToProto(name, msg.mutable_header()->mutable_key());
    ToProto(info, msg.mutable_header()->mutable_info());
    for (size_t off = 0; off < payload.size() / 2; off += 1 << 20) {
      msg.set_data(payload.data() + off, 1 << 20);
      if (!writer->Write(msg)) return 1;
      msg.Clear();
    }
    std::printf("MIDWAY\n");
    std::fflush(stdout);
    ::pause();
    return 0;
  }
  client::ClientOptions options;
  options.local_control = (mode == "shm");
  // Over gRPC the reservation must expire soon after we die; over the local channel it must be
  // aborted long before any expiry could explain it.
  options.lease_ms = options.local_control ? 120'000 : 300;
  auto kv = client::KvClient::Connect(target, options);
  if (!kv.ok() || !(*kv)->shared_memory_attached()) return 1;
  if ((*kv)->local_control_active() != options.local_control) return 1;
  auto reservation = (*kv)->Reserve(name, info);
  if (!reservation.ok()) return 1;
  std::memcpy(reservation->data().data(), payload.data(), payload.size() / 2);
  std::printf("MIDWAY\n");
  std::fflush(stdout);
  ::pause();
  return 0;
}
