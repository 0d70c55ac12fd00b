// The client side of the local control channel (kvstash/proto/local_control.h): a pool of
// arena-socket connections to cachesvc on which the shared-memory path's unary calls go instead
// of gRPC. One call takes an idle connection (or opens one), writes the request, reads the reply
// and puts the connection back; a connection that failed in any way is closed, never reused.
//
// An anchor connection, never used for calls, stays open to the current service instance for the
// pool's whole life: the service settles this client's open reservations and leases when the
// client's last connection to it closes, which must not happen while a handle is still alive
// (handles keep the ClientCore, and with it the pool, alive). When a new connection meets a new
// arena generation (the service restarted), it becomes the anchor and the old one is closed.
//
// Thread-safe. Timeouts: every read and write on a connection is bounded by `timeout`. A caller
// waiting for a reply polls for it for up to `poll` before it blocks (PollReadable).
#ifndef KVSTASH_CLIENT_LOCAL_CONTROL_H_
#define KVSTASH_CLIENT_LOCAL_CONTROL_H_

#include <google/protobuf/message_lite.h>

#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kvstash/common/status.h"
#include "kvstash/proto/arena_handshake.h"
#include "kvstash/proto/local_control.h"

namespace kvstash::client::internal {

class LocalControl {
 public:
  // The attach request for one new connection: on a multi-tenant service its bearer token, or a
  // fresh attach ticket (single-use: one per connection), binds the connection to the client's
  // tenant. Called on the thread that opens the connection, without the pool's lock.
  using AttachSource = std::function<Result<ArenaAttachRequest>()>;

  // Takes ownership of `anchor_fd`, the connection of the attach handshake (which announced
  // `generation`): says Hello on it and keeps it open. Unavailable when that fails. Every further
  // connection sends the request `attach` makes (null: an empty request).
  static Result<std::unique_ptr<LocalControl>> Create(std::string socket_path, int anchor_fd,
                                                      uint64_t generation,
                                                      std::chrono::milliseconds timeout,
                                                      std::chrono::microseconds poll,
                                                      AttachSource attach = nullptr);
  ~LocalControl();
  LocalControl(const LocalControl&) = delete;
  LocalControl& operator=(const LocalControl&) = delete;

  // One call. `*sent` says whether the request went out: when it is false (no connection could be
  // opened, e.g. the service serves its connection limit already, or the request is larger than
  // a frame) the call did not happen and the caller should make it over gRPC. Otherwise the
  // status is the service's (as gRPC would have returned it), or Unavailable / DeadlineExceeded
  // when the connection failed after the request was written.
  Status Call(LocalMethod method, const google::protobuf::MessageLite& request,
              google::protobuf::MessageLite* response, bool* sent);
  // A call whose answer nobody waits for (Release). Returns false when it could not be written
  // (the caller may send it another way); failures after that are dropped.
  bool Notify(LocalMethod method, const google::protobuf::MessageLite& request);

  // Several calls in flight on one connection, answered in the order sent (PutMany pipelines
  // its batches this way). Used by one thread; gives the connection back when destroyed.
  class Pipeline {
   public:
    ~Pipeline();
    Pipeline(const Pipeline&) = delete;
    Pipeline& operator=(const Pipeline&) = delete;
    // Returns the ticket to Await with.
    Result<uint32_t> Send(LocalMethod method, const google::protobuf::MessageLite& request);
    // The answer to `ticket`; answers to earlier tickets read on the way are kept for later.
    Status Await(uint32_t ticket, google::protobuf::MessageLite* response);

   private:
    friend class LocalControl;
    struct Reply {
      uint16_t code = 0;
      std::string body;
    };
    Pipeline(LocalControl* owner, int fd) : owner_(owner), fd_(fd) {}
    LocalControl* owner_;
    int fd_;
    Status broken_;                      // set at the first connection failure
    std::vector<uint32_t> outstanding_;  // tickets sent and not read yet, in order
    std::map<uint32_t, Reply> early_;    // read, not awaited yet
  };
  Result<std::unique_ptr<Pipeline>> OpenPipeline();

 private:
  LocalControl(std::string socket_path, std::chrono::milliseconds timeout,
               std::chrono::microseconds poll, AttachSource attach);
  // An idle connection, or a new one (handshake + Hello). `fresh` says which.
  Result<int> Take(bool* fresh);
  void GiveBack(int fd);
  // Closes every idle connection (after one turned out dead: the others likely are too).
  void DropIdle();
  Result<int> Open();
  Status Hello(int fd);
  uint32_t NextSequence() { return sequence_.fetch_add(1) + 1; }

  std::string socket_path_;
  std::chrono::milliseconds timeout_;
  std::chrono::microseconds poll_;
  AttachSource attach_;
  std::array<uint8_t, kLocalClientIdBytes> client_id_{};
  std::atomic<uint32_t> sequence_{0};
  std::mutex mu_;
  int anchor_fd_ = -1;              // guarded by mu_
  uint64_t anchor_generation_ = 0;  // guarded by mu_
  std::vector<int> idle_;           // guarded by mu_
};

// Turns a reply frame into the call's status through the one gRPC status mapping (and parses
// `response` when it is OK).
Status LocalReplyStatus(uint16_t code, const std::string& body,
                        google::protobuf::MessageLite* response);

}  // namespace kvstash::client::internal

#endif  // KVSTASH_CLIENT_LOCAL_CONTROL_H_
