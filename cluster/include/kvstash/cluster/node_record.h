// NodeRecord: what one cachesvc node advertises under /kvstash/<cluster>/nodes/<id> in etcd.
//
// The record is JSON (so operators can read it with etcdctl):
//   {"id": "...", "grpc": "host:port", "ucx": "<base64 of the UCX worker address or empty>",
//    "capacity": <bytes, u64>, "zone": "...", "epoch": <u64>}
// Records come from other nodes (through etcd), so DecodeNodeRecord treats its input as
// untrusted: any malformed or out-of-range field is InvalidArgument, never an exception or a
// crash (fuzzed in tests/fuzz/node_record_fuzz.cc). Pure functions, thread-safe.
#ifndef KVSTASH_CLUSTER_NODE_RECORD_H_
#define KVSTASH_CLUSTER_NODE_RECORD_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "kvstash/common/status.h"

namespace kvstash::cluster {

inline constexpr size_t kMaxNodeIdBytes = 128;
inline constexpr size_t kMaxAddressBytes = 512;
inline constexpr size_t kMaxRecordBytes = 16 * 1024;

struct NodeRecord {
  std::string id;               // unique per node; [A-Za-z0-9._:-], 1..128 bytes
  std::string grpc_address;     // host:port other nodes call (KvStash, KvStashPeer)
  std::string ucx_address;      // informational (peers get the worker address through Hello)
  uint64_t capacity_bytes = 0;  // placement weight; 0 is allowed (never chosen unless alone)
  std::string zone;             // reads prefer owners in the reader's zone
  // Unix milliseconds at registration: a restarted or re-registered node has a larger epoch,
  // so a stale record is recognisable.
  uint64_t epoch = 0;

  bool operator==(const NodeRecord&) const = default;
};

std::string EncodeNodeRecord(const NodeRecord& record);
Result<NodeRecord> DecodeNodeRecord(std::string_view json);

// Whether `id` is usable as a node id (and hence as the last segment of an etcd key).
bool ValidNodeId(std::string_view id);

}  // namespace kvstash::cluster

#endif  // KVSTASH_CLUSTER_NODE_RECORD_H_
