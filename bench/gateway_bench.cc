// What the gateway adds to a streamed request: the same requests (fixed prompt, greedy, N
// tokens) sent to a worker directly and through the gateway, interleaved in one run; plus the
// rate of tiny requests a gateway routes. Starts nothing itself: bench/gateway_bench.sh starts
// the workers and gateways and runs it.
//
//   gateway_bench --worker ADDR --gateway ADDR [--routing-gateway ADDR] [--model NAME]
//                 [--tokens 48] [--rounds 30] [--pairs 30] [--clients 16] [--seconds 5]
//                 [--gateway-pid PID] [--routing-gateway-pid PID]
//
// --gateway must route the model to --worker only (both paths then reach the same worker and do
// the same computation); --routing-gateway (default: --gateway) is the one whose routing rate
// is measured, e.g. a gateway over two workers. Direct requests use worker.v1.Worker/Generate,
// which is what the gateway itself calls, so the worker does the same work on both paths;
// gateway requests use chat.v1.Chat. All times are the client's steady clock.
//
//  1. Per-token added latency, paired. The worker batches concurrent sequences, so if a direct
//     and a gateway request with the same prompt run together, each engine step emits a token of
//     both at the same instant; arrival through the gateway minus arrival direct, for the two
//     tokens of one step, is what the gateway's hop adds to that token, free of decode-time
//     noise. The tokens of one step are found per pair as the token offset that makes the
//     arrival differences small (steps are milliseconds apart). The sequence admitted first is
//     emitted first within a step, which shifts the difference by the emission gap between two
//     sequences; so the leader alternates (the follower is sent once the leader has its first
//     token), and the added latency is the mean of the two conditions' percentiles, in which
//     that shift cancels (it is printed as "batch-order effect"). All tokens but each stream's
//     first count.
//  2. Added time to first token: solo requests, direct and through the gateway alternately. The
//     client's TTFT minus the TTFT the worker reports (the final chunk's timings: arrival at the
//     worker to its first token) is each path's transport overhead; the added TTFT is the
//     difference of their medians (free of the prefill's own variance). The raw client TTFT
//     medians and the inter-arrival percentiles of both paths are printed too.
//  3. Routing rate: `clients` threads send tiny requests (a raw one-word prompt, max_tokens 1)
//     back to back for `seconds` through the routing gateway, then directly to --worker for
//     reference: requests/s, and the gateway's CPU time per request when its pid is given
//     (/proc/PID/stat, minus its idle rate measured just before: health and load probes).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "grpcpp/grpcpp.h"
#include "shardserve/chat/v1/chat.grpc.pb.h"
#include "shardserve/worker/v1/worker.grpc.pb.h"

namespace shardserve {
namespace {

namespace chatpb = ::shardserve::chat::v1;
namespace workerpb = ::shardserve::worker::v1;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string worker;
  std::string gateway;
  std::string routing_gateway;
  std::string model;
  std::string prompt = "Write a short story about a lighthouse keeper.";
  int tokens = 48;
  int rounds = 30;
  int pairs = 30;
  int clients = 16;
  double seconds = 5;
  int gateway_pid = 0;
  int routing_gateway_pid = 0;
};

// One streamed request as the client saw it.
struct Stream {
  bool ok = false;
  std::string error;
  Clock::time_point sent;
  std::vector<Clock::time_point> token_arrival;  // per token id: its chunk's arrival
  std::vector<int32_t> ids;
  double worker_ttft_seconds = 0;  // from the final chunk's timings
};

double Micros(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

// Nearest-rank percentile, p in [0, 100]; NaN for no values.
double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  return v[std::min(v.size() - 1, rank == 0 ? 0 : rank - 1)];
}

// One way to the model: a worker (Worker/Generate) or a gateway (Chat).
struct Path {
  std::unique_ptr<workerpb::Worker::Stub> worker;
  std::unique_ptr<chatpb::Chat::Stub> gateway;
};

std::shared_ptr<grpc::Channel> Connect(const std::string& address) {
  // A connection of its own per channel (no subchannel shared between the two paths).
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

Path MakePath(const std::shared_ptr<grpc::Channel>& channel, bool direct) {
  Path path;
  if (direct) {
    path.worker = std::make_unique<workerpb::Worker::Stub>(channel);
  } else {
    path.gateway = std::make_unique<chatpb::Chat::Stub>(channel);
  }
  return path;
}

// Runs one request to its end. `on_first_token` (may be null) runs when the first token arrives.
Stream RunStream(const Path& path, const chatpb::ChatRequest& request,
                 const std::function<void()>& on_first_token = nullptr) {
  static std::atomic<int64_t> next_id{0};
  Stream s;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));
  workerpb::GenerateRequest generate;
  if (path.worker != nullptr) {
    *generate.mutable_request() = request;
    generate.set_request_id("gateway-bench-" + std::to_string(next_id++));
  }
  s.sent = Clock::now();
  std::unique_ptr<grpc::ClientReader<chatpb::ChatChunk>> reader =
      path.worker != nullptr ? path.worker->Generate(&context, generate)
                             : path.gateway->Chat(&context, request);
  chatpb::ChatChunk chunk;
  while (reader->Read(&chunk)) {
    const Clock::time_point now = Clock::now();
    const bool first = s.ids.empty() && chunk.token_ids_size() > 0;
    for (int32_t id : chunk.token_ids()) {
      s.ids.push_back(id);
      s.token_arrival.push_back(now);
    }
    if (chunk.has_timings()) s.worker_ttft_seconds = chunk.timings().time_to_first_token_seconds();
    if (first && on_first_token) on_first_token();
  }
  const grpc::Status status = reader->Finish();
  s.ok = status.ok() && !s.ids.empty();
  if (!status.ok()) s.error = status.error_message();
  if (s.ids.empty() && on_first_token) on_first_token();  // never leave a follower waiting
  return s;
}

chatpb::ChatRequest ChatRequestFor(const Options& options, int max_tokens) {
  chatpb::ChatRequest request;
  request.set_model(options.model);
  chatpb::Message* m = request.add_messages();
  m->set_role(chatpb::ROLE_USER);
  m->set_content(options.prompt);
  request.mutable_sampling()->set_temperature(0);
  request.set_max_tokens(max_tokens);
  return request;
}

// utime + stime of a process in microseconds (0 when unreadable).
double CpuMicros(int pid) {
  if (pid <= 0) return 0;
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t paren = text.rfind(')');
  if (paren == std::string::npos) return 0;
  std::istringstream fields(text.substr(paren + 2));
  std::string field;
  double ticks = 0;
  for (int i = 3; fields >> field; ++i) {  // field 3 is the state; 14 utime, 15 stime
    if (i == 14 || i == 15) ticks += std::stod(field);
    if (i == 15) break;
  }
  return ticks * 1e6 / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// --- 1. paired per-token latency -------------------------------------------------------------

// Gateway arrival minus direct arrival (µs) for the tokens of one pair that came out of the
// same engine step; empty when the two streams differ or no offset lines them up.
std::vector<double> SameStepDiffs(const Stream& direct, const Stream& gateway) {
  if (direct.ids != gateway.ids) return {};
  const int n = static_cast<int>(direct.ids.size());
  auto diffs = [&](int j) {  // gateway token k with direct token k + j, both past the first
    std::vector<double> d;
    for (int k = 1; k < n; ++k) {
      if (k + j >= 1 && k + j < n) {
        d.push_back(Micros(gateway.token_arrival[k] - direct.token_arrival[k + j]));
      }
    }
    return d;
  };
  int best = 0;
  double best_abs = INFINITY;
  for (int j = -n / 2; j <= n / 2; ++j) {
    std::vector<double> d = diffs(j);
    if (static_cast<int>(d.size()) < std::max(4, n / 3)) continue;
    const double m = std::fabs(Percentile(d, 50));
    if (m < best_abs) {
      best_abs = m;
      best = j;
    }
  }
  // Tokens of one step arrive well within a step of each other; a step takes milliseconds.
  if (!(best_abs < 2000)) return {};
  return diffs(best);
}

struct PairedResult {
  std::vector<double> diffs[2];  // [0]: the direct request led, [1]: the gateway request led
  int unaligned = 0;
};

// Pairs of the same request, one direct and one through the gateway; the leader alternates and
// the follower is sent when the leader's first token arrives.
bool RunPairs(const Path& worker, const Path& gateway, const chatpb::ChatRequest& request,
              int pairs, PairedResult* result) {
  for (int p = 0; p < pairs; ++p) {
    const int leader = p % 2;  // 0: direct leads
    Stream streams[2];         // [0] direct, [1] gateway
    std::promise<void> first_token;
    std::future<void> released = first_token.get_future();
    std::thread follower([&] {
      released.wait();
      streams[1 - leader] = RunStream(1 - leader == 0 ? worker : gateway, request);
    });
    streams[leader] = RunStream(leader == 0 ? worker : gateway, request,
                                [&first_token] { first_token.set_value(); });
    follower.join();
    for (const Stream& s : streams) {
      if (!s.ok) {
        std::fprintf(stderr, "gateway_bench: paired request failed: %s\n", s.error.c_str());
        return false;
      }
    }
    std::vector<double> d = SameStepDiffs(streams[0], streams[1]);
    if (d.empty()) {
      ++result->unaligned;
      continue;
    }
    result->diffs[leader].insert(result->diffs[leader].end(), d.begin(), d.end());
  }
  return true;
}

// --- 3. routing rate -------------------------------------------------------------------------

struct Rate {
  double per_second = 0;
  int64_t ok = 0;
  int64_t failed = 0;
  double cpu_micros_per_request = 0;  // 0: not measured
  std::string first_error;
};

Rate MeasureRate(const std::string& address, bool direct, const Options& options, int pid) {
  std::shared_ptr<grpc::Channel> channel = Connect(address);
  chatpb::ChatRequest request;
  request.set_model(options.model);
  request.set_prompt("Hi");
  request.mutable_sampling()->set_temperature(0);
  request.set_max_tokens(1);
  // The process's CPU rate with no requests (its probes of the workers), to subtract.
  const double idle_from = CpuMicros(pid);
  const Clock::time_point idle_start = Clock::now();
  if (pid > 0) std::this_thread::sleep_for(std::chrono::seconds(1));
  const double idle_rate =
      (CpuMicros(pid) - idle_from) / Micros(Clock::now() - idle_start);  // CPU µs per µs

  std::atomic<int64_t> ok{0}, failed{0};
  std::atomic<bool> stop{false}, have_error{false};
  std::string first_error;
  const double cpu_before = CpuMicros(pid);
  const Clock::time_point start = Clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < options.clients; ++c) {
    threads.emplace_back([&] {
      const Path path = MakePath(channel, direct);
      while (!stop.load(std::memory_order_relaxed)) {
        Stream s = RunStream(path, request);
        if (s.ok) {
          ++ok;
        } else {
          ++failed;
          if (!have_error.exchange(true)) first_error = s.error;
        }
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(options.seconds));
  stop = true;
  for (std::thread& t : threads) t.join();
  const double elapsed_us = Micros(Clock::now() - start);
  Rate rate;
  rate.ok = ok;
  rate.failed = failed;
  rate.per_second = static_cast<double>(rate.ok) / (elapsed_us / 1e6);
  if (pid > 0 && rate.ok > 0) {
    const double busy = CpuMicros(pid) - cpu_before - idle_rate * elapsed_us;
    rate.cpu_micros_per_request = std::max(0.0, busy) / static_cast<double>(rate.ok);
  }
  rate.first_error = first_error;
  return rate;
}

void PrintRate(const char* what, const Rate& rate) {
  std::printf("  %-28s %8.1f requests/s  (%lld ok, %lld failed)", what, rate.per_second,
              static_cast<long long>(rate.ok), static_cast<long long>(rate.failed));
  if (rate.cpu_micros_per_request > 0) {
    std::printf(", gateway CPU %.0f us/request", rate.cpu_micros_per_request);
  }
  std::printf("\n");
  if (!rate.first_error.empty()) std::printf("    first error: %s\n", rate.first_error.c_str());
}

int Run(Options options) {
  if (options.routing_gateway.empty()) options.routing_gateway = options.gateway;
  if (options.routing_gateway_pid == 0 && options.routing_gateway == options.gateway) {
    options.routing_gateway_pid = options.gateway_pid;
  }
  std::shared_ptr<grpc::Channel> worker_channel = Connect(options.worker);
  std::shared_ptr<grpc::Channel> gateway_channel = Connect(options.gateway);
  const Path worker = MakePath(worker_channel, /*direct=*/true);
  const Path gateway = MakePath(gateway_channel, /*direct=*/false);

  if (options.model.empty()) {
    chatpb::Chat::Stub chat(worker_channel);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    chatpb::ListModelsResponse models;
    const grpc::Status status = chat.ListModels(&context, chatpb::ListModelsRequest(), &models);
    if (!status.ok() || models.models().empty()) {
      std::fprintf(stderr, "gateway_bench: ListModels on %s: %s\n", options.worker.c_str(),
                   status.error_message().c_str());
      return 1;
    }
    options.model = models.models(0).id();
  }
  const chatpb::ChatRequest request = ChatRequestFor(options, options.tokens);

  // Warm-up: connections, the gateway's paths, the worker's caches.
  for (int i = 0; i < 3; ++i) {
    for (const Path* path : {&worker, &gateway}) {
      Stream s = RunStream(*path, request);
      if (!s.ok) {
        std::fprintf(stderr, "gateway_bench: warm-up request failed: %s\n", s.error.c_str());
        return 1;
      }
    }
  }

  // 2. Solo requests, alternating which path goes first.
  std::vector<double> ttft[2], overhead[2], inter[2];  // [0] direct, [1] gateway
  for (int r = 0; r < options.rounds; ++r) {
    for (int k = 0; k < 2; ++k) {
      const int path = (r + k) % 2;
      Stream s = RunStream(path == 0 ? worker : gateway, request);
      if (!s.ok) {
        std::fprintf(stderr, "gateway_bench: request failed: %s\n", s.error.c_str());
        return 1;
      }
      const double client_ttft = Micros(s.token_arrival.front() - s.sent);
      ttft[path].push_back(client_ttft);
      overhead[path].push_back(client_ttft - s.worker_ttft_seconds * 1e6);
      for (size_t i = 1; i < s.token_arrival.size(); ++i) {
        if (s.token_arrival[i] != s.token_arrival[i - 1]) {  // one gap per chunk
          inter[path].push_back(Micros(s.token_arrival[i] - s.token_arrival[i - 1]));
        }
      }
    }
  }

  // 1. Pairs.
  PairedResult paired;
  if (!RunPairs(worker, gateway, request, options.pairs, &paired)) return 1;

  // 3. Tiny requests.
  const Rate routed =
      MeasureRate(options.routing_gateway, /*direct=*/false, options, options.routing_gateway_pid);
  const Rate direct_rate = MeasureRate(options.worker, /*direct=*/true, options, 0);

  std::printf("gateway_bench: model %s, %d tokens per request, greedy, prompt \"%s\"\n",
              options.model.c_str(), options.tokens, options.prompt.c_str());
  std::printf("  worker %s, gateway %s, routing gateway %s\n\n", options.worker.c_str(),
              options.gateway.c_str(), options.routing_gateway.c_str());

  const std::vector<double>& d_led = paired.diffs[0];
  const std::vector<double>& g_led = paired.diffs[1];
  const double p50 = (Percentile(d_led, 50) + Percentile(g_led, 50)) / 2;
  const double p99 = (Percentile(d_led, 99) + Percentile(g_led, 99)) / 2;
  std::printf(
      "per-token added latency (same engine step, gateway minus direct; %zu + %zu tokens "
      "from %d pairs, %d not aligned):\n",
      d_led.size(), g_led.size(), options.pairs, paired.unaligned);
  std::printf("  p50 %8.1f us   p99 %8.1f us   (target: p50 <= 50 us)\n", p50, p99);
  std::printf(
      "  direct led: p50 %.1f us, p99 %.1f us; gateway led: p50 %.1f us, p99 %.1f us; "
      "batch-order effect %.1f us\n\n",
      Percentile(d_led, 50), Percentile(d_led, 99), Percentile(g_led, 50), Percentile(g_led, 99),
      (Percentile(d_led, 50) - Percentile(g_led, 50)) / 2);

  const double ttft_d = Percentile(ttft[0], 50), ttft_g = Percentile(ttft[1], 50);
  const double over_d = Percentile(overhead[0], 50), over_g = Percentile(overhead[1], 50);
  std::printf("solo requests, %d of each, alternating:   direct     gateway       added\n",
              options.rounds);
  std::printf("  TTFT p50 (client)                   %9.3f ms %9.3f ms %+9.3f ms\n", ttft_d / 1e3,
              ttft_g / 1e3, (ttft_g - ttft_d) / 1e3);
  std::printf(
      "  TTFT minus the worker's TTFT, p50   %9.3f ms %9.3f ms %+9.3f ms"
      "   (target: added <= 0.5 ms)\n",
      over_d / 1e3, over_g / 1e3, (over_g - over_d) / 1e3);
  for (double p : {50.0, 99.0}) {
    const double d = Percentile(inter[0], p), g = Percentile(inter[1], p);
    std::printf("  inter-token p%-2.0f                     %9.3f ms %9.3f ms %+9.3f ms\n", p,
                d / 1e3, g / 1e3, (g - d) / 1e3);
  }
  std::printf(
      "\ntiny requests (prompt \"Hi\", max_tokens 1), %d concurrent clients, %.0f s each:\n",
      options.clients, options.seconds);
  PrintRate("through the routing gateway", routed);
  PrintRate("directly to one worker", direct_rate);
  return 0;
}

}  // namespace
}  // namespace shardserve

int main(int argc, char** argv) {
  shardserve::Options options;
  CLI::App app{
      "What the gateway adds per streamed token and to the first token, and its routing "
      "rate (see the source's header)"};
  app.add_option("--worker", options.worker, "host:port of a worker (gRPC)")->required();
  app.add_option("--gateway", options.gateway, "host:port of a gateway routing only to --worker")
      ->required();
  app.add_option("--routing-gateway", options.routing_gateway,
                 "host:port of the gateway whose routing rate is measured (default --gateway)");
  app.add_option("--model", options.model, "model name (default: the worker's)");
  app.add_option("--prompt", options.prompt, "user message")->capture_default_str();
  app.add_option("--tokens", options.tokens, "max_tokens of the streamed requests")
      ->capture_default_str();
  app.add_option("--rounds", options.rounds, "solo requests per path")->capture_default_str();
  app.add_option("--pairs", options.pairs, "paired requests")->capture_default_str();
  app.add_option("--clients", options.clients, "concurrent clients for the rate")
      ->capture_default_str();
  app.add_option("--seconds", options.seconds, "seconds per rate measurement")
      ->capture_default_str();
  app.add_option("--gateway-pid", options.gateway_pid, "pid of --gateway (for its CPU time)");
  app.add_option("--routing-gateway-pid", options.routing_gateway_pid,
                 "pid of --routing-gateway (for its CPU time per routed request)");
  CLI11_PARSE(app, argc, argv);
  return shardserve::Run(options);
}
