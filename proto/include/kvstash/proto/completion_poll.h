// Waiting on a gRPC completion queue without paying a thread wake-up per event.
//
// A thread blocked in CompletionQueue::Next() sleeps in epoll_wait until its event arrives, and
// waking it costs tens of microseconds on a virtual machine, more than a small call. A
// zero-deadline AsyncNext() polls the same sockets and returns at once; NextEvent polls for a
// window, then blocks. Both ends of the byte-stream path use it (KvClient's streaming calls and
// PutMany's, cachesvc's Put and Get threads).
#ifndef KVSTASH_PROTO_COMPLETION_POLL_H_
#define KVSTASH_PROTO_COMPLETION_POLL_H_

#include <grpcpp/completion_queue.h>

#include <chrono>

namespace kvstash {

// The next event of `cq` into `tag` and `ok`, as CompletionQueue::Next(): polls for up to
// `poll` (yielding the CPU between polls), then blocks. False once `cq` is shut down and
// drained. Thread-safe as Next() is.
bool NextEvent(grpc::CompletionQueue* cq, void** tag, bool* ok, std::chrono::microseconds poll);

// Shuts `cq` down and takes every event left in it, which gRPC requires before a queue is
// destroyed. The events' tags are dropped: call it once nothing needs them (every call on the
// queue is finished or cancelled and reaped by its owner).
void ShutdownAndDrain(grpc::CompletionQueue* cq);

}  // namespace kvstash

#endif  // KVSTASH_PROTO_COMPLETION_POLL_H_
