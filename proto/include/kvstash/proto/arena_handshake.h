// The shared-memory attach handshake: how cachesvc hands its arena memfd to a local client.
//
// The client learns the socket path from the ArenaInfo RPC, connects to that unix stream socket
// and receives exactly one 32-byte message carrying the arena fd as SCM_RIGHTS ancillary data;
// the server then closes the connection. The client sends nothing. Wire format (little-endian):
//
//   off size field
//    0   4  magic "KVSA"
//    4   4  version (1)
//    8   8  arena_bytes       size of the memfd mapping
//   16   8  arena_generation  matches ArenaInfoResponse / ReserveResponse / AcquireResult
//   24   4  alignment         allocation alignment of arena offsets
//   28   4  features         kArenaFeature* bits (0 from servers that predate them)
//
// Access control is the socket file's permissions: whoever can connect gets a writable mapping.
// Functions are thread-safe; every fd they return is owned by the caller (close it).
#ifndef KVSTASH_PROTO_ARENA_HANDSHAKE_H_
#define KVSTASH_PROTO_ARENA_HANDSHAKE_H_

#include <array>
#include <cstdint>
#include <span>
#include <string>

#include "kvstash/common/status.h"

namespace kvstash {

inline constexpr size_t kArenaHandshakeBytes = 32;
inline constexpr uint32_t kArenaHandshakeVersion = 1;
// sockaddr_un::sun_path holds 108 bytes including the terminating NUL.
inline constexpr size_t kMaxUnixSocketPathBytes = 107;

// The connection stays open for local control calls after the handshake.
inline constexpr uint32_t kArenaFeatureLocalControl = 1;

struct ArenaHandshake {
  uint64_t arena_bytes = 0;
  uint64_t arena_generation = 0;
  uint32_t alignment = 0;
  uint32_t features = 0;
};

std::array<uint8_t, kArenaHandshakeBytes> EncodeArenaHandshake(const ArenaHandshake& hello);
// InvalidArgument for a short message, wrong magic or unknown version.
Result<ArenaHandshake> DecodeArenaHandshake(std::span<const uint8_t> bytes);

// Server side: sends the handshake and a copy of `arena_fd` over the connected socket `conn_fd`
// (the caller keeps and later closes both). Unavailable when the peer went away.
Status SendArenaFd(int conn_fd, int arena_fd, const ArenaHandshake& hello);

struct ReceivedArena {
  int fd = -1;  // owned by the caller
  ArenaHandshake hello;
  int connection = -1;  // the socket, when asked to keep it; owned by the caller
};

// Client side: connects to `socket_path`, receives the handshake and the fd. Waits at most
// `timeout_ms` in total. With `keep_connection` the connected socket is returned too (its send
// and receive timeouts set to `timeout_ms`), for local control calls; otherwise it is closed.
// Unavailable when the socket cannot be reached, DeadlineExceeded when the server does not answer
// in time, InvalidArgument for a malformed answer or a missing fd.
Result<ReceivedArena> ReceiveArenaFd(const std::string& socket_path, int timeout_ms,
                                     bool keep_connection = false);

// Fills a sockaddr_un for `path`; InvalidArgument when the path is empty or too long.
// `addr` must point to a struct sockaddr_un; returns the address length to pass to bind/connect.
Result<unsigned> MakeUnixAddress(const std::string& path, void* addr);

}  // namespace kvstash

#endif  // KVSTASH_PROTO_ARENA_HANDSHAKE_H_
