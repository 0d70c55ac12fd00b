// Serves KvStashService's streaming Put and Get from gRPC completion queues driven by the
// service's own threads, which poll their queue for `poll` after each event before they block.
//
// gRPC's sync server hands each call between its threads, and each hand-off costs a thread
// wake-up (tens of microseconds on a virtual machine); here one thread takes a call from gRPC's
// request to its status, and a polling thread is not asleep when the next event comes. On the
// development VM a Get of 256 KiB went from 0.30-0.38 ms p50 to 0.16-0.19
// (docs/benchmarks-service.md). A durable Put's commit waits for the SSD on the thread that
// completes it; the other threads go on serving.
//
// Threading: the constructor and Start() on the thread that builds the server; Stop() once, after
// grpc::Server::Shutdown() has returned (it shuts the queues down, drains them and joins the
// threads). The destructor stops what was started.
#ifndef KVSTASH_CACHESVC_ASYNC_STREAMS_H_
#define KVSTASH_CACHESVC_ASYNC_STREAMS_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <shared_mutex>
#include <thread>
#include <vector>

#include "kv_service.h"
#include "rpc_metrics.h"

namespace kvstash::cachesvc {

class AsyncStreamServer {
 public:
  // Adds `threads` completion queues to `builder`, whose server must not be built yet. `service`
  // and `metrics` must outlive this object.
  //
  // `listening`: whether the server may accept connections on these queues. Under gRPC's "poll"
  // engine a connection's socket is polled by the threads of the queue that accepted it (and of
  // the queues its calls ran on); a thread that blocks in a call for long (a commit waiting for
  // synchronous replication, whose owners call back into this server on new connections) then
  // leaves the connections it accepted unread. Not listening (gRPC's is_frequently_polled
  // false), the queues serve their calls but the sync server's threads accept and read every
  // connection.
  AsyncStreamServer(KvStashService* service, RpcMetrics* metrics, grpc::ServerBuilder* builder,
                    int threads, std::chrono::microseconds poll, bool listening = true);
  ~AsyncStreamServer();
  AsyncStreamServer(const AsyncStreamServer&) = delete;
  AsyncStreamServer& operator=(const AsyncStreamServer&) = delete;

  // Starts answering calls; after the server was built.
  void Start();
  void Stop();

 private:
  class Call;
  class GetCall;
  class PutCall;
  void Run(grpc::ServerCompletionQueue* cq);

  KvStashService* service_;
  RpcMetrics* metrics_;
  const std::chrono::microseconds poll_;
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues_;
  std::vector<std::thread> threads_;
  // Held shared while a thread handles an event (which may start operations on its queue) and
  // exclusively by Stop() to shut the queues down: gRPC forbids starting an operation on a queue
  // that is shut down, and once stopping_ is set, events only delete their calls.
  std::shared_mutex queues_mu_;
  bool stopping_ = false;
  bool stopped_ = false;
};

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_ASYNC_STREAMS_H_
