#include "common/metrics.h"

#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

using ::testing::HasSubstr;

TEST(MetricsTest, CounterAndGaugeRenderInTheTextFormat) {
  MetricsRegistry registry;
  MetricFamily* requests = registry.Counter("shardserve_requests_total",
                                            "Requests by model and code.", {"model", "code"});
  MetricFamily* running = registry.Gauge("shardserve_running_sequences", "Sequences running.");
  requests->Add({"smol", "OK"}, 1);
  requests->Add({"smol", "OK"}, 2);
  requests->Add({"smol", "OK"}, -5);  // ignored: counters only go up
  requests->Add({"a\"b\\c\nd", "NOT_FOUND"}, 1);
  running->Set({}, 3);
  running->Add({}, -1);
  EXPECT_EQ(registry.Render(),
            "# HELP shardserve_requests_total Requests by model and code.\n"
            "# TYPE shardserve_requests_total counter\n"
            "shardserve_requests_total{model=\"a\\\"b\\\\c\\nd\",code=\"NOT_FOUND\"} 1\n"
            "shardserve_requests_total{model=\"smol\",code=\"OK\"} 3\n"
            "# HELP shardserve_running_sequences Sequences running.\n"
            "# TYPE shardserve_running_sequences gauge\n"
            "shardserve_running_sequences 2\n");
}

TEST(MetricsTest, HistogramBucketsAreCumulativeWithSumAndCount) {
  MetricsRegistry registry;
  MetricFamily* ttft = registry.Histogram("shardserve_time_to_first_token_seconds", "TTFT.",
                                          {"model"}, {0.1, 0.01, 1});
  ttft->Observe({"smol"}, 0.005);
  ttft->Observe({"smol"}, 0.01);  // le is inclusive
  ttft->Observe({"smol"}, 0.5);
  ttft->Observe({"smol"}, 7);
  EXPECT_EQ(registry.Render(),
            "# HELP shardserve_time_to_first_token_seconds TTFT.\n"
            "# TYPE shardserve_time_to_first_token_seconds histogram\n"
            "shardserve_time_to_first_token_seconds_bucket{model=\"smol\",le=\"0.01\"} 2\n"
            "shardserve_time_to_first_token_seconds_bucket{model=\"smol\",le=\"0.1\"} 2\n"
            "shardserve_time_to_first_token_seconds_bucket{model=\"smol\",le=\"1\"} 3\n"
            "shardserve_time_to_first_token_seconds_bucket{model=\"smol\",le=\"+Inf\"} 4\n"
            "shardserve_time_to_first_token_seconds_sum{model=\"smol\"} 7.515\n"
            "shardserve_time_to_first_token_seconds_count{model=\"smol\"} 4\n");
}

TEST(MetricsTest, SameNameTwiceIsOneFamilyAndUpdatesAreThreadSafe) {
  MetricsRegistry registry;
  MetricFamily* a = registry.Counter("shardserve_x_total", "X.");
  MetricFamily* b = registry.Counter("shardserve_x_total", "X again.");
  EXPECT_EQ(a, b);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([a] {
      for (int i = 0; i < 1000; ++i) a->Add({}, 1);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_THAT(registry.Render(), HasSubstr("shardserve_x_total 4000\n"));
}

}  // namespace
}  // namespace shardserve
