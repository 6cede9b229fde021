// Quantization throughput of hub_sync's QuantizeSnapshot, per scheme, in MB/s of source weights.
//
//   quantize_bench [--model DIR] [--runs N] [--keep DIR]
//
// DIR is an HF snapshot (default models/SmolLM2-135M-Instruct, the bf16 conversion of the
// default model). For each scheme (int8, int4, nf4, nf4 with double quantization) the whole
// QuantizeSnapshot runs N times (default 3) into a fresh directory: source hashing, reading
// through mmap, conversion, quantization, writing with fsync, file hashes and the manifest. One
// line per scheme: source MB (all tensors), artifact MB, best and median wall seconds, MB/s of
// source weights at the median, and "quantize-only" MB/s: the scheme's math alone
// (quant::QuantizeLinear over every quantizable linear weight, from bf16 to packed bytes, best
// of N), in MB of those weights' source bytes. --keep DIR leaves each artifact under DIR/<scheme>.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "hub_sync/quantize/quantize.h"
#include "worker/weights/dequantize.h"
#include "worker/weights/quant_formats.h"
#include "worker/weights/safetensors.h"

namespace shardserve {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

struct Scheme {
  const char* label;
  quant::QuantScheme scheme;
  bool double_quant;
};

// The scheme's math alone over every quantizable linear weight: seconds (best of runs) and the
// source bytes of those weights.
std::pair<double, uint64_t> QuantizeOnly(const SafetensorsCheckpoint& ckpt, const Scheme& s,
                                         const quant::QuantParams& params, int runs) {
  double best = 1e30;
  uint64_t bytes = 0;
  std::vector<float> values;
  for (int r = 0; r < runs; ++r) {
    bytes = 0;
    const auto t0 = Clock::now();
    for (const std::string& name : ckpt.TensorNames()) {
      if (!quant::IsQuantizableLinearName(name)) continue;
      const TensorView view = *ckpt.Get(name);
      if (view.shape.size() != 2) continue;
      auto deq = DequantizeToF32(view);
      if (!deq.ok()) continue;
      auto q = quant::QuantizeLinear(s.scheme, *quant::LinearPrefix(name), *deq, view.shape[0],
                                     view.shape[1], params);
      if (!q.ok()) {
        std::fprintf(stderr, "%s: %s\n", name.c_str(), std::string(q.status().message()).c_str());
        std::exit(1);
      }
      bytes += view.ByteSize();
    }
    best = std::min(best, Seconds(t0, Clock::now()));
  }
  return {best, bytes};
}

int Main(int argc, char** argv) {
  std::string model = "models/SmolLM2-135M-Instruct";
  std::string keep;
  int runs = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--model" && i + 1 < argc) {
      model = argv[++i];
    } else if (arg == "--keep" && i + 1 < argc) {
      keep = argv[++i];
    } else if (arg == "--runs" && i + 1 < argc) {
      if (!absl::SimpleAtoi(argv[++i], &runs) || runs < 1) {
        std::fprintf(stderr, "--runs needs a positive integer\n");
        return 2;
      }
    } else {
      std::fprintf(stderr, "usage: quantize_bench [--model DIR] [--runs N] [--keep DIR]\n");
      return 2;
    }
  }
  auto ckpt = SafetensorsCheckpoint::Open(model);
  if (!ckpt.ok()) {
    std::fprintf(stderr, "%s\n(run scripts/setup.sh to create the default model)\n",
                 std::string(ckpt.status().message()).c_str());
    return 1;
  }
  const fs::path scratch =
      fs::temp_directory_path() / absl::StrFormat("quantize_bench_%d", ::getpid());
  std::printf("model %s, %d run(s) per scheme\n", model.c_str(), runs);
  std::printf("%-8s %10s %12s %9s %9s %10s %16s\n", "scheme", "source_MB", "artifact_MB", "best_s",
              "median_s", "MB/s", "quantize-only");
  const Scheme schemes[] = {{"int8", quant::QuantScheme::kInt8, false},
                            {"int4", quant::QuantScheme::kInt4, false},
                            {"nf4", quant::QuantScheme::kNf4, false},
                            {"nf4-dq", quant::QuantScheme::kNf4, true}};
  for (const Scheme& s : schemes) {
    hub::QuantizeOptions options;
    options.scheme = s.scheme;
    options.nf4_double_quant = s.double_quant;
    std::vector<double> times;
    hub::QuantizeResult last;
    for (int r = 0; r < runs; ++r) {
      const fs::path dest = scratch / absl::StrFormat("%s-%d", s.label, r);
      const auto t0 = Clock::now();
      auto result = hub::QuantizeSnapshot(model, dest.string(), options);
      times.push_back(Seconds(t0, Clock::now()));
      if (!result.ok()) {
        std::fprintf(stderr, "%s: %s\n", s.label, std::string(result.status().message()).c_str());
        fs::remove_all(scratch);
        return 1;
      }
      last = *result;
      if (r == 0 && !keep.empty()) {
        fs::create_directories(keep);
        std::error_code ec;
        fs::remove_all(fs::path(keep) / s.label, ec);
        fs::copy(dest, fs::path(keep) / s.label, fs::copy_options::recursive);
      }
      fs::remove_all(dest);
    }
    std::sort(times.begin(), times.end());
    const double median = times[times.size() / 2];
    quant::QuantParams params;
    params.group_size = s.scheme == quant::QuantScheme::kInt4 ? last.group_size : 128;
    params.double_quant = s.double_quant;
    const auto [qsec, qbytes] = QuantizeOnly(**ckpt, s, params, runs);
    std::printf("%-8s %10.1f %12.1f %9.3f %9.3f %10.1f %11.1f MB/s\n", s.label,
                last.source_bytes / 1e6, last.artifact_bytes / 1e6, times.front(), median,
                last.source_bytes / 1e6 / median, qbytes / 1e6 / qsec);
  }
  fs::remove_all(scratch);
  return 0;
}

}  // namespace
}  // namespace shardserve

int main(int argc, char** argv) { return shardserve::Main(argc, argv); }
