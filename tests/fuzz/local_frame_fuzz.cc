// Fuzz target: the local control channel's frames as cachesvc reads them off a client connection
// (kvstash/proto/local_control.h): a stream of headers and bodies, each body parsed as the
// request message its method names (the arena attach request by its own decoder, token and
// attach-ticket variants).
//
// Invariants: no out-of-bounds reads; a header that decodes re-encodes to the same 16 bytes and
// never announces more than kMaxLocalFrameBody; decoding stops at the first bad header, as the
// server closes the connection there.
#include <google/protobuf/stubs/logging.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#include "kvstash/proto/arena_handshake.h"
#include "kvstash/proto/local_control.h"
#include "kvstash/v1/kvstash.pb.h"

namespace {

// protobuf logs every string field that is not UTF-8; that is expected here and only slows the
// fuzzer down.
const bool kQuietProtobuf = [] {
  google::protobuf::SetLogHandler(nullptr);
  return true;
}();

void ParseAs(uint16_t method, const uint8_t* body, size_t n) {
  using kvstash::LocalMethod;
  const int len = static_cast<int>(n);
  switch (static_cast<LocalMethod>(method)) {
    case LocalMethod::kLookup:
      kvstash::v1::LookupRequest().ParseFromArray(body, len);
      break;
    case LocalMethod::kReserve:
      kvstash::v1::ReserveRequest().ParseFromArray(body, len);
      break;
    case LocalMethod::kCommit:
      kvstash::v1::CommitRequest().ParseFromArray(body, len);
      break;
    case LocalMethod::kAbort:
      kvstash::v1::AbortRequest().ParseFromArray(body, len);
      break;
    case LocalMethod::kReserveMany:
      kvstash::v1::ReserveManyRequest().ParseFromArray(body, len);
      break;
    case LocalMethod::kCommitMany:
      kvstash::v1::CommitManyRequest().ParseFromArray(body, len);
      break;
    case LocalMethod::kAcquire:
      kvstash::v1::AcquireRequest().ParseFromArray(body, len);
      break;
    case LocalMethod::kRelease:
      kvstash::v1::ReleaseRequest().ParseFromArray(body, len);
      break;
    case LocalMethod::kHello:
      break;
    case LocalMethod::kAttach: {
      // The arena attach request (arena_handshake.h): what decodes re-encodes to the same bytes.
      // A ticket (the marker bit) and a token never both come out of one request.
      auto request = kvstash::DecodeArenaAttachRequest(std::span<const uint8_t>(body, n));
      if (request.ok()) {
        if (request->token.size() > kvstash::kMaxArenaAttachTokenBytes) __builtin_trap();
        const bool marked = n > 0 && (body[0] & kvstash::kArenaAttachTicketMarker) != 0;
        if (request->ticket.has_value() != marked) __builtin_trap();
        if (request->ticket.has_value() &&
            (!request->token.empty() ||
             request->ticket->size() > kvstash::kMaxArenaAttachTokenBytes)) {
          __builtin_trap();
        }
        if (request->writable != ((body[0] & kvstash::kArenaAttachWritable) != 0)) {
          __builtin_trap();
        }
        std::string again = kvstash::EncodeArenaAttachRequest(*request);
        if (again.size() != n || std::memcmp(again.data(), body, n) != 0) __builtin_trap();
      }
      break;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvstash;
  size_t off = 0;
  while (size - off >= kLocalFrameHeaderBytes) {
    std::span<const uint8_t> head(data + off, kLocalFrameHeaderBytes);
    auto header = DecodeLocalFrameHeader(head);
    if (!header.ok()) return 0;
    if (header->body_bytes > kMaxLocalFrameBody) __builtin_trap();
    auto again = EncodeLocalFrameHeader(*header);
    if (std::memcmp(again.data(), head.data(), kLocalFrameHeaderBytes) != 0) __builtin_trap();
    off += kLocalFrameHeaderBytes;
    if (size - off < header->body_bytes) return 0;  // the server would wait for the rest
    ParseAs(header->code, data + off, header->body_bytes);
    off += header->body_bytes;
  }
  return 0;
}
