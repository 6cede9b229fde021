// Prometheus metrics: counters, gauges and histograms with labels, registered once in a
// MetricsRegistry and rendered in the Prometheus text exposition format (version 0.0.4) for
// `/metrics`. Names follow Prometheus conventions and every service prefixes them `shardserve_`.
//
// Thread-safe: metrics are updated from any thread (a mutex per family: updates are a few
// per request or per engine step, not per element). Memory grows with the label combinations
// used, which callers keep bounded (model, tenant, code — never request ids).
#ifndef SHARDSERVE_COMMON_METRICS_H_
#define SHARDSERVE_COMMON_METRICS_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace shardserve {

using LabelValues = std::vector<std::string>;

class MetricFamily {
 public:
  enum class Type { kCounter, kGauge, kHistogram };
  MetricFamily(std::string name, std::string help, Type type, std::vector<std::string> labels,
               std::vector<double> buckets);

  // Counter: adds `value` (>= 0). Gauge: adds (may be negative).
  void Add(const LabelValues& labels, double value);
  // Gauge: sets.
  void Set(const LabelValues& labels, double value);
  // Histogram: records one observation.
  void Observe(const LabelValues& labels, double value);

  const std::string& name() const { return name_; }
  // Appends this family in the text format.
  void Render(std::string* out) const;

 private:
  struct Series {
    double value = 0;              // counter / gauge
    std::vector<uint64_t> counts;  // histogram, per bucket (not cumulative)
    double sum = 0;
    uint64_t count = 0;
  };
  Series& SeriesLocked(const LabelValues& labels) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string LabelText(const LabelValues& values, const std::string& extra) const;

  const std::string name_;
  const std::string help_;
  const Type type_;
  const std::vector<std::string> labels_;
  const std::vector<double> buckets_;  // upper bounds, ascending; +Inf implied
  mutable absl::Mutex mu_;
  std::map<LabelValues, Series> series_ ABSL_GUARDED_BY(mu_);
};

class MetricsRegistry {
 public:
  // Each returns the family (owned by the registry, valid for its lifetime). Registering the
  // same name twice returns the first family.
  MetricFamily* Counter(const std::string& name, const std::string& help,
                        std::vector<std::string> labels = {});
  MetricFamily* Gauge(const std::string& name, const std::string& help,
                      std::vector<std::string> labels = {});
  MetricFamily* Histogram(const std::string& name, const std::string& help,
                          std::vector<std::string> labels, std::vector<double> buckets);

  // Every family in registration order, in the text format.
  std::string Render() const;

  // Latency buckets in seconds from 0.5 ms to 60 s (roughly x2.5 steps).
  static std::vector<double> LatencyBuckets();

 private:
  MetricFamily* Add(std::unique_ptr<MetricFamily> family);
  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<MetricFamily>> families_ ABSL_GUARDED_BY(mu_);
};

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_METRICS_H_
