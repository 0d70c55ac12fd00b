#include "kvstash/common/metrics.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace kvstash {
namespace {

TEST(MetricsTest, RendersPrometheusText) {
  MetricsRegistry reg;
  reg.GetCounter("kvstash_hits_total", "Hits by tier", {{"tier", "cpu"}})->Increment(3);
  reg.GetGauge("kvstash_arena_used_bytes", "Arena bytes in use")->Set(1024);
  auto* h = reg.GetHistogram("kvstash_get_seconds", "Get latency", {}, {0.001, 0.01});
  h->Observe(0.0005);
  h->Observe(0.005);
  h->Observe(1.0);
  std::string text = reg.Render();
  EXPECT_NE(text.find("# TYPE kvstash_hits_total counter"), std::string::npos);
  EXPECT_NE(text.find("kvstash_hits_total{tier=\"cpu\"} 3"), std::string::npos);
  EXPECT_NE(text.find("kvstash_arena_used_bytes 1024"), std::string::npos);
  EXPECT_NE(text.find("kvstash_get_seconds_bucket{le=\"0.001\"} 1"), std::string::npos);
  EXPECT_NE(text.find("kvstash_get_seconds_bucket{le=\"0.01\"} 2"), std::string::npos);
  EXPECT_NE(text.find("kvstash_get_seconds_bucket{le=\"+Inf\"} 3"), std::string::npos);
  EXPECT_NE(text.find("kvstash_get_seconds_count 3"), std::string::npos);
}

TEST(MetricsTest, SameNameAndLabelsGiveSameMetric) {
  MetricsRegistry reg;
  Counter* a = reg.GetCounter("c", "help", {{"tier", "ssd"}});
  Counter* b = reg.GetCounter("c", "help", {{"tier", "ssd"}});
  Counter* other = reg.GetCounter("c", "help", {{"tier", "cpu"}});
  EXPECT_EQ(a, b);
  EXPECT_NE(a, other);
}

TEST(MetricsTest, ConcurrentUpdatesAreCounted) {
  MetricsRegistry reg;
  Counter* c = reg.GetCounter("c", "help");
  Histogram* h = reg.GetHistogram("h", "help");
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        c->Increment();
        h->Observe(0.001);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(c->Value(), 40000u);
  EXPECT_EQ(h->Count(), 40000u);
  EXPECT_NEAR(h->Sum(), 40.0, 1e-6);
}

}  // namespace
}  // namespace kvstash
