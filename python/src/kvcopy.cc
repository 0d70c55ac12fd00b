// kvstash._native.copy_paged_blocks: moves whole KV blocks between an engine's paged per-layer
// KV tensors and canonical KVStash objects (docs/hashing.md), in C++ with the GIL released.
//
// Paged layout (vLLM CPU attention): per layer a contiguous [num_blocks][H][2][block][head]
// byte array (per head all K rows of the block's tokens, then all V rows). Canonical object of
// one block: [layer][K|V][token][head] where `head` is head_bytes bytes (one head's dim). The
// innermost head_bytes are contiguous on both sides, so the copy is one memcpy per
// (layer, K|V, token, head).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "bindings.h"
#include "buffers.h"

namespace py = pybind11;

namespace kvstash::python {
namespace {

struct Geometry {
  size_t heads = 0;       // H: KV heads in a block (this rank's)
  size_t block = 0;       // tokens per block
  size_t head_bytes = 0;  // bytes of one head's K (or V) row
  size_t num_layers = 0;  // L: layers in an object
  size_t paged_block_bytes() const { return heads * 2 * block * head_bytes; }
  size_t object_bytes() const { return num_layers * paged_block_bytes(); }
};

// One layer's block <-> the same layer's slice of one object.
void CopyLayerBlock(const Geometry& g, uint8_t* paged, uint8_t* object_layer, bool to_object) {
  const size_t hb = g.head_bytes;
  for (size_t kv = 0; kv < 2; ++kv) {
    for (size_t t = 0; t < g.block; ++t) {
      uint8_t* obj_row = object_layer + ((kv * g.block + t) * g.heads) * hb;
      for (size_t h = 0; h < g.heads; ++h) {
        uint8_t* pg = paged + ((h * 2 + kv) * g.block + t) * hb;
        uint8_t* ob = obj_row + h * hb;
        if (to_object) {
          std::memcpy(ob, pg, hb);
        } else {
          std::memcpy(pg, ob, hb);
        }
      }
    }
  }
}

void CopyPagedBlocks(const py::list& paged, const std::vector<int64_t>& layer_ids,
                     const std::vector<int64_t>& block_ids, py::handle objects, size_t num_layers,
                     size_t heads, size_t block_size, size_t head_bytes, bool to_objects) {
  Geometry g{heads, block_size, head_bytes, num_layers};
  if (g.heads == 0 || g.block == 0 || g.head_bytes == 0 || g.num_layers == 0) {
    throw py::value_error("kvstash: copy_paged_blocks: zero geometry");
  }
  if (layer_ids.size() != py::len(paged)) {
    throw py::value_error("kvstash: copy_paged_blocks: one layer id per paged tensor");
  }
  std::vector<ByteRange> layers;
  layers.reserve(layer_ids.size());
  for (size_t i = 0; i < layer_ids.size(); ++i) {
    if (layer_ids[i] < 0 || static_cast<size_t>(layer_ids[i]) >= g.num_layers) {
      throw py::value_error("kvstash: copy_paged_blocks: layer id out of range");
    }
    layers.emplace_back(paged[i], /*writable=*/!to_objects);
    if (layers.back().size() % g.paged_block_bytes() != 0) {
      throw py::value_error(
          "kvstash: copy_paged_blocks: a paged tensor is not whole blocks of the geometry");
    }
  }
  // The objects: one buffer holding all of them, or a list of one buffer per object (e.g. the
  // read leases of the shared-memory arena).
  std::vector<ByteRange> objs;
  std::vector<uint8_t*> object_at(block_ids.size());
  if (py::isinstance<py::list>(objects) || py::isinstance<py::tuple>(objects)) {
    if (py::len(objects) != block_ids.size()) {
      throw py::value_error("kvstash: copy_paged_blocks: one object buffer per block id");
    }
    objs.reserve(block_ids.size());
    for (py::handle o : objects) {
      objs.emplace_back(o, /*writable=*/to_objects);
      if (objs.back().size() != g.object_bytes()) {
        throw py::value_error("kvstash: copy_paged_blocks: an object buffer is " +
                              std::to_string(objs.back().size()) + " bytes, not " +
                              std::to_string(g.object_bytes()));
      }
      object_at[objs.size() - 1] = objs.back().data();
    }
  } else {
    objs.emplace_back(objects, /*writable=*/to_objects);
    if (objs[0].size() != block_ids.size() * g.object_bytes()) {
      throw py::value_error("kvstash: copy_paged_blocks: objects must be " +
                            std::to_string(block_ids.size()) + " objects of " +
                            std::to_string(g.object_bytes()) + " bytes");
    }
    for (size_t j = 0; j < block_ids.size(); ++j) {
      object_at[j] = objs[0].data() + j * g.object_bytes();
    }
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    const size_t nb = layers[i].size() / g.paged_block_bytes();
    for (int64_t b : block_ids) {
      if (b < 0 || static_cast<size_t>(b) >= nb) {
        throw py::index_error("kvstash: copy_paged_blocks: block id " + std::to_string(b) +
                              " out of range (" + std::to_string(nb) + " blocks)");
      }
    }
  }
  py::gil_scoped_release nogil;
  const size_t pbb = g.paged_block_bytes();
  for (size_t j = 0; j < block_ids.size(); ++j) {
    uint8_t* object = object_at[j];
    for (size_t i = 0; i < layers.size(); ++i) {
      uint8_t* paged_block = layers[i].data() + static_cast<size_t>(block_ids[j]) * pbb;
      CopyLayerBlock(g, paged_block, object + static_cast<size_t>(layer_ids[i]) * pbb, to_objects);
    }
  }
}

}  // namespace

void BindCopy(py::module_& m) {
  m.def("copy_paged_blocks", &CopyPagedBlocks, py::arg("paged"), py::arg("layer_ids"),
        py::arg("block_ids"), py::arg("objects"), py::kw_only(), py::arg("num_layers"),
        py::arg("heads"), py::arg("block_size"), py::arg("head_bytes"), py::arg("to_objects"),
        "Copies blocks `block_ids` between paged per-layer KV tensors and canonical objects, "
        "in C++ without the GIL.\n\n"
        "paged: contiguous CPU tensors (or buffers), one per entry of layer_ids, each "
        "[num_blocks][heads][2][block_size][head_bytes] bytes (vLLM CPU attention's "
        "[num_blocks, heads, block_size, 2*head_dim]: per head K rows then V rows). "
        "layer_ids: which layer of the object each paged tensor is. objects: one contiguous "
        "buffer of len(block_ids) objects, or a list of one buffer per object (e.g. read "
        "leases), each [num_layers][K|V][block_size][heads][head_bytes] (docs/hashing.md); "
        "object j is block block_ids[j]. to_objects: True "
        "copies paged -> objects (for a store), False objects -> paged (a load; only the "
        "given layers are written). ValueError/IndexError for a geometry, size or block id "
        "that does not fit; nothing is copied then.");
}

}  // namespace kvstash::python
