#include "async_streams.h"

#include "kvstash/proto/completion_poll.h"
#include "kvstash/proto/status_mapping.h"
#include "request_checks.h"

namespace kvstash::cachesvc {

// One call from gRPC's request to its status. Its address is the tag of every operation it has
// pending (one at a time); the queue's thread hands each event to Proceed(), and a call deletes
// itself after its last event.
class AsyncStreamServer::Call {
 public:
  Call(AsyncStreamServer* server, grpc::ServerCompletionQueue* cq) : server_(server), cq_(cq) {}
  virtual ~Call() = default;
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;

  // Handles the completion of the pending operation (`ok`: gRPC's success bit).
  virtual void Proceed(bool ok) = 0;

 protected:
  AsyncStreamServer* server_;
  grpc::ServerCompletionQueue* cq_;
  grpc::ServerContext ctx_;
  std::unique_ptr<RpcScope> scope_;
};

class AsyncStreamServer::GetCall final : public Call {
 public:
  // Asks gRPC for the next Get on `cq`.
  static void Await(AsyncStreamServer* server, grpc::ServerCompletionQueue* cq) {
    auto* call = new GetCall(server, cq);
    server->service_->RequestGetCall(&call->ctx_, &call->request_, &call->writer_, cq, call);
  }

  void Proceed(bool ok) override {
    switch (step_) {
      case Step::kAwaitingCall: {
        if (!ok) {  // the server is shutting down
          delete this;
          return;
        }
        Await(server_, cq_);
        // gRPC delivers a server-streaming call with its one request message.
        scope_ = std::make_unique<RpcScope>(server_->metrics_, Method::kGet, request_.Length());
        Result<std::unique_ptr<KvStashService::OutgoingGet>> get =
            server_->service_->StartGet(&ctx_, &request_);
        if (!get.ok()) return Finish(get.status());
        get_ = std::move(*get);
        return WriteNext();
      }
      case Step::kWriting:
        if (!ok) return Finish(get_->WriteFailed());
        if (get_->done()) return Finish(OkStatus());
        return WriteNext();
      case Step::kFinishing:
        delete this;
        return;
    }
  }

 private:
  enum class Step { kAwaitingCall, kWriting, kFinishing };
  using Call::Call;

  void WriteNext() {
    Status in_time = get_->CheckDeadline();
    if (!in_time.ok()) return Finish(in_time);
    step_ = Step::kWriting;
    writer_.Write(get_->NextMessage(*scope_), this);
  }
  void Finish(const Status& status) {
    step_ = Step::kFinishing;
    writer_.Finish(ToGrpcStatus(scope_->Finish(status)), this);
  }

  KvStashService::RawAsyncWriter writer_{&ctx_};
  grpc::ByteBuffer request_;
  Step step_ = Step::kAwaitingCall;
  // Destroyed before ctx_ (a base member), as the watchdog registration inside requires.
  std::unique_ptr<KvStashService::OutgoingGet> get_;
};

class AsyncStreamServer::PutCall final : public Call {
 public:
  // Asks gRPC for the next Put on `cq`.
  static void Await(AsyncStreamServer* server, grpc::ServerCompletionQueue* cq) {
    auto* call = new PutCall(server, cq);
    server->service_->RequestPutCall(&call->ctx_, &call->reader_, cq, call);
  }

  void Proceed(bool ok) override {
    switch (step_) {
      case Step::kAwaitingCall:
        if (!ok) {  // the server is shutting down
          delete this;
          return;
        }
        Await(server_, cq_);
        scope_ = std::make_unique<RpcScope>(server_->metrics_, Method::kPut, 0);
        return ReadNext();
      case Step::kReading: {
        // A failed Read is the end of the client's stream: its half-close, or the client gone.
        if (!ok) {
          if (put_ == nullptr) return Finish(Invalid("Put stream ended before its header"));
          return Finish(put_->Complete());
        }
        Status s;
        if (put_ == nullptr) {
          Result<std::unique_ptr<KvStashService::IncomingPut>> put =
              server_->service_->StartPut(&ctx_, &message_, *scope_);
          if (put.ok()) put_ = std::move(*put);
          s = put.status();
        } else {
          s = put_->Accept(&message_, *scope_);
        }
        if (!s.ok()) return Finish(s);
        return ReadNext();
      }
      case Step::kFinishing:
        delete this;
        return;
    }
  }

 private:
  enum class Step { kAwaitingCall, kReading, kFinishing };
  using Call::Call;

  void ReadNext() {
    step_ = Step::kReading;
    message_.Clear();
    reader_.Read(&message_, this);
  }
  void Finish(const Status& status) {
    step_ = Step::kFinishing;
    const Status& recorded = scope_->Finish(status);
    put_.reset();  // aborts a reservation that was not committed, before the client hears back
    if (!recorded.ok()) {
      reader_.FinishWithError(ToGrpcStatus(recorded), this);
      return;
    }
    grpc::ByteBuffer response;  // an empty PutResponse
    bool own_buffer = false;
    (void)grpc::SerializationTraits<v1::PutResponse>::Serialize(v1::PutResponse(), &response,
                                                                &own_buffer);
    reader_.Finish(response, grpc::Status::OK, this);
  }

  KvStashService::RawAsyncReader reader_{&ctx_};
  grpc::ByteBuffer message_;
  Step step_ = Step::kAwaitingCall;
  std::unique_ptr<KvStashService::IncomingPut> put_;
};

AsyncStreamServer::AsyncStreamServer(KvStashService* service, RpcMetrics* metrics,
                                     grpc::ServerBuilder* builder, int threads,
                                     std::chrono::microseconds poll, bool listening)
    : service_(service), metrics_(metrics), poll_(poll) {
  for (int i = 0; i < threads; ++i) {
    queues_.push_back(builder->AddCompletionQueue(/*is_frequently_polled=*/listening));
  }
}

AsyncStreamServer::~AsyncStreamServer() { Stop(); }

void AsyncStreamServer::Start() {
  // Two calls of each kind awaited per queue: a second call arriving while the first is being set
  // up does not wait for the next request.
  for (auto& cq : queues_) {
    for (int i = 0; i < 2; ++i) {
      GetCall::Await(this, cq.get());
      PutCall::Await(this, cq.get());
    }
  }
  for (auto& cq : queues_) threads_.emplace_back([this, q = cq.get()] { Run(q); });
}

void AsyncStreamServer::Stop() {
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

void AsyncStreamServer::Run(grpc::ServerCompletionQueue* cq) {
  void* tag = nullptr;
  bool ok = false;
  while (NextEvent(cq, &tag, &ok, poll_)) {
    auto* call = static_cast<Call*>(tag);
    std::shared_lock<std::shared_mutex> lock(queues_mu_);
    if (stopping_) {
      delete call;  // its one pending operation just completed: nothing refers to it any more
      continue;
    }
    call->Proceed(ok);
  }
}

}  // namespace kvstash::cachesvc
