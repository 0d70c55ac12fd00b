// GoogleTest matchers for kvstash::Status and Result<T>, in the manner of Abseil's
// status_matchers.h (not packaged with Debian's absl): a failed expectation prints the status.
//
//   EXPECT_THAT(store->Delete(key), IsOk());
//   EXPECT_THAT(client->Get(key), StatusIs(absl::StatusCode::kNotFound));
//   ASSERT_OK_AND_ASSIGN(auto lease, store->Acquire(key, 0));
#ifndef KVSTASH_TESTS_TESTING_STATUS_MATCHERS_H_
#define KVSTASH_TESTS_TESTING_STATUS_MATCHERS_H_

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ostream>

#include "kvstash/common/status.h"

namespace kvstash::testing {

inline const Status& GetStatus(const Status& s) { return s; }
template <typename T>
const Status& GetStatus(const Result<T>& r) {
  return r.status();
}

MATCHER(IsOk, "is OK") {
  const Status& s = ::kvstash::testing::GetStatus(arg);
  if (!s.ok()) *result_listener << "status is " << s;
  return s.ok();
}

MATCHER_P(StatusIs, code,
          std::string(negation ? "isn't" : "is") + " a status with code " +
              std::string(absl::StatusCodeToString(code))) {
  const Status& s = ::kvstash::testing::GetStatus(arg);
  *result_listener << "status is " << s;
  return s.code() == code;
}

}  // namespace kvstash::testing

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
