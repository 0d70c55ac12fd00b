// Value types of the Python package: layouts, object names and the key scheme, handoffs.
#include <pybind11/numpy.h>
#include <pybind11/operators.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "bindings.h"
#include "errors.h"
#include "kvstash/client/kv_client.h"
#include "kvstash/common/key.h"
#include "kvstash/common/layout.h"
#include "kvstash/common/tier.h"
#include "kvstash/proto/convert.h"

namespace py = pybind11;

namespace kvstash::python {

py::bytes HashToPy(const Hash128& hash) {
  auto b = hash.Bytes();
  return py::bytes(reinterpret_cast<const char*>(b.data()), b.size());
}

Hash128 HashFromPy(py::handle obj) {
  if (py::isinstance<py::str>(obj)) return ValueOrThrow(Hash128::FromHex(obj.cast<std::string>()));
  if (PyObject_CheckBuffer(obj.ptr())) {
    py::buffer_info info = py::buffer(py::reinterpret_borrow<py::object>(obj)).request();
    std::string bytes(static_cast<const char*>(info.ptr),
                      static_cast<size_t>(info.size * info.itemsize));
    return ValueOrThrow(Hash128::FromBytes(bytes));
  }
  throw py::type_error("kvstash: a hash is 16 bytes or 32 hex digits");
}

namespace {

using client::Handoff;
using client::HandoffFetch;
using client::KeyPresence;
using client::LookupReply;

using Tokens = py::array_t<uint32_t, py::array::c_style | py::array::forcecast>;

std::span<const uint32_t> TokenSpan(const Tokens& tokens) {
  return {tokens.data(), static_cast<size_t>(tokens.size())};
}

std::string LayoutRepr(const KvLayout& l) {
  return "KvLayout(num_layers=" + std::to_string(l.num_layers) +
         ", layer_begin=" + std::to_string(l.layer_begin) +
         ", total_kv_heads=" + std::to_string(l.total_kv_heads) +
         ", head_begin=" + std::to_string(l.head_begin) +
         ", head_end=" + std::to_string(l.head_end) + ", head_dim=" + std::to_string(l.head_dim) +
         ", dtype=" + std::string(DTypeName(l.dtype)) +
         ", num_tokens=" + std::to_string(l.num_tokens) +
         ", raw_bytes=" + std::to_string(l.RawBytes()) + ")";
}

}  // namespace

void BindTypes(py::module_& m) {
  py::enum_<DType>(m, "DType", "Element type of stored KV (docs/hashing.md codes).")
      .value("F16", DType::kF16)
      .value("BF16", DType::kBF16)
      .value("F32", DType::kF32);
  py::enum_<RopeConvention>(m, "RopeConvention", "How K was rotated before it was stored.")
      .value("NONE", RopeConvention::kNone)
      .value("NEOX", RopeConvention::kNeox)
      .value("GPTJ", RopeConvention::kGptj);
  py::enum_<Encoding>(m, "Encoding")
      .value("RAW", Encoding::kRaw)
      .value("CACHEGEN", Encoding::kCacheGen);
  py::enum_<Tier>(m, "Tier", "Where an object lives or was served from.")
      .value("UNKNOWN", Tier::kUnknown)
      .value("GPU", Tier::kGpu)
      .value("CPU", Tier::kCpu)
      .value("SSD", Tier::kSsd)
      .value("REMOTE", Tier::kRemote);
  py::enum_<TokenHashMode>(m, "TokenHashMode")
      .value("PREFIX_CHAINED", TokenHashMode::kPrefixChained)
      .value("POSITION_INDEPENDENT", TokenHashMode::kPositionIndependent);

  py::class_<KvLayout>(m, "KvLayout",
                       "The KV bytes of one object: layer-major [layer][K|V][token][head][dim]. "
                       "A raw object's payload is exactly raw_bytes() long.")
      .def(py::init([](uint32_t num_layers, uint32_t total_kv_heads, uint32_t head_dim,
                       uint32_t num_tokens, DType dtype, uint32_t layer_begin,
                       std::optional<uint32_t> head_begin, std::optional<uint32_t> head_end,
                       RopeConvention rope, float rope_theta, uint32_t rotary_dim,
                       int64_t position_start) {
             KvLayout l;
             l.num_layers = num_layers;
             l.layer_begin = layer_begin;
             l.total_kv_heads = total_kv_heads;
             l.head_begin = head_begin.value_or(0);
             l.head_end = head_end.value_or(total_kv_heads);
             l.head_dim = head_dim;
             l.dtype = dtype;
             l.num_tokens = num_tokens;
             l.rope = rope;
             l.rope_theta = rope_theta;
             l.rotary_dim = rotary_dim;
             l.position_start = position_start;
             return l;
           }),
           py::kw_only(), py::arg("num_layers"), py::arg("total_kv_heads"), py::arg("head_dim"),
           py::arg("num_tokens"), py::arg("dtype") = DType::kF16, py::arg("layer_begin") = 0,
           py::arg("head_begin") = py::none(), py::arg("head_end") = py::none(),
           py::arg("rope") = RopeConvention::kNone, py::arg("rope_theta") = 10000.0f,
           py::arg("rotary_dim") = 0, py::arg("position_start") = 0,
           "head range defaults to all heads [0, total_kv_heads).")
      .def_readwrite("num_layers", &KvLayout::num_layers)
      .def_readwrite("layer_begin", &KvLayout::layer_begin)
      .def_readwrite("total_kv_heads", &KvLayout::total_kv_heads)
      .def_readwrite("head_begin", &KvLayout::head_begin)
      .def_readwrite("head_end", &KvLayout::head_end)
      .def_readwrite("head_dim", &KvLayout::head_dim)
      .def_readwrite("dtype", &KvLayout::dtype)
      .def_readwrite("num_tokens", &KvLayout::num_tokens)
      .def_readwrite("rope", &KvLayout::rope)
      .def_readwrite("rope_theta", &KvLayout::rope_theta)
      .def_readwrite("rotary_dim", &KvLayout::rotary_dim)
      .def_readwrite("position_start", &KvLayout::position_start)
      .def("raw_bytes", &KvLayout::RawBytes, "Payload bytes of a raw object of this layout.")
      .def(
          "validate", [](const KvLayout& l) { ThrowIfError(l.Validate()); },
          "Raises InvalidArgument naming the first bad field.")
      .def(py::self == py::self)  // NOLINT(misc-redundant-expression): pybind11 binds ==
      .def("__repr__", &LayoutRepr);

  py::class_<ObjectInfo>(m, "ObjectInfo", "What the service knows about an object besides its key.")
      .def(py::init([](const KvLayout& layout) {
             ObjectInfo info;
             info.layout = layout;
             info.payload_bytes = layout.RawBytes();
             return info;
           }),
           py::arg("layout"), "A raw object of `layout` (payload_bytes = layout.raw_bytes()).")
      .def_readwrite("layout", &ObjectInfo::layout)
      .def_readwrite("encoding", &ObjectInfo::encoding)
      .def_readwrite("encoding_level", &ObjectInfo::encoding_level)
      .def_readwrite("payload_bytes", &ObjectInfo::payload_bytes)
      .def_readwrite("payload_crc32c", &ObjectInfo::payload_crc32c,
                     "0 on a put means: the client computes it")
      .def_readwrite("lossy", &ObjectInfo::lossy)
      .def(py::self == py::self)  // NOLINT(misc-redundant-expression): pybind11 binds ==
      .def("__repr__", [](const ObjectInfo& i) {
        return "ObjectInfo(" + LayoutRepr(i.layout) +
               ", payload_bytes=" + std::to_string(i.payload_bytes) +
               ", crc32c=" + std::to_string(i.payload_crc32c) + ")";
      });

  py::class_<ModelSpec>(m, "ModelSpec",
                        "What makes two KV caches interchangeable (docs/hashing.md); its "
                        "fingerprint() is one of the three parts of an object name.")
      .def(py::init([](std::string model_id, std::string weights_revision, DType dtype,
                       uint32_t num_layers, uint32_t total_kv_heads, uint32_t head_dim,
                       std::optional<uint32_t> layer_begin, std::optional<uint32_t> layer_end,
                       std::optional<uint32_t> head_begin, std::optional<uint32_t> head_end,
                       RopeConvention rope, float rope_theta) {
             ModelSpec s;
             s.model_id = std::move(model_id);
             s.weights_revision = std::move(weights_revision);
             s.dtype = dtype;
             s.num_layers = num_layers;
             s.layer_begin = layer_begin.value_or(0);
             s.layer_end = layer_end.value_or(num_layers);
             s.total_kv_heads = total_kv_heads;
             s.head_begin = head_begin.value_or(0);
             s.head_end = head_end.value_or(total_kv_heads);
             s.head_dim = head_dim;
             s.rope = rope;
             s.rope_theta = rope_theta;
             return s;
           }),
           py::kw_only(), py::arg("model_id"), py::arg("weights_revision") = "",
           py::arg("dtype") = DType::kF16, py::arg("num_layers"), py::arg("total_kv_heads"),
           py::arg("head_dim"), py::arg("layer_begin") = py::none(),
           py::arg("layer_end") = py::none(), py::arg("head_begin") = py::none(),
           py::arg("head_end") = py::none(), py::arg("rope") = RopeConvention::kNone,
           py::arg("rope_theta") = 0.0f,
           "Layer range defaults to all layers, head range to all heads.")
      .def_readwrite("model_id", &ModelSpec::model_id)
      .def_readwrite("weights_revision", &ModelSpec::weights_revision)
      .def_readwrite("dtype", &ModelSpec::dtype)
      .def_readwrite("num_layers", &ModelSpec::num_layers)
      .def_readwrite("layer_begin", &ModelSpec::layer_begin)
      .def_readwrite("layer_end", &ModelSpec::layer_end)
      .def_readwrite("total_kv_heads", &ModelSpec::total_kv_heads)
      .def_readwrite("head_begin", &ModelSpec::head_begin)
      .def_readwrite("head_end", &ModelSpec::head_end)
      .def_readwrite("head_dim", &ModelSpec::head_dim)
      .def_readwrite("rope", &ModelSpec::rope)
      .def_readwrite("rope_theta", &ModelSpec::rope_theta)
      .def(
          "fingerprint", [](const ModelSpec& s) { return HashToPy(ModelFingerprint(s)); },
          "The 16-byte model fingerprint H(\"KVS1MDL\\0\" || fields).");

  m.def(
      "chain_token_hash",
      [](py::handle parent, const Tokens& tokens) {
        Hash128 p = parent.is_none() ? Hash128{} : HashFromPy(parent);
        return HashToPy(ChainTokenHash(p, TokenSpan(tokens)));
      },
      py::arg("parent"), py::arg("tokens"),
      "Prefix-chained hash of one chunk given its parent's hash (None or 16 zero bytes first).");
  m.def(
      "independent_token_hash",
      [](const Tokens& tokens) { return HashToPy(IndependentTokenHash(TokenSpan(tokens))); },
      py::arg("tokens"), "Position-independent hash of a chunk.");
  m.def(
      "chunk_variant_hash",
      [](py::handle chunk_hash, uint32_t slot, uint32_t part) {
        return HashToPy(ChunkVariantHash(HashFromPy(chunk_hash), slot, part));
      },
      py::arg("chunk_hash"), py::arg("slot"), py::arg("part"));
  m.def(
      "chunk_token_hashes",
      [](const Tokens& tokens, size_t chunk_tokens, TokenHashMode mode, bool include_partial) {
        if (chunk_tokens == 0) ThrowStatus(absl::InvalidArgumentError("chunk_tokens must be > 0"));
        std::vector<Hash128> hashes;
        {
          py::gil_scoped_release nogil;
          hashes = ChunkTokenHashes(TokenSpan(tokens), chunk_tokens, mode, include_partial);
        }
        py::list out;
        for (const Hash128& h : hashes) out.append(HashToPy(h));
        return out;
      },
      py::arg("tokens"), py::arg("chunk_tokens") = 256,
      py::arg("mode") = TokenHashMode::kPrefixChained, py::arg("include_partial") = false,
      "Hashes of the chunks of `tokens` (u32), one 16-byte hash per chunk, as ChunkTokenHashes.");
  m.def(
      "object_key",
      [](const std::string& ns, py::handle fp, py::handle token_hash) {
        return HashToPy(ObjectKey(ns, HashFromPy(fp), HashFromPy(token_hash)));
      },
      py::arg("namespace"), py::arg("model_fingerprint"), py::arg("token_hash"),
      "The 128-bit storage key H(\"KVS1KEY\\0\" || str ns || fingerprint || token hash).");

  py::class_<ObjectName>(m, "ObjectName",
                         "An object's name: namespace (tenant / cache salt), model fingerprint "
                         "and token hash; the service derives storage_key from the three.")
      .def(py::init([](std::string ns, py::handle fp, py::handle token_hash) {
             if (ns.size() > kMaxNamespaceBytes) {
               ThrowStatus(absl::InvalidArgumentError("namespace longer than 256 bytes"));
             }
             return MakeObjectName(std::move(ns), HashFromPy(fp), HashFromPy(token_hash));
           }),
           py::arg("namespace"), py::arg("model_fingerprint"), py::arg("token_hash"))
      .def_property_readonly("namespace", [](const ObjectName& n) { return n.name_space; })
      .def_property_readonly("model_fingerprint",
                             [](const ObjectName& n) { return HashToPy(n.model_fingerprint); })
      .def_property_readonly("token_hash",
                             [](const ObjectName& n) { return HashToPy(n.token_hash); })
      .def_property_readonly("storage_key",
                             [](const ObjectName& n) { return HashToPy(n.storage_key); })
      .def("__eq__",
           [](const ObjectName& a, const ObjectName& b) { return a.storage_key == b.storage_key; })
      .def("__hash__", [](const ObjectName& n) { return Hash128Hasher{}(n.storage_key); })
      .def("__repr__", [](const ObjectName& n) {
        return "ObjectName(" + n.name_space + ", key=" + n.storage_key.ToHex() + ")";
      });

  py::class_<KeyPresence>(m, "KeyPresence")
      .def_readonly("present", &KeyPresence::present)
      .def_readonly("tier", &KeyPresence::tier)
      .def_readonly("payload_bytes", &KeyPresence::payload_bytes)
      .def_readonly("info", &KeyPresence::info)
      .def("__bool__", [](const KeyPresence& p) { return p.present; });
  py::class_<LookupReply>(m, "LookupReply")
      .def_readonly("results", &LookupReply::results, "one KeyPresence per key, in order")
      .def_readonly("longest_prefix", &LookupReply::longest_prefix, "leading keys present");

  py::class_<Handoff>(m, "Handoff",
                      "A prefill/decode handoff (docs/api.md): pass serialize()'s bytes to the "
                      "decode side, which parses them and calls fetch_handoff on its own node.")
      .def_readonly("node", &Handoff::node)
      .def_readonly("id", &Handoff::id)
      .def_readonly("names", &Handoff::names)
      .def_readonly("payload_bytes", &Handoff::payload_bytes)
      .def_readonly("expires_in_ms", &Handoff::expires_in_ms)
      .def("serialize", [](const Handoff& h) { return py::bytes(h.Serialize()); })
      .def_static(
          "parse",
          [](const py::bytes& bytes) {
            return ValueOrThrow(Handoff::Parse(static_cast<std::string_view>(bytes)));
          },
          py::arg("data"), "InvalidArgument for bytes that are not a handoff.");
  py::class_<HandoffFetch>(m, "HandoffFetch")
      .def_property_readonly(
          "errors",
          [](const HandoffFetch& f) {
            py::list out;
            for (const Status& s : f.results) {
              out.append(s.ok() ? py::object(py::none()) : StatusToException(s));
            }
            return out;
          },
          "one entry per handoff name: None when held here, else the error")
      .def_readonly("fetched", &HandoffFetch::fetched)
      .def_readonly("already_local", &HandoffFetch::already_local)
      .def_readonly("longest_prefix", &HandoffFetch::longest_prefix)
      .def_readonly("fetched_bytes", &HandoffFetch::fetched_bytes);
}

}  // namespace kvstash::python
