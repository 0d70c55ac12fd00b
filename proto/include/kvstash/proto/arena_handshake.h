// The shared-memory attach handshake: how cachesvc hands its arena memfd to a local client.
//
// The client learns the socket path from the ArenaInfo RPC, connects to that unix stream socket,
// sends an attach request (below) and receives one handshake message carrying the arena fd(s) as
// SCM_RIGHTS ancillary data. Wire format of the handshake (little-endian):
//
//   off size field
//    0   4  magic "KVSA"
//    4   4  version (1 or 2)
//    8   8  arena_bytes       size of the memfd mapping
//   16   8  arena_generation  matches ArenaInfoResponse / ReserveResponse / AcquireResult
//   24   4  alignment         allocation alignment of arena offsets
//   28   4  features         kArenaFeature* bits (0 from servers that predate them)
//   32   8  arena_offset      version 2 only: the arena offset of the mapping's first byte
//
// Version 1 (a single-tenant cachesvc): 32 bytes and one read-write fd of the whole arena, sent
// as soon as the client connects; the server ignores the attach request. Access control is the
// socket file's permissions: whoever can connect gets a writable mapping.
//
// Version 2 (a multi-tenant cachesvc, docs/deploy.md "Shared memory"): 40 bytes, sent only after
// the attach request names a tenant's bearer token (or presents an attach ticket); the fds are of
// that tenant's own arena only: first a read-only fd (kArenaFeatureReadOnlyFd; its mappings can
// never be written), then a read-write fd when the request asked for one (kArenaFeatureWritableFd).
// An offset o that the service hands out (Reserve, Acquire) is at mapping + (o - arena_offset). A
// refused request is answered, instead of the handshake, with an error message and no fd:
//
//   off size field
//    0   4  magic "KVSE"
//    4   4  status code       a gRPC/absl status code (UNAUTHENTICATED, FAILED_PRECONDITION, ...)
//    8   4  message_bytes     at most kMaxArenaErrorBytes
//   12   *  message           UTF-8 text
//
// The attach request is a local control frame (local_control.h) with code LocalMethod::kAttach
// and kLocalFlagNoReply, whose body is EncodeArenaAttachRequest's: a bearer token or, for a
// client identified only by its client certificate, a single-use attach ticket that the ArenaInfo
// RPC issued over mutual TLS (the socket itself has no certificate to check).
//
// Functions are thread-safe; every fd they return is owned by the caller (close it).
#ifndef KVSTASH_PROTO_ARENA_HANDSHAKE_H_
#define KVSTASH_PROTO_ARENA_HANDSHAKE_H_

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kvstash/common/status.h"

namespace kvstash {

inline constexpr size_t kArenaHandshakeBytes = 32;
inline constexpr size_t kArenaHandshakeV2Bytes = 40;
inline constexpr uint32_t kArenaHandshakeVersion = 1;
inline constexpr uint32_t kArenaHandshakeVersion2 = 2;
inline constexpr size_t kMaxArenaErrorBytes = 1024;
// sockaddr_un::sun_path holds 108 bytes including the terminating NUL.
inline constexpr size_t kMaxUnixSocketPathBytes = 107;

// The connection stays open for local control calls after the handshake.
inline constexpr uint32_t kArenaFeatureLocalControl = 1;
// Version 2: the first fd is read-only; a second, read-write fd follows when
// kArenaFeatureWritableFd is set too.
inline constexpr uint32_t kArenaFeatureReadOnlyFd = 2;
inline constexpr uint32_t kArenaFeatureWritableFd = 4;

struct ArenaHandshake {
  uint64_t arena_bytes = 0;
  uint64_t arena_generation = 0;
  uint32_t alignment = 0;
  uint32_t features = 0;
  uint64_t arena_offset = 0;                  // sent by version 2 only
  uint32_t version = kArenaHandshakeVersion;  // last: brace-initialised handshakes stay v1
};

// 32 bytes for version 1, 40 for version 2.
std::vector<uint8_t> EncodeArenaHandshake(const ArenaHandshake& hello);
// InvalidArgument for a short message, wrong magic or unknown version.
Result<ArenaHandshake> DecodeArenaHandshake(std::span<const uint8_t> bytes);

// The attach request's body: a first byte, then the credential (the rest, at most 1024 bytes).
// The first byte's bit 0 is the access (1 = also a read-write fd, 0 = read-only); bit 1
// (kArenaAttachTicketMarker) says what the credential is:
//   0: a bearer token (empty without one); the request's first version, which every server
//      takes;
//   1: an attach ticket (the ArenaInfo RPC's `attach_ticket`: 32 bytes, single-use, for clients
//      identified by a client certificate); servers that predate tickets refuse the request with
//      INVALID_ARGUMENT, so such a client uses the byte streams.
// Other bits are unknown: INVALID_ARGUMENT.
struct ArenaAttachRequest {
  bool writable = true;
  std::string token;
  // Set: an attach ticket's bytes, sent in place of the token (which is then not sent). Decoding
  // sets it for every request with the marker, whatever its length; the server checks it.
  std::optional<std::string> ticket = std::nullopt;
};
inline constexpr size_t kMaxArenaAttachTokenBytes = 1024;
inline constexpr uint8_t kArenaAttachWritable = 1;
inline constexpr uint8_t kArenaAttachTicketMarker = 2;
inline constexpr size_t kArenaAttachTicketBytes = 32;
std::string EncodeArenaAttachRequest(const ArenaAttachRequest& request);
// InvalidArgument for an empty body, an unknown first byte or a credential over the limit.
Result<ArenaAttachRequest> DecodeArenaAttachRequest(std::span<const uint8_t> body);

// Server side: sends the handshake and copies of `fds` (1 or 2) over the connected socket
// `conn_fd` (the caller keeps and later closes them all). Unavailable when the peer went away.
Status SendArenaFds(int conn_fd, std::span<const int> fds, const ArenaHandshake& hello);
inline Status SendArenaFd(int conn_fd, int arena_fd, const ArenaHandshake& hello) {
  return SendArenaFds(conn_fd, std::span<const int>(&arena_fd, 1), hello);
}
// Server side: the refusal of an attach request (message cut to kMaxArenaErrorBytes).
Status SendArenaError(int conn_fd, const Status& refusal);

struct ReceivedArena {
  int fd = -1;           // owned by the caller; version 2: the read-only fd
  int writable_fd = -1;  // version 2 with kArenaFeatureWritableFd: owned by the caller
  ArenaHandshake hello;
  int connection = -1;  // the socket, when asked to keep it; owned by the caller
};

// Client side: connects to `socket_path`, sends `request` (a version 1 server ignores it),
// receives the handshake and the fd(s). Waits at most `timeout_ms` in total. With
// `keep_connection` the connected socket is returned too (its send and receive timeouts set to
// `timeout_ms`), for local control calls; otherwise it is closed. Unavailable when the socket
// cannot be reached, DeadlineExceeded when the server does not answer in time, InvalidArgument
// for a malformed answer or a missing fd, and the server's own status (UNAUTHENTICATED,
// FAILED_PRECONDITION, ...) when it refused the request.
Result<ReceivedArena> ReceiveArenaFd(const std::string& socket_path, int timeout_ms,
                                     bool keep_connection = false,
                                     const ArenaAttachRequest& request = {});

// This host's boot id (/proc/sys/kernel/random/boot_id, 36 characters; empty when unreadable),
// read once. Containers on one host share it, so a client and a cachesvc that report the same one
// can share a unix socket and a memfd; a cachesvc issues attach tickets only to callers of its
// own host (ArenaInfoRequest.host_id).
const std::string& HostBootId();

// Fills a sockaddr_un for `path`; InvalidArgument when the path is empty or too long.
// `addr` must point to a struct sockaddr_un; returns the address length to pass to bind/connect.
Result<unsigned> MakeUnixAddress(const std::string& path, void* addr);

}  // namespace kvstash

#endif  // KVSTASH_PROTO_ARENA_HANDSHAKE_H_
