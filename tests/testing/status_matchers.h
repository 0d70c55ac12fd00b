// GoogleTest matchers for kvstash::Status and Result<T>, in the manner of Abseil's
// status_matchers.h (not packaged with Debian's absl): a failed expectation prints the status.
//
//   EXPECT_OK(store->Delete(key));                    // Status, Result<T> or grpc::Status
//   EXPECT_THAT(client->Get(key), StatusIs(absl::StatusCode::kNotFound));
//   EXPECT_THAT(ParseByteSize("4KiB"), IsOkAndHolds(4096));
//   ASSERT_OK_AND_ASSIGN(auto lease, store->Acquire(key, 0));
//   EXPECT_NOT_OK(Parse(bytes));                      // failed, whatever the code
//
// Every matcher takes a kvstash::Status (absl::Status), a Result<T> (absl::StatusOr<T>) or any
// status type with error_code() and error_message() in the canonical codes, such as grpc::Status
// (this header does not include gRPC). scripts/convert_status_asserts.py rewrites
// ASSERT_TRUE(x.ok())-style assertions into these.
#ifndef KVSTASH_TESTS_TESTING_STATUS_MATCHERS_H_
#define KVSTASH_TESTS_TESTING_STATUS_MATCHERS_H_

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <concepts>
#include <cstdio>
#include <cstdlib>
#include <ostream>
#include <string>
#include <utility>

#include "kvstash/common/status.h"

namespace kvstash::testing {

// A status type that is not absl's but uses its codes (grpc::Status).
template <typename S>
concept ForeignStatus = requires(const S& s) {
  s.error_code();
  s.error_message();
  { s.ok() } -> std::convertible_to<bool>;
};

inline Status GetStatus(const Status& s) { return s; }
template <typename T>
Status GetStatus(const Result<T>& r) {
  return r.status();
}
template <ForeignStatus S>
Status GetStatus(const S& s) {
  if (s.ok()) return Status();
  return Status(static_cast<absl::StatusCode>(static_cast<int>(s.error_code())),
                std::string(s.error_message()));
}

MATCHER(IsOk, "is OK") {
  const Status s = ::kvstash::testing::GetStatus(arg);
  if (!s.ok()) *result_listener << "status is " << s;
  return s.ok();
}

MATCHER_P(StatusIs, code,
          std::string(negation ? "isn't" : "is") + " a status with code " +
              std::string(absl::StatusCodeToString(code))) {
  const Status s = ::kvstash::testing::GetStatus(arg);
  *result_listener << "status is " << s;
  return s.code() == code;
}

// Matches an OK Result<T> whose value matches `inner` (a matcher or a value).
MATCHER_P(IsOkAndHolds, inner,
          std::string(negation ? "isn't" : "is") + " OK with a value that matches") {
  if (!arg.ok()) {
    *result_listener << "status is " << arg.status();
    return false;
  }
  return ::testing::ExplainMatchResult(inner, *arg, result_listener);
}

// What *_NOT_OK assertions saw: with KVSTASH_STATUS_CODES_LOG=FILE in the environment each one
// that passes appends "SOURCE:LINE CODE" to FILE; scripts/convert_status_asserts.py --codes FILE
// then turns those that always saw one code into StatusIs(that code), for review.
inline void RecordNotOkCode(const char* file, int line, const Status& s) {
  const char* path = std::getenv("KVSTASH_STATUS_CODES_LOG");
  if (path == nullptr || *path == '\0') return;
  if (std::FILE* f = std::fopen(path, "a")) {
    std::fprintf(f, "%s:%d %s\n", file, line,
                 std::string(absl::StatusCodeToString(s.code())).c_str());
    std::fclose(f);
  }
}

// Not OK, whatever the code (which is recorded as above). Prefer StatusIs where the contract
// names the code.
MATCHER_P2(IsNotOkAt, file, line, negation ? "is OK" : "isn't OK") {
  const Status s = ::kvstash::testing::GetStatus(arg);
  *result_listener << "status is " << s;
  if (s.ok()) return false;
  ::kvstash::testing::RecordNotOkCode(file, line, s);
  return true;
}

}  // namespace kvstash::testing

// ASSERT_OK(expr) / EXPECT_OK(expr): `expr` is OK; a failure prints the status.
#define ASSERT_OK(expr) ASSERT_THAT((expr), ::kvstash::testing::IsOk())
#define EXPECT_OK(expr) EXPECT_THAT((expr), ::kvstash::testing::IsOk())
// ASSERT_NOT_OK(expr) / EXPECT_NOT_OK(expr): `expr` failed, with any code.
#define ASSERT_NOT_OK(expr) ASSERT_THAT((expr), ::kvstash::testing::IsNotOkAt(__FILE__, __LINE__))
#define EXPECT_NOT_OK(expr) EXPECT_THAT((expr), ::kvstash::testing::IsNotOkAt(__FILE__, __LINE__))

#define KVSTASH_MATCHERS_CONCAT_INNER_(a, b) a##b
#define KVSTASH_MATCHERS_CONCAT_(a, b) KVSTASH_MATCHERS_CONCAT_INNER_(a, b)

// Asserts that `expr` (a Result<T>) is OK and assigns its value to `lhs`.
#define ASSERT_OK_AND_ASSIGN(lhs, expr)                                                         \
  ASSERT_OK_AND_ASSIGN_IMPL_(KVSTASH_MATCHERS_CONCAT_(kvstash_matchers_result_, __LINE__), lhs, \
                             expr)
#define ASSERT_OK_AND_ASSIGN_IMPL_(tmp, lhs, expr)       \
  auto tmp = (expr);                                     \
  ASSERT_THAT(tmp, ::kvstash::testing::IsOk()) << #expr; \
  lhs = std::move(tmp).value()

#endif  // KVSTASH_TESTS_TESTING_STATUS_MATCHERS_H_
