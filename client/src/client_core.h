// Shared state behind KvClient and its handles: the gRPC stub, options and the arena mapping.
#ifndef KVSTASH_CLIENT_CLIENT_CORE_H_
#define KVSTASH_CLIENT_CLIENT_CORE_H_

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kvstash/client/kv_client.h"
#include "kvstash/proto/status_mapping.h"
#include "kvstash/v1/kvstash.grpc.pb.h"
#include "local_control.h"

namespace kvstash::client::internal {

// MAP_SHARED mappings of the service's arena memfd; unmapped when the last holder lets go.
// Single-tenant service: one read-write mapping of the whole arena (base == write_base).
// Multi-tenant service: the tenant's own arena only, read through a mapping of its read-only fd
// (a lease's bytes cannot be written through it) and written through a second, read-write one.
struct ArenaMapping {
  uint8_t* base = nullptr;        // reads (leases)
  uint8_t* write_base = nullptr;  // writes (reservations); null when read-only
  uint64_t bytes = 0;
  uint64_t origin = 0;  // the service's arena offset of the mapping's first byte
  uint64_t generation = 0;
  uint32_t alignment = 0;

  ArenaMapping() = default;
  ~ArenaMapping();
  ArenaMapping(const ArenaMapping&) = delete;
  ArenaMapping& operator=(const ArenaMapping&) = delete;

  // The bytes of the service's arena range [offset, offset + n) to read, or Internal when they
  // are not in the mapping (never trust offsets blindly).
  Result<const uint8_t*> At(uint64_t offset, uint64_t n) const;
  // The same to write; FailedPrecondition without a writable mapping.
  Result<uint8_t*> AtWrite(uint64_t offset, uint64_t n) const;
};

struct ClientCore {
  ClientCore() = default;
  ~ClientCore();  // waits for fire-and-forget releases still in flight (each has a deadline)
  ClientCore(const ClientCore&) = delete;
  ClientCore& operator=(const ClientCore&) = delete;

  std::string target;
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::KvStash::Stub> stub;
  // The same channel for calls whose replies are read as raw slices (RawGetCall).
  std::unique_ptr<grpc::GenericStub> generic_stub;
  bool shared_memory_wanted = false;
  // A client identified only by its client certificate (mutual TLS to a TCP target, no bearer
  // token): the arena socket cannot see the certificate, so it attaches with single-use attach
  // tickets that ArenaInfo issues over the TLS channel, one per arena-socket connection
  // (docs/deploy.md "Attach tickets"). Set by Connect.
  bool ticket_attach = false;

  mutable std::mutex mu;
  std::shared_ptr<ArenaMapping> mapping;  // guarded by mu
  Status shared_memory_status;            // guarded by mu
  // The local control channel; null when not offered, not wanted, or never attached. Made at
  // the first attach that offers it and kept for the client's life (it follows a restarted
  // service by itself). Guarded by mu.
  std::shared_ptr<LocalControl> local;

  void SetDeadline(grpc::ClientContext* ctx, std::chrono::milliseconds timeout) const;
  void SetRpcDeadline(grpc::ClientContext* ctx) const { SetDeadline(ctx, options.rpc_timeout); }

  std::shared_ptr<ArenaMapping> CurrentMapping() const;
  std::shared_ptr<LocalControl> CurrentLocal() const;

  // One unary control call: over the local control channel when there is one and it can take
  // the call, else gRPC (`rpc`, with the rpc_timeout deadline). Either way the status is the
  // service's.
  template <typename Request, typename Response>
  Status Unary(LocalMethod method,
               grpc::Status (v1::KvStash::Stub::*rpc)(grpc::ClientContext*, const Request&,
                                                      Response*),
               const Request& request, Response* response) {
    if (std::shared_ptr<LocalControl> l = CurrentLocal()) {
      bool sent = false;
      Status s = l->Call(method, request, response, &sent);
      if (sent || !s.ok()) return s;
    }
    return Unary(rpc, request, response);
  }
  // A unary call the local control channel does not carry (Delete, Pin, List, ...): gRPC with
  // the rpc_timeout deadline.
  template <typename Request, typename Response>
  Status Unary(grpc::Status (v1::KvStash::Stub::*rpc)(grpc::ClientContext*, const Request&,
                                                      Response*),
               const Request& request, Response* response) {
    grpc::ClientContext ctx;
    SetRpcDeadline(&ctx);
    return FromGrpcStatus((stub.get()->*rpc)(&ctx, request, response));
  }
  // The mapping of `generation`, re-attaching once when the service has a newer arena.
  Result<std::shared_ptr<ArenaMapping>> MappingFor(uint64_t generation);
  // ArenaInfo RPC + SCM_RIGHTS handshake + mmap. Caller holds mu.
  Result<std::shared_ptr<ArenaMapping>> AttachLocked();
  // The ArenaInfo RPC (connect_timeout deadline); with `ticket`, asking for an attach ticket
  // (FailedPrecondition when the service issued none).
  Result<v1::ArenaInfoResponse> ArenaInfo(bool ticket);

  Status CommitReservation(uint64_t id, uint32_t crc, bool durable);
  Status AbortReservation(uint64_t id);
  Status ReleaseLease(uint64_t id);
  // Sends the Release without waiting for the answer (a lease that fails to release simply
  // expires). Used by ReadLease's destructor so dropping a lease costs no round trip. At most one
  // such Release call is out at a time: leases dropped meanwhile queue up and go together in the
  // next call, so dropping many leases costs about two calls, not one each.
  void ReleaseLeaseAsync(uint64_t id);

 private:
  struct ReleaseCall;
  // Sends `ids` in one Release call on release_cq_. Caller holds release_mu_ and has set
  // release_in_flight_.
  void SendReleasesLocked(std::vector<uint64_t> ids);
  // The release thread: reaps each Release call's completion and sends the leases queued
  // meanwhile. It waits in gRPC only while a call is out, so between releases it polls nothing
  // that other threads' calls need (gRPC's callback API would keep two threads polling the
  // channel for its whole life).
  void DriveReleases();

  std::mutex release_mu_;
  std::condition_variable release_cv_;
  std::vector<uint64_t> release_queue_;  // dropped leases not sent yet; guarded by release_mu_
  bool release_in_flight_ = false;       // guarded by release_mu_
  bool stopping_ = false;                // guarded by release_mu_
  grpc::CompletionQueue release_cq_;
  std::thread release_thread_;  // started with the first gRPC Release; guarded by release_mu_
};

bool IsUnixTarget(const std::string& target);
std::string UnixTargetPath(const std::string& target);

}  // namespace kvstash::client::internal

#endif  // KVSTASH_CLIENT_CLIENT_CORE_H_
