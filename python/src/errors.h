// Status -> Python exception. Every error the extension raises is an instance of a class in
// kvstash.errors (python/kvstash/errors.py) chosen by the status code, which equals the gRPC
// status code numerically (absl::StatusCode and grpc::StatusCode share their values).
// Call with the GIL held.
#ifndef KVSTASH_PYTHON_ERRORS_H_
#define KVSTASH_PYTHON_ERRORS_H_

#include <pybind11/pybind11.h>

#include "kvstash/common/status.h"

namespace kvstash::python {

// The exception object for `status` (must not be OK), not raised.
pybind11::object StatusToException(const Status& status);
// Raises `status` as its kvstash.errors exception (throws pybind11::error_already_set).
[[noreturn]] void ThrowStatus(const Status& status);

inline void ThrowIfError(const Status& status) {
  if (!status.ok()) ThrowStatus(status);
}
template <typename T>
T ValueOrThrow(Result<T> result) {
  if (!result.ok()) ThrowStatus(result.status());
  return std::move(*result);
}

}  // namespace kvstash::python

#endif  // KVSTASH_PYTHON_ERRORS_H_
