// The prefix watcher: one stream at a time, reopened from the revision after the last event
// delivered. A second thread asks etcd for progress every second; a stream that stays silent for
// longer than max(3 s, 2 x timeout) is cancelled and reopened, so a stopped etcd or a cut link is
// noticed even though an idle watch stream carries nothing.
#include <spdlog/spdlog.h>

#include <condition_variable>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "etcd_internal.h"
#include "kvstash/cluster/etcd_client.h"

namespace kvstash::cluster {

using Clock = std::chrono::steady_clock;

class WatcherImpl final : public Watcher {
 public:
  WatcherImpl(EtcdClient::Impl* client, std::string prefix, int64_t start_revision, EventsFn ev,
              ResyncFn resync)
      : client_(client),
        prefix_(std::move(prefix)),
        next_revision_(start_revision),
        on_events_(std::move(ev)),
        on_resync_(std::move(resync)) {
    reader_ = std::thread([this] { ReadLoop(); });
    ticker_ = std::thread([this] { TickLoop(); });
  }

  ~WatcherImpl() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      if (ctx_ != nullptr) ctx_->TryCancel();
    }
    cv_.notify_all();
    reader_.join();
    ticker_.join();
  }

  uint64_t streams_opened() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return streams_opened_;
  }

 private:
  using Stream = grpc::ClientReaderWriter<etcdserverpb::WatchRequest, etcdserverpb::WatchResponse>;

  void ReadLoop() {
    uint32_t backoff_ms = 50;
    while (true) {
      std::shared_ptr<grpc::ClientContext> ctx = std::make_shared<grpc::ClientContext>();
      EtcdClient::Impl::Endpoint& ep = client_->Pick();
      std::shared_ptr<Stream> stream;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stop_) return;
        ctx_ = ctx;
        stream = std::shared_ptr<Stream>(ep.watch->Watch(ctx.get()).release());
        stream_ = stream;
        ++streams_opened_;
        last_heard_ = Clock::now();
      }
      Status ended = RunStream(*stream);
      bool stopping;
      {
        std::lock_guard<std::mutex> lock(mu_);
        stream_.reset();
        ctx_.reset();
        stopping = stop_;
      }
      ctx->TryCancel();
      { std::lock_guard<std::mutex> wlock(write_mu_); }  // the ticker's last Write is over
      grpc::Status finish = stream->Finish();
      if (stopping) return;
      Status s = ended.ok() ? client_->Check(finish, "Watch", ep) : ended;
      if (heard_ || backoff_ms >= 1000) {
        spdlog::warn("event=etcd_watch_broken prefix={} next_revision={} error=\"{}\"", prefix_,
                     next_revision_, std::string(s.message()));
      }
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(backoff_ms), [this] { return stop_; });
      if (stop_) return;
      // A stream that delivered something starts the back-off afresh; failed connects double it.
      backoff_ms = heard_ ? 50 : std::min<uint32_t>(backoff_ms * 2, 1000);
    }
  }

  // Reads one stream until it breaks; OK when it just ended (reopen at once).
  Status RunStream(Stream& stream) {
    etcdserverpb::WatchRequest req;
    auto* create = req.mutable_create_request();
    create->set_key(prefix_);
    create->set_range_end(PrefixRangeEnd(prefix_));
    create->set_start_revision(next_revision_);
    {
      std::lock_guard<std::mutex> lock(write_mu_);
      if (!stream.Write(req)) return OkStatus();
    }
    etcdserverpb::WatchResponse resp;
    heard_ = false;
    while (stream.Read(&resp)) {
      heard_ = true;
      {
        std::lock_guard<std::mutex> lock(mu_);
        last_heard_ = Clock::now();
      }
      if (resp.compact_revision() > 0) {
        // The revision we wanted is gone: re-read everything, then watch from there.
        spdlog::warn("event=etcd_watch_compacted prefix={} wanted={} compacted={}", prefix_,
                     next_revision_, resp.compact_revision());
        next_revision_ = on_resync_() + 1;
        return absl::AbortedError("watch revision compacted; resynchronised");
      }
      if (resp.canceled()) {
        return absl::AbortedError(absl::StrCat("watch canceled: ", resp.cancel_reason()));
      }
      if (resp.events_size() == 0) continue;  // created, or a progress answer
      std::vector<WatchEvent> events;
      int64_t last = 0;
      for (const auto& e : resp.events()) {
        WatchEvent ev;
        ev.type =
            e.type() == mvccpb::Event::DELETE ? WatchEvent::Type::kDelete : WatchEvent::Type::kPut;
        ev.kv = KeyValue{e.kv().key(), e.kv().value(), e.kv().mod_revision(), e.kv().lease()};
        last = std::max(last, e.kv().mod_revision());
        events.push_back(std::move(ev));
      }
      next_revision_ = std::max(next_revision_, last + 1);
      on_events_(events, resp.header().revision());
    }
    return OkStatus();
  }

  void TickLoop() {
    const auto silence =
        std::chrono::milliseconds(std::max<uint32_t>(3000, client_->options.timeout_ms * 2));
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      cv_.wait_for(lock, std::chrono::seconds(1), [this] { return stop_; });
      if (stop_) return;
      std::shared_ptr<Stream> stream = stream_;
      if (stream == nullptr) continue;
      if (Clock::now() - last_heard_ > silence) {
        spdlog::warn("event=etcd_watch_silent prefix={} ms={}", prefix_, silence.count());
        ctx_->TryCancel();
        continue;
      }
      lock.unlock();
      etcdserverpb::WatchRequest progress;
      progress.mutable_progress_request();
      {
        // Lock order write_mu_ -> mu_; the reader finishes a stream only after taking write_mu_.
        std::lock_guard<std::mutex> wlock(write_mu_);
        bool current;
        {
          std::lock_guard<std::mutex> check(mu_);
          current = stream_ == stream;
        }
        if (current) (void)stream->Write(progress);
      }
      lock.lock();
    }
  }

  EtcdClient::Impl* client_;
  const std::string prefix_;
  int64_t next_revision_;  // reader thread only
  bool heard_ = false;     // reader thread only: the current stream answered
  EventsFn on_events_;
  ResyncFn on_resync_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::shared_ptr<grpc::ClientContext> ctx_;
  std::shared_ptr<Stream> stream_;
  uint64_t streams_opened_ = 0;
  Clock::time_point last_heard_;
  std::mutex write_mu_;  // one writer at a time on the stream (create vs progress)
  std::thread reader_;
  std::thread ticker_;
};

Result<std::unique_ptr<Watcher>> EtcdClient::WatchPrefix(const std::string& prefix,
                                                         int64_t start_revision,
                                                         Watcher::EventsFn on_events,
                                                         Watcher::ResyncFn on_resync) {
  if (start_revision <= 0) return absl::InvalidArgumentError("watch start_revision must be > 0");
  if (!on_events || !on_resync) return absl::InvalidArgumentError("watch without callbacks");
  return std::unique_ptr<Watcher>(new WatcherImpl(impl_.get(), prefix, start_revision,
                                                  std::move(on_events), std::move(on_resync)));
}

}  // namespace kvstash::cluster
