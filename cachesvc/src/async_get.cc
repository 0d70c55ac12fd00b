#include "async_get.h"

#include "kvstash/proto/completion_poll.h"
#include "kvstash/proto/status_mapping.h"

namespace kvstash::cachesvc {

// One Get call from gRPC's request to its status; owned by the queue's thread through its tag.
struct AsyncGetServer::Call {
  enum class Step { kAwaitingCall, kWriting, kFinishing };

  grpc::ServerContext ctx;
  KvStashService::RawAsyncWriter stream{&ctx};
  grpc::ByteBuffer request;
  Step step = Step::kAwaitingCall;
  std::unique_ptr<RpcScope> scope;
  // Declared after ctx: destroyed before it, as the watchdog registration inside requires.
  std::unique_ptr<KvStashService::OutgoingGet> get;
};

AsyncGetServer::AsyncGetServer(KvStashService* service, RpcMetrics* metrics,
                               grpc::ServerBuilder* builder, int threads,
                               std::chrono::microseconds poll)
    : service_(service), metrics_(metrics), poll_(poll) {
  for (int i = 0; i < threads; ++i) queues_.push_back(builder->AddCompletionQueue());
}

AsyncGetServer::~AsyncGetServer() { Stop(); }

void AsyncGetServer::Start() {
  // Two calls awaited per queue: a second Get arriving while the first is being set up does not
  // wait for the next request.
  for (auto& cq : queues_) {
    AwaitCall(cq.get());
    AwaitCall(cq.get());
  }
  for (auto& cq : queues_) threads_.emplace_back([this, q = cq.get()] { Run(q); });
}

void AsyncGetServer::Stop() {
  if (stopped_) return;
  stopped_ = true;
  {
    // After grpc::Server::Shutdown() the calls it cancelled may still have events coming; their
    // handlers must not start operations on a queue that is shut down.
    std::unique_lock<std::shared_mutex> lock(queues_mu_);
    stopping_ = true;
    for (auto& cq : queues_) cq->Shutdown();
  }
  for (auto& t : threads_) t.join();
  threads_.clear();
  // Queues whose thread never ran (a server that failed to start) still hold their calls.
  for (auto& cq : queues_) {
    void* tag = nullptr;
    bool ok = false;
    while (cq->Next(&tag, &ok)) delete static_cast<Call*>(tag);
  }
}

void AsyncGetServer::AwaitCall(grpc::ServerCompletionQueue* cq) {
  auto* call = new Call;
  service_->RequestGetCall(&call->ctx, &call->request, &call->stream, cq, call);
}

void AsyncGetServer::Run(grpc::ServerCompletionQueue* cq) {
  void* tag = nullptr;
  bool ok = false;
  while (NextEvent(cq, &tag, &ok, poll_)) {
    auto* call = static_cast<Call*>(tag);
    std::shared_lock<std::shared_mutex> lock(queues_mu_);
    if (stopping_) {
      delete call;  // its one pending operation just completed: nothing refers to it any more
      continue;
    }
    Handle(call, ok, cq);
  }
}

void AsyncGetServer::Handle(Call* call, bool ok, grpc::ServerCompletionQueue* cq) {
  switch (call->step) {
    case Call::Step::kAwaitingCall: {
      if (!ok) {  // the server is shutting down
        delete call;
        return;
      }
      AwaitCall(cq);
      // gRPC delivers a server-streaming call with its one request message.
      call->scope = std::make_unique<RpcScope>(metrics_, Method::kGet, call->request.Length());
      Result<std::unique_ptr<KvStashService::OutgoingGet>> get =
          service_->StartGet(&call->ctx, &call->request);
      if (!get.ok()) return Finish(call, get.status());
      call->get = std::move(*get);
      return WriteNext(call);
    }
    case Call::Step::kWriting:
      if (!ok) return Finish(call, call->get->WriteFailed());
      if (call->get->done()) return Finish(call, OkStatus());
      return WriteNext(call);
    case Call::Step::kFinishing:
      delete call;
      return;
  }
}

void AsyncGetServer::WriteNext(Call* call) {
  Status in_time = call->get->CheckDeadline();
  if (!in_time.ok()) return Finish(call, in_time);
  call->step = Call::Step::kWriting;
  call->stream.Write(call->get->NextMessage(*call->scope), call);
}

void AsyncGetServer::Finish(Call* call, const Status& status) {
  call->step = Call::Step::kFinishing;
  call->stream.Finish(ToGrpcStatus(call->scope->Finish(status)), call);
}

}  // namespace kvstash::cachesvc
