// UcxTransport: the public methods, the context, memory registration, reads and notifications.
// The worker and its progress thread are in ucx_worker.cc, Fetch in ucx_fetch.cc; the state they
// share, and its lock rules, in ucx_impl.h.
#include "kvstash/transport/ucx_transport.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <ucp/api/ucp.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kvstash/common/coding.h"
#include "ucx_impl.h"

namespace kvstash::transport {
namespace {

// UCX TCP segment size set in Create where the environment sets none.
constexpr char kDefaultSegment[] = "512k";

// The bytes of a UCX memory-units setting ("512k", "1028K", "1mb", "65536"); 0 when it is not
// one (UCX also takes "inf" and "auto", which say nothing about a segment's size here).
uint64_t MemoryUnits(const char* value) {
  if (value == nullptr) return 0;
  char* end = nullptr;
  const unsigned long long n = std::strtoull(value, &end, 10);
  if (end == value) return 0;
  int shift = 0;
  const char unit = static_cast<char>(std::tolower(static_cast<unsigned char>(*end)));
  if (unit == 'k') shift = 10;
  if (unit == 'm') shift = 20;
  if (unit == 'g') shift = 30;
  if (shift != 0 || unit == 'b') ++end;
  if (shift != 0 && (*end == 'b' || *end == 'B')) ++end;
  if (*end != '\0' || n > (UINT64_MAX >> shift)) return 0;
  return static_cast<uint64_t>(n) << shift;
}

}  // namespace

// --- reads and notifications (under worker_mu) -------------------------------

ucp_mem_h UcxTransport::Impl::MemhFor(const void* p, uint64_t n) const {
  auto addr = reinterpret_cast<uintptr_t>(p);
  for (const Region& r : regions) {
    if (addr >= r.base && addr - r.base <= r.bytes && n <= r.bytes - (addr - r.base)) {
      return r.memh;
    }
  }
  return nullptr;
}

void UcxTransport::Impl::IssueReads(const std::shared_ptr<Call>& call,
                                    const std::vector<ReadOp>& ops) {
  Peer& peer = *call->peer;
  Owns(peer);
  if (peer.failed || peer.ep == nullptr) {
    call->Fail(PeerError("peer endpoint failed", peer.failure.load()));
  } else {
    for (const ReadOp& op : ops) {
      std::shared_ptr<Call>* holder;
      ucp_request_param_t param = ParamFor(&holder, call);
      if (ucp_mem_h memh = MemhFor(op.local, op.length); memh != nullptr) {
        param.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
        param.memh = memh;
      }
      BeginPending(call);
      Track(call,
            ucp_get_nbx(peer.ep, op.local, op.length, peer.address + op.remote_offset, peer.rkey,
                        &param),
            holder);
    }
    // Completion of a get already means its bytes landed; the flush makes "every operation on
    // this endpoint is complete" explicit before the caller announces anything to the peer.
    std::shared_ptr<Call>* holder;
    ucp_request_param_t param = ParamFor(&holder, call);
    BeginPending(call);
    Track(call, ucp_ep_flush_nbx(peer.ep, &param), holder);
  }
  MarkIssued(call);
}

void UcxTransport::Impl::IssueNotify(const std::shared_ptr<Call>& call, uint16_t id) {
  Peer& peer = *call->peer;
  Owns(peer);
  if (peer.failed || peer.ep == nullptr) {
    call->Fail(PeerError("peer endpoint failed", peer.failure.load()));
  } else {
    std::shared_ptr<Call>* holder;
    ucp_request_param_t param = ParamFor(&holder, call);
    param.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_AM_SEND_FLAG_EAGER;
    BeginPending(call);
    Track(call,
          ucp_am_send_nbx(peer.ep, id, nullptr, 0, call->payload.data(), call->payload.size(),
                          &param),
          holder);
  }
  MarkIssued(call);
}

ucs_status_t UcxTransport::Impl::OnNotification(void* arg, const void*, size_t, void* data,
                                                size_t length, const ucp_am_recv_param_t* param) {
  auto* slot = static_cast<HandlerSlot*>(arg);
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) {
    // Notifications are sent eagerly; a rendezvous one is not ours. Dropped (UCS_OK).
    return UCS_OK;
  }
  slot->impl->notes_received.fetch_add(1, std::memory_order_relaxed);
  if (slot->handler) slot->handler(std::string_view(static_cast<const char*>(data), length));
  return UCS_OK;
}

// --- UcxTransport ------------------------------------------------------------

UcxTransport::UcxTransport(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

UcxTransport::~UcxTransport() {
  {
    MutexLock lock(&impl_->task_mu);
    impl_->stopping = true;
  }
  impl_->Post([] {});
  if (impl_->thread.joinable()) impl_->thread.join();
}

Result<std::unique_ptr<UcxTransport>> UcxTransport::Create(const TransportOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  // UCX's TCP transport moves RMA reads in segments of UCX_TCP_TX_SEG_SIZE / RX_SEG_SIZE
  // (8 KiB / 64 KiB by default in 1.13, `ucx_info -c`): a send and a wake-up per 8 KiB cap
  // loopback at about 2.5 GB/s, where 512 KiB segments reach 6-7 GB/s
  // (docs/benchmarks-transfer.md). UCX reads transport settings from the environment when it
  // opens its interfaces (ucp_config_modify does not reach them in 1.13), so they are set there,
  // unless the environment already has them.
  ::setenv("UCX_TCP_TX_SEG_SIZE", kDefaultSegment, /*overwrite=*/0);
  ::setenv("UCX_TCP_RX_SEG_SIZE", kDefaultSegment, /*overwrite=*/0);
  // Fetch fragments fill one segment (the smaller of the two; a reader runs the same settings).
  const uint64_t segment = std::min(MemoryUnits(std::getenv("UCX_TCP_TX_SEG_SIZE")),
                                    MemoryUnits(std::getenv("UCX_TCP_RX_SEG_SIZE")));
  impl->fetch_fragment =
      std::max(kMinFetchFragment, segment > kSegmentSlack ? segment - kSegmentSlack : 0);
  ucp_config_t* config = nullptr;
  ucs_status_t st = ucp_config_read(nullptr, nullptr, &config);
  if (st != UCS_OK) return UcxError("ucp_config_read", st);
  ucp_params_t params;
  std::memset(&params, 0, sizeof params);
  params.field_mask =
      UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  params.mt_workers_shared = 0;
  params.name = options.name.c_str();
  st = ucp_init(&params, config, &impl->context);
  ucp_config_release(config);
  if (st != UCS_OK) return UcxError("ucp_init", st);

  ucp_context_attr_t attr;
  std::memset(&attr, 0, sizeof attr);
  attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  if (ucp_context_query(impl->context, &attr) == UCS_OK) {
    impl->cuda = (attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
  }

  ucp_worker_params_t wparams;
  std::memset(&wparams, 0, sizeof wparams);
  wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE | UCP_WORKER_PARAM_FIELD_NAME;
  // Serialized: the progress thread and callers driving their own calls take turns (worker_mu).
  wparams.thread_mode = UCS_THREAD_MODE_SERIALIZED;
  wparams.name = options.name.c_str();
  st = ucp_worker_create(impl->context, &wparams, &impl->worker);
  if (st != UCS_OK) return UcxError("ucp_worker_create", st);

  ucp_worker_attr_t wattr;
  std::memset(&wattr, 0, sizeof wattr);
  wattr.field_mask = UCP_WORKER_ATTR_FIELD_ADDRESS;
  st = ucp_worker_query(impl->worker, &wattr);
  if (st != UCS_OK) return UcxError("ucp_worker_query", st);
  impl->address.assign(reinterpret_cast<const char*>(wattr.address), wattr.address_length);
  ucp_worker_release_address(impl->worker, wattr.address);

  st = ucp_worker_get_efd(impl->worker, &impl->worker_fd);
  if (st != UCS_OK) return UcxError("ucp_worker_get_efd", st);
  impl->wake_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  impl->epoll_fd = ::epoll_create1(EPOLL_CLOEXEC);
  if (impl->wake_fd < 0 || impl->epoll_fd < 0) {
    return absl::InternalError(absl::StrCat("eventfd/epoll: ", std::strerror(errno)));
  }
  for (int fd : {impl->worker_fd, impl->wake_fd}) {
    epoll_event ev;
    std::memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(impl->epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0) {
      return absl::InternalError(absl::StrCat("epoll_ctl: ", std::strerror(errno)));
    }
  }
  Impl* raw = impl.get();
  {
    // No progress thread yet: the worker is this thread's.
    MutexLock worker_lock(&raw->worker_mu);
    KVSTASH_RETURN_IF_ERROR(raw->SetAmHandler(kFetchRequestId, &Impl::OnFetchRequest, raw));
    KVSTASH_RETURN_IF_ERROR(raw->SetAmHandler(kFetchDoneId, &Impl::OnFetchDone, raw));
    KVSTASH_RETURN_IF_ERROR(raw->SetAmHandler(kFetchDataId, &Impl::OnFetchData, raw));
  }
  impl->thread = std::thread([raw] { raw->Loop(); });
  return std::unique_ptr<UcxTransport>(new UcxTransport(std::move(impl)));
}

std::string UcxTransport::UcxVersion() { return ucp_get_version_string(); }

bool UcxTransport::UcxAtLeast(unsigned major, unsigned minor) {
  unsigned have_major = 0, have_minor = 0, have_release = 0;
  ucp_get_version(&have_major, &have_minor, &have_release);
  return have_major > major || (have_major == major && have_minor >= minor);
}

const std::string& UcxTransport::worker_address() const { return impl_->address; }
bool UcxTransport::SupportsCuda() const { return impl_->cuda; }

Result<RemoteRegion> UcxTransport::RegisterRegion(void* base, uint64_t bytes, MemoryKind kind,
                                                  RangeGuard guard) {
  if (base == nullptr || bytes == 0) {
    return absl::InvalidArgumentError("RegisterRegion: empty region");
  }
  if (kind == MemoryKind::kCuda && !impl_->cuda) {
    return absl::UnimplementedError(
        "this UCX build has no CUDA memory support (build against libucx-cu13, "
        "-DKVSTASH_UCX_DIR)");
  }
  RemoteRegion out;
  Impl* impl = impl_.get();
  Status s = impl->RunOnThread([impl, base, bytes, kind, &guard, &out]() -> Status {
    impl->worker_mu.AssertHeld();  // tasks run under worker_mu (RunTasks)
    ucp_mem_map_params_t params;
    std::memset(&params, 0, sizeof params);
    params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                        UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
    params.address = base;
    params.length = bytes;
    params.memory_type = kind == MemoryKind::kCuda ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST;
    ucp_mem_h memh;
    ucs_status_t st = ucp_mem_map(impl->context, &params, &memh);
    if (st != UCS_OK) return UcxError("ucp_mem_map", st);
    void* rkey = nullptr;
    size_t rkey_bytes = 0;
    st = ucp_rkey_pack(impl->context, memh, &rkey, &rkey_bytes);
    if (st != UCS_OK) {
      ucp_mem_unmap(impl->context, memh);
      return UcxError("ucp_rkey_pack", st);
    }
    Impl::Region region;
    region.memh = memh;
    region.base = reinterpret_cast<uintptr_t>(base);
    region.bytes = bytes;
    region.memory_type = params.memory_type;
    region.guard = std::move(guard);
    region.ucx_rkey.assign(static_cast<const char*>(rkey), rkey_bytes);
    ucp_rkey_buffer_release(rkey);
    std::random_device random;
    region.token = (static_cast<uint64_t>(random()) << 32) ^ random();
    out.packed_rkey.clear();
    PutFixed64(&out.packed_rkey, region.token);
    out.packed_rkey.append(region.ucx_rkey);
    out.address = reinterpret_cast<uintptr_t>(base);
    out.bytes = bytes;
    impl->regions.push_back(std::move(region));
    return OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

Result<PeerId> UcxTransport::Connect(const std::string& worker_address, const RemoteRegion& region,
                                     Clock::time_point deadline) {
  if (worker_address.empty() || region.packed_rkey.size() <= kTokenBytes || region.bytes == 0) {
    return absl::InvalidArgumentError("Connect: empty worker address, rkey or region");
  }
  return Open(worker_address, &region, deadline);
}

Result<PeerId> UcxTransport::ConnectWorker(const std::string& worker_address,
                                           Clock::time_point deadline) {
  if (worker_address.empty()) {
    return absl::InvalidArgumentError("ConnectWorker: empty worker address");
  }
  return Open(worker_address, nullptr, deadline);
}

Result<PeerId> UcxTransport::Open(const std::string& worker_address, const RemoteRegion* region,
                                  Clock::time_point deadline) {
  auto peer = std::make_shared<Impl::Peer>();
  peer->impl = impl_.get();
  if (region != nullptr) {  // else bytes 0: every range is out of bounds
    peer->address = region->address;
    peer->bytes = region->bytes;
    peer->token = DecodeFixed64(region->packed_rkey.data());
  }
  Impl* impl = impl_.get();
  Status s = impl->RunOnThread([impl, &worker_address, region, peer]() -> Status {
    impl->worker_mu.AssertHeld();  // tasks run under worker_mu (RunTasks)
    impl->Owns(*peer);
    ucp_ep_params_t params;
    std::memset(&params, 0, sizeof params);
    params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                        UCP_EP_PARAM_FIELD_ERR_HANDLER;
    params.address = reinterpret_cast<const ucp_address_t*>(worker_address.data());
    params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    params.err_handler.cb = &Impl::OnEndpointError;
    params.err_handler.arg = peer.get();
    ucs_status_t st = ucp_ep_create(impl->worker, &params, &peer->ep);
    if (st != UCS_OK) return PeerError("ucp_ep_create", st);
    if (region == nullptr) return OkStatus();
    const std::string ucx_rkey = region->packed_rkey.substr(kTokenBytes);  // aligned for UCX
    st = ucp_ep_rkey_unpack(peer->ep, ucx_rkey.data(), &peer->rkey);
    if (st != UCS_OK) {
      impl->ClosePeer(*peer);
      return absl::InvalidArgumentError(
          absl::StrCat("ucp_ep_rkey_unpack: ", ucs_status_string(st)));
    }
    return OkStatus();
  });
  if (!s.ok()) return s;
  PeerId id;
  {
    MutexLock lock(&impl_->peers_mu);
    id = impl_->next_peer++;
    impl_->peers[id] = std::move(peer);
  }
  // A flush completes UCX's wire-up with the peer: Connect returns a usable endpoint or an
  // error, and a Disconnect right after can never discard an endpoint mid-handshake.
  Status flushed = Read(id, {}, deadline);
  if (!flushed.ok()) {
    Disconnect(id);
    return absl::UnavailableError(absl::StrCat("cannot reach the UCX peer: ", flushed.message()));
  }
  return id;
}

void UcxTransport::Disconnect(PeerId id) {
  std::shared_ptr<Impl::Peer> peer;
  {
    MutexLock lock(&impl_->peers_mu);
    auto it = impl_->peers.find(id);
    if (it == impl_->peers.end()) return;
    peer = std::move(it->second);
    impl_->peers.erase(it);
  }
  Impl* impl = impl_.get();
  (void)impl->RunOnThread([impl, peer] {
    impl->worker_mu.AssertHeld();  // tasks run under worker_mu (RunTasks)
    impl->ClosePeer(*peer);
    return OkStatus();
  });
}

bool UcxTransport::Healthy(PeerId id) const {
  MutexLock lock(&impl_->peers_mu);
  auto it = impl_->peers.find(id);
  return it != impl_->peers.end() && !it->second->failed;
}

Status UcxTransport::Read(PeerId id, std::span<const ReadOp> ops, Clock::time_point deadline) {
  return Transfer(id, ops, deadline, How::kRead);
}

Status UcxTransport::Fetch(PeerId id, std::span<const ReadOp> ops, Clock::time_point deadline) {
  return Transfer(id, ops, deadline, How::kFetch);
}

Status UcxTransport::FetchInPlace(PeerId id, std::span<const ReadOp> ops,
                                  Clock::time_point deadline) {
  return Transfer(id, ops, deadline, How::kFetchInPlace);
}

Status UcxTransport::Transfer(PeerId id, std::span<const ReadOp> ops, Clock::time_point deadline,
                              How how) {
  std::shared_ptr<Impl::Peer> peer;
  {
    MutexLock lock(&impl_->peers_mu);
    auto it = impl_->peers.find(id);
    if (it == impl_->peers.end()) return absl::UnavailableError("unknown UCX peer");
    peer = it->second;
  }
  if (peer->failed) {
    return PeerError("UCX peer failed earlier", peer->failure.load());
  }
  auto call = std::make_shared<Impl::Call>();
  call->peer = peer;
  call->impl = impl_.get();
  call->in_place = how == How::kFetchInPlace;
  const bool fetch = how != How::kRead;
  for (const ReadOp& op : ops) {
    if (op.local == nullptr || op.length == 0 || op.remote_offset > peer->bytes ||
        op.length > peer->bytes - op.remote_offset) {
      return absl::InvalidArgumentError(
          absl::StrCat("read of ", op.length, " bytes at offset ", op.remote_offset,
                       " lies outside the peer's region of ", peer->bytes, " bytes"));
    }
    call->bytes += op.length;
  }
  call->ops = ops.size();
  Impl* impl = impl_.get();
  Status s = impl->Execute(
      call,
      [impl, call, fetch, list = std::vector<ReadOp>(ops.begin(), ops.end())] {
        impl->worker_mu.AssertHeld();  // runs under worker_mu (Execute or RunTasks)
        if (fetch && !list.empty()) {
          impl->IssueFetch(call, list);
        } else {
          impl->IssueReads(call, list);
        }
      },
      deadline);
  if (s.ok()) {
    impl->reads.fetch_add(call->ops, std::memory_order_relaxed);
    impl->bytes_read.fetch_add(call->bytes, std::memory_order_relaxed);
  } else {
    impl->failed_calls.fetch_add(1, std::memory_order_relaxed);
  }
  return s;
}

Status UcxTransport::Notify(PeerId id, uint16_t am_id, std::string payload,
                            Clock::time_point deadline) {
  std::shared_ptr<Impl::Peer> peer;
  {
    MutexLock lock(&impl_->peers_mu);
    auto it = impl_->peers.find(id);
    if (it == impl_->peers.end()) return absl::UnavailableError("unknown UCX peer");
    peer = it->second;
  }
  if (peer->failed) return PeerError("UCX peer failed earlier", peer->failure.load());
  auto call = std::make_shared<Impl::Call>();
  call->peer = peer;
  call->impl = impl_.get();
  call->payload = std::move(payload);
  Impl* impl = impl_.get();
  Status s = impl->Execute(
      call,
      [impl, call, am_id] {
        impl->worker_mu.AssertHeld();  // runs under worker_mu (Execute or RunTasks)
        impl->IssueNotify(call, am_id);
      },
      deadline);
  if (s.ok()) {
    impl->notes_sent.fetch_add(1, std::memory_order_relaxed);
  } else {
    impl->failed_calls.fetch_add(1, std::memory_order_relaxed);
  }
  return s;
}

Status UcxTransport::SetNotificationHandler(uint16_t id, NotificationHandler handler) {
  if (id >= kFirstReservedMessageId) {
    return absl::InvalidArgumentError(
        absl::StrCat("notification id ", id, " is reserved for the transport"));
  }
  Impl* impl = impl_.get();
  return impl->RunOnThread([impl, id, handler = std::move(handler)]() mutable -> Status {
    impl->worker_mu.AssertHeld();  // tasks run under worker_mu (RunTasks)
    auto slot = std::make_unique<Impl::HandlerSlot>();
    slot->impl = impl;
    slot->handler = std::move(handler);
    ucp_am_handler_param_t param;
    std::memset(&param, 0, sizeof param);
    param.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                       UCP_AM_HANDLER_PARAM_FIELD_ARG;
    param.id = id;
    param.cb = &Impl::OnNotification;
    param.arg = slot.get();
    ucs_status_t st = ucp_worker_set_am_recv_handler(impl->worker, &param);
    if (st != UCS_OK) return UcxError("ucp_worker_set_am_recv_handler", st);
    impl->handlers[id] = std::move(slot);  // the old slot (if any) is no longer referenced
    return OkStatus();
  });
}

TransportStats UcxTransport::Stats() const {
  TransportStats s;
  s.reads = impl_->reads.load(std::memory_order_relaxed);
  s.bytes_read = impl_->bytes_read.load(std::memory_order_relaxed);
  s.failed_calls = impl_->failed_calls.load(std::memory_order_relaxed);
  s.notifications_sent = impl_->notes_sent.load(std::memory_order_relaxed);
  s.notifications_received = impl_->notes_received.load(std::memory_order_relaxed);
  s.caller_driven_calls = impl_->caller_calls.load(std::memory_order_relaxed);
  s.queued_calls = impl_->queued_calls.load(std::memory_order_relaxed);
  s.fetches_served = impl_->fetches_served.load(std::memory_order_relaxed);
  s.fetch_ops_served = impl_->fetch_ops_served.load(std::memory_order_relaxed);
  s.fetch_bytes_served = impl_->fetch_bytes_served.load(std::memory_order_relaxed);
  s.fetches_refused = impl_->fetches_refused.load(std::memory_order_relaxed);
  return s;
}

}  // namespace kvstash::transport
