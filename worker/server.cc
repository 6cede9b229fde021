#include "worker/server.h"

#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/http_server.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/status_macros.h"
#include "common/stop_signals.h"
#include "grpcpp/grpcpp.h"
#include "worker/engine/engine.h"
#include "worker/engine/model_runner.h"
#include "worker/rpc/health_service.h"
#include "worker/rpc/worker_service.h"
#include "worker/text/model_text.h"
#include "worker/weights/model_weights.h"

namespace shardserve {
namespace {

constexpr const char* kHealthServices[] = {"", "shardserve.worker.v1.Worker",
                                           "shardserve.chat.v1.Chat"};

// "gguf:Q4_1" / "safetensors:bf16": the storage type holding most of the weights' bytes.
std::string Quantization(const ModelWeights& weights) {
  std::map<std::string, size_t> bytes;
  for (const std::string& name : weights.TensorNames()) {
    absl::StatusOr<TensorView> view = weights.View(name);
    if (!view.ok()) continue;
    bytes[std::string(DTypeName(view->dtype))] += view->ByteSize();
  }
  std::string best;
  size_t most = 0;
  for (const auto& [dtype, n] : bytes) {
    if (n > most) best = dtype, most = n;
  }
  if (weights.format() == WeightFormat::kGguf) return absl::StrCat("gguf:", best);
  // A hub_sync artifact: its scheme, whatever dtype holds the most bytes (the BF16 embeddings
  // outweigh SmolLM2's 4-bit layers).
  if (!weights.quantization().empty()) return absl::StrCat("safetensors:", weights.quantization());
  return absl::StrCat("safetensors:", absl::AsciiStrToLower(best));
}

// The engine's metrics: step time and tokens pushed by the engine loop (EngineOptions::on_step),
// the load gauges read from Engine::Stats when /metrics is scraped.
struct EngineMetrics {
  explicit EngineMetrics(MetricsRegistry* registry)
      : step_duration(
            registry->Histogram("shardserve_worker_step_duration_seconds",
                                "Seconds per engine step (one forward pass over the batch)", {},
                                MetricsRegistry::LatencyBuckets())),
        step_tokens(registry->Counter("shardserve_worker_step_tokens_total",
                                      "Tokens run through the model, by phase (prefill, decode)",
                                      {"phase"})),
        running(
            registry->Gauge("shardserve_worker_running_sequences", "Sequences being generated")),
        waiting(registry->Gauge("shardserve_worker_waiting_sequences",
                                "Sequences queued for admission")),
        kv_blocks_used(
            registry->Gauge("shardserve_worker_kv_blocks_used", "KV-cache blocks in use")),
        kv_blocks_total(
            registry->Gauge("shardserve_worker_kv_blocks_total", "KV-cache blocks in total")),
        preemptions(
            registry->Counter("shardserve_worker_preemptions_total",
                              "Sequences evicted from the KV cache to be recomputed later")) {}

  // On the engine thread: three uncontended mutexes per step.
  void OnStep(const StepInfo& step) const {
    step_duration->Observe({}, step.seconds);
    step_tokens->Add({"prefill"}, step.prefill_tokens);
    step_tokens->Add({"decode"}, step.decode_tokens);
  }

  // At scrape; nothing before the model is loaded.
  void Scrape(const WorkerServices& services) const {
    std::optional<EngineStats> stats = services.EngineStatsIfLoaded();
    if (!stats.has_value()) return;
    running->Set({}, stats->running);
    waiting->Set({}, stats->waiting);
    kv_blocks_used->Set({}, stats->kv_blocks_used);
    kv_blocks_total->Set({}, stats->kv_blocks_total);
    preemptions->Set({}, static_cast<double>(stats->preemptions));
  }

  MetricFamily* const step_duration;
  MetricFamily* const step_tokens;
  MetricFamily* const running;
  MetricFamily* const waiting;
  MetricFamily* const kv_blocks_used;
  MetricFamily* const kv_blocks_total;
  MetricFamily* const preemptions;
};

absl::StatusOr<std::unique_ptr<ServedModel>> LoadModel(const WorkerConfig& config,
                                                       const EngineMetrics* metrics) {
  // FinalizeWorkerConfig resolved `model` (a path, or a repo id in the cache) to model_path.
  const std::string& path = config.model_path.empty() ? config.model : config.model_path;
  ASSIGN_OR_RETURN(std::unique_ptr<ModelWeights> opened, ModelWeights::Open(path));
  std::shared_ptr<const ModelWeights> weights = std::move(opened);
  auto model = std::make_unique<ServedModel>();
  if (weights->gguf() != nullptr) {
    ASSIGN_OR_RETURN(model->text, LoadModelTextFromGguf(*weights->gguf()));
  } else {
    ASSIGN_OR_RETURN(model->text, LoadModelText(path));
  }

  RunnerOptions runner_options;
  runner_options.threads = config.threads;
  runner_options.activations =
      config.activations == "f32" ? ActivationMode::kF32 : ActivationMode::kQ8;
  runner_options.kv_dtype = config.kv_dtype == "f32" ? DType::kF32 : DType::kF16;
  runner_options.context_length = config.context_length;
  runner_options.kv_cache_tokens = config.kv_cache_tokens;
  runner_options.max_step_tokens = config.max_step_tokens;
  ASSIGN_OR_RETURN(std::unique_ptr<ModelRunner> runner,
                   ModelRunner::Create(weights, runner_options));
  LogJsonLine({{"event", "memory_plan"}, {"plan", runner->memory_plan().ToString()}});

  model->info.set_id(config.served_model_name);
  model->info.set_context_length(static_cast<uint32_t>(runner->context_length()));
  model->info.set_source(path);
  model->info.set_quantization(Quantization(*weights));
  model->default_max_tokens = config.default_max_tokens;

  EngineOptions engine_options;
  engine_options.max_running = config.max_running;
  engine_options.max_waiting = config.max_waiting;
  engine_options.on_step = [metrics](const StepInfo& step) { metrics->OnStep(step); };
  ASSIGN_OR_RETURN(model->engine, Engine::Create(std::move(runner), model->text.tokenizer.get(),
                                                 model->text.eos_ids, engine_options));
  RETURN_IF_ERROR(model->engine->Start());
  return model;
}

}  // namespace

int RunWorker(const WorkerConfig& config, const std::string& version) {
  // Before any other thread starts, so that every thread inherits the blocked signals.
  StopSignals stop_signals;

  // Declared before everything that records into it.
  MetricsRegistry registry;
  const EngineMetrics engine_metrics(&registry);
  WorkerServicesOptions service_options;
  service_options.served_model_name = config.served_model_name;
  service_options.version = version;
  service_options.metrics = &registry;
  WorkerServices services(service_options);

  // Every service NOT_SERVING from the moment the port opens until the model has loaded and run
  // its warm-up step.
  HealthService health;
  for (const char* name : kHealthServices) health.SetServing(name, false);
  grpc::ServerBuilder builder;
  builder.RegisterService(&health);
  int port = 0;
  builder.AddListeningPort(config.address, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(services.worker_service());
  builder.RegisterService(services.chat_service());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    LogJsonLine({{"event", "error"},
                 {"error", absl::StrCat("address: cannot listen on ", config.address)}});
    return 1;
  }

  // /metrics, /live and /ready from now on (ready once the model serves).
  std::unique_ptr<HttpServer> http;
  if (!config.http_address.empty()) {
    HttpServerOptions http_options;
    http_options.threads = 4;  // scrapes and probes only
    http_options.max_queued_connections = 64;
    http = std::make_unique<HttpServer>(http_options);
    AddProbeRoutes(
        http.get(), &registry, [&] { engine_metrics.Scrape(services); },
        [&services] { return services.Readiness(); });
    if (absl::Status started = http->Start(config.http_address); !started.ok()) {
      LogJsonLine(
          {{"event", "error"}, {"error", absl::StrCat("http_address: ", started.message())}});
      server->Shutdown(std::chrono::system_clock::now());
      server->Wait();
      return 1;
    }
  }

  const std::string host = config.address.substr(0, config.address.rfind(':'));
  std::printf("listening on %s:%d\n", host.c_str(), port);
  if (http != nullptr) std::printf("http listening on %s\n", http->address().c_str());
  std::fflush(stdout);
  nlohmann::json listening = {{"event", "listening"},
                              {"address", absl::StrCat(host, ":", port)},
                              {"model", config.served_model_name},
                              {"version", version}};
  if (http != nullptr) listening["http_address"] = http->address();
  LogJsonLine(listening);

  const absl::Time load_start = absl::Now();
  absl::StatusOr<std::unique_ptr<ServedModel>> model = LoadModel(config, &engine_metrics);
  if (!model.ok()) {
    LogJsonLine({{"event", "error"},
                 {"error", absl::StrCat("model ", config.model, ": ", model.status().ToString())}});
    if (http != nullptr) http->Stop();
    server->Shutdown(std::chrono::system_clock::now());
    server->Wait();
    return 1;
  }
  services.SetServing(model->get());
  for (const char* name : kHealthServices) health.SetServing(name, true);
  std::printf("serving %s\n", config.served_model_name.c_str());
  std::fflush(stdout);
  LogJsonLine({{"event", "serving"},
               {"model", config.served_model_name},
               {"context_length", (*model)->info.context_length()},
               {"quantization", (*model)->info.quantization()},
               {"load_seconds", absl::ToDoubleSeconds(absl::Now() - load_start)}});

  stop_signals.received().WaitForNotification();
  services.SetDraining();
  health.Shutdown();  // NOT_SERVING for every service; Watch streams end
  LogJsonLine({{"event", "draining"}, {"drain_seconds", config.drain_seconds}});
  server->Shutdown(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(config.drain_seconds * 1000)));
  server->Wait();
  server.reset();
  if (http != nullptr) http->Stop();  // its handlers read the engine
  model->reset();                     // stops the engine loop
  LogJsonLine({{"event", "stopped"}});
  return 0;
}

}  // namespace shardserve
