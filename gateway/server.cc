#include "gateway/server.h"

#include <chrono>
#include <cstdio>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/http_server.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/stop_signals.h"
#include "gateway/admission.h"
#include "gateway/chat_service.h"
#include "gateway/dispatcher.h"
#include "gateway/openai/http_front.h"
#include "gateway/worker_pool.h"
#include "grpcpp/grpcpp.h"
#include "worker/rpc/health_service.h"

namespace shardserve {
namespace {

constexpr const char* kHealthServices[] = {"", "shardserve.chat.v1.Chat",
                                           "shardserve.gateway.v1.Gateway"};
// How often the signal wait looks at the pool to update gRPC health.
constexpr absl::Duration kHealthPoll = absl::Milliseconds(200);

absl::Duration Seconds(double s) { return absl::Seconds(s); }

bool AnyModelReady(const WorkerPool& pool) {
  for (const std::string& model : pool.Models()) {
    if (pool.Info(model).ready_replicas() > 0) return true;
  }
  return false;
}

void LogError(const std::string& error) { LogJsonLine({{"event", "error"}, {"error", error}}); }

}  // namespace

int RunGateway(const GatewayConfig& config, const std::string& version) {
  // Before any other thread starts, so that every thread inherits the blocked signals.
  StopSignals stop_signals;

  MetricsRegistry metrics;
  WorkerPoolOptions pool_options;
  pool_options.health_interval = Seconds(config.health_interval_seconds);
  pool_options.status_interval = Seconds(config.status_interval_seconds);
  pool_options.dns_refresh = Seconds(config.dns_refresh_seconds);
  pool_options.connect_timeout = Seconds(config.connect_timeout_seconds);
  absl::StatusOr<std::unique_ptr<WorkerPool>> created_pool =
      WorkerPool::Create(config.models, pool_options, &metrics);
  if (!created_pool.ok()) {
    LogError(absl::StrCat("config: models: ", created_pool.status().ToString()));
    return 1;
  }
  std::unique_ptr<WorkerPool> pool = *std::move(created_pool);
  absl::StatusOr<std::unique_ptr<Admission>> created_admission =
      Admission::Create(config.api_keys, config.tenants, absl::Now());
  if (!created_admission.ok()) {
    LogError(absl::StrCat("config: api_keys / tenants: ", created_admission.status().ToString()));
    return 1;
  }
  std::unique_ptr<Admission> admission = *std::move(created_admission);
  auto dispatcher = std::make_unique<Dispatcher>(config, pool.get(), admission.get(), &metrics);

  GatewayServicesOptions service_options;
  service_options.version = version;
  service_options.retry_after = Seconds(config.retry_after_seconds);
  auto services = std::make_unique<GatewayServices>(dispatcher.get(), service_options);

  // gRPC: NOT_SERVING until a model has a healthy worker.
  HealthService health;
  for (const char* name : kHealthServices) health.SetServing(name, false);
  grpc::ServerBuilder builder;
  int grpc_port = 0;
  builder.AddListeningPort(config.grpc_address, grpc::InsecureServerCredentials(), &grpc_port);
  builder.RegisterService(&health);
  builder.RegisterService(services->chat_service());
  builder.RegisterService(services->gateway_service());
  std::unique_ptr<grpc::Server> grpc_server = builder.BuildAndStart();
  if (grpc_server == nullptr || grpc_port == 0) {
    LogError(absl::StrCat("grpc_address: cannot listen on ", config.grpc_address));
    return 1;
  }

  HttpServerOptions http_options;
  http_options.threads = config.http_threads;
  auto http = std::make_unique<HttpServer>(http_options);
  OpenAiFrontOptions openai_options;
  openai_options.cors_allowed_origins = config.cors_allowed_origins;
  openai_options.default_max_tokens = config.default_max_tokens;
  RegisterOpenAiRoutes(http.get(), dispatcher.get(), openai_options);
  WorkerPool* pool_ptr = pool.get();
  AddProbeRoutes(http.get(), &metrics, nullptr, [pool_ptr] { return pool_ptr->Ready(); });
  if (absl::Status started = http->Start(config.http_address); !started.ok()) {
    LogError(absl::StrCat("http_address: ", started.ToString()));
    grpc_server->Shutdown(std::chrono::system_clock::now());
    grpc_server->Wait();
    return 1;
  }

  std::string grpc_host;
  int ignored_port = 0;
  const std::string grpc_address =
      SplitHostPort(config.grpc_address, &grpc_host, &ignored_port).ok()
          ? JoinHostPort(grpc_host, grpc_port)
          : absl::StrCat(config.grpc_address.substr(0, config.grpc_address.rfind(':')), ":",
                         grpc_port);
  std::printf("grpc listening on %s\n", grpc_address.c_str());
  std::printf("http listening on %s\n", http->address().c_str());
  std::fflush(stdout);
  nlohmann::json models = nlohmann::json::array();
  for (const ModelRoute& route : config.models) {
    models.push_back({{"name", route.name},
                      {"endpoints", route.endpoints},
                      {"dns", route.dns},
                      {"max_queued", route.max_queued}});
  }
  LogJsonLine({{"event", "listening"},
               {"grpc_address", grpc_address},
               {"http_address", http->address()},
               {"models", models},
               {"authentication", admission->authentication_enabled()},
               {"version", version}});

  pool->Start();
  bool serving = false;
  while (!stop_signals.received().WaitForNotificationWithTimeout(kHealthPoll)) {
    const bool ready = AnyModelReady(*pool);
    if (ready != serving) {
      serving = ready;
      for (const char* name : kHealthServices) health.SetServing(name, serving);
      LogJsonLine({{"event", "health"}, {"serving", serving}});
    }
  }

  // Drain: probes and new requests see the gateway going; running requests get drain_seconds.
  health.Shutdown();  // NOT_SERVING for every service; Watch streams end
  dispatcher->SetDraining();
  LogJsonLine({{"event", "draining"},
               {"drain_seconds", config.drain_seconds},
               {"in_flight", dispatcher->in_flight()}});
  const absl::Time drain_end = absl::Now() + Seconds(config.drain_seconds);
  while (dispatcher->in_flight() > 0 && absl::Now() < drain_end) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  const int cancelled = dispatcher->in_flight();
  dispatcher->CancelAll();  // what is left ends with CANCELLED, so handlers can return
  http->Stop();
  http.reset();
  grpc_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  grpc_server->Wait();
  dispatcher.reset();  // waits for the last calls and their worker streams to end
  // The pool's channels go before the gRPC server object: gRPC 1.51's callback API shares one
  // completion queue that the server holds too, and it must not be released last on one of its
  // own threads (a probe callback dropping the last channel), which aborts the process.
  pool.reset();
  grpc_server.reset();
  services.reset();
  LogJsonLine({{"event", "stopped"}, {"cancelled_requests", cancelled}});
  return 0;
}

}  // namespace shardserve
