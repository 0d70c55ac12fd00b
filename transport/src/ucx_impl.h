// Private to transport/src: UcxTransport::Impl, the state behind UcxTransport, and what its three
// source files share. ucx_transport.cc holds the public methods, the context, memory
// registration, reads and notifications; ucx_worker.cc the worker, its progress thread, endpoints
// and the life of a call; ucx_fetch.cc both sides of Fetch.
//
// Locks. worker_mu is held by whichever thread uses the worker (UCS_THREAD_MODE_SERIALIZED): the
// progress thread, or a caller driving its own call (caller_progress). UCX runs its callbacks
// inside ucp_worker_progress, so they run under worker_mu too and say so with AssertHeld; so do
// the tasks RunTasks runs. Peers, calls, serves and serve endpoints belong to one transport and
// name its worker_mu through their `impl` pointer; Owns() tells the analysis that this transport's
// worker_mu is theirs. Order: worker_mu before task_mu, peers_mu and a call's mu.
#ifndef KVSTASH_TRANSPORT_SRC_UCX_IMPL_H_
#define KVSTASH_TRANSPORT_SRC_UCX_IMPL_H_

#include <ucp/api/ucp.h>

#include <array>
#include <atomic>
#include <cassert>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "kvstash/common/mutex.h"
#include "kvstash/common/status.h"
#include "kvstash/transport/ucx_transport.h"

namespace kvstash::transport {

// While requests are out, the progress thread also wakes up this often without an event: a
// safety net should a transport not signal the worker's event fd for some completion. Idle, it
// wakes up once a second at most.
inline constexpr int kBusyWakeMs = 20;
inline constexpr int kIdleWakeMs = 1000;
// How long a cancelled call may take to see its requests completed after a forced close.
inline constexpr auto kCancelGrace = std::chrono::seconds(10);
// How long closing an endpoint may progress the worker.
inline constexpr auto kCloseBudget = std::chrono::seconds(2);
// caller_progress: how long a caller tries to take the worker from the progress thread (which
// lets go at its next loop iteration unless it is busy moving bytes) before it queues its work
// instead, and how long it keeps progressing without any event before it hands the worker back
// to the progress thread and sleeps (a slow or stopped peer must not keep a caller spinning).
inline constexpr auto kCallerLockWait = std::chrono::microseconds(50);
inline constexpr auto kCallerIdleHandoff = std::chrono::microseconds(500);

// Fetch's two active messages (ids reserved by UcxTransport::kFirstReservedMessageId):
//   request  reader -> server  fixed64 call id, varint32 length + the reader's worker address,
//                              fixed64 server region address, fixed64 token,
//                              varint32 rkey count, per rkey: varint32 length + UCX packed rkey of
//                              a reader region, varint32 op count, per op: fixed64 remote offset,
//                              fixed64 reader address, fixed64 length, varint32 rkey index,
//                              then varint32 flags (kFetchInPlace), absent in requests of
//                              readers from before FetchInPlace (read as 0)
//   data     server -> reader  header: fixed64 call id, fixed32 op index, fixed64 offset in the
//                              op; payload: that fragment's bytes (at most fetch_fragment), sent
//                              eagerly; with kFetchInPlace one message per op, by rendezvous
//   refused  server -> reader  fixed64 call id, fixed32 absl::StatusCode, the message's bytes
// (The request still names the reader's regions' rkeys; data goes as active messages instead.)
inline constexpr uint16_t kFetchRequestId = UcxTransport::kFirstReservedMessageId;
inline constexpr uint16_t kFetchDoneId = UcxTransport::kFirstReservedMessageId + 1;
inline constexpr uint16_t kFetchDataId = UcxTransport::kFirstReservedMessageId + 2;
inline constexpr size_t kFetchDataHeader = 20;
// Request flag: send the data by rendezvous, so that the reader's UCX receives it into place
// (FetchInPlace).
inline constexpr uint32_t kFetchInPlace = 1;
// Fetch's fragments fit one UCX TCP segment (Impl::fetch_fragment, from the segment sizes in
// Create): sent zero-copy from the region, received in one segment and copied once into place,
// never reassembled by UCX. kSegmentSlack leaves room for UCX's and Fetch's headers; fragments
// are never smaller than kMinFetchFragment (with smaller segments UCX reassembles them).
inline constexpr uint64_t kSegmentSlack = 4 << 10;
inline constexpr uint64_t kMinFetchFragment = 64 << 10;
// Bounds on what a request may ask for (a malformed or hostile one is refused, not served).
inline constexpr uint32_t kMaxFetchRkeys = 16;
inline constexpr uint32_t kMaxFetchOps = 1 << 16;
// RemoteRegion::packed_rkey: fixed64 token, then UCX's packed rkey.
inline constexpr size_t kTokenBytes = 8;
// Endpoints a serving transport keeps to the readers it writes to.
inline constexpr size_t kMaxServeEndpoints = 1024;
inline constexpr uint32_t kMaxWorkerAddressBytes = 64 << 10;

// InternalError naming the UCX call that refused.
Status UcxError(const char* what, ucs_status_t status);
// UnavailableError: the peer (its connection) failed.
Status PeerError(const char* what, ucs_status_t status);

struct UcxTransport::Impl {
  // A connected peer.
  struct Peer {
    Impl* impl = nullptr;
    ucp_ep_h ep ABSL_GUARDED_BY(impl->worker_mu) = nullptr;
    ucp_rkey_h rkey ABSL_GUARDED_BY(impl->worker_mu) = nullptr;
    uint64_t address = 0;  // address, bytes and token are set before the peer is shared
    uint64_t bytes = 0;
    uint64_t token = 0;  // the region's Fetch token
    std::atomic<bool> failed{false};
    std::atomic<ucs_status_t> failure{UCS_OK};
  };

  // One Read, Fetch or Notify call: its requests in flight and its outcome.
  struct Call {
    Impl* impl = nullptr;
    Mutex mu;
    CondVar cv;
    int pending ABSL_GUARDED_BY(mu) = 0;  // requests issued and not completed
    bool issued ABSL_GUARDED_BY(mu) = false;
    Status status ABSL_GUARDED_BY(mu);
    std::atomic<bool> finished{false};  // issued && pending == 0; read while polling
    std::vector<void*> requests ABSL_GUARDED_BY(impl->worker_mu);
    // A notification's bytes (set before the call is issued), or a Fetch's request (written when
    // it is issued, under worker_mu); alive until sent.
    std::string payload;
    std::shared_ptr<Peer> peer;
    uint64_t bytes = 0;
    uint64_t ops = 0;
    // A Fetch waiting for its answer; 0: none.
    uint64_t fetch_id ABSL_GUARDED_BY(impl->worker_mu) = 0;
    // A Fetch's ranges, and its bytes not landed yet.
    std::vector<ReadOp> fetch_ops ABSL_GUARDED_BY(impl->worker_mu);
    // FetchInPlace: UCX receives each range into its destination (set before the call is issued).
    bool in_place = false;
    // Per op: the registration and memory type of its destination (rendezvous receives).
    std::vector<std::pair<ucp_mem_h, ucs_memory_type_t>> fetch_dest
        ABSL_GUARDED_BY(impl->worker_mu);
    uint64_t fetch_remaining ABSL_GUARDED_BY(impl->worker_mu) = 0;

    void Fail(Status s) {
      MutexLock lock(&mu);
      if (status.ok()) status = std::move(s);
    }
    // Waits until every request issued has completed, or `deadline`; returns whether they have.
    bool WaitDone(Clock::time_point deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
      while (!(issued && pending == 0)) {
        if (!cv.WaitUntil(&mu, deadline)) return issued && pending == 0;
      }
      return true;
    }
  };

  struct Region {
    ucp_mem_h memh = nullptr;
    uintptr_t base = 0;
    uint64_t bytes = 0;
    uint64_t token = 0;  // what a Fetch request for this region must carry
    ucs_memory_type_t memory_type = UCS_MEMORY_TYPE_HOST;
    std::string ucx_rkey;  // UCX's packed rkey, sent in this node's own Fetch requests
    RangeGuard guard;      // null: every range inside the region may be fetched
  };

  // A Fetch request being served: its data messages in flight (or its refusal). Touched only
  // under worker_mu; the fields UCX's completion callback writes say so.
  struct Serve {
    Impl* impl = nullptr;
    ucp_ep_h ep = nullptr;  // to the reader: its data or refusal
    uint64_t call_id = 0;
    std::vector<ucp_rkey_h> rkeys;
    int pending ABSL_GUARDED_BY(impl->worker_mu) = 0;
    bool issued ABSL_GUARDED_BY(impl->worker_mu) = false;
    ucs_status_t status ABSL_GUARDED_BY(impl->worker_mu) = UCS_OK;
    uint64_t ops = 0;
    uint64_t bytes = 0;
    std::string answer;                                       // a refusal, alive until sent
    std::vector<std::array<char, kFetchDataHeader>> headers;  // alive until the sends complete
  };

  // Endpoints to readers, by their worker address, created on their first Fetch request and kept
  // (the endpoint UCX created for an incoming connection cannot carry RMA or flushes until this
  // side creates its own endpoint to that worker). A failed one is closed and created again on
  // the reader's next request.
  struct ServeEndpoint {
    Impl* impl = nullptr;
    ucp_ep_h ep ABSL_GUARDED_BY(impl->worker_mu) = nullptr;
    bool failed ABSL_GUARDED_BY(impl->worker_mu) = false;  // set by UCX's error callback
  };

  struct HandlerSlot {
    Impl* impl = nullptr;
    NotificationHandler handler;
  };

  TransportOptions options;
  // The largest Fetch fragment this node sends: its UCX TCP segment size less kSegmentSlack.
  uint64_t fetch_fragment = kMinFetchFragment;
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
  Mutex worker_mu ABSL_ACQUIRED_BEFORE(task_mu, peers_mu);
  // Callers trying to take worker_mu: the progress thread then skips its polling window and lets
  // go of the worker.
  std::atomic<int> callers_waiting{0};

  Mutex task_mu;
  std::deque<std::function<void()>> tasks ABSL_GUARDED_BY(task_mu);
  bool stopping ABSL_GUARDED_BY(task_mu) = false;

  mutable Mutex peers_mu;
  std::map<PeerId, std::shared_ptr<Peer>> peers ABSL_GUARDED_BY(peers_mu);
  PeerId next_peer ABSL_GUARDED_BY(peers_mu) = 1;

  std::vector<Region> regions ABSL_GUARDED_BY(worker_mu);
  std::map<uint16_t, std::unique_ptr<HandlerSlot>> handlers ABSL_GUARDED_BY(worker_mu);
  int outstanding ABSL_GUARDED_BY(worker_mu) = 0;  // requests in flight, all calls
  // Fetch, reader side: calls waiting for their done message, by id.
  std::map<uint64_t, std::shared_ptr<Call>> fetch_calls ABSL_GUARDED_BY(worker_mu);
  uint64_t next_fetch_id ABSL_GUARDED_BY(worker_mu) = 1;
  // Fetch, serving side: requests received (served after the progress call that delivered them,
  // not inside UCX's callback), and those whose sends are in flight.
  std::vector<std::pair<ucp_ep_h, std::string>> fetch_requests ABSL_GUARDED_BY(worker_mu);
  std::vector<std::unique_ptr<Serve>> serving ABSL_GUARDED_BY(worker_mu);
  std::map<std::string, std::unique_ptr<ServeEndpoint>> serve_eps ABSL_GUARDED_BY(worker_mu);

  std::atomic<uint64_t> reads{0}, bytes_read{0}, failed_calls{0}, notes_sent{0}, notes_received{0};
  std::atomic<uint64_t> caller_calls{0}, queued_calls{0};
  std::atomic<uint64_t> fetches_served{0}, fetch_ops_served{0}, fetch_bytes_served{0},
      fetches_refused{0};

  ~Impl();

  // `x` (a Peer, Call, Serve or ServeEndpoint) belongs to this transport: its fields guarded by
  // x.impl->worker_mu are guarded by the worker_mu held here.
  template <typename T>
  void Owns(const T& x) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(worker_mu)
      ABSL_ASSERT_EXCLUSIVE_LOCK(x.impl->worker_mu) {
    assert(x.impl == this);
    (void)x;
  }

  // --- worker and progress thread (ucx_worker.cc) ----------------------------

  // Queues `task` for the progress thread, which runs it under worker_mu.
  void Post(std::function<void()> task) ABSL_LOCKS_EXCLUDED(task_mu);
  // Wakes the progress thread from epoll.
  void Wake();
  // Runs `fn` on the progress thread (under worker_mu) and returns its result.
  Status RunOnThread(std::function<Status()> fn);
  // Runs the queued tasks. Returns false once asked to stop; stamps *activity when it ran
  // something.
  bool RunTasks(Clock::time_point* activity) ABSL_EXCLUSIVE_LOCKS_REQUIRED(worker_mu);
  bool TasksQueued() ABSL_LOCKS_EXCLUDED(task_mu);
  // The progress thread.
  void Loop() ABSL_LOCKS_EXCLUDED(worker_mu);
  // Installs a transport-internal active message handler.
  Status SetAmHandler(uint16_t id, ucp_am_recv_callback_t cb, void* arg)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(worker_mu);

  // Issues `call` with `issue` (which runs under worker_mu) and waits for it, driving the worker
  // on this thread when caller_progress lets it (see Threading in ucx_transport.h).
  Status Execute(const std::shared_ptr<Call>& call, std::function<void()> issue,
                 Clock::time_point deadline) ABSL_LOCKS_EXCLUDED(worker_mu);
  // Takes worker_mu if it comes free before `give_up`.
  bool TryTakeWorker(Clock::time_point give_up) ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true, worker_mu);
  // Waits for `call` until the deadline; cancels it after.
  Status Await(const std::shared_ptr<Call>& call, Clock::time_point deadline)
      ABSL_LOCKS_EXCLUDED(worker_mu);

  // --- endpoints and requests (ucx_worker.cc) --------------------------------

  // Closes the peer's endpoint (failing its Fetches) and destroys its rkey.
  void ClosePeer(Peer& peer) ABSL_EXCLUSIVE_LOCKS_REQUIRED(worker_mu);
  // Force-closes `ep`, which completes its requests with an error.
  void CloseEndpoint(ucp_ep_h ep) ABSL_EXCLUSIVE_LOCKS_REQUIRED(worker_mu);
  static void OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status);
  static void OnRequestDone(void* request, ucs_status_t status, void* user_data);
  // The same for a receive (FetchInPlace's rendezvous receives).
  static void OnReceiveDone(void* request, ucs_status_t status, size_t length, void* user_data);
  // Counts one request of `call` done with `status`; the call finishes with its last one.
  static void Complete(const std::shared_ptr<Call>& call, ucs_status_t status);
  // Takes the outcome of an nbx call: done now, failed now, or a request completing later.
  void Track(const std::shared_ptr<Call>& call, ucs_status_ptr_t req, std::shared_ptr<Call>* holder)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(worker_mu);
  static ucp_request_param_t ParamFor(std::shared_ptr<Call>** holder,
                                      const std::shared_ptr<Call>& call);
  static void BeginPending(const std::shared_ptr<Call>& call);
  static void MarkIssued(const std::shared_ptr<Call>& call);
  // After a deadline: cancel what is still out and close the endpoint, which completes every
  // request of it (with an error) before this returns.
  void CancelCall(const std::shared_ptr<Call>& call) ABSL_EXCLUSIVE_LOCKS_REQUIRED(worker_mu);

  // --- reads and notifications (ucx_transport.cc) ----------------------------

  // The registration of [p, p + n), or nullptr when no region holds it.
  ucp_mem_h MemhFor(const void* p, uint64_t n) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(worker_mu);
  void IssueReads(const std::shared_ptr<Call>& call, const std::vector<ReadOp>& ops)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(worker_mu);
  void IssueNotify(const std::shared_ptr<Call>& call, uint16_t id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(worker_mu);
  static ucs_status_t OnNotification(void* arg, const void* header, size_t header_length,
                                     void* data, size_t length, const ucp_am_recv_param_t* param);

  // --- Fetch, reader side (ucx_fetch.cc) -------------------------------------

  // Sends the request of a Fetch; the call completes when its last byte lands (OnFetchData) or
  // the peer's refusal arrives.
  void IssueFetch(const std::shared_ptr<Call>& call, const std::vector<ReadOp>& ops)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(worker_mu);
  // The region holding [p, p + n), or nullptr.
  const Region* RegionFor(const void* p, uint64_t n) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(worker_mu);
  // Completes every Fetch waiting on `peer` with `status`.
  void FailFetches(const Peer* peer, ucs_status_t status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(worker_mu);
  static ucs_status_t OnFetchDone(void* arg, const void* header, size_t header_length, void* data,
                                  size_t length, const ucp_am_recv_param_t* param);
  // A fragment of a Fetch's data: copied into place, or with FetchInPlace received into place by
  // UCX (rendezvous); the call completes once its last byte landed.
  static ucs_status_t OnFetchData(void* arg, const void* header, size_t header_length, void* data,
                                  size_t length, const ucp_am_recv_param_t* param);

  // --- Fetch, serving side (ucx_fetch.cc) ------------------------------------

  static ucs_status_t OnFetchRequest(void* arg, const void* header, size_t header_length,
                                     void* data, size_t length, const ucp_am_recv_param_t* param);
  // Starts the requests received and answers those whose sends completed. Returns whether it did
  // anything.
  bool ServeFetches() ABSL_EXCLUSIVE_LOCKS_REQUIRED(worker_mu);
  void StartServe(ucp_ep_h reply_ep, const std::string& request)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(worker_mu);
  // This node's endpoint to the reader at `worker_address` (cached); nullptr if UCX refuses.
  ucp_ep_h EndpointTo(const std::string& worker_address) ABSL_EXCLUSIVE_LOCKS_REQUIRED(worker_mu);
  static ucp_request_param_t ServeParam(Serve* serve);
  void TrackServe(Serve* serve, ucs_status_ptr_t req) ABSL_EXCLUSIVE_LOCKS_REQUIRED(worker_mu);
  static void OnServeDone(void* request, ucs_status_t status, void* user_data);
  // Accounts for a served request (its sends completed).
  void FinishServe(Serve& serve) ABSL_EXCLUSIVE_LOCKS_REQUIRED(worker_mu);
  // Sends serve->answer to its reader; the Serve lives until the send completes.
  void SendAnswer(std::unique_ptr<Serve> serve) ABSL_EXCLUSIVE_LOCKS_REQUIRED(worker_mu);
};

}  // namespace kvstash::transport

#endif  // KVSTASH_TRANSPORT_SRC_UCX_IMPL_H_
