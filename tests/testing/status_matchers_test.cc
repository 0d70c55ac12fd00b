// The status matchers themselves: what they accept, what they refuse, and that a failure names
// the status it got.
#include "testing/status_matchers.h"

#include <grpcpp/support/status.h>
#include <gtest/gtest-spi.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace kvstash::testing {
namespace {

using ::testing::Eq;
using ::testing::Gt;
using ::testing::HasSubstr;
using ::testing::Not;

Result<int> Ok(int v) { return v; }
Result<int> Missing() { return absl::NotFoundError("no such key"); }

TEST(StatusMatchers, IsOkOnStatusResultAndGrpcStatus) {
  EXPECT_THAT(Status(), IsOk());
  EXPECT_THAT(Ok(3), IsOk());
  EXPECT_THAT(grpc::Status::OK, IsOk());
  EXPECT_THAT(absl::InternalError("x"), Not(IsOk()));
  EXPECT_THAT(Missing(), Not(IsOk()));
  EXPECT_THAT(grpc::Status(grpc::StatusCode::UNAVAILABLE, "down"), Not(IsOk()));
}

TEST(StatusMatchers, StatusIsComparesTheCode) {
  EXPECT_THAT(Missing(), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(Missing(), Not(StatusIs(absl::StatusCode::kInternal)));
  EXPECT_THAT(Ok(1), StatusIs(absl::StatusCode::kOk));
  // gRPC's codes are the canonical codes.
  EXPECT_THAT(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "full"),
              StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST(StatusMatchers, IsOkAndHoldsMatchesTheValue) {
  EXPECT_THAT(Ok(7), IsOkAndHolds(7));
  EXPECT_THAT(Ok(7), IsOkAndHolds(Gt(5)));
  EXPECT_THAT(Ok(7), Not(IsOkAndHolds(Eq(8))));
  EXPECT_THAT(Missing(), Not(IsOkAndHolds(7)));
  EXPECT_THAT(Result<std::string>("abc"), IsOkAndHolds(HasSubstr("b")));
}

TEST(StatusMatchers, MacrosPassOnTheRightStatus) {
  ASSERT_OK(Status());
  EXPECT_OK(Ok(1));
  EXPECT_OK(grpc::Status::OK);
  ASSERT_NOT_OK(Missing());
  EXPECT_NOT_OK(absl::DataLossError("torn"));
  ASSERT_OK_AND_ASSIGN(int v, Ok(42));
  EXPECT_EQ(v, 42);
}

// A failing assertion prints the status it got: the reason these replace ASSERT_TRUE(s.ok()).
TEST(StatusMatchers, FailuresPrintTheStatus) {
  EXPECT_NONFATAL_FAILURE(EXPECT_OK(Missing()), "NOT_FOUND: no such key");
  EXPECT_NONFATAL_FAILURE(EXPECT_THAT(Missing(), StatusIs(absl::StatusCode::kAborted)),
                          "NOT_FOUND: no such key");
  EXPECT_NONFATAL_FAILURE(EXPECT_OK(grpc::Status(grpc::StatusCode::UNAVAILABLE, "down")),
                          "UNAVAILABLE: down");
  EXPECT_FATAL_FAILURE(ASSERT_OK(absl::InternalError("boom")), "INTERNAL: boom");
  EXPECT_NONFATAL_FAILURE(EXPECT_NOT_OK(Ok(1)), "isn't OK");
}

// With KVSTASH_STATUS_CODES_LOG set, a passing *_NOT_OK records the code it saw
// (scripts/convert_status_asserts.py --codes reads these lines).
TEST(StatusMatchers, NotOkRecordsTheCodeWhenAsked) {
  const std::string log =
      (std::filesystem::temp_directory_path() / ("kvstash_codes_" + std::to_string(getpid())))
          .string();
  std::remove(log.c_str());
  const char* before = std::getenv("KVSTASH_STATUS_CODES_LOG");
  const std::string saved = before != nullptr ? before : "";
  setenv("KVSTASH_STATUS_CODES_LOG", log.c_str(), 1);
  const int line = __LINE__ + 1;
  EXPECT_NOT_OK(Missing());
  if (saved.empty()) {
    unsetenv("KVSTASH_STATUS_CODES_LOG");
  } else {
    setenv("KVSTASH_STATUS_CODES_LOG", saved.c_str(), 1);
  }
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_THAT(text.str(),
              HasSubstr("status_matchers_test.cc:" + std::to_string(line) + " NOT_FOUND\n"));
  std::remove(log.c_str());
}

}  // namespace
}  // namespace kvstash::testing
