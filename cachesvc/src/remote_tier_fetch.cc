// Private to cachesvc/src: RemoteTier::Impl's fetch path (remote_tier_impl.h), the reader's
// side of a peer fetch: which encoding to ask a peer for (and the link's measured rate), one
// batch over UCX (Acquire on the peer, reserve here, Read or Fetch, release the peer's leases),
// reads of leases a peer offered (handoffs), encoded fetches pulled from a peer's staging over
// UCX (peer_staging.h) or over KvStash.Get streams, and landing: the crc32c check and commit of
// what arrived, or its abort.
//
// Locking: none held across a peer call. A fetch works from the Link that Connect took under
// the peer's mu (remote_tier_peers.cc); the store and the transport lock for themselves, and
// per-peer counters and rates are atomics.
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/proto/status_mapping.h"
#include "remote_tier_impl.h"
#include "request_checks.h"

namespace kvstash::cachesvc {
namespace {

// "Release these leases": the payload of a UCX notification, and the gRPC fallback's request.
v1::ReleaseRequest ReleaseMessage(const std::vector<uint64_t>& leases) {
  v1::ReleaseRequest req;
  for (uint64_t id : leases) req.add_lease_ids(id);
  return req;
}

// To the engine, a peer that cannot be used is unavailable, whatever the reason (timeout, reset,
// refused secret); the message keeps the cause.
Status PeerUnavailable(const std::string& address, const Status& cause) {
  return absl::UnavailableError(absl::StrCat("peer ", address, " unavailable: ", cause.message()));
}

// Raw fetches at least this large measure a link's rate (smaller ones measure latency).
constexpr uint64_t kMeasureMinBytes = 256 << 10;
// While a measured link carries CacheGen, one batch in this many goes raw to re-measure it.
constexpr uint32_t kRawProbeEvery = 16;

bool IsDefinitive(const Status& s) {
  // The object is settled for this fetch: fetched, or the local store cannot take it.
  return s.ok() || s.code() == absl::StatusCode::kResourceExhausted ||
         s.code() == absl::StatusCode::kInvalidArgument;
}

thread_local bool tls_committing_fetched = false;

}  // namespace

bool CommittingFetchedObject() { return tls_committing_fetched; }

std::optional<codec::CodecRates> RemoteTier::Impl::EncodingFor(Peer& peer) {
  if (decoder == nullptr) return std::nullopt;  // raw
  codec::CodecRates fixed;
  if (config.transfer_encoding == PeerTransferEncoding::kCacheGen) {
    fixed.kind = codec::CodecKind::kCacheGen;
    return fixed;
  }
  if (config.transfer_encoding == PeerTransferEncoding::kKvq) {
    fixed.kind = codec::CodecKind::kKvq;
    return fixed;
  }
  const bool measured = config.link_mbps == 0;
  const double rate =
      measured ? peer.raw_bytes_per_s.load() : static_cast<double>(config.link_mbps) * 1e6 / 8;
  const codec::CodecRates chosen =
      codec::ChooseEncoding(candidates, rate, codec::CostModel::kTransfer);
  if (chosen.kind == codec::CodecKind::kRaw) return std::nullopt;
  if (measured && peer.encoded_batches.fetch_add(1) % kRawProbeEvery == kRawProbeEvery - 1) {
    return std::nullopt;  // a raw batch keeps the link's measurement fresh
  }
  return chosen;
}

void RemoteTier::Impl::MeasureRaw(Peer& peer, uint64_t bytes, Clock::duration took) {
  const double s = std::chrono::duration<double>(took).count();
  if (bytes < kMeasureMinBytes || s <= 0) return;
  const double rate = static_cast<double>(bytes) / s;
  const double old = peer.raw_bytes_per_s.load();
  peer.raw_bytes_per_s.store(old == 0 ? rate : (old + rate) / 2);
}

void RemoteTier::Impl::FetchFromPeer(Peer& peer, const std::vector<ObjectName>& names,
                                     std::vector<size_t>& remaining, std::vector<Status>& out,
                                     storage::Tier land) {
  Result<Link> link = Connect(peer);
  if (!link.ok()) {
    if (link.status().code() != absl::StatusCode::kNotFound) {
      MarkDown(peer, link.status());
      Status unavailable = PeerUnavailable(peer.address, link.status());
      for (size_t i : remaining) {
        if (out[i].code() == absl::StatusCode::kNotFound) out[i] = unavailable;
      }
    }
    return;
  }
  if (land == storage::Tier::kGpu && !link->ucx) {
    Status refused = absl::FailedPreconditionError(
        absl::StrCat("cannot land in the GPU tier: peer ", peer.address,
                     " has no UCX data plane (its objects would come over gRPC streams)"));
    for (size_t i : remaining) out[i] = refused;
    remaining.clear();
    return;
  }
  const std::optional<codec::CodecRates> encoded =
      land == storage::Tier::kCpu ? EncodingFor(peer) : std::nullopt;
  if (link->ucx && !encoded) {
    FetchOverUcx(peer, *link, names, remaining, out, land);
  } else {
    // Encoded: pulled from the peer's staging over UCX where it can; the rest over streams.
    const std::vector<size_t> streamed =
        encoded ? FetchStaged(peer, *link, names, remaining, out, *encoded) : remaining;
    for (size_t i : streamed) {
      if (Down(peer)) break;
      Status s = FetchOverGrpc(peer, names[i], encoded ? &*encoded : nullptr);
      if (s.code() == absl::StatusCode::kUnavailable ||
          s.code() == absl::StatusCode::kDeadlineExceeded) {
        MarkDown(peer, s);
        s = PeerUnavailable(peer.address, s);
      }
      if (s.code() != absl::StatusCode::kNotFound || out[i].code() == absl::StatusCode::kNotFound) {
        out[i] = s;
      }
    }
  }
  std::vector<size_t> still;
  for (size_t i : remaining) {
    if (!IsDefinitive(out[i])) still.push_back(i);
  }
  remaining.swap(still);
}

void RemoteTier::Impl::NotePlane(Peer& peer, int plane, const char* reason) {
  if (peer.last_plane.exchange(plane) == plane) return;
  spdlog::info("event=peer_encoded_plane peer={} plane={} reason=\"{}\"", peer.address,
               plane == 1 ? "ucx" : "grpc", reason);
}

std::vector<size_t> RemoteTier::Impl::FetchStaged(Peer& peer, const Link& link,
                                                  const std::vector<ObjectName>& names,
                                                  const std::vector<size_t>& remaining,
                                                  std::vector<Status>& out,
                                                  const codec::CodecRates& wanted) {
#ifdef KVSTASH_HAVE_UCX
  if (!link.ucx || link.staging_peer == 0) {
    NotePlane(peer, 2, link.ucx ? "the peer offers no staging" : "no UCX data plane");
    return remaining;
  }
  const Clock::time_point start = Clock::now();
  StagedPull pull;
  pull.stub = peer.hello.get();
  pull.prepare = [this, &wanted](grpc::ClientContext* ctx) {
    PrepareContext(ctx);
    if (wanted.kind == codec::CodecKind::kKvq) {
      ctx->AddMetadata(kPeerCodecHeader,
                       wanted.level == 0 ? "kvq" : absl::StrCat("kvq-", wanted.level));
    }
  };
  pull.store = store;
  pull.transport = transport.get();
  pull.staging_peer = link.staging_peer;
  pull.staging_bytes = link.staging_bytes;
  pull.fetch = ucx_fetch;
  pull.decoder = decoder.get();
  pull.reservation_ms = config.timeout_ms * 2 + 1000;
  pull.deadline = Deadline();
  v1::GetRequest encoding;
  encoding.set_accept_encoding(v1::ENCODING_CACHEGEN);
  Result<std::vector<StagedArrival>> pulled = PullStaged(pull, names, remaining, encoding);
  if (!pulled.ok()) {
    const absl::StatusCode code = pulled.status().code();
    if (code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kDeadlineExceeded) {
      MarkDown(peer, pulled.status());
      for (size_t i : remaining) out[i] = PeerUnavailable(peer.address, pulled.status());
      return {};
    }
    NotePlane(peer, 2, "the peer refused StageEncoded");
    spdlog::debug("event=peer_staged_refused peer={} error=\"{}\"", peer.address,
                  std::string(pulled.status().message()));
    return remaining;
  }
  std::vector<size_t> streamed;
  for (StagedArrival& a : *pulled) {
    if (a.fallback) {
      NotePlane(peer, 2, "the peer's staging pool is full");
      streamed.push_back(a.index);
      continue;
    }
    if (!a.local) {
      if (a.status.code() == absl::StatusCode::kDataLoss) peer.failures_corrupt->Increment();
      if (a.status.code() == absl::StatusCode::kInvalidArgument) {
        peer.failures_bounds->Increment();
      }
      if (a.status.code() != absl::StatusCode::kNotFound ||
          out[a.index].code() == absl::StatusCode::kNotFound) {
        out[a.index] = a.status;
      }
      continue;
    }
    Status s = Settle(peer, Pending{a.index, 0, 0, a.info, *a.local});
    out[a.index] = s;
    if (s.ok() && a.encoded) {
      peer.encoded_objects->Increment();
      peer.wire_bytes->Increment(a.wire_bytes);
      peer.encoded_over_ucx->Increment();
      NotePlane(peer, 1, "staged");
    }
  }
  peer.fetch_seconds->Observe(std::chrono::duration<double>(Clock::now() - start).count());
  return streamed;
#else
  (void)link, (void)names, (void)out, (void)wanted;
  NotePlane(peer, 2, "built without UCX");
  return remaining;
#endif
}

void RemoteTier::Impl::ReleaseRemote(Peer& peer, const Link& link,
                                     const std::vector<uint64_t>& leases) {
  if (leases.empty()) return;
#ifdef KVSTASH_HAVE_UCX
  if (link.ucx && transport != nullptr &&
      transport
          ->Notify(link.ucx_peer, static_cast<uint16_t>(link.release_id),
                   ReleaseMessage(leases).SerializeAsString(), Deadline())
          .ok()) {
    return;
  }
#endif
  grpc::ClientContext ctx;
  PrepareContext(&ctx);
  v1::ReleaseResponse resp;
  Status s = FromGrpcStatus(peer.kv->Release(&ctx, ReleaseMessage(leases), &resp));
  if (!s.ok()) {
    spdlog::warn("event=peer_release_failed peer={} leases={} error=\"{}\"", peer.address,
                 leases.size(), std::string(s.message()));
  }
}

void RemoteTier::Impl::FetchOverUcx(Peer& peer, const Link& link,
                                    const std::vector<ObjectName>& names,
                                    std::vector<size_t>& remaining, std::vector<Status>& out,
                                    storage::Tier land) {
  const Clock::time_point start = Clock::now();
  grpc::ClientContext ctx;
  PrepareContext(&ctx);
  v1::AcquireRequest req;
  req.set_lease_ms(config.timeout_ms * 2 + 1000);
  for (size_t i : remaining) ToProto(names[i], req.add_keys());
  v1::AcquireResponse resp;
  Status s = FromGrpcStatus(peer.kv->Acquire(&ctx, req, &resp));
  if (s.ok() && resp.results_size() != static_cast<int>(remaining.size())) {
    s = absl::InternalError("peer answered Acquire with the wrong number of results");
  }
  if (!s.ok()) {
    MarkDown(peer, s);
    for (size_t i : remaining) out[i] = PeerUnavailable(peer.address, s);
    return;
  }
  std::vector<RemoteObject> objects;
  std::vector<uint64_t> to_release;
  bool stale = false;
  for (int r = 0; r < resp.results_size(); ++r) {
    const v1::AcquireResult& result = resp.results(r);
    const size_t i = remaining[r];
    if (result.status().code() != 0) {
      Status item(static_cast<absl::StatusCode>(result.status().code()), result.status().message());
      if (out[i].code() != absl::StatusCode::kDataLoss) out[i] = item;
      continue;
    }
    to_release.push_back(result.lease_id());
    if (result.arena_generation() != link.generation) {
      stale = true;  // the peer restarted since Hello: its offsets mean something else
      out[i] = absl::UnavailableError("peer restarted; reconnecting");
      continue;
    }
    Result<ObjectInfo> info = FromProto(result.info());
    if (!info.ok()) {
      peer.failures_bounds->Increment();
      out[i] = absl::InvalidArgumentError(absl::StrCat(
          "peer ", peer.address,
          " offered an object outside its arena or with a bad info: ", info.status().message()));
      continue;
    }
    objects.push_back({i, result.lease_id(), result.arena_offset(), *info});
  }
  if (stale) Disconnect(peer);
  if (!ReadFromArena(peer, link, names, objects, out, land, start)) {
    return;  // the peer's leases expire on their own
  }
  ReleaseRemote(peer, link, to_release);
}

bool RemoteTier::Impl::ReadFromArena(Peer& peer, const Link& link,
                                     const std::vector<ObjectName>& names,
                                     const std::vector<RemoteObject>& objects,
                                     std::vector<Status>& out, storage::Tier land,
                                     Clock::time_point start) {
#ifdef KVSTASH_HAVE_UCX
  std::vector<Pending> pending;
  for (const RemoteObject& o : objects) {
    if (o.remote_offset > link.arena_bytes ||
        o.info.payload_bytes > link.arena_bytes - o.remote_offset) {
      peer.failures_bounds->Increment();
      out[o.index] = absl::InvalidArgumentError(
          absl::StrCat("peer ", peer.address, " offered an object outside its arena"));
      continue;
    }
    const uint32_t reservation_ms = config.timeout_ms * 2 + 1000;
    const size_t i = o.index;
    Result<storage::Reservation> local =
        land == storage::Tier::kCpu
            ? store->Reserve(ToStoredName(names[i]), o.info, reservation_ms, /*overwrite=*/false)
            : store->ReserveInTier(land, ToStoredName(names[i]), o.info, reservation_ms,
                                   /*overwrite=*/false);
    if (!local.ok()) {
      out[i] =
          local.status().code() == absl::StatusCode::kAlreadyExists ? OkStatus() : local.status();
      continue;
    }
    pending.push_back({i, o.peer_lease, o.remote_offset, o.info, *local});
  }
  if (pending.empty()) return true;
  std::vector<transport::ReadOp> ops;
  ops.reserve(pending.size());
  for (const Pending& p : pending) {
    ops.push_back({p.remote_offset, LandingOf(p.local), p.info.payload_bytes});
  }
  const Clock::time_point read_start = Clock::now();
  // Fetch: the peer sends the bytes, zero-copy from its arena, copied once into place here.
  // Landings in the GPU pool, which Fetch's memcpy cannot reach, use FetchInPlace (the peer
  // sends, UCX receives into device memory), not gets: a reader dying mid-get can abort the
  // serving peer inside UCX (docs/deploy.md "Which UCX"). --peer-ucx-fetch inplace sends every
  // landing that way, which is how the tests run this call (host memory; no GPU here, so
  // FetchInPlace into the GPU pool is untested). Gets only with false (auto on UCX < 1.14).
  Status read = !ucx_fetch ? transport->Read(link.ucx_peer, ops, Deadline())
                : ucx_in_place || land != storage::Tier::kCpu
                    ? transport->FetchInPlace(link.ucx_peer, ops, Deadline())
                    : transport->Fetch(link.ucx_peer, ops, Deadline());
  if (!read.ok()) {
    for (const Pending& p : pending) {
      (void)store->Abort(p.local.id);
      out[p.index] = PeerUnavailable(peer.address, read);
    }
    MarkDown(peer, read);
    return false;
  }
  uint64_t bytes = 0;
  for (const transport::ReadOp& op : ops) bytes += op.length;
  MeasureRaw(peer, bytes, Clock::now() - read_start);
  for (const Pending& p : pending) out[p.index] = Settle(peer, p);
  peer.fetch_seconds->Observe(std::chrono::duration<double>(Clock::now() - start).count());
  return true;
#else
  (void)peer, (void)link, (void)names, (void)objects, (void)out, (void)land, (void)start;
  return true;
#endif
}

void RemoteTier::Impl::FetchOffered(Peer& peer, const std::vector<ObjectName>& names,
                                    const std::vector<OfferedLease>& offers,
                                    std::vector<size_t>& remaining, std::vector<Status>& out,
                                    std::vector<bool>& via_offer) {
#ifdef KVSTASH_HAVE_UCX
  const bool ucx = transport != nullptr;
#else
  const bool ucx = false;
#endif
  // Encoded transfers (peers.transfer_encoding) are asked of the peer per request: no offers.
  if (!ucx || config.transfer_encoding != PeerTransferEncoding::kRaw) return;
  const Clock::time_point start = Clock::now();
  Result<Link> link = Connect(peer);
  if (!link.ok() || !link->ucx) return;  // the Acquire path reconnects or marks it down
  std::vector<RemoteObject> objects;
  std::vector<size_t> rest;
  for (size_t i : remaining) {
    const OfferedLease& o = offers[i];
    if (o.lease_id == 0 || o.arena_generation != link->generation ||
        o.expires - start < std::chrono::milliseconds(config.timeout_ms)) {
      rest.push_back(i);
      continue;
    }
    objects.push_back({i, o.lease_id, o.arena_offset, o.info});
  }
  if (objects.empty()) return;
  const bool read = ReadFromArena(peer, *link, names, objects, out, storage::Tier::kCpu, start);
  for (const RemoteObject& o : objects) {
    const Status& s = out[o.index];
    if (s.ok()) {
      via_offer[o.index] = true;
    } else if (read && s.code() != absl::StatusCode::kResourceExhausted) {
      rest.push_back(o.index);
      out[o.index] = absl::NotFoundError("the peer does not hold the object");
    }
  }
  remaining.swap(rest);
}

void* RemoteTier::Impl::LandingOf(const storage::Reservation& r) const {
  if (r.tier == storage::Tier::kGpu) {
    return reinterpret_cast<void*>(static_cast<uintptr_t>(gpu_base + r.tier_offset));
  }
  return store->arena_base() + r.arena_offset;
}

Status RemoteTier::Impl::Settle(Peer& peer, const Pending& p) {
  if (p.local.tier != storage::Tier::kCpu) {
    // Device memory: the store reads the landing back and checks its crc32c in Commit.
    tls_committing_fetched = true;
    Status s = store->Commit(p.local.id, p.info.payload_crc32c, /*durable=*/false);
    tls_committing_fetched = false;
    if (s.code() == absl::StatusCode::kInvalidArgument) {
      peer.failures_corrupt->Increment();
      spdlog::warn("event=peer_payload_corrupt peer={} bytes={} tier={} error=\"{}\"", peer.address,
                   p.info.payload_bytes, TierName(p.local.tier), std::string(s.message()));
      return absl::DataLossError(absl::StrCat("object from peer ", peer.address,
                                              " failed its crc32c on arrival; not served"));
    }
    if (s.ok()) {
      peer.fetched_objects->Increment();
      peer.fetched_bytes->Increment(p.info.payload_bytes);
    }
    return s;
  }
  const uint8_t* data = store->arena_base() + p.local.arena_offset;
  const uint32_t crc = Crc32c(data, p.info.payload_bytes);
  if (crc != p.info.payload_crc32c) {
    (void)store->Abort(p.local.id);
    peer.failures_corrupt->Increment();
    spdlog::warn("event=peer_payload_corrupt peer={} bytes={} crc32c={:08x} expected={:08x}",
                 peer.address, p.info.payload_bytes, crc, p.info.payload_crc32c);
    return absl::DataLossError(absl::StrCat("object from peer ", peer.address,
                                            " failed its crc32c on arrival; not served"));
  }
  tls_committing_fetched = true;
  Status s = store->CommitChecked(p.local.id, crc, /*durable=*/false);
  tls_committing_fetched = false;
  if (s.ok()) {
    peer.fetched_objects->Increment();
    peer.fetched_bytes->Increment(p.info.payload_bytes);
  }
  return s;
}

Status RemoteTier::Impl::FetchOverGrpc(Peer& peer, const ObjectName& name,
                                       const codec::CodecRates* wanted) {
  const Clock::time_point start = Clock::now();
  const bool encoded = wanted != nullptr;
  grpc::ClientContext ctx;
  PrepareContext(&ctx);
  v1::GetRequest req;
  ToProto(name, req.mutable_key());
  if (encoded) req.set_accept_encoding(v1::ENCODING_CACHEGEN);
  if (encoded && wanted->kind == codec::CodecKind::kKvq) {
    ctx.AddMetadata(kPeerCodecHeader,
                    wanted->level == 0 ? "kvq" : absl::StrCat("kvq-", wanted->level));
  }
  std::unique_ptr<grpc::ClientReader<v1::GetChunk>> reader = peer.kv->Get(&ctx, req);
  v1::GetChunk chunk;
  std::optional<storage::Reservation> local;
  ObjectInfo info;
  std::optional<ObjectInfo> wire;  // an encoded transfer: what the container is
  std::vector<uint8_t> container;
  uint8_t* landing = nullptr;  // the reservation, or `container`
  uint64_t received = 0, wire_total = 0;
  Status failed;
  while (failed.ok() && reader->Read(&chunk)) {
    if (!local) {
      Result<ObjectInfo> parsed = FromProto(chunk.info());
      if (!parsed.ok()) {
        failed = parsed.status();
        break;
      }
      info = *parsed;
      if (chunk.has_wire_info()) {
        Result<ObjectInfo> w = FromProto(chunk.wire_info());
        if (!w.ok()) {
          failed = w.status();
        } else if (!encoded || w->encoding != Encoding::kCacheGen) {
          failed = absl::InvalidArgumentError("peer sent an encoding this fetch did not ask for");
        } else if (w->payload_bytes >= info.payload_bytes) {
          failed = absl::InvalidArgumentError(absl::StrCat("peer announced a ", w->payload_bytes,
                                                           "-byte container for a ",
                                                           info.payload_bytes, "-byte object"));
        }
        if (!failed.ok()) break;
        wire = *w;
      }
      Result<storage::Reservation> r = store->Reserve(
          ToStoredName(name), info, config.timeout_ms * 2 + 1000, /*overwrite=*/false);
      if (!r.ok()) {
        failed = r.status().code() == absl::StatusCode::kAlreadyExists ? OkStatus() : r.status();
        ctx.TryCancel();
        return failed;
      }
      local = *r;
      if (wire) {
        container.resize(wire->payload_bytes);
        landing = container.data();
        wire_total = wire->payload_bytes;
      } else {
        landing = store->arena_base() + local->arena_offset;
        wire_total = info.payload_bytes;
      }
    }
    if (chunk.data().size() > wire_total - received) {
      failed = absl::InvalidArgumentError("peer sent more bytes than the object holds");
      break;
    }
    // Payload bytes, not a string: bugprone-not-null-terminated-result is wrong here.
    // NOLINTNEXTLINE(bugprone-not-null-terminated-result)
    std::memcpy(landing + received, chunk.data().data(), chunk.data().size());
    received += chunk.data().size();
  }
  if (!failed.ok()) ctx.TryCancel();
  Status finished = FromGrpcStatus(reader->Finish());
  if (failed.ok()) failed = finished;
  if (failed.ok() && received != wire_total) {
    failed = absl::DataLossError("peer's Get stream ended early");
  }
  if (failed.ok() && wire) {
    if (Crc32c(container.data(), container.size()) != wire->payload_crc32c) {
      peer.failures_corrupt->Increment();
      failed = absl::DataLossError(absl::StrCat("CacheGen container from peer ", peer.address,
                                                " failed its crc32c on arrival; not served"));
    } else {
      Status decoded = decoder->Decode(
          *wire, container, {store->arena_base() + local->arena_offset, info.payload_bytes});
      if (!decoded.ok()) {
        peer.failures_corrupt->Increment();
        failed = absl::DataLossError(absl::StrCat("CacheGen container from peer ", peer.address,
                                                  " does not decode: ", decoded.message()));
      }
    }
  }
  if (!failed.ok()) {
    if (local) (void)store->Abort(local->id);
    return failed;
  }
  if (!wire) MeasureRaw(peer, info.payload_bytes, Clock::now() - start);
  Status s = Settle(peer, Pending{0, 0, 0, info, *local});
  if (s.ok() && wire) {
    peer.encoded_objects->Increment();
    peer.wire_bytes->Increment(wire->payload_bytes);
    peer.encoded_over_grpc->Increment();
  }
  peer.fetch_seconds->Observe(std::chrono::duration<double>(Clock::now() - start).count());
  return s;
}

}  // namespace kvstash::cachesvc
