// Private to cachesvc/src: RemoteTier::Impl's serving side (remote_tier_impl.h), what this node
// answers its peers on kvstash.v1.KvStashPeer: Hello (the worker address and the rkeys of the
// arena, the GPU pool and the staging region, only to callers with the cluster secret and, with
// TLS, a verified certificate), StageEncoded (PeerStaging serves it), and the peer-token check
// the service's peer-only calls use. The leases peers ask it to release are released by the
// notification handler RemoteTier::Create installs (remote_tier.cc).
//
// Locking: none of its own; it reads fields set at start-up, and PeerStaging and the store lock
// for themselves.
#include <spdlog/spdlog.h>

#include <cstddef>
#include <string>
#include <string_view>

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
