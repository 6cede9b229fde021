#include "worker/rpc/worker_service.h"

#include <chrono>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "worker/rpc/chat_conversion.h"
#include "worker/rpc/chunk_writer.h"

namespace shardserve {

namespace chatpb = ::shardserve::chat::v1;
namespace workerpb = ::shardserve::worker::v1;

// One Chat / Generate stream. The engine's callback (engine thread), OnWriteDone and OnCancel
// (gRPC threads) write through a ChunkWriter (chunk_writer.h), which the engine callback holds
// by shared_ptr: once the stream has finished the reactor may be deleted, the writer not.
class WorkerServices::GenerateReactor : public grpc::ServerWriteReactor<chatpb::ChatChunk> {
 public:
  GenerateReactor(WorkerServices* services, std::string request_id, std::string tenant)
      : services_(services), request_id_(std::move(request_id)), tenant_(std::move(tenant)) {
    ChunkWriter::Hooks hooks;
    // The first chunk names the request and the model (the reactor lives until Finish).
    hooks.before_first_write = [this](chatpb::ChatChunk* chunk) {
      chunk->set_request_id(request_id_);
      chunk->set_model(model_name_);
    };
    writer_ = std::make_shared<ChunkWriter>(this, std::move(hooks));
  }

  // Validates and submits; on error the stream finishes with it at once.
  void Start(const chatpb::ChatRequest& request, absl::Time deadline) {
    const absl::Time arrival = absl::Now();
    ServedModel* model = nullptr;
    {
      absl::MutexLock lock(&services_->mu_);
      if (services_->draining_) {
        return Reject(absl::UnavailableError("the worker is shutting down"), request);
      }
      model = services_->model_;
    }
    if (model == nullptr) {
      return Reject(absl::UnavailableError("the worker is loading its model"), request);
    }
    model_name_ = model->info.id();
    PrepareOptions prepare;
    prepare.served_model_name = model->info.id();
    prepare.context_length = model->engine->context_length();
    prepare.default_max_tokens = model->default_max_tokens;
    prepare.random_seed = [this] { return services_->Random(); };
    absl::StatusOr<GenerationRequest> generation = PrepareGeneration(request, model->text, prepare);
    if (!generation.ok()) return Reject(generation.status(), request);
    if (deadline <= arrival) {
      return Reject(absl::DeadlineExceededError("the request's deadline has already passed"),
                    request);
    }
    generation->deadline = deadline;
    engine_id_ = absl::StrCat(request_id_, "#", services_->next_engine_id_++);
    generation->id = engine_id_;
    engine_ = model->engine.get();

    std::shared_ptr<ChunkWriter> writer = writer_;
    const Tokenizer* tokenizer = model->text.tokenizer.get();
    const std::string log_model = model_name_, log_id = request_id_, log_tenant = tenant_;
    WorkerServices* services = services_;
    absl::Status submitted = engine_->Submit(
        *std::move(generation), [writer, tokenizer, arrival, log_model, log_id, log_tenant,
                                 services, first_token = true](GenerationOutput output) mutable {
          const RequestMetrics& metrics = services->metrics_;
          if (first_token && !output.token_ids.empty()) {
            first_token = false;
            if (metrics.time_to_first_token != nullptr) {
              metrics.time_to_first_token->Observe({},
                                                   absl::ToDoubleSeconds(absl::Now() - arrival));
            }
          }
          chatpb::ChatChunk chunk = ToChatChunk(output, *tokenizer);
          std::optional<grpc::Status> final_status;
          if (output.finish != FinishReason::kNone) {
            final_status = FinalStatus(output, services->draining());
            if (output.finish == FinishReason::kError &&
                output.error.code() == absl::StatusCode::kDeadlineExceeded) {
              chunk.set_finish_reason(chatpb::FINISH_REASON_CANCELLED);
            }
            services->CountRequest(final_status->error_code());
            if (metrics.duration != nullptr) {
              metrics.duration->Observe({}, absl::ToDoubleSeconds(absl::Now() - arrival));
              metrics.queue->Observe({}, output.timings.queue_seconds);
              metrics.prompt_tokens->Add({}, output.prompt_tokens);
              metrics.generation_tokens->Add({}, output.completion_tokens);
            }
            nlohmann::json line = {
                {"event", "request"},
                {"request_id", log_id},
                {"model", log_model},
                {"prompt_tokens", output.prompt_tokens},
                {"completion_tokens", output.completion_tokens},
                {"finish_reason", FinishReasonName(output.finish)},
                {"ttft_seconds", output.timings.time_to_first_token_seconds},
                {"queue_seconds", output.timings.queue_seconds},
                {"duration_seconds", absl::ToDoubleSeconds(absl::Now() - arrival)},
                {"status", absl::StatusCodeToString(output.error.code())}};
            if (!log_tenant.empty()) line["tenant"] = log_tenant;
            if (!output.error.ok()) line["error"] = std::string(output.error.message());
            LogJsonLine(line);
          }
          writer->Push(std::move(chunk), std::move(final_status));
        });
    if (!submitted.ok()) {
      engine_ = nullptr;
      return Reject(submitted, request);
    }
  }

  void OnWriteDone(bool ok) override {
    if (!writer_->WriteDone(ok)) CancelInEngine();
  }

  void OnCancel() override {
    writer_->Break(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client"));
    CancelInEngine();
    writer_->Pump();
  }

  void OnDone() override { delete this; }

 private:
  static grpc::Status FinalStatus(const GenerationOutput& output, bool draining) {
    switch (output.finish) {
      case FinishReason::kStop:
      case FinishReason::kLength:
        return grpc::Status::OK;
      case FinishReason::kCancelled:
        return draining ? grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                       "the worker shut down before the request finished")
                        : grpc::Status(grpc::StatusCode::CANCELLED, "the request was cancelled");
      case FinishReason::kError:
      case FinishReason::kNone:
        break;
    }
    if (output.error.ok()) return grpc::Status(grpc::StatusCode::INTERNAL, "generation failed");
    return ToGrpcStatus(output.error);
  }

  void Reject(const absl::Status& status, const chatpb::ChatRequest& request) {
    nlohmann::json line = {{"event", "request"},
                           {"request_id", request_id_},
                           {"model", request.model()},
                           {"finish_reason", "rejected"},
                           {"status", absl::StatusCodeToString(status.code())},
                           {"error", std::string(status.message())}};
    if (!tenant_.empty()) line["tenant"] = tenant_;
    LogJsonLine(line);
    services_->CountRequest(static_cast<grpc::StatusCode>(status.code()));
    writer_->Finish(ToGrpcStatus(status));
  }

  void CancelInEngine() {
    if (engine_ != nullptr) engine_->Cancel(engine_id_);
  }

  WorkerServices* const services_;
  const std::string request_id_;
  const std::string tenant_;
  std::string model_name_;
  std::string engine_id_;
  Engine* engine_ = nullptr;  // set once submitted; outlives every stream (see the header)
  std::shared_ptr<ChunkWriter> writer_;
};

class WorkerServices::WorkerImpl final : public workerpb::Worker::CallbackService {
 public:
  explicit WorkerImpl(WorkerServices* services) : services_(services) {}

  grpc::ServerWriteReactor<chatpb::ChatChunk>* Generate(
      grpc::CallbackServerContext* context, const workerpb::GenerateRequest* request) override {
    absl::Time deadline = absl::InfiniteFuture();
    if (request->has_deadline()) {
      deadline = absl::FromUnixSeconds(request->deadline().seconds()) +
                 absl::Nanoseconds(request->deadline().nanos());
    }
    std::string id =
        !request->request_id().empty() ? request->request_id() : request->request().request_id();
    return services_->StartGenerate(context, request->request(), std::move(id), deadline,
                                    request->tenant());
  }

  grpc::ServerUnaryReactor* Status(grpc::CallbackServerContext* context,
                                   const workerpb::StatusRequest* request,
                                   workerpb::StatusResponse* response) override {
    services_->FillStatus(response);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  WorkerServices* const services_;
};

class WorkerServices::ChatImpl final : public chatpb::Chat::CallbackService {
 public:
  explicit ChatImpl(WorkerServices* services) : services_(services) {}

  grpc::ServerWriteReactor<chatpb::ChatChunk>* Chat(grpc::CallbackServerContext* context,
                                                    const chatpb::ChatRequest* request) override {
    return services_->StartGenerate(context, *request, request->request_id(),
                                    absl::InfiniteFuture(), "");
  }

  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const chatpb::ListModelsRequest* request,
                                       chatpb::ListModelsResponse* response) override {
    services_->FillListModels(response);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  WorkerServices* const services_;
};

WorkerServices::WorkerServices(WorkerServicesOptions options)
    : options_(std::move(options)),
      worker_impl_(std::make_unique<WorkerImpl>(this)),
      chat_impl_(std::make_unique<ChatImpl>(this)) {
  if (MetricsRegistry* registry = options_.metrics; registry != nullptr) {
    const std::vector<double> latency = MetricsRegistry::LatencyBuckets();
    metrics_.requests =
        registry->Counter("shardserve_worker_requests_total",
                          "Requests ended, by the gRPC code the stream ended with", {"code"});
    metrics_.time_to_first_token = registry->Histogram(
        "shardserve_worker_time_to_first_token_seconds",
        "Seconds from a request's arrival to its first generated token", {}, latency);
    metrics_.duration = registry->Histogram(
        "shardserve_worker_request_duration_seconds",
        "Seconds from a request's arrival to its last output (requests the engine took)", {},
        latency);
    metrics_.queue = registry->Histogram(
        "shardserve_worker_queue_duration_seconds",
        "Seconds a request waited in the engine before it was admitted", {}, latency);
    metrics_.prompt_tokens = registry->Counter("shardserve_worker_prompt_tokens_total",
                                               "Prompt tokens of the requests that ended");
    metrics_.generation_tokens = registry->Counter("shardserve_worker_generation_tokens_total",
                                                   "Tokens generated for the requests that ended");
  }
  absl::MutexLock lock(&mu_);
  random_ = options_.random;
  if (!random_) {
    auto engine = std::make_shared<std::mt19937_64>(std::random_device{}());
    random_ = [engine] { return (*engine)(); };  // called under mu_
  }
}

WorkerServices::~WorkerServices() = default;

grpc::Service* WorkerServices::worker_service() { return worker_impl_.get(); }
grpc::Service* WorkerServices::chat_service() { return chat_impl_.get(); }

void WorkerServices::SetServing(ServedModel* model) {
  absl::MutexLock lock(&mu_);
  model_ = model;
}

void WorkerServices::SetDraining() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
}

bool WorkerServices::draining() const {
  absl::MutexLock lock(&mu_);
  return draining_;
}

absl::Status WorkerServices::Readiness() const {
  absl::MutexLock lock(&mu_);
  if (draining_) return absl::UnavailableError("shutting down");
  if (model_ == nullptr) return absl::UnavailableError("loading the model");
  return absl::OkStatus();
}

std::optional<EngineStats> WorkerServices::EngineStatsIfLoaded() const {
  absl::MutexLock lock(&mu_);
  if (model_ == nullptr) return std::nullopt;
  return model_->engine->Stats();
}

void WorkerServices::CountRequest(grpc::StatusCode code) {
  if (metrics_.requests == nullptr) return;
  metrics_.requests->Add({absl::StatusCodeToString(static_cast<absl::StatusCode>(code))}, 1);
}

uint64_t WorkerServices::Random() {
  absl::MutexLock lock(&mu_);
  return random_();
}

std::string WorkerServices::NewRequestId() { return absl::StrFormat("req-%016x", Random()); }

grpc::ServerWriteReactor<chatpb::ChatChunk>* WorkerServices::StartGenerate(
    grpc::CallbackServerContext* context, const chatpb::ChatRequest& request,
    std::string request_id, absl::Time deadline, std::string tenant) {
  if (request_id.empty()) request_id = NewRequestId();
  if (context->deadline() != std::chrono::system_clock::time_point::max()) {
    deadline = std::min(deadline, absl::FromChrono(context->deadline()));
  }
  auto* reactor = new GenerateReactor(this, std::move(request_id), std::move(tenant));
  reactor->Start(request, deadline);
  return reactor;
}

void WorkerServices::FillStatus(workerpb::StatusResponse* response) const {
  absl::MutexLock lock(&mu_);
  response->set_world_size(1);
  response->set_backend(options_.backend);
  response->set_version(options_.version);
  if (model_ == nullptr) {
    response->mutable_model()->set_id(options_.served_model_name);
    response->set_state(draining_ ? workerpb::WORKER_STATE_DRAINING
                                  : workerpb::WORKER_STATE_LOADING);
    response->set_message(draining_ ? "shutting down" : "loading the model");
    return;
  }
  *response->mutable_model() = model_->info;
  response->mutable_model()->set_ready_replicas(draining_ ? 0 : 1);
  response->set_state(draining_ ? workerpb::WORKER_STATE_DRAINING : workerpb::WORKER_STATE_SERVING);
  const EngineStats stats = model_->engine->Stats();
  response->set_running_sequences(static_cast<uint32_t>(stats.running));
  response->set_waiting_sequences(static_cast<uint32_t>(stats.waiting));
  response->set_kv_blocks_used(static_cast<uint64_t>(stats.kv_blocks_used));
  response->set_kv_blocks_total(static_cast<uint64_t>(stats.kv_blocks_total));
  response->set_kv_block_tokens(static_cast<uint32_t>(stats.kv_block_tokens));
  response->set_decode_tokens_per_second(stats.decode_tokens_per_second);
  response->set_prefill_tokens_per_second(stats.prefill_tokens_per_second);
  response->set_message(draining_ ? "shutting down" : "serving");
}

void WorkerServices::FillListModels(chatpb::ListModelsResponse* response) const {
  absl::MutexLock lock(&mu_);
  chatpb::ModelInfo* info = response->add_models();
  if (model_ == nullptr) {
    info->set_id(options_.served_model_name);
    return;
  }
  *info = model_->info;
  info->set_ready_replicas(draining_ ? 0 : 1);
}

}  // namespace shardserve
