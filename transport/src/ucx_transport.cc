#include "kvstash/transport/ucx_transport.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "kvstash/common/coding.h"

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

// Fetch's two active messages (ids reserved by UcxTransport::kFirstReservedMessageId):
//   request  reader -> server  fixed64 call id, varint32 length + the reader's worker address,
//                              fixed64 server region address, fixed64 token,
//                              varint32 rkey count, per rkey: varint32 length + UCX packed rkey of
//                              a reader region, varint32 op count, per op: fixed64 remote offset,
//                              fixed64 reader address, fixed64 length, varint32 rkey index
//   data     server -> reader  header: fixed64 call id, fixed32 op index, fixed64 offset in the
//                              op; payload: that fragment's bytes (at most kFetchFragment)
//   refused  server -> reader  fixed64 call id, fixed32 absl::StatusCode, the message's bytes
// (The request still names the reader's regions' rkeys; data goes as active messages instead.)
constexpr uint16_t kFetchRequestId = UcxTransport::kFirstReservedMessageId;
constexpr uint16_t kFetchDoneId = UcxTransport::kFirstReservedMessageId + 1;
constexpr uint16_t kFetchDataId = UcxTransport::kFirstReservedMessageId + 2;
constexpr size_t kFetchDataHeader = 20;
// Fragments fit one UCX TCP segment (512 KiB, set in Create): sent zero-copy from the region,
// received in one segment and copied once into place, never reassembled by UCX.
constexpr uint64_t kFetchFragment = (512 << 10) - (4 << 10);
// Bounds on what a request may ask for (a malformed or hostile one is refused, not served).
constexpr uint32_t kMaxFetchRkeys = 16;
constexpr uint32_t kMaxFetchOps = 1 << 16;
// RemoteRegion::packed_rkey: fixed64 token, then UCX's packed rkey.
constexpr size_t kTokenBytes = 8;
// Endpoints a serving transport keeps to the readers it writes to.
constexpr size_t kMaxServeEndpoints = 1024;
constexpr uint32_t kMaxWorkerAddressBytes = 64 << 10;

}  // namespace

struct UcxTransport::Impl {
  // A connected peer. `ep` and `rkey` are touched only under worker_mu.
  struct Peer {
    Impl* impl = nullptr;
    ucp_ep_h ep = nullptr;
    ucp_rkey_h rkey = nullptr;
    uint64_t address = 0;
    uint64_t bytes = 0;
    uint64_t token = 0;  // the region's Fetch token
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
    uint64_t fetch_id = 0;          // a Fetch waiting for its answer (under worker_mu); 0: none
    std::vector<ReadOp> fetch_ops;  // a Fetch's ranges, and its bytes not landed yet (worker_mu)
    uint64_t fetch_remaining = 0;

    void Fail(Status s) {
      std::lock_guard<std::mutex> lock(mu);
      if (status.ok()) status = std::move(s);
    }
  };

  struct Region {
    ucp_mem_h memh = nullptr;
    uintptr_t base = 0;
    uint64_t bytes = 0;
    uint64_t token = 0;    // what a Fetch request for this region must carry
    std::string ucx_rkey;  // UCX's packed rkey, sent in this node's own Fetch requests
  };

  // A Fetch request being served: its data messages in flight (or its refusal).
  struct Serve {
    ucp_ep_h ep = nullptr;  // to the reader: its data or refusal
    uint64_t call_id = 0;
    std::vector<ucp_rkey_h> rkeys;
    int pending = 0;
    bool issued = false;
    ucs_status_t status = UCS_OK;
    uint64_t ops = 0;
    uint64_t bytes = 0;
    std::string answer;                                       // a refusal, alive until sent
    std::vector<std::array<char, kFetchDataHeader>> headers;  // alive until the sends complete
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
  // Fetch, reader side: calls waiting for their done message, by id.
  std::map<uint64_t, std::shared_ptr<Call>> fetch_calls;
  uint64_t next_fetch_id = 1;
  // Fetch, serving side: requests received (served after the progress call that delivered them,
  // not inside UCX's callback), and those whose puts are in flight.
  std::vector<std::pair<ucp_ep_h, std::string>> fetch_requests;
  std::vector<std::unique_ptr<Serve>> serving;
  // Endpoints to readers, by their worker address, created on their first Fetch request and kept
  // (the endpoint UCX created for an incoming connection cannot carry RMA or flushes until this
  // side creates its own endpoint to that worker). A failed one is closed and created again on
  // the reader's next request.
  struct ServeEndpoint {
    ucp_ep_h ep = nullptr;
    bool failed = false;  // set by UCX's error callback, under worker_mu
  };
  std::map<std::string, std::unique_ptr<ServeEndpoint>> serve_eps;

  std::atomic<uint64_t> reads{0}, bytes_read{0}, failed_calls{0}, notes_sent{0}, notes_received{0};
  std::atomic<uint64_t> caller_calls{0}, queued_calls{0};
  std::atomic<uint64_t> fetches_served{0}, fetch_ops_served{0}, fetch_bytes_served{0},
      fetches_refused{0};

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
      // Fetch requests are started right after the progress call that delivered them (their
      // reply endpoint is known valid there).
      while (ucp_worker_progress(worker) != 0) {
        last_activity = Clock::now();
        (void)ServeFetches();
      }
      if (ServeFetches()) {
        last_activity = Clock::now();
        continue;
      }
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
      const int timeout_ms = outstanding > 0 || !serving.empty() ? kBusyWakeMs : kIdleWakeMs;
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
    for (auto& [address, endpoint] : serve_eps) CloseEndpoint(endpoint->ep);
    // Fetches still being served: their reply endpoints go with the worker. One with requests in
    // flight is left allocated (their callbacks may still run while the worker is destroyed).
    for (auto& serve : serving) {
      if (serve->pending > 0) {
        (void)serve.release();
        continue;
      }
      for (ucp_rkey_h rkey : serve->rkeys) ucp_rkey_destroy(rkey);
    }
    serving.clear();
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
    ucp_ep_h ep = peer.ep;
    peer.ep = nullptr;
    peer.failed = true;
    CloseEndpoint(ep);
    FailFetches(&peer, UCS_ERR_CANCELED);
  }

  // Force-closes `ep`, which completes its requests with an error.
  void CloseEndpoint(ucp_ep_h ep) {
    ucp_request_param_t param;
    std::memset(&param, 0, sizeof param);
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_EP_CLOSE_FLAG_FORCE;
    ucs_status_ptr_t req = ucp_ep_close_nbx(ep, &param);
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
    // Fetches waiting on this peer get no answer any more (its connection is gone, so nothing
    // more of theirs lands either).
    if (peer->impl != nullptr) peer->impl->FailFetches(peer, status);
  }

  // Completes every Fetch waiting on `peer` with `status`. Under worker_mu.
  void FailFetches(const Peer* peer, ucs_status_t status) {
    for (auto it = fetch_calls.begin(); it != fetch_calls.end();) {
      if (it->second->peer.get() == peer) {
        std::shared_ptr<Call> call = std::move(it->second);
        it = fetch_calls.erase(it);
        call->fetch_id = 0;
        Complete(call, status);
      } else {
        ++it;
      }
    }
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
    ClosePeer(peer);  // after this nothing more of a Fetch lands: its connection is gone
    if (call->fetch_id != 0) {
      fetch_calls.erase(call->fetch_id);
      call->fetch_id = 0;
      Complete(call, UCS_ERR_CANCELED);
    }
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

  // --- Fetch, reader side (under worker_mu) ----------------------------------

  // Sends the request of a Fetch; the call completes when its last byte lands (OnFetchData) or
  // the peer's refusal arrives.
  void IssueFetch(const std::shared_ptr<Call>& call, const std::vector<ReadOp>& ops) {
    Peer& peer = *call->peer;
    if (peer.failed || peer.ep == nullptr) {
      call->Fail(PeerError("peer endpoint failed", peer.failure.load()));
      MarkIssued(call);
      return;
    }
    // The landing regions' rkeys, and which one each op lands in.
    std::vector<const Region*> used;
    std::vector<uint32_t> index;
    index.reserve(ops.size());
    for (const ReadOp& op : ops) {
      const Region* region = RegionFor(op.local, op.length);
      if (region == nullptr) {
        call->Fail(absl::InvalidArgumentError(
            "Fetch: a destination lies outside every region registered here"));
        MarkIssued(call);
        return;
      }
      size_t k = 0;
      while (k < used.size() && used[k] != region) ++k;
      if (k == used.size()) used.push_back(region);
      index.push_back(static_cast<uint32_t>(k));
    }
    const uint64_t id = next_fetch_id++;
    call->payload.clear();
    PutFixed64(&call->payload, id);
    PutVarint32(&call->payload, static_cast<uint32_t>(address.size()));
    call->payload.append(address);
    PutFixed64(&call->payload, peer.address);
    PutFixed64(&call->payload, peer.token);
    PutVarint32(&call->payload, static_cast<uint32_t>(used.size()));
    for (const Region* region : used) {
      PutVarint32(&call->payload, static_cast<uint32_t>(region->ucx_rkey.size()));
      call->payload.append(region->ucx_rkey);
    }
    PutVarint32(&call->payload, static_cast<uint32_t>(ops.size()));
    for (size_t i = 0; i < ops.size(); ++i) {
      PutFixed64(&call->payload, ops[i].remote_offset);
      PutFixed64(&call->payload, reinterpret_cast<uintptr_t>(ops[i].local));
      PutFixed64(&call->payload, ops[i].length);
      PutVarint32(&call->payload, index[i]);
    }
    call->fetch_id = id;
    call->fetch_ops = ops;
    call->fetch_remaining = 0;
    for (const ReadOp& op : ops) call->fetch_remaining += op.length;
    fetch_calls[id] = call;
    BeginPending(call);  // the data (or a refusal)
    std::shared_ptr<Call>* holder;
    ucp_request_param_t param = ParamFor(&holder, call);
    param.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_AM_SEND_FLAG_EAGER | UCP_AM_SEND_FLAG_REPLY;
    BeginPending(call);
    Track(call,
          ucp_am_send_nbx(peer.ep, kFetchRequestId, nullptr, 0, call->payload.data(),
                          call->payload.size(), &param),
          holder);
    bool failed;
    {
      std::lock_guard<std::mutex> lock(call->mu);
      failed = !call->status.ok();
    }
    if (failed && call->fetch_id != 0) {  // the request never left: no answer will come
      fetch_calls.erase(call->fetch_id);
      call->fetch_id = 0;
      Complete(call, UCS_OK);
    }
    MarkIssued(call);
  }

  const Region* RegionFor(const void* p, uint64_t n) const {
    auto addr = reinterpret_cast<uintptr_t>(p);
    for (const Region& r : regions) {
      if (addr >= r.base && addr - r.base <= r.bytes && n <= r.bytes - (addr - r.base)) return &r;
    }
    return nullptr;
  }

  static ucs_status_t OnFetchDone(void* arg, const void*, size_t, void* data, size_t length,
                                  const ucp_am_recv_param_t* param) {
    auto* impl = static_cast<Impl*>(arg);
    if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) return UCS_OK;
    std::string_view in(static_cast<const char*>(data), length);
    uint64_t id;
    uint32_t code;
    if (!GetFixed64(&in, &id) || !GetFixed32(&in, &code)) return UCS_OK;
    auto it = impl->fetch_calls.find(id);
    if (it == impl->fetch_calls.end()) return UCS_OK;  // cancelled meanwhile
    std::shared_ptr<Call> call = std::move(it->second);
    impl->fetch_calls.erase(it);
    call->fetch_id = 0;
    if (code != 0) {
      call->Fail(Status(static_cast<absl::StatusCode>(code),
                        absl::StrCat("peer refused the Fetch: ", std::string(in))));
    }
    Complete(call, UCS_OK);
    return UCS_OK;
  }

  // A fragment of a Fetch's data: copied into place; the call completes with its last byte.
  static ucs_status_t OnFetchData(void* arg, const void* header, size_t header_length, void* data,
                                  size_t length, const ucp_am_recv_param_t* param) {
    auto* impl = static_cast<Impl*>(arg);
    if (header_length != kFetchDataHeader) return UCS_OK;
    const char* h = static_cast<const char*>(header);
    const uint64_t id = DecodeFixed64(h);
    const uint32_t index = DecodeFixed32(h + 8);
    const uint64_t at = DecodeFixed64(h + 12);
    auto it = impl->fetch_calls.find(id);
    if (it == impl->fetch_calls.end()) return UCS_OK;  // cancelled meanwhile: dropped
    std::shared_ptr<Call> call = it->second;
    if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0 || index >= call->fetch_ops.size() ||
        at > call->fetch_ops[index].length || length > call->fetch_ops[index].length - at ||
        length > call->fetch_remaining) {
      impl->fetch_calls.erase(it);
      call->fetch_id = 0;
      call->Fail(absl::DataLossError("the peer sent Fetch data outside the ranges asked for"));
      Complete(call, UCS_OK);
      return UCS_OK;
    }
    std::memcpy(static_cast<char*>(call->fetch_ops[index].local) + at, data, length);
    call->fetch_remaining -= length;
    if (call->fetch_remaining == 0) {
      impl->fetch_calls.erase(it);
      call->fetch_id = 0;
      Complete(call, UCS_OK);
    }
    return UCS_OK;
  }

  // --- Fetch, serving side (under worker_mu) ---------------------------------

  static ucs_status_t OnFetchRequest(void* arg, const void*, size_t, void* data, size_t length,
                                     const ucp_am_recv_param_t* param) {
    auto* impl = static_cast<Impl*>(arg);
    if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0 ||
        (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) == 0 || param->reply_ep == nullptr) {
      impl->fetches_refused.fetch_add(1, std::memory_order_relaxed);
      return UCS_OK;
    }
    // Served after this callback returns (ServeFetches), not from inside UCX's progress.
    impl->fetch_requests.emplace_back(param->reply_ep,
                                      std::string(static_cast<const char*>(data), length));
    return UCS_OK;
  }

  // Starts the requests received and answers those whose puts completed. Returns whether it did
  // anything.
  bool ServeFetches() {
    bool any = false;
    if (!fetch_requests.empty()) {
      std::vector<std::pair<ucp_ep_h, std::string>> batch;
      batch.swap(fetch_requests);
      for (auto& [ep, request] : batch) StartServe(ep, request);
      any = true;
    }
    for (size_t i = 0; i < serving.size();) {
      Serve& serve = *serving[i];
      if (!serve.issued || serve.pending > 0) {
        ++i;
        continue;
      }
      FinishServe(serve);
      serving.erase(serving.begin() + static_cast<std::ptrdiff_t>(i));
      any = true;
    }
    return any;
  }

  void StartServe(ucp_ep_h reply_ep, const std::string& request) {
    auto serve = std::make_unique<Serve>();
    serve->ep = reply_ep;  // refusals before the reader's endpoint exists go back this way
    std::string_view in(request);
    uint64_t address, token;
    uint32_t nkeys, address_bytes;
    std::string_view worker_address;
    auto refuse = [&](std::string why, absl::StatusCode code = absl::StatusCode::kInvalidArgument) {
      fetches_refused.fetch_add(1, std::memory_order_relaxed);
      for (ucp_rkey_h rkey : serve->rkeys) ucp_rkey_destroy(rkey);
      serve->rkeys.clear();
      serve->answer.clear();
      PutFixed64(&serve->answer, serve->call_id);
      PutFixed32(&serve->answer, static_cast<uint32_t>(code));
      serve->answer.append(why);
      SendAnswer(std::move(serve));
    };
    if (!GetFixed64(&in, &serve->call_id)) {
      fetches_refused.fetch_add(1, std::memory_order_relaxed);
      return;  // nothing to answer
    }
    if (!GetVarint32(&in, &address_bytes) || address_bytes == 0 ||
        address_bytes > kMaxWorkerAddressBytes || !GetBytes(&in, address_bytes, &worker_address) ||
        !GetFixed64(&in, &address) || !GetFixed64(&in, &token) || !GetVarint32(&in, &nkeys) ||
        nkeys == 0 || nkeys > kMaxFetchRkeys) {
      return refuse("malformed request");
    }
    const Region* region = nullptr;
    for (const Region& r : regions) {
      if (r.base == address && r.token == token) region = &r;
    }
    if (region == nullptr) return refuse("no such region, or a wrong token");
    // Only a reader that proved the token gets an endpoint from this node.
    ucp_ep_h ep = EndpointTo(std::string(worker_address));
    if (ep == nullptr) {
      return refuse("cannot create an endpoint to the reader", absl::StatusCode::kUnavailable);
    }
    serve->ep = ep;
    for (uint32_t k = 0; k < nkeys; ++k) {
      uint32_t n;
      std::string_view blob;
      if (!GetVarint32(&in, &n) || !GetBytes(&in, n, &blob)) return refuse("malformed rkey");
      (void)blob;  // the data goes as active messages; rkeys are part of the request format
    }
    struct Op {
      uint64_t offset, dest, length;
      uint32_t key;
    };
    std::vector<Op> ops;
    uint32_t nops;
    if (!GetVarint32(&in, &nops) || nops > kMaxFetchOps) return refuse("malformed op list");
    ops.reserve(nops);
    for (uint32_t i = 0; i < nops; ++i) {
      Op op;
      if (!GetFixed64(&in, &op.offset) || !GetFixed64(&in, &op.dest) ||
          !GetFixed64(&in, &op.length) || !GetVarint32(&in, &op.key)) {
        return refuse("malformed op");
      }
      if (op.key >= nkeys || op.length == 0 || op.offset > region->bytes ||
          op.length > region->bytes - op.offset) {
        return refuse(absl::StrCat("range of ", op.length, " bytes at offset ", op.offset,
                                   " lies outside the region of ", region->bytes, " bytes"));
      }
      ops.push_back(op);
    }
    // Every range goes as active messages of at most kFetchFragment, sent zero-copy from the
    // registered region; the reader copies each into place once and knows it is done when all
    // bytes landed, so a served request needs no answer (UCX 1.13 emulates a put over TCP with
    // copies at both ends, and a flush would cost the reader's acknowledgement).
    Serve* raw = serve.get();
    size_t fragments = 0;
    for (const Op& op : ops) fragments += (op.length + kFetchFragment - 1) / kFetchFragment;
    raw->headers.resize(fragments);
    size_t f = 0;
    for (uint32_t i = 0; i < ops.size(); ++i) {
      const Op& op = ops[i];
      for (uint64_t at = 0; at < op.length; at += kFetchFragment, ++f) {
        const uint64_t n = std::min(kFetchFragment, op.length - at);
        char* header = raw->headers[f].data();
        EncodeFixed64(header, raw->call_id);
        EncodeFixed32(header + 8, i);
        EncodeFixed64(header + 12, at);
        ucp_request_param_t param = ServeParam(raw);
        param.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH | UCP_OP_ATTR_FIELD_FLAGS;
        param.memh = region->memh;
        param.flags = UCP_AM_SEND_FLAG_EAGER;
        TrackServe(raw, ucp_am_send_nbx(ep, kFetchDataId, header, kFetchDataHeader,
                                        reinterpret_cast<void*>(region->base + op.offset + at), n,
                                        &param));
      }
      raw->bytes += op.length;
    }
    raw->ops = ops.size();
    raw->issued = true;
    serving.push_back(std::move(serve));
  }

  // This node's endpoint to the reader at `worker_address` (cached); nullptr if UCX refuses.
  ucp_ep_h EndpointTo(const std::string& worker_address) {
    auto it = serve_eps.find(worker_address);
    if (it != serve_eps.end() && !it->second->failed) return it->second->ep;
    if (it != serve_eps.end()) {
      CloseEndpoint(it->second->ep);
      serve_eps.erase(it);
    }
    if (serve_eps.size() >= kMaxServeEndpoints) return nullptr;
    auto endpoint = std::make_unique<ServeEndpoint>();
    ucp_ep_params_t params;
    std::memset(&params, 0, sizeof params);
    params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                        UCP_EP_PARAM_FIELD_ERR_HANDLER;
    params.address = reinterpret_cast<const ucp_address_t*>(worker_address.data());
    params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    params.err_handler.cb = [](void* arg, ucp_ep_h, ucs_status_t) {
      static_cast<ServeEndpoint*>(arg)->failed = true;
    };
    params.err_handler.arg = endpoint.get();
    if (ucp_ep_create(worker, &params, &endpoint->ep) != UCS_OK) return nullptr;
    ucp_ep_h ep = endpoint->ep;
    serve_eps.emplace(worker_address, std::move(endpoint));
    return ep;
  }

  ucp_request_param_t ServeParam(Serve* serve) {
    ucp_request_param_t param;
    std::memset(&param, 0, sizeof param);
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    param.cb.send = &Impl::OnServeDone;
    param.user_data = serve;
    return param;
  }

  void TrackServe(Serve* serve, ucs_status_ptr_t req) {
    if (UCS_PTR_IS_PTR(req)) {
      ++serve->pending;
    } else if (UCS_PTR_STATUS(req) != UCS_OK && serve->status == UCS_OK) {
      serve->status = UCS_PTR_STATUS(req);
    }
  }

  static void OnServeDone(void* request, ucs_status_t status, void* user_data) {
    auto* serve = static_cast<Serve*>(user_data);
    if (status != UCS_OK && serve->status == UCS_OK) serve->status = status;
    --serve->pending;
    ucp_request_free(request);
  }

  // Answers a served request (its puts and flush completed).
  void FinishServe(Serve& serve) {
    for (ucp_rkey_h rkey : serve.rkeys) ucp_rkey_destroy(rkey);
    serve.rkeys.clear();
    if (serve.status != UCS_OK) {
      // The reader's connection failed: it cannot be answered; its call fails on its side.
      fetches_refused.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    fetches_served.fetch_add(1, std::memory_order_relaxed);
    fetch_ops_served.fetch_add(serve.ops, std::memory_order_relaxed);
    fetch_bytes_served.fetch_add(serve.bytes, std::memory_order_relaxed);
  }

  // Sends serve->answer to its reader; the Serve lives until the send completes.
  void SendAnswer(std::unique_ptr<Serve> serve) {
    Serve* raw = serve.release();
    ucp_request_param_t param;
    std::memset(&param, 0, sizeof param);
    param.op_attr_mask =
        UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
    param.cb.send = [](void* request, ucs_status_t, void* user_data) {
      delete static_cast<Serve*>(user_data);
      ucp_request_free(request);
    };
    param.user_data = raw;
    param.flags = UCP_AM_SEND_FLAG_EAGER;
    if (raw->ep == nullptr) {
      delete raw;
      return;
    }
    ucs_status_ptr_t req = ucp_am_send_nbx(raw->ep, kFetchDoneId, nullptr, 0, raw->answer.data(),
                                           raw->answer.size(), &param);
    if (!UCS_PTR_IS_PTR(req)) delete raw;  // sent (or failed) at once: no callback will come
  }

  Status SetAmHandler(uint16_t id, ucp_am_recv_callback_t cb, void* arg) {
    ucp_am_handler_param_t param;
    std::memset(&param, 0, sizeof param);
    param.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                       UCP_AM_HANDLER_PARAM_FIELD_ARG;
    param.id = id;
    param.cb = cb;
    param.arg = arg;
    ucs_status_t st = ucp_worker_set_am_recv_handler(worker, &param);
    if (st != UCS_OK) return UcxError("ucp_worker_set_am_recv_handler", st);
    return OkStatus();
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
          const bool progressed = ucp_worker_progress(worker) != 0;
          if (ServeFetches() || progressed) {
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
  KVSTASH_RETURN_IF_ERROR(raw->SetAmHandler(kFetchRequestId, &Impl::OnFetchRequest, raw));
  KVSTASH_RETURN_IF_ERROR(raw->SetAmHandler(kFetchDoneId, &Impl::OnFetchDone, raw));
  KVSTASH_RETURN_IF_ERROR(raw->SetAmHandler(kFetchDataId, &Impl::OnFetchData, raw));
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
    Impl::Region region;
    region.memh = memh;
    region.base = reinterpret_cast<uintptr_t>(base);
    region.bytes = bytes;
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
  auto peer = std::make_shared<Impl::Peer>();
  peer->impl = impl_.get();
  peer->address = region.address;
  peer->bytes = region.bytes;
  peer->token = DecodeFixed64(region.packed_rkey.data());
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
    const std::string ucx_rkey = region.packed_rkey.substr(kTokenBytes);  // aligned for UCX
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
  return Transfer(id, ops, deadline, /*fetch=*/false);
}

Status UcxTransport::Fetch(PeerId id, std::span<const ReadOp> ops, Clock::time_point deadline) {
  return Transfer(id, ops, deadline, /*fetch=*/true);
}

Status UcxTransport::Transfer(PeerId id, std::span<const ReadOp> ops, Clock::time_point deadline,
                              bool fetch) {
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
      [impl, call, fetch, list = std::vector<ReadOp>(ops.begin(), ops.end())] {
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
  if (id >= kFirstReservedMessageId) {
    return absl::InvalidArgumentError(
        absl::StrCat("notification id ", id, " is reserved for the transport"));
  }
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
  s.fetches_served = impl_->fetches_served.load(std::memory_order_relaxed);
  s.fetch_ops_served = impl_->fetch_ops_served.load(std::memory_order_relaxed);
  s.fetch_bytes_served = impl_->fetch_bytes_served.load(std::memory_order_relaxed);
  s.fetches_refused = impl_->fetches_refused.load(std::memory_order_relaxed);
  return s;
}

}  // namespace kvstash::transport
