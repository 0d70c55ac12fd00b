// Shared state behind KvClient and its handles: the gRPC stub, options and the arena mapping.
#ifndef KVSTASH_CLIENT_CLIENT_CORE_H_
#define KVSTASH_CLIENT_CLIENT_CORE_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <mutex>
#include <string>

#include "kvstash/client/kv_client.h"
#include "kvstash/v1/kvstash.grpc.pb.h"

namespace kvstash::client::internal {

// A MAP_SHARED mapping of the service's arena memfd; unmapped when the last holder lets go.
struct ArenaMapping {
  uint8_t* base = nullptr;
  uint64_t bytes = 0;
  uint64_t generation = 0;
  uint32_t alignment = 0;

  ArenaMapping() = default;
  ~ArenaMapping();
  ArenaMapping(const ArenaMapping&) = delete;
  ArenaMapping& operator=(const ArenaMapping&) = delete;

  // The span [offset, offset + n) or Internal when it does not fit (never trust offsets blindly).
  Result<uint8_t*> At(uint64_t offset, uint64_t n) const;
};

struct ClientCore {
  std::string target;
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::KvStash::Stub> stub;
  bool shared_memory_wanted = false;

  mutable std::mutex mu;
  std::shared_ptr<ArenaMapping> mapping;  // guarded by mu
  Status shared_memory_status;            // guarded by mu

  void SetDeadline(grpc::ClientContext* ctx, std::chrono::milliseconds timeout) const;
  void SetRpcDeadline(grpc::ClientContext* ctx) const { SetDeadline(ctx, options.rpc_timeout); }

  std::shared_ptr<ArenaMapping> CurrentMapping() const;
  // The mapping of `generation`, re-attaching once when the service has a newer arena.
  Result<std::shared_ptr<ArenaMapping>> MappingFor(uint64_t generation);
  // ArenaInfo RPC + SCM_RIGHTS handshake + mmap. Caller holds mu.
  Result<std::shared_ptr<ArenaMapping>> AttachLocked();

  Status CommitReservation(uint64_t id, uint32_t crc, bool durable);
  Status AbortReservation(uint64_t id);
  Status ReleaseLease(uint64_t id);
};

bool IsUnixTarget(const std::string& target);
std::string UnixTargetPath(const std::string& target);
Tier FromProtoTier(int tier);

}  // namespace kvstash::client::internal

#endif  // KVSTASH_CLIENT_CLIENT_CORE_H_
