// The local control channel: the shared-memory path's unary calls over the arena socket.
//
// A same-node client that attached the arena keeps its arena-socket connections open (cachesvc
// announces this with kArenaFeatureLocalControl in the handshake) and sends the control calls of
// the shared-memory path on them instead of gRPC: a framed protobuf message per call, answered in
// order on the same connection. Payload bytes never travel here; they are in the arena. Each call
// carries exactly the kvstash.v1 request message of the gRPC method of the same name and is
// answered with its response message, so validation, metrics and status codes are the gRPC
// service's own.
//
// Frame (little-endian), a 16-byte header and `body_bytes` of body:
//
//   off size field
//    0   4  magic "KVSC"
//    4   4  body_bytes   at most kMaxLocalFrameBody
//    8   2  code         request: a LocalMethod; reply: a gRPC status code (0 = OK)
//   10   2  flags        request: kLocalFlagNoReply or 0; reply: 0
//   12   4  sequence     chosen by the client, echoed in the reply
//
// Request body: the serialized request message. Reply body: the serialized response message when
// code is 0, else the status message (UTF-8 text). A request with kLocalFlagNoReply gets no reply
// (used for Release, whose failure only means the lease expires on its own).
//
// The server answers a frame it cannot parse (bad magic, oversized body) by closing the
// connection; an unknown method or an unparsable message gets an UNIMPLEMENTED or INVALID_ARGUMENT
// reply and the connection stays usable. Functions here are thread-safe; the fd ones are not
// safe for concurrent use of one fd.
#ifndef KVSTASH_PROTO_LOCAL_CONTROL_H_
#define KVSTASH_PROTO_LOCAL_CONTROL_H_

#include <array>
#include <chrono>
#include <cstdint>
#include <span>
#include <string>

#include "kvstash/common/status.h"

namespace kvstash {

inline constexpr size_t kLocalFrameHeaderBytes = 16;
inline constexpr uint32_t kMaxLocalFrameBody = 16u << 20;
inline constexpr uint16_t kLocalFlagNoReply = 1;

enum class LocalMethod : uint16_t {
  kLookup = 1,
  kReserve = 2,
  kCommit = 3,
  kAbort = 4,
  kReserveMany = 5,
  kCommitMany = 6,
  kAcquire = 7,
  kRelease = 8,
  // Body: the client's 16-byte id; reply: OK, empty. Sent first on every connection, so the
  // service settles a client's open reservations and leases only when its last connection
  // closes (a client may acquire on one connection and release on another).
  kHello = 9,
  // The arena attach request (arena_handshake.h), always with kLocalFlagNoReply: the first frame
  // a client sends on the arena socket. A single-tenant service ignores it.
  kAttach = 10,
};
inline constexpr size_t kLocalClientIdBytes = 16;
// "Reserve", ...; "unknown" for other values.
const char* LocalMethodName(uint16_t method);

struct LocalFrameHeader {
  uint32_t body_bytes = 0;
  uint16_t code = 0;
  uint16_t flags = 0;
  uint32_t sequence = 0;
};

std::array<uint8_t, kLocalFrameHeaderBytes> EncodeLocalFrameHeader(const LocalFrameHeader& header);
// InvalidArgument for a short header, a wrong magic, or a body over kMaxLocalFrameBody.
Result<LocalFrameHeader> DecodeLocalFrameHeader(std::span<const uint8_t> bytes);

// Blocking I/O on a connected stream socket. WriteLocalFrame sends header and body in one
// sendmsg when it can (no SIGPIPE). ReadLocalFrame reads one whole frame into `body` (resized).
// Both return Unavailable when the peer is gone, DeadlineExceeded when the socket's
// SO_SNDTIMEO/SO_RCVTIMEO expires, and ReadLocalFrame InvalidArgument for a malformed header.
Status WriteLocalFrame(int fd, const LocalFrameHeader& header, std::span<const uint8_t> body);
Status ReadLocalFrame(int fd, LocalFrameHeader* header, std::string* body);

// Polls `fd` without blocking for up to `window`, until it has something for a read (bytes, the
// end of the stream or an error); returns whether it has. Call it before a blocking read that is
// expected to be answered soon: a thread blocked in a read pays a wake-up when the bytes come,
// and where the core it slept on went idle (a virtual machine's vCPU above all) that wake-up
// costs more than the call being waited for (measured: 50-110 us per call on a 2-vCPU VM,
// against 15 us when both ends poll). Between polls the thread yields its CPU to any other
// runnable thread. A zero window returns false at once.
bool PollReadable(int fd, std::chrono::microseconds window);

}  // namespace kvstash

#endif  // KVSTASH_PROTO_LOCAL_CONTROL_H_
