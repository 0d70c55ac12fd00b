#include "kvstash/proto/local_control.h"

#include <sched.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "kvstash/common/coding.h"

namespace kvstash {
namespace {

constexpr uint8_t kMagic[4] = {'K', 'V', 'S', 'C'};

Status IoError(const char* what, int err) {
  if (err == EAGAIN || err == EWOULDBLOCK) {
    return absl::DeadlineExceededError(absl::StrCat("local control ", what, " timed out"));
  }
  return absl::UnavailableError(
      absl::StrCat("local control ", what, ": ", std::generic_category().message(err)));
}

// Reads exactly n bytes; Unavailable on EOF.
Status ReadFull(int fd, uint8_t* out, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::recv(fd, out + got, n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return IoError("read", errno);
    if (r == 0) {
      return absl::UnavailableError(
          got == 0 ? "local control connection closed by the peer"
                   : absl::StrCat("local control connection closed inside a frame (", got, " of ",
                                  n, " bytes)"));
    }
    got += static_cast<size_t>(r);
  }
  return OkStatus();
}

}  // namespace

const char* LocalMethodName(uint16_t method) {
  switch (static_cast<LocalMethod>(method)) {
    case LocalMethod::kLookup:
      return "Lookup";
    case LocalMethod::kReserve:
      return "Reserve";
    case LocalMethod::kCommit:
      return "Commit";
    case LocalMethod::kAbort:
      return "Abort";
    case LocalMethod::kReserveMany:
      return "ReserveMany";
    case LocalMethod::kCommitMany:
      return "CommitMany";
    case LocalMethod::kAcquire:
      return "Acquire";
    case LocalMethod::kRelease:
      return "Release";
    case LocalMethod::kHello:
      return "Hello";
    case LocalMethod::kAttach:
      return "Attach";
  }
  return "unknown";
}

std::array<uint8_t, kLocalFrameHeaderBytes> EncodeLocalFrameHeader(const LocalFrameHeader& header) {
  std::array<uint8_t, kLocalFrameHeaderBytes> out{};
  std::memcpy(out.data(), kMagic, 4);
  EncodeFixed32(out.data() + 4, header.body_bytes);
  EncodeFixed16(out.data() + 8, header.code);
  EncodeFixed16(out.data() + 10, header.flags);
  EncodeFixed32(out.data() + 12, header.sequence);
  return out;
}

Result<LocalFrameHeader> DecodeLocalFrameHeader(std::span<const uint8_t> bytes) {
  if (bytes.size() < kLocalFrameHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat("local control frame header is ", bytes.size(),
                                                   " bytes, expected ", kLocalFrameHeaderBytes));
  }
  if (std::memcmp(bytes.data(), kMagic, 4) != 0) {
    return absl::InvalidArgumentError("local control frame has a wrong magic");
  }
  LocalFrameHeader header;
  header.body_bytes = DecodeFixed32(bytes.data() + 4);
  header.code = DecodeFixed16(bytes.data() + 8);
  header.flags = DecodeFixed16(bytes.data() + 10);
  header.sequence = DecodeFixed32(bytes.data() + 12);
  if (header.body_bytes > kMaxLocalFrameBody) {
    return absl::InvalidArgumentError(absl::StrCat("local control frame announces ",
                                                   header.body_bytes, " body bytes; the limit is ",
                                                   kMaxLocalFrameBody));
  }
  return header;
}

Status WriteLocalFrame(int fd, const LocalFrameHeader& header, std::span<const uint8_t> body) {
  if (body.size() > kMaxLocalFrameBody) {
    return absl::InvalidArgumentError(absl::StrCat("local control message of ", body.size(),
                                                   " bytes exceeds ", kMaxLocalFrameBody));
  }
  LocalFrameHeader h = header;
  h.body_bytes = static_cast<uint32_t>(body.size());
  auto head = EncodeLocalFrameHeader(h);
  iovec iov[2] = {{head.data(), head.size()}, {const_cast<uint8_t*>(body.data()), body.size()}};
  size_t total = head.size() + body.size();
  size_t sent = 0;
  while (sent < total) {
    // Skip what went out already.
    iovec rest[2];
    int n_iov = 0;
    size_t skip = sent;
    for (const iovec& v : iov) {
      if (skip >= v.iov_len) {
        skip -= v.iov_len;
        continue;
      }
      rest[n_iov++] = {static_cast<uint8_t*>(v.iov_base) + skip, v.iov_len - skip};
      skip = 0;
    }
    msghdr msg{};
    msg.msg_iov = rest;
    msg.msg_iovlen = static_cast<size_t>(n_iov);
    ssize_t w = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return IoError("write", errno);
    sent += static_cast<size_t>(w);
  }
  return OkStatus();
}

bool PollReadable(int fd, std::chrono::microseconds window) {
  if (window.count() <= 0) return false;
  const auto until = std::chrono::steady_clock::now() + window;
  do {
    uint8_t probe = 0;
    ssize_t r = ::recv(fd, &probe, 1, MSG_PEEK | MSG_DONTWAIT);
    // Bytes, end of stream (0) or an error other than "nothing yet": the read will not block.
    if (r >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return true;
    ::sched_yield();
  } while (std::chrono::steady_clock::now() < until);
  return false;
}

Status ReadLocalFrame(int fd, LocalFrameHeader* header, std::string* body) {
  std::array<uint8_t, kLocalFrameHeaderBytes> head{};
  KVSTASH_RETURN_IF_ERROR(ReadFull(fd, head.data(), head.size()));
  KVSTASH_ASSIGN_OR_RETURN(*header, DecodeLocalFrameHeader(head));
  body->resize(header->body_bytes);
  if (header->body_bytes == 0) return OkStatus();
  return ReadFull(fd, reinterpret_cast<uint8_t*>(body->data()), header->body_bytes);
}

}  // namespace kvstash
