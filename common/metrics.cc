#include "common/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace shardserve {
namespace {

// A sample value as Prometheus writes it: integers without a fraction, +Inf / -Inf / NaN.
std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return absl::StrFormat("%.0f", v);
  // The shortest form that reads back as the same double (0.1, not 0.10000000000000001).
  std::string shortest = absl::StrFormat("%.15g", v);
  if (std::strtod(shortest.c_str(), nullptr) == v) return shortest;
  return absl::StrFormat("%.17g", v);
}

// Label values escape backslash, double quote and newline; HELP escapes backslash and newline.
std::string Escape(const std::string& s, bool quote) {
  std::string out;
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && quote) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

MetricFamily::MetricFamily(std::string name, std::string help, Type type,
                           std::vector<std::string> labels, std::vector<double> buckets)
    : name_(std::move(name)),
      help_(std::move(help)),
      type_(type),
      labels_(std::move(labels)),
      buckets_(std::move(buckets)) {}

MetricFamily::Series& MetricFamily::SeriesLocked(const LabelValues& labels) {
  Series& s = series_[labels];
  if (type_ == Type::kHistogram && s.counts.empty()) s.counts.assign(buckets_.size(), 0);
  return s;
}

void MetricFamily::Add(const LabelValues& labels, double value) {
  absl::MutexLock lock(&mu_);
  if (type_ == Type::kCounter && value < 0) return;  // counters only go up
  SeriesLocked(labels).value += value;
}

void MetricFamily::Set(const LabelValues& labels, double value) {
  absl::MutexLock lock(&mu_);
  SeriesLocked(labels).value = value;
}

void MetricFamily::Observe(const LabelValues& labels, double value) {
  absl::MutexLock lock(&mu_);
  Series& s = SeriesLocked(labels);
  const auto it = std::lower_bound(buckets_.begin(), buckets_.end(), value);
  if (it != buckets_.end()) ++s.counts[it - buckets_.begin()];
  s.sum += value;
  ++s.count;
}

std::string MetricFamily::LabelText(const LabelValues& values, const std::string& extra) const {
  std::string text;
  for (size_t i = 0; i < labels_.size() && i < values.size(); ++i) {
    absl::StrAppend(&text, text.empty() ? "" : ",", labels_[i], "=\"", Escape(values[i], true),
                    "\"");
  }
  if (!extra.empty()) absl::StrAppend(&text, text.empty() ? "" : ",", extra);
  return text.empty() ? "" : absl::StrCat("{", text, "}");
}

void MetricFamily::Render(std::string* out) const {
  const char* type = type_ == Type::kCounter ? "counter"
                     : type_ == Type::kGauge ? "gauge"
                                             : "histogram";
  absl::StrAppend(out, "# HELP ", name_, " ", Escape(help_, false), "\n# TYPE ", name_, " ", type,
                  "\n");
  absl::MutexLock lock(&mu_);
  for (const auto& [labels, s] : series_) {
    if (type_ != Type::kHistogram) {
      absl::StrAppend(out, name_, LabelText(labels, ""), " ", FormatValue(s.value), "\n");
      continue;
    }
    uint64_t cumulative = 0;
    for (size_t b = 0; b < buckets_.size(); ++b) {
      cumulative += s.counts[b];
      absl::StrAppend(out, name_, "_bucket",
                      LabelText(labels, absl::StrCat("le=\"", FormatValue(buckets_[b]), "\"")), " ",
                      cumulative, "\n");
    }
    absl::StrAppend(out, name_, "_bucket", LabelText(labels, "le=\"+Inf\""), " ", s.count, "\n");
    absl::StrAppend(out, name_, "_sum", LabelText(labels, ""), " ", FormatValue(s.sum), "\n");
    absl::StrAppend(out, name_, "_count", LabelText(labels, ""), " ", s.count, "\n");
  }
}

MetricFamily* MetricsRegistry::Add(std::unique_ptr<MetricFamily> family) {
  absl::MutexLock lock(&mu_);
  for (const auto& f : families_) {
    if (f->name() == family->name()) return f.get();
  }
  families_.push_back(std::move(family));
  return families_.back().get();
}

MetricFamily* MetricsRegistry::Counter(const std::string& name, const std::string& help,
                                       std::vector<std::string> labels) {
  return Add(std::make_unique<MetricFamily>(name, help, MetricFamily::Type::kCounter,
                                            std::move(labels), std::vector<double>{}));
}

MetricFamily* MetricsRegistry::Gauge(const std::string& name, const std::string& help,
                                     std::vector<std::string> labels) {
  return Add(std::make_unique<MetricFamily>(name, help, MetricFamily::Type::kGauge,
                                            std::move(labels), std::vector<double>{}));
}

MetricFamily* MetricsRegistry::Histogram(const std::string& name, const std::string& help,
                                         std::vector<std::string> labels,
                                         std::vector<double> buckets) {
  std::sort(buckets.begin(), buckets.end());
  buckets.erase(std::unique(buckets.begin(), buckets.end()), buckets.end());
  return Add(std::make_unique<MetricFamily>(name, help, MetricFamily::Type::kHistogram,
                                            std::move(labels), std::move(buckets)));
}

std::string MetricsRegistry::Render() const {
  std::string out;
  absl::MutexLock lock(&mu_);
  for (const auto& f : families_) f->Render(&out);
  return out;
}

std::vector<double> MetricsRegistry::LatencyBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60};
}

}  // namespace shardserve
