// Fuzz target: the cluster node record decoder (cluster/node_record.h), which reads records other
// nodes wrote into etcd.
// Invariants: no crash, no exception; a record that decodes has a valid id and a gRPC address,
// encodes again, and the re-encoded record decodes to the same record.
#include <cstdint>
#include <string_view>

#include "kvstash/cluster/node_record.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvstash::cluster;
  auto rec = DecodeNodeRecord(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!rec.ok()) return 0;
  if (!ValidNodeId(rec->id) || rec->grpc_address.empty()) __builtin_trap();
  auto back = DecodeNodeRecord(EncodeNodeRecord(*rec));
  if (!back.ok() || !(*back == *rec)) __builtin_trap();
  return 0;
}
