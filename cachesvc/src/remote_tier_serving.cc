// Private to cachesvc/src: RemoteTier::Impl's serving side (remote_tier_impl.h), what this node
// answers its peers on kvstash.v1.KvStashPeer: Hello (the worker address and the rkeys of the
// arena, the GPU pool and the staging region, only to callers with the cluster secret and, with
// TLS, a verified certificate), StageEncoded (PeerStaging serves it), and the peer-token check
// the service's peer-only calls use. The leases peers ask it to release are released by the
// notification handler RemoteTier::Create installs (remote_tier.cc).
//
// Serving first (peers.ucx_connect): Hello connects to the reader's UCX worker before it answers,
// and keeps those endpoints (reader_links) while they are healthy, within bounds (ConnectBack).
//
// Locking: readers_mu guards reader_links, never across a transport call that waits (connects
// and disconnects happen outside it); otherwise it reads fields set at start-up, and PeerStaging
// and the store lock for themselves.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "remote_tier_impl.h"

namespace kvstash::cachesvc {
namespace {

bool SameSecret(const std::string& a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

grpc::Status RemoteTier::Impl::HelloService::Hello(grpc::ServerContext* ctx,
                                                   const v1::PeerHelloRequest* req,
                                                   v1::PeerHelloResponse* resp) {
  auto it = ctx->client_metadata().find(kPeerTokenHeader);
  if (it == ctx->client_metadata().end()) {
    impl_->hello_refused->Increment();
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "peer Hello without the kvstash-peer-token metadata");
  }
  if (it->second.size() > 4096 ||
      !SameSecret(impl_->secret, std::string_view(it->second.data(), it->second.size()))) {
    impl_->hello_refused->Increment();
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "wrong cluster secret");
  }
  // With TLS, the rkey goes only over a connection whose peer proved a certificate of the
  // cluster's CA (the listener requires one; this keeps Hello honest if that ever changes).
  if (impl_->tls_required &&
      (ctx->auth_context() == nullptr || !ctx->auth_context()->IsPeerAuthenticated())) {
    impl_->hello_refused->Increment();
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "peer Hello needs a mutually authenticated TLS connection");
  }
  spdlog::info("event=peer_hello from={} peer={}", req->node_id().substr(0, 256), ctx->peer());
#ifdef KVSTASH_HAVE_UCX
  // Before anything is handed out: the wire-up with a reader that dies now is this node's own
  // (docs/deploy.md "Which UCX"), and a reader that is already gone gets no rkey.
  if (impl_->connect_first && impl_->transport != nullptr && !req->ucx_worker_address().empty()) {
    if (req->ucx_worker_address().size() > 4096) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "ucx_worker_address longer than 4096 bytes");
    }
    // Within peers.timeout_ms and the call's own deadline (far off when it has none).
    const auto call_left = std::chrono::duration_cast<Clock::duration>(
        ctx->deadline() - std::chrono::system_clock::now());
    const Clock::time_point deadline =
        std::min(impl_->Deadline(), Clock::now() + std::max(call_left, Clock::duration::zero()));
    grpc::Status back =
        impl_->ConnectBack(req->ucx_worker_address(), impl_->staging != nullptr ? 2 : 1, deadline,
                           req->node_id().substr(0, 256));
    if (!back.ok()) return back;
  }
#endif
  resp->set_node_id(impl_->node_id);
  resp->set_arena_generation(impl_->store->arena_generation());
  resp->set_arena_bytes(impl_->store->arena_bytes());
#ifdef KVSTASH_HAVE_UCX
  if (impl_->transport != nullptr) {
    // What peers may read: the registered range, which covers arenas added after start-up.
    resp->set_arena_bytes(impl_->region.bytes);
    resp->set_ucx_worker_address(impl_->transport->worker_address());
    resp->set_arena_address(impl_->region.address);
    resp->set_arena_rkey(impl_->region.packed_rkey);
    resp->set_release_message_id(kReleaseMessageId);
    if (impl_->gpu_registered) {
      resp->set_gpu_pool_address(impl_->gpu_region.address);
      resp->set_gpu_pool_bytes(impl_->gpu_region.bytes);
      resp->set_gpu_pool_rkey(impl_->gpu_region.packed_rkey);
    }
    if (impl_->staging != nullptr) {
      resp->set_staging_address(impl_->staging->region().address);
      resp->set_staging_bytes(impl_->staging->region().bytes);
      resp->set_staging_rkey(impl_->staging->region().packed_rkey);
    }
  }
#endif
  return grpc::Status::OK;
}

grpc::Status RemoteTier::Impl::HelloService::StageEncoded(
    grpc::ServerContext* ctx,
    grpc::ServerReaderWriter<v1::StageEncodedResponse, v1::StageEncodedRequest>* stream) {
  grpc::Status allowed = impl_->CheckToken(ctx);
  if (!allowed.ok()) return allowed;
#ifdef KVSTASH_HAVE_UCX
  if (impl_->staging != nullptr) return impl_->staging->Serve(ctx, stream);
#endif
  (void)stream;
  return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                      "this node stages no encoded fetches (UCX data plane and "
                      "peers.staging_mib > 0 are needed)");
}

#ifdef KVSTASH_HAVE_UCX
void RemoteTier::Impl::PublishReaderEndpointsLocked() {
  size_t held = 0;
  for (const ReaderLink& l : reader_links) held += l.endpoints.size();
  reader_endpoints->Set(static_cast<double>(held));
}

grpc::Status RemoteTier::Impl::ConnectBack(const std::string& worker_address, int endpoints,
                                           Clock::time_point deadline, const std::string& reader) {
  // Links whose reader went away (an endpoint failed: the reader died or closed its side).
  std::vector<transport::PeerId> stale;
  {
    MutexLock lock(&readers_mu);
    auto gone = std::remove_if(reader_links.begin(), reader_links.end(), [&](ReaderLink& link) {
      for (transport::PeerId id : link.endpoints) {
        if (!transport->Healthy(id)) {
          stale.insert(stale.end(), link.endpoints.begin(), link.endpoints.end());
          return true;
        }
      }
      return false;
    });
    reader_links.erase(gone, reader_links.end());
    PublishReaderEndpointsLocked();
  }
  for (transport::PeerId id : stale) transport->Disconnect(id);

  ReaderLink link;
  link.worker_address = worker_address;
  for (int i = 0; i < endpoints; ++i) {
    Result<transport::PeerId> id = transport->ConnectWorker(worker_address, deadline);
    if (!id.ok()) {
      for (transport::PeerId made : link.endpoints) transport->Disconnect(made);
      connect_backs_failed->Increment();
      spdlog::warn("event=peer_connect_back_failed from={} error=\"{}\"", reader,
                   std::string(id.status().message()));
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          absl::StrCat("this node could not connect back to the reader's UCX "
                                       "worker (peers.ucx_connect serving_first; the reader died, "
                                       "or its worker is out of this node's reach): ",
                                       id.status().message()));
    }
    link.endpoints.push_back(*id);
  }
  connect_backs_ok->Increment();

  std::vector<transport::PeerId> evicted;
  {
    MutexLock lock(&readers_mu);
    reader_links.push_back(std::move(link));
    // In Hello order: the first are the oldest, and go first.
    size_t of_this_reader = 0;
    for (const ReaderLink& l : reader_links) {
      if (l.worker_address == worker_address) ++of_this_reader;
    }
    for (auto it = reader_links.begin(); it != reader_links.end();) {
      const bool mine = it->worker_address == worker_address;
      if (reader_links.size() <= kMaxReaderLinks &&
          !(mine && of_this_reader > kMaxLinksPerReader)) {
        ++it;
        continue;
      }
      if (mine) --of_this_reader;
      evicted.insert(evicted.end(), it->endpoints.begin(), it->endpoints.end());
      it = reader_links.erase(it);
    }
    PublishReaderEndpointsLocked();
  }
  for (transport::PeerId id : evicted) transport->Disconnect(id);
  return grpc::Status::OK;
}
#endif

grpc::Status RemoteTier::Impl::CheckToken(const grpc::ServerContext* ctx) const {
  auto it = ctx->client_metadata().find(kPeerTokenHeader);
  if (secret.empty() || it == ctx->client_metadata().end() || it->second.size() > 4096 ||
      !SameSecret(secret, std::string_view(it->second.data(), it->second.size()))) {
    hello_refused->Increment();
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "peer call without the right kvstash-peer-token");
  }
  if (tls_required &&
      (ctx->auth_context() == nullptr || !ctx->auth_context()->IsPeerAuthenticated())) {
    hello_refused->Increment();
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "peer call needs a mutually authenticated TLS connection");
  }
  return grpc::Status::OK;
}

}  // namespace kvstash::cachesvc
