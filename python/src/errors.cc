#include "errors.h"

#include <string>

namespace py = pybind11;

namespace kvstash::python {

py::object StatusToException(const Status& status) {
  // Imported on use (cached by Python's module table): the extension module is initialised
  // before kvstash.errors may be, and the classes are plain Python so users can catch them
  // without importing the extension.
  py::object from_status = py::module_::import("kvstash.errors").attr("from_status");
  return from_status(static_cast<int>(status.code()), std::string(status.message()));
}

void ThrowStatus(const Status& status) {
  py::object exc = StatusToException(status);
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
  throw py::error_already_set();
}

}  // namespace kvstash::python
