// UcxTransport::Impl: the worker, its progress thread, endpoints, and the life of a call (issue,
// track, complete, wait, cancel). See ucx_impl.h for the lock rules.
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "ucx_impl.h"

namespace kvstash::transport {

Status UcxError(const char* what, ucs_status_t status) {
  return absl::InternalError(absl::StrCat(what, ": ", ucs_status_string(status)));
}

Status PeerError(const char* what, ucs_status_t status) {
  return absl::UnavailableError(absl::StrCat(what, ": ", ucs_status_string(status)));
}

UcxTransport::Impl::~Impl() {
  if (epoll_fd >= 0) ::close(epoll_fd);
  if (wake_fd >= 0) ::close(wake_fd);
  if (worker != nullptr) ucp_worker_destroy(worker);
  if (context != nullptr) ucp_cleanup(context);
}

void UcxTransport::Impl::Post(std::function<void()> task) {
  {
    MutexLock lock(&task_mu);
    tasks.push_back(std::move(task));
  }
  Wake();
}

void UcxTransport::Impl::Wake() {
  uint64_t one = 1;
  ssize_t n = ::write(wake_fd, &one, sizeof one);
  (void)n;  // the counter cannot overflow with our increments; EAGAIN still leaves it readable
}

Status UcxTransport::Impl::RunOnThread(std::function<Status()> fn) {
  struct Done {
    Mutex mu;
    CondVar cv;
    bool done ABSL_GUARDED_BY(mu) = false;
    Status status ABSL_GUARDED_BY(mu);
  };
  auto done = std::make_shared<Done>();
  Post([done, fn = std::move(fn)] {
    Status s = fn();
    MutexLock lock(&done->mu);
    done->status = std::move(s);
    done->done = true;
    done->cv.SignalAll();
  });
  MutexLock lock(&done->mu);
  while (!done->done) done->cv.Wait(&done->mu);
  return done->status;
}

bool UcxTransport::Impl::RunTasks(Clock::time_point* activity) {
  std::deque<std::function<void()>> batch;
  bool stop;
  {
    MutexLock lock(&task_mu);
    batch.swap(tasks);
    stop = stopping;
  }
  for (auto& task : batch) task();
  if (!batch.empty()) *activity = Clock::now();
  return !stop || !batch.empty();
}

bool UcxTransport::Impl::TasksQueued() {
  MutexLock lock(&task_mu);
  return !tasks.empty() || stopping;
}

void UcxTransport::Impl::Loop() {
  epoll_event events[2];
  Clock::time_point last_activity = Clock::now();
  worker_mu.Lock();
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
      worker_mu.Unlock();
      std::this_thread::yield();
      worker_mu.Lock();
      continue;
    }
    ucs_status_t armed = ucp_worker_arm(worker);
    if (armed == UCS_ERR_BUSY) continue;  // events arrived meanwhile: progress again
    const int timeout_ms = outstanding > 0 || !serving.empty() ? kBusyWakeMs : kIdleWakeMs;
    worker_mu.Unlock();
    int n = ::epoll_wait(epoll_fd, events, 2, timeout_ms);
    for (int i = 0; i < n; ++i) {
      if (events[i].data.fd == wake_fd) {
        uint64_t count;
        ssize_t r = ::read(wake_fd, &count, sizeof count);
        (void)r;
      }
    }
    worker_mu.Lock();
  }
  // Stopping: close every endpoint and unmap every region while the worker still runs.
  std::map<PeerId, std::shared_ptr<Peer>> all;
  {
    MutexLock lock(&peers_mu);
    all.swap(peers);
  }
  for (auto& [id, peer] : all) ClosePeer(*peer);
  for (auto& [address, endpoint] : serve_eps) {
    Owns(*endpoint);
    CloseEndpoint(endpoint->ep);
  }
  // Fetches still being served: their reply endpoints go with the worker. One with requests in
  // flight is left allocated (their callbacks may still run while the worker is destroyed).
  for (auto& serve : serving) {
    Owns(*serve);
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
  worker_mu.Unlock();
}

Status UcxTransport::Impl::SetAmHandler(uint16_t id, ucp_am_recv_callback_t cb, void* arg) {
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

// --- endpoints and requests ----------------------------------------------

void UcxTransport::Impl::ClosePeer(Peer& peer) {
  Owns(peer);
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

void UcxTransport::Impl::CloseEndpoint(ucp_ep_h ep) {
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

void UcxTransport::Impl::OnEndpointError(void* arg, ucp_ep_h, ucs_status_t status) {
  auto* peer = static_cast<Peer*>(arg);
  peer->failure = status;
  peer->failed = true;
  // Fetches waiting on this peer get no answer any more (its connection is gone, so nothing
  // more of theirs lands either).
  if (peer->impl != nullptr) {
    peer->impl->worker_mu.AssertHeld();  // called from ucp_worker_progress
    peer->impl->FailFetches(peer, status);
  }
}

void UcxTransport::Impl::OnRequestDone(void* request, ucs_status_t status, void* user_data) {
  auto* holder = static_cast<std::shared_ptr<Call>*>(user_data);
  std::shared_ptr<Call> call = std::move(*holder);
  delete holder;
  Impl* impl = call->impl;
  impl->worker_mu.AssertHeld();  // called from ucp_worker_progress
  impl->Owns(*call);
  for (auto it = call->requests.begin(); it != call->requests.end(); ++it) {
    if (*it == request) {
      call->requests.erase(it);
      break;
    }
  }
  ucp_request_free(request);
  --impl->outstanding;
  Complete(call, status);
}

void UcxTransport::Impl::OnReceiveDone(void* request, ucs_status_t status, size_t,
                                       void* user_data) {
  OnRequestDone(request, status, user_data);
}

void UcxTransport::Impl::Complete(const std::shared_ptr<Call>& call, ucs_status_t status) {
  MutexLock lock(&call->mu);
  if (status != UCS_OK && call->status.ok()) {
    call->status = status == UCS_ERR_CANCELED
                       ? absl::DeadlineExceededError("UCX request cancelled after its deadline")
                       : PeerError("UCX request failed", status);
  }
  if (--call->pending == 0 && call->issued) {
    call->finished.store(true, std::memory_order_release);
    call->cv.SignalAll();
  }
}

void UcxTransport::Impl::Track(const std::shared_ptr<Call>& call, ucs_status_ptr_t req,
                               std::shared_ptr<Call>* holder) {
  Owns(*call);
  if (UCS_PTR_IS_PTR(req)) {
    call->requests.push_back(req);
    ++outstanding;
    return;
  }
  delete holder;  // no callback will come
  ucs_status_t status = UCS_PTR_STATUS(req);
  Complete(call, status);
}

ucp_request_param_t UcxTransport::Impl::ParamFor(std::shared_ptr<Call>** holder,
                                                 const std::shared_ptr<Call>& call) {
  ucp_request_param_t param;
  std::memset(&param, 0, sizeof param);
  *holder = new std::shared_ptr<Call>(call);
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = &Impl::OnRequestDone;
  param.user_data = *holder;
  return param;
}

void UcxTransport::Impl::BeginPending(const std::shared_ptr<Call>& call) {
  MutexLock lock(&call->mu);
  ++call->pending;
}

void UcxTransport::Impl::MarkIssued(const std::shared_ptr<Call>& call) {
  MutexLock lock(&call->mu);
  call->issued = true;
  if (call->pending == 0) {
    call->finished.store(true, std::memory_order_release);
    call->cv.SignalAll();
  }
}

void UcxTransport::Impl::CancelCall(const std::shared_ptr<Call>& call) {
  Owns(*call);
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

// --- issuing and waiting ---------------------------------------------------

// With caller_progress, when the worker can be taken within kCallerLockWait, this thread issues
// and progresses it until the call completes (running queued work of other callers meanwhile);
// if nothing happens for kCallerIdleHandoff or the deadline passes first, the progress thread
// takes over and Await finishes the call. Otherwise the work is queued for the progress thread.
Status UcxTransport::Impl::Execute(const std::shared_ptr<Call>& call, std::function<void()> issue,
                                   Clock::time_point deadline) {
  if (options.caller_progress) {
    callers_waiting.fetch_add(1, std::memory_order_relaxed);
    const bool got = TryTakeWorker(Clock::now() + kCallerLockWait);
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
      worker_mu.Unlock();
      // Requests of other calls still in flight, queued work, or this call itself: the
      // progress thread carries on (it may be asleep in epoll on an armed worker).
      if (!finished || others || TasksQueued()) Wake();
      if (finished) {
        MutexLock lock(&call->mu);
        return call->status;
      }
      return Await(call, deadline);
    }
  }
  queued_calls.fetch_add(1, std::memory_order_relaxed);
  Post(std::move(issue));
  return Await(call, deadline);
}

bool UcxTransport::Impl::TryTakeWorker(Clock::time_point give_up) {
  while (!worker_mu.TryLock()) {
    if (Clock::now() >= give_up) return false;
    std::this_thread::yield();
  }
  return true;
}

Status UcxTransport::Impl::Await(const std::shared_ptr<Call>& call, Clock::time_point deadline) {
  // A transfer usually completes within tens of microseconds of the last byte; polling that
  // long saves the caller's wake-up (tens of microseconds on a VM) before it blocks.
  const Clock::time_point poll_until = std::min(deadline, Clock::now() + options.wait_poll);
  while (!call->finished.load(std::memory_order_acquire) && Clock::now() < poll_until) {
    std::this_thread::yield();
  }
  {
    MutexLock lock(&call->mu);
    if (call->WaitDone(deadline)) return call->status;
  }
  Post([this, call] {
    worker_mu.AssertHeld();  // tasks run under worker_mu (RunTasks)
    CancelCall(call);
  });
  MutexLock lock(&call->mu);
  if (!call->WaitDone(Clock::now() + kCancelGrace)) {
    // Cannot happen with UCX's forced close; if it did, the caller's memory could still be
    // written, so say so loudly.
    return absl::InternalError("UCX requests still in flight after their endpoint was closed");
  }
  return absl::DeadlineExceededError(
      absl::StrCat("UCX transfer did not complete by its deadline",
                   call->status.ok() ? "" : " (" + std::string(call->status.message()) + ")"));
}

}  // namespace kvstash::transport
