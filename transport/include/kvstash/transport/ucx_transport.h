// UcxTransport: one-sided reads and short notifications between cachesvc nodes over UCX (ucp).
//
// Model. One ucp context and one worker per transport. A node registers the memory peers may read
// (its shared-memory arena) once, with RegisterRegion, and hands the returned RemoteRegion
// (address, length, packed rkey) plus worker_address() to authenticated peers over its control
// channel; it never gives them to engines. A reader Connects to that description and Reads byte
// ranges of it straight into its own memory (ucp_get_nbx): the bytes cross the link once, with no
// copy on the serving side and no serving-side CPU. Notify sends a short active message (e.g.
// "release these leases") once the reads it follows have completed.
//
// Fetch is the other way to move the same bytes: the reader sends one request (an active message
// naming the ranges) and the serving transport sends them back as active messages of at most one
// UCX TCP segment each, zero-copy from its registered region; the reader copies each into place
// and returns when the last byte landed. Over TCP, UCX 1.13 emulates both get and put in
// software, with a copy into a send segment on the serving node and one out of a receive segment
// on the reader; Fetch saves the serving side's copy at the price of serving-side CPU
// (docs/benchmarks-transfer.md). FetchInPlace is Fetch whose bytes UCX receives into place (by
// rendezvous), for destinations memcpy cannot reach (CUDA memory). Every transport that
// registered a region serves Fetch and FetchInPlace requests for it; no setup is needed.
//
// Trust. Over UCX's TCP transport neither a get nor a put is checked against the rkey by the
// receiving side, so any connected UCX peer can read or write the memory of a process it is
// connected to: connect only to, and accept connections only from, authenticated peers (the
// worker address and RemoteRegion travel only over an authenticated control channel). A Fetch
// request must carry the region's token (in RemoteRegion::packed_rkey), and the serving side
// checks every range against the region before it writes.
//
// Threading. The worker is used by one thread at a time (UCS_THREAD_MODE_SERIALIZED, under the
// transport's worker lock). A caller of Read or Notify that finds the worker free issues its
// requests and progresses the worker itself until they complete (caller_progress): no hand-off
// to another thread and back. Otherwise, and for every other call, it queues the work for the
// transport's progress thread and waits for the outcome. The progress thread sleeps in epoll on
// the worker's event fd (ucp_worker_get_efd + ucp_worker_arm) and on an eventfd that callers
// signal; it polls only for a short window after activity (progress_poll), so an idle node spends
// no CPU here. Every public method is thread-safe. Notification handlers run on whichever thread
// progresses the worker (the progress thread, or a caller inside Read or Notify): they must be
// quick and must not call back into this transport.
//
// Errors (kvstash::Status):
//   InvalidArgument    a read outside the peer's region, a bad address or rkey blob
//   Unavailable        UCX reported the peer failed (closed, reset, unreachable); the peer stays
//                      failed (Healthy() == false) until Disconnect and a new Connect
//   DeadlineExceeded   a read or notification outlived its deadline: its requests were cancelled
//                      and the endpoint closed (UCX cannot take back an RMA in flight otherwise),
//                      so the peer is failed too. When the call returns, no request of it is still
//                      writing into the caller's memory.
//   Unimplemented      CUDA memory asked for but this UCX build has no CUDA support
//   Internal           UCX refused something it should not have (context, worker, mem_map)
#ifndef KVSTASH_TRANSPORT_UCX_TRANSPORT_H_
#define KVSTASH_TRANSPORT_UCX_TRANSPORT_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "kvstash/common/status.h"

namespace kvstash::transport {

using Clock = std::chrono::steady_clock;

enum class MemoryKind : uint8_t { kHost, kCuda };

struct TransportOptions {
  // Shown in UCX's logs; also the worker's name.
  std::string name = "kvstash";
  // After the worker made progress or ran work, the progress thread keeps polling this long
  // before it arms the worker and sleeps: a request's next step usually comes within
  // microseconds, sooner than an epoll wake-up. Idle, it sleeps. 0: never poll.
  std::chrono::microseconds progress_poll{100};
  // A caller of Read or Notify polls for completion this long before it blocks (when its work
  // went to the progress thread).
  std::chrono::microseconds wait_poll{100};
  // A caller of Read or Notify that finds the worker free drives it itself (see Threading);
  // false: every call goes through the progress thread.
  bool caller_progress = true;
};

// What a peer needs to read a registered region: plain bytes, safe to send over the control
// channel (but only to authenticated peers: the rkey grants read access to the region).
struct RemoteRegion {
  uint64_t address = 0;  // the owner's virtual address of the region's first byte
  uint64_t bytes = 0;
  // Opaque, made by RegisterRegion and read by Connect: UCX's packed rkey and the region's random
  // Fetch token.
  std::string packed_rkey;
};

// One byte range to read: `length` bytes at `remote_offset` of the peer's region into `local`.
struct ReadOp {
  uint64_t remote_offset = 0;
  void* local = nullptr;
  uint64_t length = 0;
};

struct TransportStats {
  uint64_t reads = 0;       // ReadOps completed
  uint64_t bytes_read = 0;  // their bytes
  uint64_t failed_calls = 0;
  uint64_t notifications_sent = 0;
  uint64_t notifications_received = 0;
  // Read and Notify calls that drove the worker on the caller's thread, and those handed to the
  // progress thread (the worker was busy, or caller_progress is off).
  uint64_t caller_driven_calls = 0;
  uint64_t queued_calls = 0;
  // Fetch requests this transport served (wrote into a peer's memory), their ranges and bytes,
  // and those it refused (bad token, range or rkey).
  uint64_t fetches_served = 0;
  uint64_t fetch_ops_served = 0;
  uint64_t fetch_bytes_served = 0;
  uint64_t fetches_refused = 0;
};

using PeerId = uint64_t;
using NotificationHandler = std::function<void(std::string_view payload)>;
// Says whether a peer's Fetch may read `length` bytes at `offset` of a region (RegisterRegion):
// e.g. only what the serving node staged for some reader just now. Runs on the thread that
// progresses the worker, with the transport's worker lock held: quick, and no call back into the
// transport.
using RangeGuard = std::function<bool(uint64_t offset, uint64_t length)>;

class UcxTransport {
 public:
  // Creates the context (RMA, active messages, wakeup) and the worker, and starts the progress
  // thread. UCX reads its usual UCX_* environment (UCX_TLS=tcp forces the network path). Sets
  // UCX_TCP_TX_SEG_SIZE / UCX_TCP_RX_SEG_SIZE to 512k where unset (setenv: create the first
  // transport before other threads read the environment); the fragments Fetch serves fill one
  // segment of the smaller of the two (less 4 KiB for headers, at least 64 KiB).
  static Result<std::unique_ptr<UcxTransport>> Create(const TransportOptions& options);
  // Closes every endpoint, unmaps every region and stops the progress thread. Callers must have
  // returned from every other method first.
  ~UcxTransport();
  UcxTransport(const UcxTransport&) = delete;
  UcxTransport& operator=(const UcxTransport&) = delete;

  // The version of the UCX library loaded at run time ("1.13.1"): it decides whether a serving
  // process survives a reader that dies mid-transfer (UCX 1.13 can abort it; docs/deploy.md).
  static std::string UcxVersion();
  // Whether that UCX is at least major.minor.
  static bool UcxAtLeast(unsigned major, unsigned minor);

  // This worker's address (opaque bytes), for peers' Connect.
  const std::string& worker_address() const;
  // Whether this UCX can register CUDA memory (UCX built with CUDA support).
  bool SupportsCuda() const;

  // Registers [base, base + bytes) with UCX (ucp_mem_map; the memory stays owned by the caller and
  // must outlive the transport) and returns what peers need to read it. Reads into a registered
  // region avoid per-call registration. kCuda needs SupportsCuda(). `guard` (optional): a Fetch
  // of this region is also refused (InvalidArgument at the reader) for a range the guard rejects;
  // gets cannot be checked on this side (UCX answers them), so a reader with gets is trusted to
  // stay inside what it was told.
  Result<RemoteRegion> RegisterRegion(void* base, uint64_t bytes,
                                      MemoryKind kind = MemoryKind::kHost,
                                      RangeGuard guard = nullptr);

  // Creates an endpoint to the peer worker at `worker_address` (with peer error handling),
  // unpacks the rkey of its `region`, and completes the wire-up with a flush before `deadline`.
  Result<PeerId> Connect(const std::string& worker_address, const RemoteRegion& region,
                         Clock::time_point deadline);
  // Creates an endpoint to the peer worker with no region of it (a Read or Fetch of any range is
  // InvalidArgument; Notify works) and completes the wire-up with a flush before `deadline`, as
  // Connect does: Unavailable when the peer cannot be reached (it died, or is out of reach). For
  // a serving node that connects to a reader first, so that the wire-up is initiated from its
  // side: on UCX < 1.14 a reader that dies during a wire-up it initiated can abort the serving
  // process (docs/deploy.md "Which UCX"). Keep the endpoint while the reader uses its own: UCX
  // may pair the reader's endpoint with this one, and closing either closes the connection.
  Result<PeerId> ConnectWorker(const std::string& worker_address, Clock::time_point deadline);
  // Closes the endpoint; unknown ids are ignored.
  void Disconnect(PeerId peer);
  // False once UCX reported an error on the peer's endpoint or a call to it timed out.
  bool Healthy(PeerId peer) const;

  // Reads every op (all issued at once, then flushed) and returns once all have landed, or with
  // the first error. Each op must lie inside the peer's region (checked before anything is sent).
  // No ops: just the flush.
  Status Read(PeerId peer, std::span<const ReadOp> ops, Clock::time_point deadline);

  // Like Read, but the peer sends the ranges (see Fetch in the model above). Each op must lie
  // inside the peer's region and each op.local inside a region registered here with RegisterRegion
  // (both checked before anything is sent: InvalidArgument); the peer checks its side again and
  // answers InvalidArgument for a range outside its region or a wrong token. Returns once every
  // range has landed here. On a deadline the endpoint is closed as for Read, after which nothing
  // more lands.
  Status Fetch(PeerId peer, std::span<const ReadOp> ops, Clock::time_point deadline);

  // Like Fetch (the same checks, errors and deadline), but the serving side announces each range
  // by rendezvous and UCX receives it straight into op.local, so a destination may be CUDA memory
  // (a region registered here with kCuda); Fetch copies each fragment into place with memcpy,
  // into host memory only. The serving side's UCX never answers a ucp_get_nbx (the bytes move
  // by UCX's rendezvous protocol), so, like Fetch and unlike Read, a reader that dies does not
  // abort it on a get reply (docs/deploy.md "Which UCX": UCX 1.13's wire-up abort remains, as
  // for Fetch). Per range one message, not Fetch's 508 KiB fragments. The receives are its own
  // requests: on a deadline they are cancelled and the endpoint closed as for Fetch, and when the
  // call returns none is still writing. A serving node from before FetchInPlace sends eagerly:
  // those bytes are copied into host destinations, and refused (DataLoss) for CUDA ones.
  Status FetchInPlace(PeerId peer, std::span<const ReadOp> ops, Clock::time_point deadline);

  // Sends `payload` as active message `id` to the peer and returns once it has left this node.
  Status Notify(PeerId peer, uint16_t id, std::string payload, Clock::time_point deadline);
  // Installs the handler for incoming active messages `id` (replacing any earlier one). Ids from
  // kFirstReservedMessageId up are the transport's own (InvalidArgument).
  static constexpr uint16_t kFirstReservedMessageId = 240;
  Status SetNotificationHandler(uint16_t id, NotificationHandler handler);

  TransportStats Stats() const;

 private:
  struct Impl;
  explicit UcxTransport(std::unique_ptr<Impl> impl);
  enum class How : uint8_t { kRead, kFetch, kFetchInPlace };
  // Connect and ConnectWorker: an endpoint, bound to `region` of the peer when not null.
  Result<PeerId> Open(const std::string& worker_address, const RemoteRegion* region,
                      Clock::time_point deadline);
  Status Transfer(PeerId peer, std::span<const ReadOp> ops, Clock::time_point deadline, How how);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvstash::transport

#endif  // KVSTASH_TRANSPORT_UCX_TRANSPORT_H_
