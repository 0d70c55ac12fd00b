#include "metrics_http.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>

#include "rpc_metrics.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::cachesvc {
namespace {

using ::testing::HasSubstr;

TEST(MetricsHttp, ServesMetricsAndHealth) {
  MetricsRegistry registry;
  RpcMetrics rpc(&registry);
  {
    RpcScope scope(&rpc, Method::kLookup, 100);
    scope.AddSent(40);
    scope.Finish(OkStatus());
  }
  {
    RpcScope scope(&rpc, Method::kCommit, 10);
    scope.Finish(absl::FailedPreconditionError("double commit"));
  }
  std::atomic<bool> healthy{true};
  auto server = MetricsHttpServer::Start("127.0.0.1", 0, &registry, [&] { return healthy.load(); });
  ASSERT_OK(server);
  ASSERT_GT((*server)->port(), 0);

  httplib::Client http("127.0.0.1", (*server)->port());
  auto metrics = http.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  EXPECT_THAT(metrics->get_header_value("Content-Type"), HasSubstr("text/plain"));
  EXPECT_THAT(metrics->body,
              HasSubstr("kvstash_rpc_requests_total{method=\"Lookup\",code=\"OK\"} 1"));
  EXPECT_THAT(metrics->body, HasSubstr("kvstash_rpc_requests_total{method=\"Commit\",code=\""
                                       "FAILED_PRECONDITION\"} 1"));
  EXPECT_THAT(metrics->body, HasSubstr("kvstash_grpc_received_bytes_total{method=\"Lookup\"} 100"));
  EXPECT_THAT(metrics->body, HasSubstr("kvstash_grpc_sent_bytes_total{method=\"Lookup\"} 40"));
  EXPECT_THAT(metrics->body, HasSubstr("kvstash_rpc_duration_seconds_count{method=\"Lookup\"} 1"));
  EXPECT_THAT(metrics->body, HasSubstr("kvstash_rpc_in_flight 0"));

  auto health = http.Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, "ok\n");
  healthy = false;
  health = http.Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 503);

  auto missing = http.Get("/nope");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  (*server)->Stop();
  (*server)->Stop();  // idempotent
}

TEST(MetricsHttp, BusyPortIsAnError) {
  MetricsRegistry registry;
  auto first = MetricsHttpServer::Start("127.0.0.1", 0, &registry, [] { return true; });
  ASSERT_OK(first);
  auto second =
      MetricsHttpServer::Start("127.0.0.1", (*first)->port(), &registry, [] { return true; });
  ASSERT_THAT(second, StatusIs(absl::StatusCode::kUnavailable));
}

}  // namespace
}  // namespace kvstash::cachesvc
