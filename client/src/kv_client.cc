#include "kvstash/client/kv_client.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"
#include "client_core.h"
#include "copy_crc.h"
#include "credentials.h"
#include "kvstash/codec/cachegen.h"
#include "kvstash/codec/codec_choice.h"
#include "kvstash/codec/kvq.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/proto/convert.h"
#include "kvstash/proto/raw_message.h"
#include "kvstash/proto/status_mapping.h"
#include "raw_call.h"

namespace kvstash::client {

using internal::ArenaMapping;
using internal::BorrowedSlices;
using internal::ClientCore;
using internal::CopyForPut;
using internal::CopyWithCrc;
using internal::RawCall;

namespace {

using Clock = std::chrono::steady_clock;

Result<ObjectInfo> InfoFromService(const v1::ObjectInfo& info) {
  auto parsed = FromProto(info);
  if (!parsed.ok()) {
    return absl::InternalError(absl::StrCat("service sent an invalid object info: ",
                                            std::string(parsed.status().message())));
  }
  return parsed;
}

template <typename Req>
void AddKeys(Req* req, std::span<const ObjectName> names) {
  for (const ObjectName& name : names) ToProto(name, req->add_keys());
}

Result<std::vector<Status>> ItemStatuses(const v1::KeysResponse& resp, size_t expected) {
  if (static_cast<size_t>(resp.results_size()) != expected) {
    return absl::InternalError(
        absl::StrCat("service answered ", resp.results_size(), " results for ", expected, " keys"));
  }
  std::vector<Status> out;
  out.reserve(expected);
  for (const auto& item : resp.results()) out.push_back(FromItemStatus(item));
  return out;
}

// Whether the Get asks for a container; InvalidArgument for options no service could honour.
Result<bool> CheckGetOptions(const GetOptions& options) {
  if (!options.codec) {
    if (options.level < 0 || options.level > 3) {
      return absl::InvalidArgumentError(
          absl::StrCat("GetOptions::level ", options.level, " is not 0 or a CacheGen level 1..3"));
    }
    return options.accept_encoding == Encoding::kCacheGen;
  }
  if (options.accept_encoding != Encoding::kRaw) {
    return absl::InvalidArgumentError(
        "GetOptions::codec stands for accept_encoding: set one of them, not both");
  }
  const int max_level = *options.codec == TransferCodec::kKvq        ? 4
                        : *options.codec == TransferCodec::kCacheGen ? 3
                                                                     : 0;
  if (options.level < 0 || options.level > max_level) {
    return absl::InvalidArgumentError(
        absl::StrCat("GetOptions::level ", options.level, " is not ",
                     max_level == 0 ? "0 for raw" : absl::StrCat("0 or a level 1..", max_level),
                     " of ", TransferCodecName(*options.codec, 0)));
  }
  return *options.codec != TransferCodec::kRaw;
}

}  // namespace

std::string TransferCodecName(TransferCodec codec, int level) {
  switch (codec) {
    case TransferCodec::kRaw:
      return codec::CodecName(codec::CodecKind::kRaw, level);
    case TransferCodec::kCacheGen:
      return codec::CodecName(codec::CodecKind::kCacheGen, level);
    case TransferCodec::kKvq:
      return codec::CodecName(codec::CodecKind::kKvq, level);
  }
  return "invalid";
}

KvClient::KvClient(std::shared_ptr<ClientCore> core) : core_(std::move(core)) {}
KvClient::~KvClient() = default;

Result<std::unique_ptr<KvClient>> KvClient::Connect(const std::string& target,
                                                    const ClientOptions& options) {
  if (target.empty()) return absl::InvalidArgumentError("empty target");
  if (options.stream_chunk_bytes == 0 ||
      options.stream_chunk_bytes + 4096 > options.max_message_bytes) {
    return absl::InvalidArgumentError(
        "stream_chunk_bytes must be in (0, max_message_bytes - 4KiB]");
  }
  auto core = std::make_shared<ClientCore>();
  core->target = target;
  core->options = options;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  // Reconnect quickly after a service restart instead of backing off for seconds.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  KVSTASH_ASSIGN_OR_RETURN(core->channel, internal::MakeChannel(target, options, args));
  core->stub = v1::KvStash::NewStub(core->channel);
  core->generic_stub = std::make_unique<grpc::GenericStub>(core->channel);
  if (!core->channel->WaitForConnected(std::chrono::system_clock::now() +
                                       options.connect_timeout)) {
    return absl::UnavailableError(absl::StrCat("cannot reach cachesvc at ", target, " within ",
                                               options.connect_timeout.count(), " ms"));
  }
  // Same-node clients dial the unix socket. A client identified by its certificate alone dials
  // TCP with mutual TLS; when the node is on its host, attach tickets let it map the arena too.
  core->ticket_attach = !internal::IsUnixTarget(target) && !options.tls_ca_file.empty() &&
                        !options.tls_cert_file.empty() && options.bearer_token.empty();
  core->shared_memory_wanted =
      options.use_shared_memory && (internal::IsUnixTarget(target) || core->ticket_attach);
  if (core->shared_memory_wanted) {
    std::lock_guard<std::mutex> lock(core->mu);
    auto attached = core->AttachLocked();
    if (!attached.ok()) core->shared_memory_status = attached.status();
  }
  return std::unique_ptr<KvClient>(new KvClient(std::move(core)));
}

const std::string& KvClient::target() const { return core_->target; }

bool KvClient::shared_memory_attached() const { return core_->CurrentMapping() != nullptr; }

bool KvClient::shared_memory_writable() const {
  std::shared_ptr<internal::ArenaMapping> m = core_->CurrentMapping();
  return m != nullptr && m->write_base != nullptr;
}

bool KvClient::local_control_active() const { return core_->CurrentLocal() != nullptr; }

Status KvClient::shared_memory_status() const {
  std::lock_guard<std::mutex> lock(core_->mu);
  return core_->shared_memory_status;
}

// ---- Lookup -------------------------------------------------------------------

Result<LookupReply> KvClient::Lookup(std::span<const ObjectName> keys) {
  v1::LookupRequest req;
  AddKeys(&req, keys);
  v1::LookupResponse resp;
  KVSTASH_RETURN_IF_ERROR(
      core_->Unary(LocalMethod::kLookup, &v1::KvStash::Stub::Lookup, req, &resp));
  if (static_cast<size_t>(resp.results_size()) != keys.size()) {
    return absl::InternalError("Lookup answered with a wrong number of results");
  }
  LookupReply reply;
  reply.longest_prefix = std::min<size_t>(resp.longest_prefix(), keys.size());
  for (const v1::LookupResult& r : resp.results()) {
    KeyPresence p;
    p.present = r.present();
    if (p.present) {
      p.tier = FromProtoTier(r.tier());
      p.payload_bytes = r.payload_bytes();
      KVSTASH_ASSIGN_OR_RETURN(p.info, InfoFromService(r.info()));
    }
    reply.results.push_back(p);
  }
  return reply;
}

// ---- Put ------------------------------------------------------------------------

Status KvClient::Put(const ObjectName& name, const ObjectInfo& info,
                     std::span<const uint8_t> payload, const PutOptions& options) {
  if (payload.size() != info.payload_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("payload is ", payload.size(), " bytes, info says ", info.payload_bytes));
  }
  switch (options.path) {
    case DataPath::kStream:
      return PutStream(name, info, payload, options);
    case DataPath::kSharedMemory:
      return PutShared(name, info, payload, options);
    case DataPath::kAuto:
      if (shared_memory_writable()) return PutShared(name, info, payload, options);
      return PutStream(name, info, payload, options);
  }
  return absl::InvalidArgumentError("unknown data path");
}

Status KvClient::PutShared(const ObjectName& name, const ObjectInfo& info,
                           std::span<const uint8_t> payload, const PutOptions& options) {
  KVSTASH_ASSIGN_OR_RETURN(WriteReservation reservation, Reserve(name, info, options.overwrite));
  // The crc32c is taken while copying (the source is read once); a caller-declared one is checked
  // here because the service may check committed bytes only later, in the background.
  Result<uint32_t> crc =
      CopyForPut(reservation.data().data(), payload.data(), payload.size(), info.payload_crc32c);
  if (!crc.ok()) return crc.status();  // the reservation aborts as it goes out of scope
  return reservation.CommitWithCrc(*crc, options.durable);
}

Status KvClient::PutStream(const ObjectName& name, const ObjectInfo& info,
                           std::span<const uint8_t> payload, const PutOptions& options) {
  grpc::ClientContext ctx;
  core_->SetDeadline(&ctx, core_->options.stream_timeout);
  // The messages point at `payload`; this waits (after the call is over) until gRPC has let go.
  BorrowedSlices lent;
  RawCall call(core_->generic_stub.get(), &ctx, "Put", core_->options.stream_poll);
  v1::PutChunk head;  // the fields before the data: the header, in the first message only
  v1::PutHeader* header = head.mutable_header();
  ToProto(name, header->mutable_key());
  ObjectInfo sent = info;
  if (sent.payload_crc32c == 0) sent.payload_crc32c = Crc32c(payload.data(), payload.size());
  ToProto(sent, header->mutable_info());
  header->set_durable(options.durable);
  header->set_overwrite(options.overwrite);
  const size_t step = core_->options.stream_chunk_bytes;
  size_t off = 0;
  do {
    const size_t n = std::min(step, payload.size() - off);
    grpc::ByteBuffer message =
        MessageWithField(head, v1::PutChunk::kDataFieldNumber, lent.Lend(payload.data() + off, n));
    off += n;
    head.Clear();
    // The last chunk carries the half-close with it. A failed write means the service already
    // ended the call; Finish() says why.
    if (!call.Write(message, /*last=*/off == payload.size())) break;
  } while (off < payload.size());
  // The reply (an empty PutResponse) and the end of the stream.
  v1::PutResponse response;
  BytesFieldView none;
  Result<bool> more = true;
  while (more.ok() && *more) more = call.Read(/*field_number=*/0, &response, &none);
  Status finished = call.Finish();
  KVSTASH_RETURN_IF_ERROR(finished);
  return more.status();
}

Result<WriteReservation> KvClient::Reserve(const ObjectName& name, const ObjectInfo& info,
                                           bool overwrite) {
  if (!shared_memory_attached()) {
    Status why = shared_memory_status();
    return absl::FailedPreconditionError(
        absl::StrCat("shared memory is not attached",
                     why.ok() ? "" : absl::StrCat(": ", std::string(why.message()))));
  }
  if (!shared_memory_writable()) {
    return absl::FailedPreconditionError(
        "the arena is attached read-only (ClientOptions::attach_read_only)");
  }
  v1::ReserveRequest req;
  ToProto(name, req.mutable_key());
  ToProto(info, req.mutable_info());
  req.set_lease_ms(core_->options.lease_ms);
  req.set_overwrite(overwrite);
  v1::ReserveResponse resp;
  KVSTASH_RETURN_IF_ERROR(
      core_->Unary(LocalMethod::kReserve, &v1::KvStash::Stub::Reserve, req, &resp));
  auto mapping = core_->MappingFor(resp.arena_generation());
  Result<uint8_t*> at = mapping.ok() ? (*mapping)->AtWrite(resp.arena_offset(), info.payload_bytes)
                                     : Result<uint8_t*>(mapping.status());
  if (!at.ok()) {
    (void)core_->AbortReservation(resp.reservation_id());
    return at.status();
  }
  WriteReservation r;
  r.core_ = core_;
  r.mapping_ = std::move(*mapping);
  r.name_ = name;
  r.info_ = info;
  r.id_ = resp.reservation_id();
  r.data_ = std::span<uint8_t>(*at, info.payload_bytes);
  r.done_ = false;
  return r;
}

// ---- Acquire / Get -------------------------------------------------------------

Result<ReadLease> KvClient::Acquire(const ObjectName& name) {
  KVSTASH_ASSIGN_OR_RETURN(std::vector<Result<ReadLease>> leases,
                           AcquireMany(std::span<const ObjectName>(&name, 1)));
  return std::move(leases[0]);
}

Result<std::vector<Result<ReadLease>>> KvClient::AcquireMany(std::span<const ObjectName> names) {
  if (!shared_memory_attached()) {
    return absl::FailedPreconditionError("shared memory is not attached");
  }
  v1::AcquireRequest req;
  AddKeys(&req, names);
  req.set_lease_ms(core_->options.lease_ms);
  v1::AcquireResponse resp;
  auto sent_at = std::chrono::steady_clock::now();
  KVSTASH_RETURN_IF_ERROR(
      core_->Unary(LocalMethod::kAcquire, &v1::KvStash::Stub::Acquire, req, &resp));
  if (static_cast<size_t>(resp.results_size()) != names.size()) {
    return absl::InternalError("Acquire answered with a wrong number of results");
  }
  std::vector<Result<ReadLease>> out;
  out.reserve(names.size());
  for (size_t n = 0; n < names.size(); ++n) {
    const v1::AcquireResult& r = resp.results(static_cast<int>(n));
    Status item = FromItemStatus(r.status());
    if (absl::IsFailedPrecondition(item)) {
      // The service cannot lease this object inside our mapping (a tenant's object left in the
      // shared arena, with no room to move it into the tenant's arena): its bytes come over the
      // byte stream, crc32c checked, into a lease that owns them.
      ReadLease copy;
      Result<GetIntoReply> got =
          StreamGet(names[n], GetOptions{}, [&](const ObjectInfo& info) -> Result<uint8_t*> {
            copy.copy_.resize(info.payload_bytes);
            return copy.copy_.data();
          });
      if (!got.ok()) {
        out.emplace_back(got.status());
        continue;
      }
      copy.core_ = core_;
      copy.done_ = false;
      copy.info_ = got->info;
      copy.served_from_ = got->served_from;
      copy.expires_at_ = std::chrono::steady_clock::time_point::max();
      copy.data_ = std::span<const uint8_t>(copy.copy_.data(), got->info.payload_bytes);
      out.emplace_back(std::move(copy));
      continue;
    }
    if (!item.ok()) {
      out.emplace_back(item);
      continue;
    }
    ReadLease lease;
    lease.core_ = core_;  // from here on, the lease's destructor releases on every error path
    lease.id_ = r.lease_id();
    lease.done_ = false;
    lease.served_from_ = FromProtoTier(r.served_from());
    lease.expires_at_ = sent_at + std::chrono::milliseconds(resp.expires_in_ms());
    auto info = InfoFromService(r.info());
    if (!info.ok()) {
      out.emplace_back(info.status());
      continue;
    }
    lease.info_ = *info;
    auto mapping = core_->MappingFor(r.arena_generation());
    if (!mapping.ok()) {
      out.emplace_back(mapping.status());
      continue;
    }
    auto at = (*mapping)->At(r.arena_offset(), info->payload_bytes);
    if (!at.ok()) {
      out.emplace_back(at.status());
      continue;
    }
    lease.mapping_ = std::move(*mapping);
    lease.data_ = std::span<const uint8_t>(*at, info->payload_bytes);
    if (core_->options.verify_reads &&
        Crc32c(lease.data_.data(), lease.data_.size()) != info->payload_crc32c) {
      out.emplace_back(absl::DataLossError("leased bytes fail their crc32c"));
      continue;
    }
    out.emplace_back(std::move(lease));
  }
  return out;
}

Result<GetIntoReply> KvClient::StreamGet(
    const ObjectName& name, const GetOptions& options,
    const std::function<Result<uint8_t*>(const ObjectInfo&)>& dest) {
  const Clock::time_point start = Clock::now();
  KVSTASH_ASSIGN_OR_RETURN(const bool accept, CheckGetOptions(options));
  grpc::ClientContext ctx;
  core_->SetDeadline(&ctx, core_->options.stream_timeout);
  v1::GetRequest req;
  ToProto(name, req.mutable_key());
  if (accept) {
    req.set_accept_encoding(v1::ENCODING_CACHEGEN);
    req.set_accept_level(static_cast<uint32_t>(options.level));
    if (options.codec == TransferCodec::kCacheGen) req.set_accept_codec(v1::CODEC_CACHEGEN);
    if (options.codec == TransferCodec::kKvq) req.set_accept_codec(v1::CODEC_KVQ);
  }
  RawCall call(core_->generic_stub.get(), &ctx, "Get", core_->options.stream_poll);
  grpc::ByteBuffer request;
  bool own_buffer = false;
  if (!grpc::SerializationTraits<v1::GetRequest>::Serialize(req, &request, &own_buffer).ok()) {
    return absl::InternalError("cannot serialize a GetRequest");
  }
  (void)call.Write(request, /*last=*/true);  // a failure shows in Read and Finish
  GetIntoReply reply;
  v1::GetChunk chunk;  // fields other than data
  BytesFieldView data;
  uint8_t* out = nullptr;
  std::optional<ObjectInfo> wire;  // set for an encoded transfer
  std::vector<uint8_t> container;  // ... which is received here, then decoded into `out`
  uint8_t* landing = nullptr;      // where the wire bytes go: `out` or `container`
  uint64_t wire_total = 0, received = 0;
  uint32_t crc = 0;  // of the bytes received so far, taken while they are copied
  Status protocol;
  while (true) {
    Result<bool> more = call.Read(v1::GetChunk::kDataFieldNumber, &chunk, &data);
    if (!more.ok()) {
      protocol = absl::InternalError(absl::StrCat("Get stream carried a malformed message: ",
                                                  std::string(more.status().message())));
      break;
    }
    if (!*more) break;
    if (out == nullptr) {
      Result<ObjectInfo> info = InfoFromService(chunk.info());
      Result<uint8_t*> where = info.ok() ? dest(*info) : Result<uint8_t*>(info.status());
      if (where.ok() && chunk.has_wire_info()) {
        Result<ObjectInfo> w = InfoFromService(chunk.wire_info());
        if (!w.ok()) {
          where = w.status();
        } else if (w->encoding != Encoding::kCacheGen || !accept) {
          where = absl::InternalError(absl::StrCat("service sent encoding ",
                                                   std::string(EncodingName(w->encoding)),
                                                   ", which this Get did not accept"));
        } else if (w->payload_bytes >= info->payload_bytes) {
          // The service encodes only what shrinks; a larger container is not to be allocated.
          where = absl::InternalError(absl::StrCat("service announced a ", w->payload_bytes,
                                                   "-byte container for a ", info->payload_bytes,
                                                   "-byte object"));
        } else {
          wire = *w;
          reply.encode_s = static_cast<double>(chunk.encode_micros()) / 1e6;
        }
      }
      if (!where.ok()) {
        protocol = where.status();
        break;
      }
      reply.info = *info;
      reply.served_from = FromProtoTier(chunk.served_from());
      out = *where;
      if (wire) {
        container.resize(wire->payload_bytes);
        landing = container.data();
        wire_total = wire->payload_bytes;
      } else {
        landing = out;
        wire_total = reply.info.payload_bytes;
      }
    }
    if (data.bytes > wire_total - received) {
      protocol = absl::InternalError("Get stream carried more bytes than payload_bytes");
      break;
    }
    for (std::span<const uint8_t> piece : data.pieces) {
      crc = CopyWithCrc(landing + received, piece.data(), piece.size(), crc);
      received += piece.size();
    }
  }
  // After a protocol error this cancels the call; its status then says only that.
  Status finished = call.Finish();
  KVSTASH_RETURN_IF_ERROR(protocol);
  KVSTASH_RETURN_IF_ERROR(finished);
  if (out == nullptr || received != wire_total) {
    return absl::InternalError(
        absl::StrCat("Get stream ended after ", received, " of ", wire_total, " bytes"));
  }
  reply.wire_bytes = received;
  const Clock::time_point received_at = Clock::now();
  reply.stream_s = std::chrono::duration<double>(received_at - start).count();
  if (crc != (wire ? wire->payload_crc32c : reply.info.payload_crc32c)) {
    return absl::DataLossError("received bytes fail their crc32c");
  }
  if (wire) {
    // A codec container: CacheGen, or KVQ (asked for, or the service's transfer policy).
    const std::span<uint8_t> dst(out, reply.info.payload_bytes);
    const bool kvq = codec::IsKvqContainer(container);
    reply.wire_codec = kvq ? TransferCodec::kKvq : TransferCodec::kCacheGen;
    reply.wire_level = wire->encoding_level;
    Status decoded = kvq ? codec::DecodeKvq(container, dst) : codec::DecodeCacheGen(container, dst);
    reply.decode_s = std::chrono::duration<double>(Clock::now() - received_at).count();
    if (!decoded.ok()) {
      return Status(decoded.code(), absl::StrCat("decoding the ", kvq ? "KVQ" : "CacheGen",
                                                 " transfer: ", std::string(decoded.message())));
    }
    if (Crc32c(out, reply.info.payload_bytes) != reply.info.payload_crc32c) {
      return absl::DataLossError("decoded bytes fail the crc32c of the service's reconstruction");
    }
  }
  return reply;
}

Result<GetReply> KvClient::Get(const ObjectName& name, const GetOptions& options) {
  GetReply reply;
  KVSTASH_ASSIGN_OR_RETURN(
      GetIntoReply got, StreamGet(name, options, [&](const ObjectInfo& info) -> Result<uint8_t*> {
        reply.payload.resize(info.payload_bytes);
        return reply.payload.data();
      }));
  reply.info = got.info;
  reply.served_from = got.served_from;
  reply.wire_bytes = got.wire_bytes;
  reply.wire_codec = got.wire_codec;
  reply.wire_level = got.wire_level;
  reply.encode_s = got.encode_s;
  return reply;
}

Result<GetIntoReply> KvClient::GetInto(const ObjectName& name, std::span<uint8_t> out,
                                       const GetOptions& options) {
  return StreamGet(name, options, [&](const ObjectInfo& info) -> Result<uint8_t*> {
    if (info.payload_bytes > out.size()) {
      return absl::InvalidArgumentError(absl::StrCat("buffer of ", out.size(),
                                                     " bytes is smaller than the object (",
                                                     info.payload_bytes, " bytes)"));
    }
    return out.data();
  });
}

// ---- Delete / Pin / Unpin / List / Stats ---------------------------------------

namespace {

// Delete, Pin and Unpin: one KeysRequest, per-key statuses back, through the client core.
Result<std::vector<Status>> KeysCall(ClientCore& core,
                                     grpc::Status (v1::KvStash::Stub::*rpc)(grpc::ClientContext*,
                                                                            const v1::KeysRequest&,
                                                                            v1::KeysResponse*),
                                     std::span<const ObjectName> names) {
  v1::KeysRequest req;
  AddKeys(&req, names);
  v1::KeysResponse resp;
  KVSTASH_RETURN_IF_ERROR(core.Unary(rpc, req, &resp));
  return ItemStatuses(resp, names.size());
}

}  // namespace

Result<std::vector<Status>> KvClient::Delete(std::span<const ObjectName> names) {
  return KeysCall(*core_, &v1::KvStash::Stub::Delete, names);
}

Result<std::vector<Status>> KvClient::Pin(std::span<const ObjectName> names) {
  return KeysCall(*core_, &v1::KvStash::Stub::Pin, names);
}

Result<std::vector<Status>> KvClient::Unpin(std::span<const ObjectName> names) {
  return KeysCall(*core_, &v1::KvStash::Stub::Unpin, names);
}

Result<ListReply> KvClient::List(const std::string& name_space, uint32_t limit,
                                 const std::string& page_token, bool all_namespaces) {
  v1::ListRequest req;
  req.set_namespace_(name_space);
  req.set_limit(limit);
  req.set_page_token(page_token);
  req.set_all_namespaces(all_namespaces);
  v1::ListResponse resp;
  KVSTASH_RETURN_IF_ERROR(core_->Unary(&v1::KvStash::Stub::List, req, &resp));
  ListReply reply;
  reply.next_page_token = resp.next_page_token();
  for (const v1::ListedObject& o : resp.objects()) {
    ListedObject out;
    auto key = Hash128::FromBytes(o.storage_key());
    auto name = FromProto(o.key());
    if (!key.ok() || !name.ok()) return absl::InternalError("List returned a malformed key");
    out.storage_key = *key;
    out.name = std::move(*name);
    KVSTASH_ASSIGN_OR_RETURN(out.info, InfoFromService(o.info()));
    out.tier = FromProtoTier(o.tier());
    out.pinned = o.pinned();
    out.hits = o.hits();
    reply.objects.push_back(std::move(out));
  }
  return reply;
}

Result<ServiceStats> KvClient::Stats() {
  v1::StatsRequest req;
  v1::StatsResponse resp;
  KVSTASH_RETURN_IF_ERROR(core_->Unary(&v1::KvStash::Stub::Stats, req, &resp));
  ServiceStats stats;
  for (const v1::TierStats& t : resp.tiers()) {
    TierStats out;
    out.tier = FromProtoTier(t.tier());
    out.capacity_bytes = t.capacity_bytes();
    out.used_bytes = t.used_bytes();
    out.objects = t.objects();
    out.hits = t.hits();
    out.misses = t.misses();
    out.evictions = t.evictions();
    out.bytes_read = t.bytes_read();
    out.bytes_written = t.bytes_written();
    out.logical_bytes = t.logical_bytes();
    stats.tiers.push_back(out);
  }
  stats.checksum_failures = resp.checksum_failures();
  stats.reservations_active = resp.reservations_active();
  stats.reservations_expired = resp.reservations_expired();
  stats.leases_active = resp.leases_active();
  stats.pinned_objects = resp.pinned_objects();
  stats.uptime_ms = resp.uptime_ms();
  stats.version = resp.version();
  return stats;
}

}  // namespace kvstash::client
