// Pieces of the kvstash._native module, defined in types.cc, client.cc and kvcopy.cc.
#ifndef KVSTASH_PYTHON_BINDINGS_H_
#define KVSTASH_PYTHON_BINDINGS_H_

#include <pybind11/pybind11.h>

#include "kvstash/common/key.h"

namespace kvstash::python {

// A Hash128 crosses into Python as its 16 bytes (Hash128::Bytes(): lo LE then hi LE), so
// bytes.hex() prints what Hash128::ToHex() prints. Accepted back: those 16 bytes (bytes,
// bytearray, memoryview) or the 32-digit hex string.
pybind11::bytes HashToPy(const Hash128& hash);
Hash128 HashFromPy(pybind11::handle obj);

void BindTypes(pybind11::module_& m);   // layouts, names, keys, handoff values
void BindClient(pybind11::module_& m);  // Client, leases, reservations
void BindCopy(pybind11::module_& m);    // copy_paged_blocks (engine KV layouts)

}  // namespace kvstash::python

#endif  // KVSTASH_PYTHON_BINDINGS_H_
