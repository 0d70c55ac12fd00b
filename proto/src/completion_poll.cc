#include "kvstash/proto/completion_poll.h"

#include <grpc/support/time.h>

#include <thread>

namespace kvstash {

bool NextEvent(grpc::CompletionQueue* cq, void** tag, bool* ok, std::chrono::microseconds poll) {
  if (poll.count() > 0) {
    const auto until = std::chrono::steady_clock::now() + poll;
    do {
      switch (cq->AsyncNext(tag, ok, gpr_time_0(GPR_CLOCK_MONOTONIC))) {
        case grpc::CompletionQueue::GOT_EVENT:
          return true;
        case grpc::CompletionQueue::SHUTDOWN:
          return false;
        case grpc::CompletionQueue::TIMEOUT:
          std::this_thread::yield();
          break;
      }
    } while (std::chrono::steady_clock::now() < until);
  }
  return cq->Next(tag, ok);
}

void ShutdownAndDrain(grpc::CompletionQueue* cq) {
  cq->Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq->Next(&tag, &ok)) {
  }
}

}  // namespace kvstash
