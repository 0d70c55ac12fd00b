// kvstash._native: the C++ half of the kvstash Python package (docs/python.md).
#include <pybind11/pybind11.h>

#include "bindings.h"

PYBIND11_MODULE(_native, m) {
  m.doc() =
      "Native half of the kvstash package: KvClient and the key scheme (import kvstash instead).";
  kvstash::python::BindTypes(m);
  kvstash::python::BindClient(m);
  kvstash::python::BindCopy(m);
}
