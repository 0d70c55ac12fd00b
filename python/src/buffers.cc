#include "buffers.h"

#include <string>

namespace py = pybind11;

namespace kvstash::python {

ByteRange::ByteRange(py::handle obj, bool writable)
    : owner_(py::reinterpret_borrow<py::object>(obj)) {
  if (PyObject_CheckBuffer(obj.ptr())) {
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj.ptr(), &view_, flags) != 0) throw py::error_already_set();
    has_view_ = true;
    data_ = static_cast<uint8_t*>(view_.buf);
    size_ = static_cast<size_t>(view_.len);
    return;
  }
  // torch.Tensor: no buffer protocol, but a data pointer and a size. Only CPU memory can be read
  // or written by this process; only a contiguous tensor is one byte range.
  if (py::hasattr(obj, "data_ptr") && py::hasattr(obj, "element_size") &&
      py::hasattr(obj, "is_contiguous")) {
    py::object device = obj.attr("device");
    std::string type = py::str(device.attr("type"));
    if (type != "cpu") {
      throw py::value_error("kvstash: only CPU tensors can be used as buffers (got device " + type +
                            ")");
    }
    if (!obj.attr("is_contiguous")().cast<bool>()) {
      throw py::value_error("kvstash: the tensor is not contiguous");
    }
    data_ = reinterpret_cast<uint8_t*>(obj.attr("data_ptr")().cast<uintptr_t>());
    size_ = obj.attr("numel")().cast<size_t>() * obj.attr("element_size")().cast<size_t>();
    return;
  }
  if (py::isinstance<py::tuple>(obj) && py::len(obj) == 2) {
    py::tuple t = py::reinterpret_borrow<py::tuple>(obj);
    data_ = reinterpret_cast<uint8_t*>(t[0].cast<uintptr_t>());
    size_ = t[1].cast<size_t>();
    if (data_ == nullptr && size_ != 0) throw py::value_error("kvstash: null address");
    return;
  }
  throw py::type_error(
      "kvstash: expected a contiguous buffer (numpy array, bytearray, memoryview), a CPU torch "
      "tensor or an (address, nbytes) tuple");
}

ByteRange::ByteRange(ByteRange&& other) noexcept
    : owner_(std::move(other.owner_)),
      view_(other.view_),
      has_view_(other.has_view_),
      data_(other.data_),
      size_(other.size_) {
  other.has_view_ = false;
  other.view_ = Py_buffer{};
}

ByteRange::~ByteRange() {
  if (has_view_) PyBuffer_Release(&view_);
}

}  // namespace kvstash::python
