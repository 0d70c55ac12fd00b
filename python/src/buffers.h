// Caller memory as seen by the extension: a contiguous byte range taken from a Python object
// without copying it.
//
// Accepted: any object with the buffer protocol that is C-contiguous (numpy arrays, bytearray,
// memoryview, bytes for reads-only uses, mmap), a CPU torch.Tensor that is contiguous (through
// data_ptr(); torch tensors have no buffer protocol), and a (address, nbytes) tuple of ints for
// memory the caller owns and keeps alive (e.g. an engine's pinned pool). TypeError/ValueError
// (raised as Python exceptions) otherwise.
//
// A ByteRange keeps its object (and the buffer export) alive until destroyed. Create and destroy
// with the GIL held; the bytes themselves may be touched without the GIL.
#ifndef KVSTASH_PYTHON_BUFFERS_H_
#define KVSTASH_PYTHON_BUFFERS_H_

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <span>

namespace kvstash::python {

class ByteRange {
 public:
  // Throws (pybind11 exceptions) for objects it cannot take; `writable` refuses read-only ones.
  ByteRange(pybind11::handle obj, bool writable);
  ~ByteRange();
  ByteRange(ByteRange&& other) noexcept;
  ByteRange(const ByteRange&) = delete;
  ByteRange& operator=(const ByteRange&) = delete;
  ByteRange& operator=(ByteRange&&) = delete;

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<uint8_t> span() const { return {data_, size_}; }

 private:
  pybind11::object owner_;
  Py_buffer view_{};
  bool has_view_ = false;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace kvstash::python

#endif  // KVSTASH_PYTHON_BUFFERS_H_
