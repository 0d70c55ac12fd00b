#include "client_core.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kvstash/proto/arena_handshake.h"
#include "kvstash/proto/completion_poll.h"
#include "kvstash/proto/status_mapping.h"

namespace kvstash::client::internal {

ArenaMapping::~ArenaMapping() {
  if (base != nullptr) ::munmap(base, bytes);
  if (write_base != nullptr && write_base != base) ::munmap(write_base, bytes);
}

Result<const uint8_t*> ArenaMapping::At(uint64_t offset, uint64_t n) const {
  if (offset < origin || offset - origin > bytes || n > bytes - (offset - origin)) {
    return absl::InternalError(absl::StrCat("service returned arena range [", offset, ", +", n,
                                            ") outside the mapped [", origin, ", +", bytes, ")"));
  }
  return base + (offset - origin);
}

Result<uint8_t*> ArenaMapping::AtWrite(uint64_t offset, uint64_t n) const {
  KVSTASH_ASSIGN_OR_RETURN(const uint8_t* at, At(offset, n));
  if (write_base == nullptr) {
    return absl::FailedPreconditionError("the arena is mapped read-only");
  }
  return write_base + (at - base);
}

void ClientCore::SetDeadline(grpc::ClientContext* ctx, std::chrono::milliseconds timeout) const {
  ctx->set_deadline(std::chrono::system_clock::now() + timeout);
}

std::shared_ptr<ArenaMapping> ClientCore::CurrentMapping() const {
  std::lock_guard<std::mutex> lock(mu);
  return mapping;
}

std::shared_ptr<LocalControl> ClientCore::CurrentLocal() const {
  std::lock_guard<std::mutex> lock(mu);
  return local;
}

Result<v1::ArenaInfoResponse> ClientCore::ArenaInfo(bool ticket) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, options.connect_timeout);
  v1::ArenaInfoRequest req;
  if (ticket) {
    req.set_attach_ticket(true);
    req.set_host_id(HostBootId());
  }
  v1::ArenaInfoResponse resp;
  KVSTASH_RETURN_IF_ERROR(FromGrpcStatus(stub->ArenaInfo(&ctx, req, &resp)));
  if (ticket && resp.attach_ticket().empty()) {
    // A service that predates tickets ignores the request's field.
    return absl::FailedPreconditionError("cachesvc issued no attach ticket");
  }
  return resp;
}

Result<std::shared_ptr<ArenaMapping>> ClientCore::AttachLocked() {
  KVSTASH_ASSIGN_OR_RETURN(v1::ArenaInfoResponse resp, ArenaInfo(ticket_attach));
  if (resp.fd_socket_path().empty()) {
    return absl::UnavailableError("service offers no arena socket");
  }
  // A ticket's identity decides the access: a read-only one's writable attach would be refused
  // (and would use the ticket up). The request is built whole, not assigned field by field:
  // GCC 12 under ASan sees the optional ticket's reset as a read of an uninitialized string
  // (-Wmaybe-uninitialized).
  const bool writable = !options.attach_read_only && !(ticket_attach && resp.read_only());
  const ArenaAttachRequest attach =
      ticket_attach
          ? ArenaAttachRequest{.writable = writable, .token = "", .ticket = resp.attach_ticket()}
          : ArenaAttachRequest{
                .writable = writable, .token = options.bearer_token, .ticket = std::nullopt};
  LocalControl::AttachSource attach_source;
  if (ticket_attach) {
    // Every further connection of the local control channel presents a ticket of its own. The
    // channel lives in this core, so `this` outlives it.
    attach_source = [this, writable]() -> Result<ArenaAttachRequest> {
      KVSTASH_ASSIGN_OR_RETURN(v1::ArenaInfoResponse fresh, ArenaInfo(/*ticket=*/true));
      return ArenaAttachRequest{.writable = writable, .token = "", .ticket = fresh.attach_ticket()};
    };
  } else {
    // A multi-tenant service maps the token to the tenant's arena.
    attach_source = [attach]() -> Result<ArenaAttachRequest> { return attach; };
  }
  KVSTASH_ASSIGN_OR_RETURN(
      ReceivedArena received,
      ReceiveArenaFd(resp.fd_socket_path(), static_cast<int>(options.connect_timeout.count()),
                     /*keep_connection=*/options.local_control, attach));
  // Version 2: fd is the read-only one; a read-write one may follow.
  const bool split = received.hello.version == kArenaHandshakeVersion2;
  int writable_fd = received.writable_fd;
  // The handshake's connection becomes the local control channel's anchor, or is closed.
  int connection = received.connection;
  if (connection >= 0 && (received.hello.features & kArenaFeatureLocalControl) == 0) {
    ::close(connection);
    connection = -1;
  }
  auto m = std::make_shared<ArenaMapping>();
  m->bytes = received.hello.arena_bytes;
  // Maps `fd` (closing it: the mapping keeps the memory alive).
  auto map = [&](int fd, int prot) -> Result<uint8_t*> {
    struct stat st;
    if (::fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) < m->bytes || m->bytes == 0) {
      ::close(fd);
      return absl::InternalError(
          absl::StrCat("arena fd is smaller than the announced ", m->bytes, " bytes"));
    }
    void* at = ::mmap(nullptr, m->bytes, prot, MAP_SHARED, fd, 0);
    int mmap_errno = errno;
    ::close(fd);
    if (at == MAP_FAILED) {
      return absl::UnavailableError(
          absl::StrCat("mmap of the arena (", m->bytes, " bytes): ", std::strerror(mmap_errno)));
    }
    return static_cast<uint8_t*>(at);
  };
  Result<uint8_t*> read_view = map(received.fd, split ? PROT_READ : PROT_READ | PROT_WRITE);
  Result<uint8_t*> write_view =
      split ? (writable_fd >= 0 ? map(writable_fd, PROT_READ | PROT_WRITE)
                                : Result<uint8_t*>(static_cast<uint8_t*>(nullptr)))
            : read_view;
  if (read_view.ok()) m->base = *read_view;
  if (split && write_view.ok()) m->write_base = *write_view;
  if (!split) m->write_base = m->base;
  if (!read_view.ok() || !write_view.ok()) {
    if (connection >= 0) ::close(connection);
    return read_view.ok() ? write_view.status() : read_view.status();  // m unmaps what worked
  }
  if (options.prefault_arena) {
    // Best effort: kernels before 5.14 do not know MADV_POPULATE_*; pages then fault lazily.
#ifdef MADV_POPULATE_WRITE
    if (m->write_base != nullptr) (void)::madvise(m->write_base, m->bytes, MADV_POPULATE_WRITE);
#endif
#ifdef MADV_POPULATE_READ
    if (m->base != m->write_base) (void)::madvise(m->base, m->bytes, MADV_POPULATE_READ);
#endif
  }
  m->origin = received.hello.arena_offset;
  m->generation = received.hello.arena_generation;
  m->alignment = received.hello.alignment;
  mapping = m;
  shared_memory_status = OkStatus();
  if (connection >= 0 && local == nullptr) {
    // Without it every call still works over gRPC, only slower; not worth failing the attach.
    auto created = LocalControl::Create(resp.fd_socket_path(), connection,
                                        received.hello.arena_generation, options.rpc_timeout,
                                        options.local_control_poll, std::move(attach_source));
    if (created.ok()) local = std::move(*created);
  } else if (connection >= 0) {
    // A re-attach: the channel lives on (its handles must stay anchored) and re-anchors itself
    // at the new instance on its next new connection.
    ::close(connection);
  }
  return m;
}

Result<std::shared_ptr<ArenaMapping>> ClientCore::MappingFor(uint64_t generation) {
  std::lock_guard<std::mutex> lock(mu);
  if (mapping != nullptr && mapping->generation == generation) return mapping;
  if (mapping == nullptr && !shared_memory_wanted) {
    return absl::FailedPreconditionError("shared memory is not attached");
  }
  auto fresh = AttachLocked();
  if (!fresh.ok()) {
    shared_memory_status = fresh.status();
    return absl::UnavailableError(absl::StrCat("cannot attach arena generation ", generation, ": ",
                                               std::string(fresh.status().message())));
  }
  if ((*fresh)->generation != generation) {
    return absl::UnavailableError(absl::StrCat(
        "arena generation ", generation, " is gone; the service now has ", (*fresh)->generation));
  }
  return fresh;
}

Status ClientCore::CommitReservation(uint64_t id, uint32_t crc, bool durable) {
  v1::CommitRequest req;
  req.set_reservation_id(id);
  req.set_payload_crc32c(crc);
  req.set_durable(durable);
  v1::CommitResponse resp;
  return Unary(LocalMethod::kCommit, &v1::KvStash::Stub::Commit, req, &resp);
}

Status ClientCore::AbortReservation(uint64_t id) {
  v1::AbortRequest req;
  req.set_reservation_id(id);
  v1::AbortResponse resp;
  return Unary(LocalMethod::kAbort, &v1::KvStash::Stub::Abort, req, &resp);
}

Status ClientCore::ReleaseLease(uint64_t id) {
  v1::ReleaseRequest req;
  req.add_lease_ids(id);
  v1::ReleaseResponse resp;
  KVSTASH_RETURN_IF_ERROR(Unary(LocalMethod::kRelease, &v1::KvStash::Stub::Release, req, &resp));
  if (resp.results_size() != 1) {
    return absl::InternalError("Release answered with a wrong number of results");
  }
  return FromItemStatus(resp.results(0));
}

void ClientCore::ReleaseLeaseAsync(uint64_t id) {
  if (std::shared_ptr<LocalControl> l = CurrentLocal()) {
    // One write, no answer awaited: cheaper than coalescing into gRPC calls.
    v1::ReleaseRequest req;
    req.add_lease_ids(id);
    if (l->Notify(LocalMethod::kRelease, req)) return;
  }
  std::lock_guard<std::mutex> lock(release_mu_);
  release_queue_.push_back(id);
  if (release_in_flight_) return;  // goes out with the next call
  if (!release_thread_.joinable()) release_thread_ = std::thread([this] { DriveReleases(); });
  release_in_flight_ = true;
  std::vector<uint64_t> ids;
  ids.swap(release_queue_);
  SendReleasesLocked(std::move(ids));
  release_cv_.notify_all();
}

struct ClientCore::ReleaseCall {
  grpc::ClientContext ctx;
  v1::ReleaseRequest req;
  v1::ReleaseResponse resp;
  grpc::Status status;
  std::unique_ptr<grpc::ClientAsyncResponseReader<v1::ReleaseResponse>> reader;
  std::vector<uint64_t> rest;  // ids beyond this call's cap, sent next
};

void ClientCore::SendReleasesLocked(std::vector<uint64_t> ids) {
  // The service caps ids per request (limits.max_keys_per_request, default 4096).
  constexpr size_t kMaxIdsPerCall = 1024;
  auto* call = new ReleaseCall();
  SetRpcDeadline(&call->ctx);
  const size_t sent = std::min(ids.size(), kMaxIdsPerCall);
  for (size_t i = 0; i < sent; ++i) call->req.add_lease_ids(ids[i]);
  call->rest.assign(ids.begin() + static_cast<std::ptrdiff_t>(sent), ids.end());
  call->reader = stub->AsyncRelease(&call->ctx, call->req, &release_cq_);
  call->reader->Finish(&call->resp, &call->status, call);
}

void ClientCore::DriveReleases() {
  std::unique_lock<std::mutex> lock(release_mu_);
  while (true) {
    release_cv_.wait(lock, [this] { return release_in_flight_ || stopping_; });
    if (!release_in_flight_) return;  // stopping, nothing out
    lock.unlock();
    void* tag = nullptr;
    bool ok = false;
    const bool got = release_cq_.Next(&tag, &ok);  // never shut down while a call is out
    lock.lock();
    if (!got) return;
    auto* done = static_cast<ReleaseCall*>(tag);
    std::vector<uint64_t> next = std::move(done->rest);
    delete done;
    next.insert(next.end(), release_queue_.begin(), release_queue_.end());
    release_queue_.clear();
    if (next.empty()) {
      release_in_flight_ = false;
      release_cv_.notify_all();
    } else {
      SendReleasesLocked(std::move(next));
    }
  }
}

ClientCore::~ClientCore() {
  {
    // Every call has a deadline, so this wait is bounded by rpc_timeout (per queued batch).
    std::unique_lock<std::mutex> lock(release_mu_);
    release_cv_.wait(lock, [this] { return !release_in_flight_; });
    stopping_ = true;
  }
  release_cv_.notify_all();
  if (release_thread_.joinable()) release_thread_.join();
  ShutdownAndDrain(&release_cq_);
}

bool IsUnixTarget(const std::string& target) { return target.rfind("unix:", 0) == 0; }

std::string UnixTargetPath(const std::string& target) {
  std::string rest = target.substr(5);
  if (rest.rfind("//", 0) == 0) rest = rest.substr(2);
  return rest;
}

}  // namespace kvstash::client::internal
