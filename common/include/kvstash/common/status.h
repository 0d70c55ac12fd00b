// The one error convention of KVStash.
//
// Every function that can fail at a module boundary returns `Status` or `Result<T>`. They are
// absl::Status / absl::StatusOr, whose codes are numerically identical to gRPC status codes, so the
// service maps them to the wire in exactly one place (proto/status_mapping.h) and clients map them
// back in the same place. No exception crosses a module boundary.
//
// Code choice, used consistently across modules:
//   InvalidArgument     malformed request or input (bad layout, bad checksum sent by a client)
//   NotFound            unknown key, lease or reservation
//   AlreadyExists       a committed object with that key exists and overwrite was not asked for
//   FailedPrecondition  valid request in the wrong state (double commit, expired reservation)
//   ResourceExhausted   capacity, quota or disk full
//   DataLoss            stored bytes failed verification (checksum mismatch on read)
//   Unavailable         transient: peer or service unreachable, shutting down
//   DeadlineExceeded    a wait ran out
//   Unimplemented       feature not built in (e.g. CUDA without a device)
//   Internal            a bug: an invariant of ours broke
#ifndef KVSTASH_COMMON_STATUS_H_
#define KVSTASH_COMMON_STATUS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvstash {

using Status = absl::Status;
template <typename T>
using Result = absl::StatusOr<T>;

inline Status OkStatus() { return absl::OkStatus(); }

}  // namespace kvstash

#define KVSTASH_CONCAT_INNER_(a, b) a##b
#define KVSTASH_CONCAT_(a, b) KVSTASH_CONCAT_INNER_(a, b)

// Returns early from the enclosing function if `expr` yields a non-OK Status.
#define KVSTASH_RETURN_IF_ERROR(expr)                  \
  do {                                                 \
    ::absl::Status kvstash_status_ = (expr);           \
    if (!kvstash_status_.ok()) return kvstash_status_; \
  } while (0)

// `KVSTASH_ASSIGN_OR_RETURN(auto x, MakeX());` assigns the value of a Result or returns its error.
// `tmp` and `lhs` are declarators (`auto x`), which parentheses would break; hence the NOLINTs.
#define KVSTASH_ASSIGN_OR_RETURN(lhs, expr) \
  KVSTASH_ASSIGN_OR_RETURN_IMPL_(KVSTASH_CONCAT_(kvstash_result_, __LINE__), lhs, expr)
#define KVSTASH_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr)                                    \
  auto tmp = (expr);                             /* NOLINT(bugprone-macro-parentheses) */ \
  if (!tmp.ok()) return std::move(tmp).status(); /* NOLINT(bugprone-macro-parentheses) */ \
  lhs = std::move(tmp).value()                   /* NOLINT(bugprone-macro-parentheses) */

#endif  // KVSTASH_COMMON_STATUS_H_
