#include "kvstash/transport/ucx_transport.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"

namespace kvstash::transport {
namespace {

// While requests are out, the progress thread also wakes up this often without an event: a
// safety net should a transport not signal the worker's event fd for some completion. Idle, it
// wakes up once a second at most.
constexpr int kBusyWakeMs = 20;
constexpr int kIdleWakeMs = 1000;
// How long a cancelled call may take to see its requests completed after a forced close.
constexpr auto kCancelGrace = std::chrono::seconds(10);
// How long closing an endpoint may progress the worker.
constexpr auto kCloseBudget = std::chrono::seconds(2);
// caller_progress: how long a caller tries to take the worker from the progress thread (which
// lets go at its next loop iteration unless it is busy moving bytes) before it queues its work
// instead, and how long it keeps progressing without any event before it hands the worker back
// to the progress thread and sleeps (a slow or stopped peer must not keep a caller spinning).
constexpr auto kCallerLockWait = std::chrono::microseconds(50);
constexpr auto kCallerIdleHandoff = std::chrono::microseconds(500);

Status UcxError(const char* what, ucs_status_t status) {
  return absl::InternalError(absl::StrCat(what, ": ", ucs_status_string(status)));
}

Status PeerError(const char* what, ucs_status_t status) {
  return absl::UnavailableError(absl::StrCat(what, ": ", ucs_status_string(status)));
}

}  // namespace

struct UcxTransport::Impl {
  // A connected peer. `ep` and `rkey` are touched only under worker_mu.
  struct Peer {
    ucp_ep_h ep = nullptr;
    ucp_rkey_h rkey = nullptr;
    uint64_t address = 0;
    uint64_t bytes = 0;
    std::atomic<bool> failed{false};
    std::atomic<ucs_status_t> failure{UCS_OK};
  };

  // One Read or Notify call: its requests in flight and its outcome.
  struct Call {
    std::mutex mu;
    std::condition_variable cv;
    int pending ABSL_GUARDED_BY(mu) = 0;  // requests issued and not completed
    bool issued ABSL_GUARDED_BY(mu) = false;
    Status status ABSL_GUARDED_BY(mu);
    std::atomic<bool> finished{false};  // issued && pending == 0; read while polling
    std::vector<void*> requests;        // under worker_mu
    std::string payload;                // a notification's bytes, alive until sent
    std::shared_ptr<Peer> peer;
    Impl* impl = nullptr;
    uint64_t bytes = 0;
    uint64_t ops = 0;

    void Fail(Status s) {
      std::lock_guard<std::mutex> lock(mu);
      if (status.ok()) status = std::move(s);
    }
  };

  struct Region {
    ucp_mem_h memh = nullptr;
    uintptr_t base = 0;
    uint64_t bytes = 0;
  };

  struct HandlerSlot {
    Impl* impl = nullptr;
    NotificationHandler handler;
  };

  TransportOptions options;
  ucp_context_h context = nullptr;
  ucp_worker_h worker = nullptr;
  std::string address;
  bool cuda = false;
  int worker_fd = -1;
  int wake_fd = -1;
  int epoll_fd = -1;
  std::thread thread;

  // Held by whichever thread uses the worker: the progress thread, or a caller driving its own
  // call (caller_progress). Taken before task_mu and a call's mu, never after them.
  std::mutex worker_mu;
  // Callers trying to take worker_mu: the progress thread then skips its polling window and lets
  // go of the worker.
  std::atomic<int> callers_waiting{0};

  std::mutex task_mu;
  std::deque<std::function<void()>> tasks ABSL_GUARDED_BY(task_mu);
  bool stopping ABSL_GUARDED_BY(task_mu) = false;

  mutable std::mutex peers_mu;
  std::map<PeerId, std::shared_ptr<Peer>> peers ABSL_GUARDED_BY(peers_mu);
  PeerId next_peer ABSL_GUARDED_BY(peers_mu) = 1;

  // Under worker_mu.
  std::vector<Region> regions;
  std::map<uint16_t, std::unique_ptr<HandlerSlot>> handlers;
  int outstanding = 0;  // requests in flight, all calls

  std::atomic<uint64_t> reads{0}, bytes_read{0}, failed_calls{0}, notes_sent{0}, notes_received{0};
  std::atomic<uint64_t> caller_calls{0}, queued_calls{0};

  ~Impl() {
    if (epoll_fd >= 0) ::close(epoll_fd);
    if (wake_fd >= 0) ::close(wake_fd);
    if (worker != nullptr) ucp_worker_destroy(worker);
    if (context != nullptr) ucp_cleanup(context);
  }

  void Post(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(task_mu);
      tasks.push_back(std::move(task));
    }
    Wake();
  }

  // Wakes the progress thread from epoll.
  void Wake() {
    uint64_t one = 1;
    ssize_t n = ::write(wake_fd, &one, sizeof one);
    (void)n;  // the counter cannot overflow with our increments; EAGAIN still leaves it readable
  }

  // Runs `fn` on the progress thread and returns its result.
  Status RunOnThread(std::function<Status()> fn) {
    struct Done {
      std::mutex mu;
      std::condition_variable cv;
      bool done = false;
      Status status;
    };
    auto done = std::make_shared<Done>();
    Post([done, fn = std::move(fn)] {
      Status s = fn();
      std::lock_guard<std::mutex> lock(done->mu);
      done->status = std::move(s);
      done->done = true;
      done->cv.notify_all();
    });
    std::unique_lock<std::mutex> lock(done->mu);
    done->cv.wait(lock, [&] { return done->done; });
    return done->status;
  }

  // Returns false once asked to stop; stamps *activity when it ran something. Under worker_mu.
  bool RunTasks(Clock::time_point* activity) {
    std::deque<std::function<void()>> batch;
    bool stop;
    {
      std::lock_guard<std::mutex> lock(task_mu);
      batch.swap(tasks);
      stop = stopping;
    }
    for (auto& task : batch) task();
    if (!batch.empty()) *activity = Clock::now();
    return !stop || !batch.empty();
  }

  bool TasksQueued() {
    std::lock_guard<std::mutex> lock(task_mu);
    return !tasks.empty() || stopping;
  }

  void Loop() {
    epoll_event events[2];
    Clock::time_point last_activity = Clock::now();
    std::unique_lock<std::mutex> w(worker_mu);
    while (RunTasks(&last_activity)) {
      while (ucp_worker_progress(worker) != 0) last_activity = Clock::now();
      if (TasksQueued()) continue;
      // Right after activity the next request or completion usually follows within
      // microseconds: poll for progress_poll before paying an epoll sleep and wake-up, letting
      // go of the worker between polls. Idle, or when a caller wants the worker, the thread
      // sleeps.
      if (Clock::now() - last_activity < options.progress_poll &&
          callers_waiting.load(std::memory_order_relaxed) == 0) {
        w.unlock();
        std::this_thread::yield();
        w.lock();
        continue;
      }
      ucs_status_t armed = ucp_worker_arm(worker);
      if (armed == UCS_ERR_BUSY) continue;  // events arrived meanwhile: progress again
      const int timeout_ms = outstanding > 0 ? kBusyWakeMs : kIdleWakeMs;
      w.unlock();
      int n = ::epoll_wait(epoll_fd, events, 2, timeout_ms);
      for (int i = 0; i < n; ++i) {
        if (events[i].data.fd == wake_fd) {
          uint64_t count;
          ssize_t r = ::read(wake_fd, &count, sizeof count);
          (void)r;
        }
      }
      w.lock();
    }
    // Stopping: close every endpoint and unmap every region while the worker still runs.
    std::map<PeerId, std::shared_ptr<Peer>> all;
    {
      std::lock_guard<std::mutex> lock(peers_mu);
      all.swap(peers);
    }
    for (auto& [id, peer] : all) ClosePeer(*peer);
    for (Region& region : regions) ucp_mem_unmap(context, region.memh);
    regions.clear();
    handlers.clear();
  }

  // --- under worker_mu (the progress thread, or a caller driving its call) ----

  ucp_mem_h MemhFor(const void* p, uint64_t n) const {
    auto addr = reinterpret_cast<uintptr_t>(p);
    for (const Region& r : regions) {
      if (addr >= r.base && addr - r.base <= r.bytes && n <= r.bytes - (addr - r.base)) {
        return r.memh;
      }
    }
    return nullptr;
  }

  void ClosePeer(Peer& peer) {
    if (peer.rkey != nullptr) {
      ucp_rkey_destroy(peer.rkey);
      peer.rkey = nullptr;
    }
    if (peer.ep == nullptr) return;
    ucp_request_param_t param;
    std::memset(&param, 0, sizeof param);
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_EP_CLOSE_FLAG_FORCE;
    ucs_status_ptr_t req = ucp_ep_close_nbx(peer.ep, &param);
    peer.ep = nullptr;
    peer.failed = true;
    if (UCS_PTR_IS_PTR(req)) {
      const auto until = Clock::now() + kCloseBudget;
      while (ucp_request_check_status(req) == UCS_INPROGRESS && Clock::now() < until) {
        ucp_worker_progress(worker);
      }
      ucp_request_free(req);
    }
  }

  static void OnEndpointError(void* arg, ucp_ep_h, ucs_status_t status) {
    auto* peer = static_cast<Peer*>(arg);
    peer->failure = status;
    peer->failed = true;
  }

  static void OnRequestDone(void* request, ucs_status_t status, void* user_data) {
    auto* holder = static_cast<std::shared_ptr<Call>*>(user_data);
    std::shared_ptr<Call> call = std::move(*holder);
    delete holder;
    for (auto it = call->requests.begin(); it != call->requests.end(); ++it) {
      if (*it == request) {
        call->requests.erase(it);
        break;
      }
    }
    ucp_request_free(request);
    --call->impl->outstanding;
    Complete(call, status);
  }

  static void Complete(const std::shared_ptr<Call>& call, ucs_status_t status) {
    std::lock_guard<std::mutex> lock(call->mu);
    if (status != UCS_OK && call->status.ok()) {
      call->status = status == UCS_ERR_CANCELED
                         ? absl::DeadlineExceededError("UCX request cancelled after its deadline")
                         : PeerError("UCX request failed", status);
    }
    if (--call->pending == 0 && call->issued) {
      call->finished.store(true, std::memory_order_release);
      call->cv.notify_all();
    }
  }

  // Takes the outcome of an nbx call: done now, failed now, or a request completing later.
  void Track(const std::shared_ptr<Call>& call, ucs_status_ptr_t req,
             std::shared_ptr<Call>* holder) {
    if (UCS_PTR_IS_PTR(req)) {
      call->requests.push_back(req);
      ++outstanding;
      return;
    }
    delete holder;  // no callback will come
    ucs_status_t status = UCS_PTR_STATUS(req);
    Complete(call, status);
  }

  ucp_request_param_t ParamFor(std::shared_ptr<Call>** holder, const std::shared_ptr<Call>& call) {
    ucp_request_param_t param;
    std::memset(&param, 0, sizeof param);
    *holder = new std::shared_ptr<Call>(call);
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    param.cb.send = &Impl::OnRequestDone;
    param.user_data = *holder;
    return param;
  }

  void BeginPending(const std::shared_ptr<Call>& call) {
    std::lock_guard<std::mutex> lock(call->mu);
    ++call->pending;
  }

  void IssueReads(const std::shared_ptr<Call>& call, const std::vector<ReadOp>& ops) {
    Peer& peer = *call->peer;
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

  void IssueNotify(const std::shared_ptr<Call>& call, uint16_t id) {
    Peer& peer = *call->peer;
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

  static void MarkIssued(const std::shared_ptr<Call>& call) {
    std::lock_guard<std::mutex> lock(call->mu);
    call->issued = true;
    if (call->pending == 0) {
      call->finished.store(true, std::memory_order_release);
      call->cv.notify_all();
    }
  }

  // After a deadline: cancel what is still out and close the endpoint, which completes every
  // request of it (with an error) before this returns.
  void CancelCall(const std::shared_ptr<Call>& call) {
    std::vector<void*> requests = call->requests;
    for (void* req : requests) ucp_request_cancel(worker, req);
    Peer& peer = *call->peer;
    if (!peer.failed.exchange(true)) peer.failure = UCS_ERR_TIMED_OUT;
    ClosePeer(peer);
  }

  static ucs_status_t OnNotification(void* arg, const void*, size_t, void* data, size_t length,
                                     const ucp_am_recv_param_t* param) {
    auto* slot = static_cast<HandlerSlot*>(arg);
    if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) {
      // Notifications are sent eagerly; a rendezvous one is not ours. Dropped (UCS_OK).
      return UCS_OK;
    }
    slot->impl->notes_received.fetch_add(1, std::memory_order_relaxed);
    if (slot->handler) slot->handler(std::string_view(static_cast<const char*>(data), length));
    return UCS_OK;
  }

  // Issues `call` with `issue` and waits for it. With caller_progress, when the worker can be
  // taken within kCallerLockWait, this thread issues and progresses it until the call completes
  // (running queued work of other callers meanwhile); if nothing happens for kCallerIdleHandoff
  // or the deadline passes first, the progress thread takes over and Await finishes the call.
  // Otherwise the work is queued for the progress thread.
  Status Execute(const std::shared_ptr<Call>& call, std::function<void()> issue,
                 Clock::time_point deadline) {
    if (options.caller_progress) {
      std::unique_lock<std::mutex> w(worker_mu, std::defer_lock);
      callers_waiting.fetch_add(1, std::memory_order_relaxed);
      const Clock::time_point give_up = Clock::now() + kCallerLockWait;
      bool got = w.try_lock();
      while (!got && Clock::now() < give_up) {
        std::this_thread::yield();
        got = w.try_lock();
      }
      callers_waiting.fetch_sub(1, std::memory_order_relaxed);
      if (got) {
        caller_calls.fetch_add(1, std::memory_order_relaxed);
        issue();
        Clock::time_point last_event = Clock::now(), ignored;
        while (!call->finished.load(std::memory_order_acquire)) {
          (void)RunTasks(&ignored);
          if (ucp_worker_progress(worker) != 0) {
            last_event = Clock::now();
            continue;
          }
          const Clock::time_point now = Clock::now();
          if (now >= deadline || now - last_event > kCallerIdleHandoff) break;
        }
        const bool finished = call->finished.load(std::memory_order_acquire);
        const bool others = outstanding > 0;
        w.unlock();
        // Requests of other calls still in flight, queued work, or this call itself: the
        // progress thread carries on (it may be asleep in epoll on an armed worker).
        if (!finished || others || TasksQueued()) Wake();
        if (finished) {
          std::lock_guard<std::mutex> lock(call->mu);
          return call->status;
        }
        return Await(call, deadline);
      }
    }
    queued_calls.fetch_add(1, std::memory_order_relaxed);
    Post(std::move(issue));
    return Await(call, deadline);
  }

  // Waits for `call` until the deadline; cancels it after.
  Status Await(const std::shared_ptr<Call>& call, Clock::time_point deadline) {
    // A transfer usually completes within tens of microseconds of the last byte; polling that
    // long saves the caller's wake-up (tens of microseconds on a VM) before it blocks.
    const Clock::time_point poll_until = std::min(deadline, Clock::now() + options.wait_poll);
    while (!call->finished.load(std::memory_order_acquire) && Clock::now() < poll_until) {
      std::this_thread::yield();
    }
    {
      std::unique_lock<std::mutex> lock(call->mu);
      if (call->cv.wait_until(lock, deadline, [&] { return call->issued && call->pending == 0; })) {
        return call->status;
      }
    }
    Post([this, call] { CancelCall(call); });
    std::unique_lock<std::mutex> lock(call->mu);
    if (!call->cv.wait_for(lock, kCancelGrace,
                           [&] { return call->issued && call->pending == 0; })) {
      // Cannot happen with UCX's forced close; if it did, the caller's memory could still be
      // written, so say so loudly.
      return absl::InternalError("UCX requests still in flight after their endpoint was closed");
    }
    return absl::DeadlineExceededError(
        absl::StrCat("UCX transfer did not complete by its deadline",
                     call->status.ok() ? "" : " (" + std::string(call->status.message()) + ")"));
  }
};

UcxTransport::UcxTransport(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

UcxTransport::~UcxTransport() {
  {
    std::lock_guard<std::mutex> lock(impl_->task_mu);
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
  ::setenv("UCX_TCP_TX_SEG_SIZE", "512k", /*overwrite=*/0);
  ::setenv("UCX_TCP_RX_SEG_SIZE", "512k", /*overwrite=*/0);
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
  impl->thread = std::thread([raw] { raw->Loop(); });
  return std::unique_ptr<UcxTransport>(new UcxTransport(std::move(impl)));
}

const std::string& UcxTransport::worker_address() const { return impl_->address; }
bool UcxTransport::SupportsCuda() const { return impl_->cuda; }

Result<RemoteRegion> UcxTransport::RegisterRegion(void* base, uint64_t bytes, MemoryKind kind) {
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
  Status s = impl->RunOnThread([impl, base, bytes, kind, &out]() -> Status {
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
    out.packed_rkey.assign(static_cast<const char*>(rkey), rkey_bytes);
    ucp_rkey_buffer_release(rkey);
    out.address = reinterpret_cast<uintptr_t>(base);
    out.bytes = bytes;
    impl->regions.push_back({memh, reinterpret_cast<uintptr_t>(base), bytes});
    return OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

Result<PeerId> UcxTransport::Connect(const std::string& worker_address, const RemoteRegion& region,
                                     Clock::time_point deadline) {
  if (worker_address.empty() || region.packed_rkey.empty() || region.bytes == 0) {
    return absl::InvalidArgumentError("Connect: empty worker address, rkey or region");
  }
  auto peer = std::make_shared<Impl::Peer>();
  peer->address = region.address;
  peer->bytes = region.bytes;
  Impl* impl = impl_.get();
  Status s = impl->RunOnThread([impl, &worker_address, &region, peer]() -> Status {
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
    st = ucp_ep_rkey_unpack(peer->ep, region.packed_rkey.data(), &peer->rkey);
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
    std::lock_guard<std::mutex> lock(impl_->peers_mu);
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
    std::lock_guard<std::mutex> lock(impl_->peers_mu);
    auto it = impl_->peers.find(id);
    if (it == impl_->peers.end()) return;
    peer = std::move(it->second);
    impl_->peers.erase(it);
  }
  Impl* impl = impl_.get();
  (void)impl->RunOnThread([impl, peer] {
    impl->ClosePeer(*peer);
    return OkStatus();
  });
}

bool UcxTransport::Healthy(PeerId id) const {
  std::lock_guard<std::mutex> lock(impl_->peers_mu);
  auto it = impl_->peers.find(id);
  return it != impl_->peers.end() && !it->second->failed;
}

Status UcxTransport::Read(PeerId id, std::span<const ReadOp> ops, Clock::time_point deadline) {
  std::shared_ptr<Impl::Peer> peer;
  {
    std::lock_guard<std::mutex> lock(impl_->peers_mu);
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
      [impl, call, list = std::vector<ReadOp>(ops.begin(), ops.end())] {
        impl->IssueReads(call, list);
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
    std::lock_guard<std::mutex> lock(impl_->peers_mu);
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
      call, [impl, call, am_id] { impl->IssueNotify(call, am_id); }, deadline);
  if (s.ok()) {
    impl->notes_sent.fetch_add(1, std::memory_order_relaxed);
  } else {
    impl->failed_calls.fetch_add(1, std::memory_order_relaxed);
  }
  return s;
}

Status UcxTransport::SetNotificationHandler(uint16_t id, NotificationHandler handler) {
  Impl* impl = impl_.get();
  return impl->RunOnThread([impl, id, handler = std::move(handler)]() mutable -> Status {
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
  return s;
}

}  // namespace kvstash::transport
