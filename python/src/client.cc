// kvstash._native.Client: KvClient for Python. Every call converts its arguments with the GIL
// held, then releases the GIL for the RPCs and the copies, so other Python threads run during
// I/O. Bytes move between the caller's buffers and the shared-memory arena (or the gRPC stream)
// in C++, never through Python bytes objects.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bindings.h"
#include "buffers.h"
#include "errors.h"
#include "kvstash/client/kv_client.h"

namespace py = pybind11;

namespace kvstash::python {
namespace {

using client::ClientOptions;
using client::KvClient;
using client::PutItem;
using client::PutOptions;
using client::ReadLease;
using client::WriteReservation;
using Clock = std::chrono::steady_clock;

// A Status as a Python value: None when OK, else the (unraised) kvstash.errors exception.
py::object StatusOrNone(const Status& s) {
  return s.ok() ? py::object(py::none()) : StatusToException(s);
}

py::list StatusList(const std::vector<Status>& statuses) {
  py::list out;
  for (const Status& s : statuses) out.append(StatusOrNone(s));
  return out;
}

// An ObjectInfo from what Python passed: an ObjectInfo, or a KvLayout (a raw object of it).
ObjectInfo InfoFromPy(py::handle obj) {
  if (py::isinstance<KvLayout>(obj)) {
    ObjectInfo info;
    info.layout = obj.cast<KvLayout>();
    info.payload_bytes = info.layout.RawBytes();
    return info;
  }
  return obj.cast<ObjectInfo>();
}

// One info for every item, or one per item.
std::vector<ObjectInfo> InfosFromPy(py::handle obj, size_t n) {
  if (py::isinstance<KvLayout>(obj) || py::isinstance<ObjectInfo>(obj)) {
    return std::vector<ObjectInfo>(n, InfoFromPy(obj));
  }
  std::vector<ObjectInfo> out;
  for (py::handle item : obj) out.push_back(InfoFromPy(item));
  if (out.size() != n) throw py::value_error("kvstash: one info (or layout) per name");
  return out;
}

// One object's memory: one buffer, or (a Python list) several whose concatenation is the
// object, e.g. an engine page's K region and V region.
struct ItemBuffers {
  std::vector<ByteRange> parts;
  size_t size = 0;

  std::vector<std::span<const uint8_t>> Segments() const {
    std::vector<std::span<const uint8_t>> out;
    for (const ByteRange& p : parts) out.emplace_back(p.data(), p.size());
    return out;
  }
  // Copies src over the parts in order (src.size() <= size).
  void Scatter(std::span<const uint8_t> src) const {
    size_t off = 0;
    for (const ByteRange& p : parts) {
      if (off >= src.size()) break;
      const size_t n = std::min(p.size(), src.size() - off);
      std::memcpy(p.data(), src.data() + off, n);
      off += n;
    }
  }
};

std::vector<ItemBuffers> BuffersFromPy(py::handle seq, size_t n, bool writable) {
  std::vector<ItemBuffers> out;
  out.reserve(n);
  for (py::handle item : seq) {
    ItemBuffers& b = out.emplace_back();
    if (py::isinstance<py::list>(item)) {
      for (py::handle part : item) b.parts.emplace_back(part, writable);
    } else {
      b.parts.emplace_back(item, writable);
    }
    for (const ByteRange& p : b.parts) b.size += p.size();
  }
  if (out.size() != n) throw py::value_error("kvstash: one buffer per name");
  return out;
}

// The result of one get: `error` is None on success.
struct GetResult {
  py::object error = py::none();
  ObjectInfo info;
  Tier served_from = Tier::kUnknown;
};

struct NativeGet {
  Status status;
  ObjectInfo info;
  Tier served_from = Tier::kUnknown;
};

// A read lease for Python: the arena bytes as a read-only buffer until release().
class PyLease {
 public:
  explicit PyLease(ReadLease lease) : lease_(std::move(lease)) {}
  const ReadLease& lease() const {
    if (!lease_) throw py::value_error("kvstash: the lease was released");
    return *lease_;
  }
  bool released() const { return !lease_.has_value(); }
  void Release() {
    if (!lease_) return;
    ReadLease lease = std::move(*lease_);
    lease_.reset();
    Status s;
    {
      py::gil_scoped_release nogil;
      s = lease.Release();
    }
    ThrowIfError(s);
  }

 private:
  std::optional<ReadLease> lease_;
};

class PyReservation {
 public:
  explicit PyReservation(WriteReservation r) : r_(std::move(r)) {}
  WriteReservation& get() {
    if (!r_) throw py::value_error("kvstash: the reservation was committed or aborted");
    return *r_;
  }
  bool done() const { return !r_.has_value(); }
  void Finish(bool commit, bool durable) {
    if (!r_) throw py::value_error("kvstash: the reservation was committed or aborted");
    WriteReservation r = std::move(*r_);
    r_.reset();
    Status s;
    {
      py::gil_scoped_release nogil;
      s = commit ? r.Commit(durable) : r.Abort();
    }
    ThrowIfError(s);
  }

 private:
  std::optional<WriteReservation> r_;
};

class PyClient {
 public:
  PyClient(const std::string& target, const ClientOptions& options) {
    Result<std::unique_ptr<KvClient>> c;
    {
      py::gil_scoped_release nogil;
      c = KvClient::Connect(target, options);
    }
    client_ = std::shared_ptr<KvClient>(ValueOrThrow(std::move(c)));
  }

  KvClient& c() const { return *Hold(); }
  // A call keeps the client alive while it runs without the GIL, so close() from another
  // thread cannot pull it from under the call.
  std::shared_ptr<KvClient> Hold() const {
    if (!client_) throw py::value_error("kvstash: the client is closed");
    return client_;
  }
  void Close() { client_.reset(); }

  client::LookupReply Lookup(const std::vector<ObjectName>& names) {
    std::shared_ptr<KvClient> held = Hold();
    KvClient& cl = *held;
    Result<client::LookupReply> r;
    {
      py::gil_scoped_release nogil;
      r = cl.Lookup(names);
    }
    return ValueOrThrow(std::move(r));
  }

  void Put(const ObjectName& name, py::handle info, py::handle buffer, bool overwrite,
           bool durable) {
    std::shared_ptr<KvClient> held = Hold();
    KvClient& cl = *held;
    ObjectInfo i = InfoFromPy(info);
    ByteRange bytes(buffer, /*writable=*/false);
    PutOptions o;
    o.overwrite = overwrite;
    o.durable = durable;
    Status s;
    {
      py::gil_scoped_release nogil;
      s = cl.Put(name, i, bytes.span(), o);
    }
    ThrowIfError(s);
  }

  py::list PutMany(const std::vector<ObjectName>& names, py::handle infos, py::handle buffers,
                   bool overwrite, bool durable, uint32_t max_batch, uint64_t max_batch_bytes) {
    std::shared_ptr<KvClient> held = Hold();
    KvClient& cl = *held;
    std::vector<ObjectInfo> is = InfosFromPy(infos, names.size());
    std::vector<ItemBuffers> bufs = BuffersFromPy(buffers, names.size(), /*writable=*/false);
    std::vector<PutItem> items(names.size());
    for (size_t i = 0; i < names.size(); ++i) {
      items[i].name = names[i];
      items[i].info = is[i];
      if (bufs[i].parts.size() == 1) {
        items[i].payload = bufs[i].parts[0].span();
      } else {
        items[i].segments = bufs[i].Segments();  // gathered straight into the arena
      }
    }
    PutOptions o;
    o.overwrite = overwrite;
    o.durable = durable;
    o.max_batch = max_batch;
    o.max_batch_bytes = max_batch_bytes;
    std::vector<Status> st;
    {
      py::gil_scoped_release nogil;
      st = cl.PutMany(items, o);
    }
    return StatusList(st);
  }

  // Reads every object into its buffer: one AcquireMany plus copies out of the arena when shared
  // memory is attached, else one streaming GetInto per object.
  std::vector<GetResult> GetMany(const std::vector<ObjectName>& names, py::handle buffers) {
    std::shared_ptr<KvClient> held = Hold();
    KvClient& cl = *held;
    std::vector<ItemBuffers> bufs = BuffersFromPy(buffers, names.size(), /*writable=*/true);
    std::vector<NativeGet> got(names.size());
    Status whole;
    {
      py::gil_scoped_release nogil;
      whole = GetManyNative(cl, names, bufs, &got);
    }
    ThrowIfError(whole);
    std::vector<GetResult> out(names.size());
    for (size_t i = 0; i < names.size(); ++i) {
      out[i].error = StatusOrNone(got[i].status);
      out[i].info = got[i].info;
      out[i].served_from = got[i].served_from;
    }
    return out;
  }

  ObjectInfo GetInto(const ObjectName& name, py::handle buffer) {
    std::vector<GetResult> r = GetMany({name}, py::make_tuple(buffer));
    if (!r[0].error.is_none()) {
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(r[0].error.ptr())), r[0].error.ptr());
      throw py::error_already_set();
    }
    return r[0].info;
  }

  py::bytearray Get(const ObjectName& name) {
    std::shared_ptr<KvClient> held = Hold();
    KvClient& cl = *held;
    if (cl.shared_memory_attached()) {
      Result<ReadLease> lease;
      {
        py::gil_scoped_release nogil;
        lease = cl.Acquire(name);
      }
      ReadLease l = ValueOrThrow(std::move(lease));
      py::bytearray out(nullptr, 0);
      if (PyByteArray_Resize(out.ptr(), static_cast<Py_ssize_t>(l.data().size())) != 0) {
        throw py::error_already_set();
      }
      char* dst = PyByteArray_AsString(out.ptr());
      {
        py::gil_scoped_release nogil;
        std::memcpy(dst, l.data().data(), l.data().size());
      }  // `l` goes at return: its destructor releases without waiting
      return out;
    }
    Result<client::GetReply> reply;
    {
      py::gil_scoped_release nogil;
      reply = cl.Get(name);
    }
    client::GetReply r = ValueOrThrow(std::move(reply));
    return py::bytearray(reinterpret_cast<const char*>(r.payload.data()), r.payload.size());
  }

  PyLease Acquire(const ObjectName& name) {
    std::shared_ptr<KvClient> held = Hold();
    KvClient& cl = *held;
    Result<ReadLease> r;
    {
      py::gil_scoped_release nogil;
      r = cl.Acquire(name);
    }
    return PyLease(ValueOrThrow(std::move(r)));
  }

  py::list AcquireMany(const std::vector<ObjectName>& names) {
    std::shared_ptr<KvClient> held = Hold();
    KvClient& cl = *held;
    Result<std::vector<Result<ReadLease>>> r;
    {
      py::gil_scoped_release nogil;
      r = cl.AcquireMany(names);
    }
    std::vector<Result<ReadLease>> leases = ValueOrThrow(std::move(r));
    py::list out;
    for (Result<ReadLease>& l : leases) {
      if (l.ok()) {
        out.append(py::cast(PyLease(std::move(*l))));
      } else {
        out.append(StatusToException(l.status()));
      }
    }
    return out;
  }

  PyReservation Reserve(const ObjectName& name, py::handle info, bool overwrite) {
    std::shared_ptr<KvClient> held = Hold();
    KvClient& cl = *held;
    ObjectInfo i = InfoFromPy(info);
    Result<WriteReservation> r;
    {
      py::gil_scoped_release nogil;
      r = cl.Reserve(name, i, overwrite);
    }
    return PyReservation(ValueOrThrow(std::move(r)));
  }

  using BatchCall = Result<std::vector<Status>> (KvClient::*)(std::span<const ObjectName>);
  py::list Batch(BatchCall call, const std::vector<ObjectName>& names) {
    std::shared_ptr<KvClient> held = Hold();
    KvClient& cl = *held;
    Result<std::vector<Status>> r;
    {
      py::gil_scoped_release nogil;
      r = (cl.*call)(names);
    }
    return StatusList(ValueOrThrow(std::move(r)));
  }

  py::dict Stats() {
    std::shared_ptr<KvClient> held = Hold();
    KvClient& cl = *held;
    Result<client::ServiceStats> r;
    {
      py::gil_scoped_release nogil;
      r = cl.Stats();
    }
    client::ServiceStats s = ValueOrThrow(std::move(r));
    py::list tiers;
    for (const client::TierStats& t : s.tiers) {
      py::dict d;
      d["tier"] = std::string(TierName(t.tier));
      d["capacity_bytes"] = t.capacity_bytes;
      d["used_bytes"] = t.used_bytes;
      d["objects"] = t.objects;
      d["hits"] = t.hits;
      d["misses"] = t.misses;
      d["evictions"] = t.evictions;
      d["bytes_read"] = t.bytes_read;
      d["bytes_written"] = t.bytes_written;
      d["logical_bytes"] = t.logical_bytes;
      tiers.append(d);
    }
    py::dict d;
    d["tiers"] = tiers;
    d["checksum_failures"] = s.checksum_failures;
    d["reservations_active"] = s.reservations_active;
    d["reservations_expired"] = s.reservations_expired;
    d["leases_active"] = s.leases_active;
    d["pinned_objects"] = s.pinned_objects;
    d["uptime_ms"] = s.uptime_ms;
    d["version"] = s.version;
    return d;
  }

  client::Handoff Offer(const std::vector<ObjectName>& names, uint32_t handoff_ms) {
    std::shared_ptr<KvClient> held = Hold();
    KvClient& cl = *held;
    Result<client::Handoff> r;
    {
      py::gil_scoped_release nogil;
      r = cl.Offer(names, handoff_ms);
    }
    return ValueOrThrow(std::move(r));
  }

  // land_tier: a kvstash.Tier, or its name "cpu" / "gpu" (any other name is InvalidArgument;
  // tiers other than CPU and GPU are refused by KvClient::FetchHandoff, InvalidArgument too).
  client::HandoffFetch FetchHandoff(const client::Handoff& h, bool all_or_nothing,
                                    const py::object& land_tier) {
    Tier land = Tier::kCpu;
    if (py::isinstance<py::str>(land_tier)) {
      const std::string name = land_tier.cast<std::string>();
      if (name == "cpu") {
        land = Tier::kCpu;
      } else if (name == "gpu") {
        land = Tier::kGpu;
      } else {
        ThrowIfError(absl::InvalidArgumentError(
            absl::StrCat("land_tier ", name, ": a handoff lands in \"cpu\" or \"gpu\"")));
      }
    } else if (py::isinstance<Tier>(land_tier)) {
      land = land_tier.cast<Tier>();
    } else {
      throw py::type_error("land_tier: a kvstash.Tier or \"cpu\" / \"gpu\"");
    }
    std::shared_ptr<KvClient> held = Hold();
    KvClient& cl = *held;
    Result<client::HandoffFetch> r;
    {
      py::gil_scoped_release nogil;
      r = cl.FetchHandoff(h, all_or_nothing, land);
    }
    return ValueOrThrow(std::move(r));
  }

  uint64_t HeartbeatHandoff(const client::Handoff& h, uint32_t extend_ms) {
    std::shared_ptr<KvClient> held = Hold();
    KvClient& cl = *held;
    Result<uint64_t> r;
    {
      py::gil_scoped_release nogil;
      r = cl.HeartbeatHandoff(h, extend_ms);
    }
    return ValueOrThrow(std::move(r));
  }

  void ReleaseHandoff(const client::Handoff& h) {
    std::shared_ptr<KvClient> held = Hold();
    KvClient& cl = *held;
    Status s;
    {
      py::gil_scoped_release nogil;
      s = cl.ReleaseHandoff(h);
    }
    ThrowIfError(s);
  }

 private:
  static Status GetManyNative(KvClient& cl, const std::vector<ObjectName>& names,
                              const std::vector<ItemBuffers>& bufs, std::vector<NativeGet>* got) {
    if (!cl.shared_memory_attached()) {
      std::vector<uint8_t> staging;  // scattered reads over the stream path land here first
      for (size_t i = 0; i < names.size(); ++i) {
        const bool direct = bufs[i].parts.size() == 1;
        if (!direct) staging.resize(bufs[i].size);
        Result<client::GetIntoReply> r =
            cl.GetInto(names[i], direct ? bufs[i].parts[0].span() : std::span<uint8_t>(staging));
        if (!r.ok()) {
          (*got)[i].status = r.status();
          continue;
        }
        if (!direct) bufs[i].Scatter({staging.data(), r->info.payload_bytes});
        (*got)[i].info = r->info;
        (*got)[i].served_from = r->served_from;
      }
      return OkStatus();
    }
    Result<std::vector<Result<ReadLease>>> leases = cl.AcquireMany(names);
    if (!leases.ok()) return leases.status();
    for (size_t i = 0; i < names.size(); ++i) {
      Result<ReadLease>& l = (*leases)[i];
      NativeGet& g = (*got)[i];
      if (!l.ok()) {
        g.status = l.status();
        continue;
      }
      std::span<const uint8_t> src = l->data();
      if (src.size() > bufs[i].size) {
        g.status = absl::InvalidArgumentError(
            absl::StrCat("buffer of ", bufs[i].size, " bytes for an object of ", src.size()));
        continue;
      }
      bufs[i].Scatter(src);
      g.info = l->info();
      g.served_from = l->served_from();
      // The lease goes with `leases`: its destructor sends the Release without waiting.
    }
    return OkStatus();
  }

  std::shared_ptr<KvClient> client_;
};

}  // namespace

void BindClient(py::module_& m) {
  py::class_<GetResult>(m, "GetResult", "One object of get_many: error is None on success.")
      .def_readonly("error", &GetResult::error)
      .def_readonly("info", &GetResult::info)
      .def_readonly("served_from", &GetResult::served_from)
      .def_property_readonly("ok", [](const GetResult& r) { return r.error.is_none(); })
      .def("__bool__", [](const GetResult& r) { return r.error.is_none(); });

  py::class_<PyLease>(
      m, "Lease", py::buffer_protocol(),
      "A read lease: the object's bytes in the shared-memory arena, as a "
      "read-only buffer (memoryview(lease), numpy.frombuffer(lease)). The bytes "
      "are valid and unchanged until release() (or the lease's expiry); views "
      "taken before release() must not be read after it; a released lease exports an "
      "empty buffer.")
      // pybind11 cannot raise from a buffer getter (an exception there aborts): a released
      // lease exports an empty buffer.
      .def_buffer([](PyLease& l) {
        std::span<const uint8_t> d = l.released() ? std::span<const uint8_t>() : l.lease().data();
        return py::buffer_info(const_cast<uint8_t*>(d.data()), 1,
                               py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(d.size())}, {1}, /*readonly=*/true);
      })
      .def_property_readonly("info", [](const PyLease& l) { return l.lease().info(); })
      .def_property_readonly("served_from",
                             [](const PyLease& l) { return l.lease().served_from(); })
      .def_property_readonly("lease_id", [](const PyLease& l) { return l.lease().lease_id(); })
      .def_property_readonly("released", &PyLease::released)
      .def("__len__", [](const PyLease& l) { return l.lease().data().size(); })
      .def("release", &PyLease::Release, "Ends the lease (idempotent).")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyLease& l, const py::args&) { l.Release(); });

  py::class_<PyReservation>(m, "Reservation", py::buffer_protocol(),
                            "Space reserved in the arena for one object: write payload_bytes "
                            "into the writable buffer, then commit() or abort(). Never write after "
                            "commit(). As a context manager: aborts unless committed.")
      .def_buffer([](PyReservation& r) {  // empty once committed or aborted (see Lease)
        std::span<uint8_t> d = r.done() ? std::span<uint8_t>() : r.get().data();
        return py::buffer_info(d.data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(d.size())}, {1}, /*readonly=*/false);
      })
      .def_property_readonly("info", [](PyReservation& r) { return r.get().info(); })
      .def_property_readonly("reservation_id",
                             [](PyReservation& r) { return r.get().reservation_id(); })
      .def_property_readonly("done", &PyReservation::done)
      .def(
          "commit", [](PyReservation& r, bool durable) { r.Finish(true, durable); },
          py::arg("durable") = false)
      .def("abort", [](PyReservation& r) { r.Finish(false, false); })
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyReservation& r, const py::args&) {
        if (!r.done()) r.Finish(false, false);
      });

  py::class_<PyClient>(m, "Client",
                       "A connection to cachesvc (thread-safe; share one per process). target: "
                       "'unix:///path', 'unix:path' or 'host:port'. With a unix target the "
                       "shared-memory arena is attached and payloads move between your buffers "
                       "and the arena by one copy in C++; over TCP they stream over gRPC.")
      .def(py::init([](const std::string& target, double rpc_timeout_s, double stream_timeout_s,
                       double connect_timeout_s, bool use_shared_memory, bool verify_reads,
                       uint32_t lease_ms, bool prefault_arena, bool local_control,
                       const std::string& tls_ca, const std::string& tls_cert,
                       const std::string& tls_key, const std::string& tls_server_name,
                       const std::string& token, bool attach_read_only) {
             ClientOptions o;
             auto ms = [](double s) {
               return std::chrono::milliseconds(static_cast<int64_t>(s * 1000));
             };
             o.rpc_timeout = ms(rpc_timeout_s);
             o.stream_timeout = ms(stream_timeout_s);
             o.connect_timeout = ms(connect_timeout_s);
             o.use_shared_memory = use_shared_memory;
             o.verify_reads = verify_reads;
             o.lease_ms = lease_ms;
             o.prefault_arena = prefault_arena;
             o.local_control = local_control;
             o.tls_ca_file = tls_ca;
             o.tls_cert_file = tls_cert;
             o.tls_key_file = tls_key;
             o.tls_server_name = tls_server_name;
             o.bearer_token = token;
             o.attach_read_only = attach_read_only;
             return std::make_unique<PyClient>(target, o);
           }),
           py::arg("target"), py::kw_only(), py::arg("rpc_timeout_s") = 10.0,
           py::arg("stream_timeout_s") = 60.0, py::arg("connect_timeout_s") = 5.0,
           py::arg("use_shared_memory") = true, py::arg("verify_reads") = false,
           py::arg("lease_ms") = 0, py::arg("prefault_arena") = true,
           py::arg("local_control") = true, py::arg("tls_ca") = "", py::arg("tls_cert") = "",
           py::arg("tls_key") = "", py::arg("tls_server_name") = "", py::arg("token") = "",
           py::arg("attach_read_only") = false,
           "Connects (Unavailable when the service cannot be reached in connect_timeout_s). "
           "tls_ca (a PEM file) turns on TLS to a host:port target, with tls_cert/tls_key (PEM "
           "files) as the client certificate for mutual TLS; tls_server_name is the name the "
           "service's certificate must carry (default: the target's host). token: the tenant's "
           "bearer token for a multi-tenant cachesvc (sent as 'authorization: Bearer'). "
           "attach_read_only: map the arena for reading only (needed with a read-only token; "
           "puts then go over the byte stream, reserve() raises FailedPrecondition).")
      .def_property_readonly("target", [](const PyClient& p) { return p.c().target(); })
      .def_property_readonly("shared_memory_attached",
                             [](const PyClient& p) { return p.c().shared_memory_attached(); })
      .def_property_readonly("shared_memory_writable",
                             [](const PyClient& p) { return p.c().shared_memory_writable(); })
      .def_property_readonly(
          "shared_memory_error",
          [](const PyClient& p) { return StatusOrNone(p.c().shared_memory_status()); },
          "Why the arena is not attached (None when it is or was not asked for).")
      .def_property_readonly("local_control_active",
                             [](const PyClient& p) { return p.c().local_control_active(); })
      .def("close", &PyClient::Close, "Drops the connection (leases and reservations stay valid).")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyClient& p, const py::args&) { p.Close(); })
      .def("lookup", &PyClient::Lookup, py::arg("names"),
           "Presence of each name plus the longest present prefix, in one RPC.")
      .def("put", &PyClient::Put, py::arg("name"), py::arg("info"), py::arg("buffer"),
           py::kw_only(), py::arg("overwrite") = false, py::arg("durable") = false,
           "Stores one object; info is an ObjectInfo or a KvLayout (raw object). Raises on error.")
      .def("put_many", &PyClient::PutMany, py::arg("names"), py::arg("infos"), py::arg("buffers"),
           py::kw_only(), py::arg("overwrite") = false, py::arg("durable") = false,
           py::arg("max_batch") = 8, py::arg("max_batch_bytes") = uint64_t{64} << 20,
           "Stores many objects (batched, pipelined over shared memory). infos: one "
           "ObjectInfo/KvLayout for all, or one per name. A buffer may be a list of buffers, "
           "whose concatenation is the object (gathered straight into the arena). Returns one "
           "entry per name: None when stored, else the kvstash.errors exception (not raised).")
      .def("get_many", &PyClient::GetMany, py::arg("names"), py::arg("buffers"),
           "Reads each object into its writable buffer (at least payload_bytes long; a list of "
           "buffers is filled in order). Returns one GetResult per name; raises only when the "
           "whole call fails.")
      .def("get_into", &PyClient::GetInto, py::arg("name"), py::arg("buffer"),
           "Reads one object into `buffer`; returns its ObjectInfo, raises on error.")
      .def("get", &PyClient::Get, py::arg("name"), "Reads one object into a new bytearray.")
      .def("acquire", &PyClient::Acquire, py::arg("name"),
           "Leases one object in the arena (zero copy); FailedPrecondition without shared memory.")
      .def("acquire_many", &PyClient::AcquireMany, py::arg("names"),
           "Leases many objects in one RPC: a Lease or an (unraised) exception per name.")
      .def("reserve", &PyClient::Reserve, py::arg("name"), py::arg("info"), py::kw_only(),
           py::arg("overwrite") = false, "Reserves arena space for a zero-copy write.")
      .def(
          "delete",
          [](PyClient& p, const std::vector<ObjectName>& n) {
            return p.Batch(&KvClient::Delete, n);
          },
          py::arg("names"), "Per-name None or exception (NotFound for unknown names).")
      .def(
          "pin",
          [](PyClient& p, const std::vector<ObjectName>& n) { return p.Batch(&KvClient::Pin, n); },
          py::arg("names"))
      .def(
          "unpin",
          [](PyClient& p, const std::vector<ObjectName>& n) {
            return p.Batch(&KvClient::Unpin, n);
          },
          py::arg("names"))
      .def("stats", &PyClient::Stats, "The service's counters as a dict.")
      .def("offer", &PyClient::Offer, py::arg("names"), py::arg("handoff_ms") = 0,
           "Prefill side: pins the stored names for a decode node; ResourceExhausted when none "
           "is stored.")
      .def("fetch_handoff", &PyClient::FetchHandoff, py::arg("handoff"),
           py::arg("all_or_nothing") = false, py::arg("land_tier") = "cpu",
           "Decode side: pulls the handoff's objects into this node and ends the handoff. "
           "land_tier (Tier.CPU/Tier.GPU or \"cpu\"/\"gpu\"): where they land on this node, its "
           "arena (default) or its GPU pool; GPU raises FailedPrecondition when this node has no "
           "GPU pool or cannot land in it (the handoff then stays pinned for a retry).")
      .def("heartbeat_handoff", &PyClient::HeartbeatHandoff, py::arg("handoff"),
           py::arg("extend_ms") = 0, "Keeps the prefill node's pins alive; the new lifetime (ms).")
      .def("release_handoff", &PyClient::ReleaseHandoff, py::arg("handoff"));
}

}  // namespace kvstash::python
