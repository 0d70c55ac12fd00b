#include "local_control.h"

#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kvstash/proto/arena_handshake.h"
#include "kvstash/proto/status_mapping.h"

namespace kvstash::client::internal {
namespace {

// Idle connections kept beyond this many are closed when given back (each is a thread in the
// service, which serves limits.local_control_connections of them in all).
constexpr size_t kMaxIdleConnections = 8;

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

Status WriteRequest(int fd, LocalMethod method, uint16_t flags, uint32_t sequence,
                    const google::protobuf::MessageLite& request, std::string* scratch) {
  scratch->clear();
  if (!request.SerializeToString(scratch)) {
    return absl::InternalError("cannot serialize a local control request");
  }
  LocalFrameHeader header;
  header.code = static_cast<uint16_t>(method);
  header.flags = flags;
  header.sequence = sequence;
  return WriteLocalFrame(fd, header, Bytes(*scratch));
}

// Reads the reply to request `sequence` (a connection answers in order, so it is the next frame),
// polling for it for up to `poll` first.
Status ReadReply(int fd, uint32_t sequence, std::chrono::microseconds poll, LocalFrameHeader* reply,
                 std::string* body) {
  PollReadable(fd, poll);
  KVSTASH_RETURN_IF_ERROR(ReadLocalFrame(fd, reply, body));
  if (reply->sequence != sequence) {
    return absl::InternalError(absl::StrCat("local control reply ", reply->sequence,
                                            " does not answer request ", sequence));
  }
  return OkStatus();
}

}  // namespace

Status LocalReplyStatus(uint16_t code, const std::string& body,
                        google::protobuf::MessageLite* response) {
  if (code != 0) return FromGrpcStatus(grpc::Status(static_cast<grpc::StatusCode>(code), body));
  if (!response->ParseFromString(body)) {
    return absl::InternalError("cannot parse a local control reply");
  }
  return OkStatus();
}

LocalControl::LocalControl(std::string socket_path, std::chrono::milliseconds timeout,
                           std::chrono::microseconds poll, AttachSource attach)
    : socket_path_(std::move(socket_path)),
      timeout_(timeout),
      poll_(poll),
      attach_(std::move(attach)) {}

Result<std::unique_ptr<LocalControl>> LocalControl::Create(std::string socket_path, int anchor_fd,
                                                           uint64_t generation,
                                                           std::chrono::milliseconds timeout,
                                                           std::chrono::microseconds poll,
                                                           AttachSource attach) {
  std::unique_ptr<LocalControl> local(
      new LocalControl(std::move(socket_path), timeout, poll, std::move(attach)));
  local->anchor_fd_ = anchor_fd;
  local->anchor_generation_ = generation;
  // The id only has to be unique among this node's clients; 128 random bits are.
  size_t got = 0;
  while (got < local->client_id_.size()) {
    ssize_t n = ::getrandom(local->client_id_.data() + got, local->client_id_.size() - got, 0);
    if (n <= 0) return absl::UnavailableError("getrandom failed for the local control client id");
    got += static_cast<size_t>(n);
  }
  KVSTASH_RETURN_IF_ERROR(local->Hello(anchor_fd));
  return local;
}

LocalControl::~LocalControl() {
  std::lock_guard<std::mutex> lock(mu_);
  for (int fd : idle_) ::close(fd);
  if (anchor_fd_ >= 0) ::close(anchor_fd_);  // last: the service settles what is left open now
}

Status LocalControl::Hello(int fd) {
  LocalFrameHeader header;
  header.code = static_cast<uint16_t>(LocalMethod::kHello);
  header.sequence = NextSequence();
  KVSTASH_RETURN_IF_ERROR(WriteLocalFrame(fd, header, client_id_));
  LocalFrameHeader reply;
  std::string body;
  KVSTASH_RETURN_IF_ERROR(ReadReply(fd, header.sequence, poll_, &reply, &body));
  if (reply.code != 0) {
    return Status(absl::StatusCode::kUnavailable,
                  absl::StrCat("local control Hello refused: ", body));
  }
  return OkStatus();
}

Result<int> LocalControl::Open() {
  ArenaAttachRequest request;
  if (attach_ != nullptr) {
    KVSTASH_ASSIGN_OR_RETURN(request, attach_());
  }
  KVSTASH_ASSIGN_OR_RETURN(ReceivedArena received,
                           ReceiveArenaFd(socket_path_, static_cast<int>(timeout_.count()),
                                          /*keep_connection=*/true, request));
  ::close(received.fd);  // this client mapped the arena already
  if (received.writable_fd >= 0) ::close(received.writable_fd);
  if ((received.hello.features & kArenaFeatureLocalControl) == 0) {
    ::close(received.connection);
    return absl::UnavailableError("the service has no local control connection to spare");
  }
  Status s = Hello(received.connection);
  if (!s.ok()) {
    ::close(received.connection);
    return s;
  }
  int stale_anchor = -1;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (received.hello.arena_generation != anchor_generation_) {
      // A new service instance: this connection anchors the client there. Idle connections
      // belong to the old instance and are dead.
      stale_anchor = std::exchange(anchor_fd_, received.connection);
      anchor_generation_ = received.hello.arena_generation;
      for (int fd : idle_) ::close(fd);
      idle_.clear();
    }
  }
  if (stale_anchor >= 0) {
    ::close(stale_anchor);
    return Open();  // a connection for the caller
  }
  return received.connection;
}

Result<int> LocalControl::Take(bool* fresh) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!idle_.empty()) {
      int fd = idle_.back();
      idle_.pop_back();
      *fresh = false;
      return fd;
    }
  }
  *fresh = true;
  return Open();
}

void LocalControl::GiveBack(int fd) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (idle_.size() < kMaxIdleConnections) {
      idle_.push_back(fd);
      return;
    }
  }
  ::close(fd);
}

void LocalControl::DropIdle() {
  std::vector<int> idle;
  {
    std::lock_guard<std::mutex> lock(mu_);
    idle.swap(idle_);
  }
  for (int fd : idle) ::close(fd);
}

Status LocalControl::Call(LocalMethod method, const google::protobuf::MessageLite& request,
                          google::protobuf::MessageLite* response, bool* sent) {
  *sent = false;
  std::string buffer;
  if (!request.SerializeToString(&buffer)) {
    return absl::InternalError("cannot serialize a local control request");
  }
  if (buffer.size() > kMaxLocalFrameBody) return OkStatus();  // not sent: too big for a frame
  LocalFrameHeader header;
  header.code = static_cast<uint16_t>(method);
  for (int attempt = 0;; ++attempt) {
    bool fresh = false;
    Result<int> taken = Take(&fresh);
    if (!taken.ok()) return OkStatus();  // not sent
    const int fd = *taken;
    header.sequence = NextSequence();
    Status s = WriteLocalFrame(fd, header, Bytes(buffer));
    if (!s.ok()) {
      ::close(fd);
      // An idle connection whose service went away (a restart) fails here, before the request
      // reached anyone: the other idle ones are as stale, and a new connection is safe to try.
      if (!fresh && attempt == 0 && s.code() == absl::StatusCode::kUnavailable) {
        DropIdle();
        continue;
      }
      return s;
    }
    *sent = true;
    LocalFrameHeader reply;
    s = ReadReply(fd, header.sequence, poll_, &reply, &buffer);
    if (!s.ok()) {
      ::close(fd);
      return Status(s.code(), absl::StrCat(LocalMethodName(static_cast<uint16_t>(method)), ": ",
                                           std::string(s.message())));
    }
    GiveBack(fd);
    return LocalReplyStatus(reply.code, buffer, response);
  }
}

bool LocalControl::Notify(LocalMethod method, const google::protobuf::MessageLite& request) {
  bool fresh = false;
  Result<int> fd = Take(&fresh);
  if (!fd.ok()) return false;
  std::string buffer;
  if (WriteRequest(*fd, method, kLocalFlagNoReply, NextSequence(), request, &buffer).ok()) {
    GiveBack(*fd);
    return true;
  }
  ::close(*fd);
  return false;
}

Result<std::unique_ptr<LocalControl::Pipeline>> LocalControl::OpenPipeline() {
  bool fresh = false;
  KVSTASH_ASSIGN_OR_RETURN(int fd, Take(&fresh));
  return std::unique_ptr<Pipeline>(new Pipeline(this, fd));
}

LocalControl::Pipeline::~Pipeline() {
  // Answers nobody read would confuse the next user of the connection.
  if (broken_.ok() && outstanding_.empty()) {
    owner_->GiveBack(fd_);
  } else {
    ::close(fd_);
  }
}

Result<uint32_t> LocalControl::Pipeline::Send(LocalMethod method,
                                              const google::protobuf::MessageLite& request) {
  KVSTASH_RETURN_IF_ERROR(broken_);
  const uint32_t ticket = owner_->NextSequence();
  std::string buffer;
  Status s = WriteRequest(fd_, method, 0, ticket, request, &buffer);
  if (!s.ok()) {
    broken_ = s;
    return s;
  }
  outstanding_.push_back(ticket);
  return ticket;
}

Status LocalControl::Pipeline::Await(uint32_t ticket, google::protobuf::MessageLite* response) {
  while (true) {
    auto early = early_.find(ticket);
    if (early != early_.end()) {
      Reply reply = std::move(early->second);
      early_.erase(early);
      return LocalReplyStatus(reply.code, reply.body, response);
    }
    KVSTASH_RETURN_IF_ERROR(broken_);
    if (std::find(outstanding_.begin(), outstanding_.end(), ticket) == outstanding_.end()) {
      return absl::InternalError(absl::StrCat("local control ticket ", ticket, " is unknown"));
    }
    LocalFrameHeader header;
    Reply reply;
    Status s = ReadReply(fd_, outstanding_.front(), owner_->poll_, &header, &reply.body);
    if (!s.ok()) {
      broken_ = s;
      return s;
    }
    outstanding_.erase(outstanding_.begin());
    reply.code = header.code;
    early_.emplace(header.sequence, std::move(reply));
  }
}

}  // namespace kvstash::client::internal
