// UcxTransport::Impl: Fetch, both sides. The reader sends one request naming the ranges; the
// serving transport checks the region's token and every range and sends the bytes back as active
// messages (message formats in ucx_impl.h). See ucx_impl.h for the lock rules.
#include <algorithm>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "kvstash/common/coding.h"
#include "ucx_impl.h"

namespace kvstash::transport {

// --- reader side -------------------------------------------------------------

void UcxTransport::Impl::IssueFetch(const std::shared_ptr<Call>& call,
                                    const std::vector<ReadOp>& ops) {
  Owns(*call);
  Peer& peer = *call->peer;
  Owns(peer);
  if (peer.failed || peer.ep == nullptr) {
    call->Fail(PeerError("peer endpoint failed", peer.failure.load()));
    MarkIssued(call);
    return;
  }
  // The landing regions' rkeys, and which one each op lands in.
  std::vector<const Region*> used;
  std::vector<uint32_t> index;
  index.reserve(ops.size());
  call->fetch_dest.clear();
  for (const ReadOp& op : ops) {
    const Region* region = RegionFor(op.local, op.length);
    if (region == nullptr) {
      call->Fail(absl::InvalidArgumentError(
          "Fetch: a destination lies outside every region registered here"));
      MarkIssued(call);
      return;
    }
    size_t k = 0;
    while (k < used.size() && used[k] != region) ++k;
    if (k == used.size()) used.push_back(region);
    index.push_back(static_cast<uint32_t>(k));
    call->fetch_dest.emplace_back(region->memh, region->memory_type);
  }
  const uint64_t id = next_fetch_id++;
  call->payload.clear();
  PutFixed64(&call->payload, id);
  PutVarint32(&call->payload, static_cast<uint32_t>(address.size()));
  call->payload.append(address);
  PutFixed64(&call->payload, peer.address);
  PutFixed64(&call->payload, peer.token);
  PutVarint32(&call->payload, static_cast<uint32_t>(used.size()));
  for (const Region* region : used) {
    PutVarint32(&call->payload, static_cast<uint32_t>(region->ucx_rkey.size()));
    call->payload.append(region->ucx_rkey);
  }
  PutVarint32(&call->payload, static_cast<uint32_t>(ops.size()));
  for (size_t i = 0; i < ops.size(); ++i) {
    PutFixed64(&call->payload, ops[i].remote_offset);
    PutFixed64(&call->payload, reinterpret_cast<uintptr_t>(ops[i].local));
    PutFixed64(&call->payload, ops[i].length);
    PutVarint32(&call->payload, index[i]);
  }
  PutVarint32(&call->payload, call->in_place ? kFetchInPlace : 0);
  call->fetch_id = id;
  call->fetch_ops = ops;
  call->fetch_remaining = 0;
  for (const ReadOp& op : ops) call->fetch_remaining += op.length;
  fetch_calls[id] = call;
  BeginPending(call);  // the data (or a refusal)
  std::shared_ptr<Call>* holder;
  ucp_request_param_t param = ParamFor(&holder, call);
  param.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_AM_SEND_FLAG_EAGER | UCP_AM_SEND_FLAG_REPLY;
  BeginPending(call);
  Track(call,
        ucp_am_send_nbx(peer.ep, kFetchRequestId, nullptr, 0, call->payload.data(),
                        call->payload.size(), &param),
        holder);
  bool failed;
  {
    MutexLock lock(&call->mu);
    failed = !call->status.ok();
  }
  if (failed && call->fetch_id != 0) {  // the request never left: no answer will come
    fetch_calls.erase(call->fetch_id);
    call->fetch_id = 0;
    Complete(call, UCS_OK);
  }
  MarkIssued(call);
}

const UcxTransport::Impl::Region* UcxTransport::Impl::RegionFor(const void* p, uint64_t n) const {
  auto addr = reinterpret_cast<uintptr_t>(p);
  for (const Region& r : regions) {
    if (addr >= r.base && addr - r.base <= r.bytes && n <= r.bytes - (addr - r.base)) return &r;
  }
  return nullptr;
}

void UcxTransport::Impl::FailFetches(const Peer* peer, ucs_status_t status) {
  for (auto it = fetch_calls.begin(); it != fetch_calls.end();) {
    if (it->second->peer.get() == peer) {
      std::shared_ptr<Call> call = std::move(it->second);
      it = fetch_calls.erase(it);
      Owns(*call);
      call->fetch_id = 0;
      Complete(call, status);
    } else {
      ++it;
    }
  }
}

ucs_status_t UcxTransport::Impl::OnFetchDone(void* arg, const void*, size_t, void* data,
                                             size_t length, const ucp_am_recv_param_t* param) {
  auto* impl = static_cast<Impl*>(arg);
  impl->worker_mu.AssertHeld();  // called from ucp_worker_progress
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) return UCS_OK;
  std::string_view in(static_cast<const char*>(data), length);
  uint64_t id;
  uint32_t code;
  if (!GetFixed64(&in, &id) || !GetFixed32(&in, &code)) return UCS_OK;
  auto it = impl->fetch_calls.find(id);
  if (it == impl->fetch_calls.end()) return UCS_OK;  // cancelled meanwhile
  std::shared_ptr<Call> call = std::move(it->second);
  impl->fetch_calls.erase(it);
  impl->Owns(*call);
  call->fetch_id = 0;
  if (code != 0) {
    call->Fail(Status(static_cast<absl::StatusCode>(code),
                      absl::StrCat("peer refused the Fetch: ", std::string(in))));
  }
  Complete(call, UCS_OK);
  return UCS_OK;
}

ucs_status_t UcxTransport::Impl::OnFetchData(void* arg, const void* header, size_t header_length,
                                             void* data, size_t length,
                                             const ucp_am_recv_param_t* param) {
  auto* impl = static_cast<Impl*>(arg);
  impl->worker_mu.AssertHeld();  // called from ucp_worker_progress
  if (header_length != kFetchDataHeader) return UCS_OK;
  const char* h = static_cast<const char*>(header);
  const uint64_t id = DecodeFixed64(h);
  const uint32_t index = DecodeFixed32(h + 8);
  const uint64_t at = DecodeFixed64(h + 12);
  auto it = impl->fetch_calls.find(id);
  if (it == impl->fetch_calls.end()) return UCS_OK;  // cancelled meanwhile: dropped
  std::shared_ptr<Call> call = it->second;
  impl->Owns(*call);
  const bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  auto fail = [&](const char* why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(impl->worker_mu) {
    impl->Owns(*call);  // the analysis does not carry the assertion above into the lambda
    impl->fetch_calls.erase(it);
    call->fetch_id = 0;
    call->Fail(absl::DataLossError(why));
    Complete(call, UCS_OK);
    return UCS_OK;  // a rendezvous not received is dropped by UCX (and its sender completed)
  };
  if ((rndv && !call->in_place) || index >= call->fetch_ops.size() ||
      at > call->fetch_ops[index].length || length > call->fetch_ops[index].length - at ||
      length > call->fetch_remaining) {
    return fail("the peer sent Fetch data outside the ranges asked for");
  }
  void* dest = static_cast<char*>(call->fetch_ops[index].local) + at;
  const auto [memh, memory_type] = call->fetch_dest[index];
  if (rndv) {
    // UCX receives the range into the destination, whatever its memory type; the call finishes
    // when this receive (one of its requests) completes, not here.
    std::shared_ptr<Call>* holder = nullptr;
    ucp_request_param_t recv = ParamFor(&holder, call);
    recv.cb.recv_am = &Impl::OnReceiveDone;
    recv.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH | UCP_OP_ATTR_FIELD_MEMORY_TYPE;
    recv.memh = memh;
    recv.memory_type = memory_type;
    BeginPending(call);
    impl->Track(call, ucp_am_recv_data_nbx(impl->worker, data, dest, length, &recv), holder);
  } else if (memory_type != UCS_MEMORY_TYPE_HOST) {
    // A serving node from before FetchInPlace sends eagerly; memcpy cannot reach CUDA memory.
    return fail(
        "the peer sent in-place Fetch data eagerly (it predates FetchInPlace), which "
        "cannot be copied into non-host memory");
  } else {
    std::memcpy(dest, data, length);
  }
  call->fetch_remaining -= length;
  if (call->fetch_remaining == 0) {
    impl->fetch_calls.erase(it);
    call->fetch_id = 0;
    Complete(call, UCS_OK);
  }
  return UCS_OK;
}

// --- serving side ------------------------------------------------------------

ucs_status_t UcxTransport::Impl::OnFetchRequest(void* arg, const void*, size_t, void* data,
                                                size_t length, const ucp_am_recv_param_t* param) {
  auto* impl = static_cast<Impl*>(arg);
  impl->worker_mu.AssertHeld();  // called from ucp_worker_progress
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0 ||
      (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) == 0 || param->reply_ep == nullptr) {
    impl->fetches_refused.fetch_add(1, std::memory_order_relaxed);
    return UCS_OK;
  }
  // Served after this callback returns (ServeFetches), not from inside UCX's progress.
  impl->fetch_requests.emplace_back(param->reply_ep,
                                    std::string(static_cast<const char*>(data), length));
  return UCS_OK;
}

bool UcxTransport::Impl::ServeFetches() {
  bool any = false;
  if (!fetch_requests.empty()) {
    std::vector<std::pair<ucp_ep_h, std::string>> batch;
    batch.swap(fetch_requests);
    for (auto& [ep, request] : batch) StartServe(ep, request);
    any = true;
  }
  for (size_t i = 0; i < serving.size();) {
    Serve& serve = *serving[i];
    Owns(serve);
    if (!serve.issued || serve.pending > 0) {
      ++i;
      continue;
    }
    FinishServe(serve);
    serving.erase(serving.begin() + static_cast<std::ptrdiff_t>(i));
    any = true;
  }
  return any;
}

void UcxTransport::Impl::StartServe(ucp_ep_h reply_ep, const std::string& request) {
  auto serve = std::make_unique<Serve>();
  serve->impl = this;
  serve->ep = reply_ep;  // refusals before the reader's endpoint exists go back this way
  std::string_view in(request);
  uint64_t address, token;
  uint32_t nkeys, address_bytes;
  std::string_view worker_address;
  auto refuse =
      [&](const std::string& why, absl::StatusCode code = absl::StatusCode::kInvalidArgument)
          ABSL_EXCLUSIVE_LOCKS_REQUIRED(worker_mu) {
            fetches_refused.fetch_add(1, std::memory_order_relaxed);
            for (ucp_rkey_h rkey : serve->rkeys) ucp_rkey_destroy(rkey);
            serve->rkeys.clear();
            serve->answer.clear();
            PutFixed64(&serve->answer, serve->call_id);
            PutFixed32(&serve->answer, static_cast<uint32_t>(code));
            serve->answer.append(why);
            SendAnswer(std::move(serve));
          };
  if (!GetFixed64(&in, &serve->call_id)) {
    fetches_refused.fetch_add(1, std::memory_order_relaxed);
    return;  // nothing to answer
  }
  if (!GetVarint32(&in, &address_bytes) || address_bytes == 0 ||
      address_bytes > kMaxWorkerAddressBytes || !GetBytes(&in, address_bytes, &worker_address) ||
      !GetFixed64(&in, &address) || !GetFixed64(&in, &token) || !GetVarint32(&in, &nkeys) ||
      nkeys == 0 || nkeys > kMaxFetchRkeys) {
    return refuse("malformed request");
  }
  const Region* region = nullptr;
  for (const Region& r : regions) {
    if (r.base == address && r.token == token) region = &r;
  }
  if (region == nullptr) return refuse("no such region, or a wrong token");
  // Only a reader that proved the token gets an endpoint from this node.
  ucp_ep_h ep = EndpointTo(std::string(worker_address));
  if (ep == nullptr) {
    return refuse("cannot create an endpoint to the reader", absl::StatusCode::kUnavailable);
  }
  serve->ep = ep;
  for (uint32_t k = 0; k < nkeys; ++k) {
    uint32_t n;
    std::string_view blob;
    if (!GetVarint32(&in, &n) || !GetBytes(&in, n, &blob)) return refuse("malformed rkey");
    (void)blob;  // the data goes as active messages; rkeys are part of the request format
  }
  struct Op {
    uint64_t offset, dest, length;
    uint32_t key;
  };
  std::vector<Op> ops;
  uint32_t nops;
  if (!GetVarint32(&in, &nops) || nops > kMaxFetchOps) return refuse("malformed op list");
  ops.reserve(nops);
  for (uint32_t i = 0; i < nops; ++i) {
    Op op;
    if (!GetFixed64(&in, &op.offset) || !GetFixed64(&in, &op.dest) ||
        !GetFixed64(&in, &op.length) || !GetVarint32(&in, &op.key)) {
      return refuse("malformed op");
    }
    if (op.key >= nkeys || op.length == 0 || op.offset > region->bytes ||
        op.length > region->bytes - op.offset) {
      return refuse(absl::StrCat("range of ", op.length, " bytes at offset ", op.offset,
                                 " lies outside the region of ", region->bytes, " bytes"));
    }
    if (region->guard && !region->guard(op.offset, op.length)) {
      return refuse(absl::StrCat("range of ", op.length, " bytes at offset ", op.offset,
                                 " lies outside what the serving node offers of the region"));
    }
    ops.push_back(op);
  }
  uint32_t flags = 0;  // absent in requests of readers from before FetchInPlace
  if (!in.empty() && !GetVarint32(&in, &flags)) return refuse("malformed flags");
  const bool in_place = (flags & kFetchInPlace) != 0;
  // Every range goes as active messages of at most fetch_fragment, sent zero-copy from the
  // registered region; the reader copies each into place once and knows it is done when all
  // bytes landed, so a served request needs no answer (UCX 1.13 emulates a put over TCP with
  // copies at both ends, and a flush would cost the reader's acknowledgement). In place: one
  // rendezvous message per range, which the reader's UCX receives into its destination, sent on
  // the request's own endpoint: the reader answers a rendezvous on the endpoint it came over,
  // and the cached one (`ep`) may still be bound to a reader endpoint a deadline closed (over
  // TCP that reader's next in-place Fetch then hung to its deadline; eager data needs no answer).
  Serve* raw = serve.get();
  Owns(*raw);
  size_t fragments = 0;
  for (const Op& op : ops) {
    fragments += in_place ? 1 : (op.length + fetch_fragment - 1) / fetch_fragment;
  }
  raw->headers.resize(fragments);
  size_t f = 0;
  for (uint32_t i = 0; i < ops.size(); ++i) {
    const Op& op = ops[i];
    const uint64_t fragment = in_place ? op.length : fetch_fragment;
    for (uint64_t at = 0; at < op.length; at += fragment, ++f) {
      const uint64_t n = std::min(fragment, op.length - at);
      char* header = raw->headers[f].data();
      EncodeFixed64(header, raw->call_id);
      EncodeFixed32(header + 8, i);
      EncodeFixed64(header + 12, at);
      ucp_request_param_t param = ServeParam(raw);
      param.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH | UCP_OP_ATTR_FIELD_FLAGS;
      param.memh = region->memh;
      param.flags = in_place ? UCP_AM_SEND_FLAG_RNDV : UCP_AM_SEND_FLAG_EAGER;
      TrackServe(
          raw, ucp_am_send_nbx(in_place ? reply_ep : ep, kFetchDataId, header, kFetchDataHeader,
                               reinterpret_cast<void*>(region->base + op.offset + at), n, &param));
    }
    raw->bytes += op.length;
  }
  raw->ops = ops.size();
  raw->issued = true;
  serving.push_back(std::move(serve));
}

ucp_ep_h UcxTransport::Impl::EndpointTo(const std::string& worker_address) {
  auto it = serve_eps.find(worker_address);
  if (it != serve_eps.end()) {
    ServeEndpoint& cached = *it->second;
    Owns(cached);
    if (!cached.failed) return cached.ep;
    CloseEndpoint(cached.ep);
    serve_eps.erase(it);
  }
  if (serve_eps.size() >= kMaxServeEndpoints) return nullptr;
  auto endpoint = std::make_unique<ServeEndpoint>();
  endpoint->impl = this;
  Owns(*endpoint);
  ucp_ep_params_t params;
  std::memset(&params, 0, sizeof params);
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.address = reinterpret_cast<const ucp_address_t*>(worker_address.data());
  params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  params.err_handler.cb = [](void* arg, ucp_ep_h, ucs_status_t) {
    auto* failed = static_cast<ServeEndpoint*>(arg);
    failed->impl->worker_mu.AssertHeld();  // called from ucp_worker_progress
    failed->failed = true;
  };
  params.err_handler.arg = endpoint.get();
  if (ucp_ep_create(worker, &params, &endpoint->ep) != UCS_OK) return nullptr;
  ucp_ep_h ep = endpoint->ep;
  serve_eps.emplace(worker_address, std::move(endpoint));
  return ep;
}

ucp_request_param_t UcxTransport::Impl::ServeParam(Serve* serve) {
  ucp_request_param_t param;
  std::memset(&param, 0, sizeof param);
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = &Impl::OnServeDone;
  param.user_data = serve;
  return param;
}

void UcxTransport::Impl::TrackServe(Serve* serve, ucs_status_ptr_t req) {
  Owns(*serve);
  if (UCS_PTR_IS_PTR(req)) {
    ++serve->pending;
  } else if (UCS_PTR_STATUS(req) != UCS_OK && serve->status == UCS_OK) {
    serve->status = UCS_PTR_STATUS(req);
  }
}

void UcxTransport::Impl::OnServeDone(void* request, ucs_status_t status, void* user_data) {
  auto* serve = static_cast<Serve*>(user_data);
  serve->impl->worker_mu.AssertHeld();  // called from ucp_worker_progress
  if (status != UCS_OK && serve->status == UCS_OK) serve->status = status;
  --serve->pending;
  ucp_request_free(request);
}

void UcxTransport::Impl::FinishServe(Serve& serve) {
  Owns(serve);
  for (ucp_rkey_h rkey : serve.rkeys) ucp_rkey_destroy(rkey);
  serve.rkeys.clear();
  if (serve.status != UCS_OK) {
    // The reader's connection failed: it cannot be answered; its call fails on its side.
    fetches_refused.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  fetches_served.fetch_add(1, std::memory_order_relaxed);
  fetch_ops_served.fetch_add(serve.ops, std::memory_order_relaxed);
  fetch_bytes_served.fetch_add(serve.bytes, std::memory_order_relaxed);
}

void UcxTransport::Impl::SendAnswer(std::unique_ptr<Serve> serve) {
  Serve* raw = serve.release();
  ucp_request_param_t param;
  std::memset(&param, 0, sizeof param);
  param.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  param.cb.send = [](void* request, ucs_status_t, void* user_data) {
    delete static_cast<Serve*>(user_data);
    ucp_request_free(request);
  };
  param.user_data = raw;
  param.flags = UCP_AM_SEND_FLAG_EAGER;
  if (raw->ep == nullptr) {
    delete raw;
    return;
  }
  ucs_status_ptr_t req = ucp_am_send_nbx(raw->ep, kFetchDoneId, nullptr, 0, raw->answer.data(),
                                         raw->answer.size(), &param);
  if (!UCS_PTR_IS_PTR(req)) delete raw;  // sent (or failed) at once: no callback will come
}

}  // namespace kvstash::transport
