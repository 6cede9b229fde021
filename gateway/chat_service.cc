#include "gateway/chat_service.h"

#include <chrono>
#include <cmath>
#include <functional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "shardserve/chat/v1/chat.grpc.pb.h"
#include "shardserve/gateway/v1/gateway.grpc.pb.h"
#include "worker/rpc/chat_validation.h"
#include "worker/rpc/chunk_writer.h"

namespace shardserve {

namespace chatpb = ::shardserve::chat::v1;
namespace gatewaypb = ::shardserve::gateway::v1;

namespace {

absl::string_view View(const grpc::string_ref& ref) {
  return absl::string_view(ref.data(), ref.size());
}

absl::Time DeadlineOf(const grpc::CallbackServerContext* context) {
  const auto deadline = context->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(deadline);
}

bool CarriesRetryAfter(grpc::StatusCode code) {
  return code == grpc::StatusCode::RESOURCE_EXHAUSTED || code == grpc::StatusCode::UNAVAILABLE;
}

}  // namespace

std::string ApiKeyFromMetadata(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) {
  for (const auto& [name, value] : metadata) {
    if (View(name) != "authorization") continue;
    absl::string_view text = absl::StripAsciiWhitespace(View(value));
    if (text.size() > 7 && absl::StartsWithIgnoreCase(text, "bearer ")) {
      return std::string(absl::StripAsciiWhitespace(text.substr(7)));
    }
  }
  for (const auto& [name, value] : metadata) {
    if (View(name) == "x-api-key") return std::string(absl::StripAsciiWhitespace(View(value)));
  }
  return "";
}

int RetryAfterSeconds(absl::Duration retry_after) {
  const double seconds = std::ceil(absl::ToDoubleSeconds(retry_after));
  if (!(seconds >= 1)) return 1;
  return seconds > 86400 ? 86400 : static_cast<int>(seconds);
}

// One Chat stream. The dispatcher's callbacks (gRPC client threads), OnWriteDone and OnCancel
// write through a ChunkWriter (worker/rpc/chunk_writer.h), as the worker's reactor does. After
// the stream finishes the reactor may be deleted (OnDone), so what the callbacks and Start touch
// afterwards (the writer, the running call) is shared, never the reactor.
class GatewayServices::ChatReactor : public grpc::ServerWriteReactor<chatpb::ChatChunk> {
 public:
  ChatReactor(GatewayServices* services, grpc::CallbackServerContext* context)
      : services_(services), context_(context), link_(std::make_shared<Link>()) {
    link_->retry_after = services_->options_.retry_after;
    ChunkWriter::Hooks hooks;
    // A refused request's Retry-After travels as trailing metadata (the reactor lives until
    // Finish, which follows this hook).
    hooks.before_finish = [this, link = link_](const grpc::Status& status) {
      if (!CarriesRetryAfter(status.error_code())) return;
      absl::Duration retry_after;
      {
        absl::MutexLock lock(&link->mu);
        retry_after = link->retry_after;
      }
      context_->AddTrailingMetadata("retry-after", std::to_string(RetryAfterSeconds(retry_after)));
    };
    writer_ = std::make_shared<ChunkWriter>(this, std::move(hooks));
  }

  void Start(const chatpb::ChatRequest& request) {
    DispatchRequest dispatch;
    dispatch.request = request;
    dispatch.api_key = ApiKeyFromMetadata(context_->client_metadata());
    dispatch.deadline = DeadlineOf(context_);
    dispatch.front = "grpc";
    std::shared_ptr<ChunkWriter> writer = writer_;
    std::shared_ptr<Link> link = link_;
    ChatCallbacks callbacks;
    callbacks.on_chunk = [writer](chatpb::ChatChunk chunk) { writer->Push(std::move(chunk)); };
    callbacks.on_done = [writer](absl::Status status) { writer->Finish(ToGrpcStatus(status)); };
    absl::Duration retry_after = absl::ZeroDuration();
    absl::StatusOr<std::shared_ptr<ChatCall>> call =
        services_->dispatcher_->Start(std::move(dispatch), std::move(callbacks), &retry_after);
    // From here on only the shared parts: the stream may already have finished.
    if (!call.ok()) {
      if (retry_after > absl::ZeroDuration()) {
        absl::MutexLock lock(&link->mu);
        link->retry_after = retry_after;
      }
      writer->Finish(ToGrpcStatus(call.status()));
      return;
    }
    bool cancel;
    {
      absl::MutexLock lock(&link->mu);
      link->call = *call;
      cancel = link->client_gone;  // the client left before Start returned
    }
    if (cancel) (*call)->Cancel();
  }

  void OnWriteDone(bool ok) override {
    if (!writer_->WriteDone(ok)) CancelCall();
  }

  void OnCancel() override {
    writer_->Break(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client"));
    CancelCall();
    writer_->Pump();
  }

  void OnDone() override { delete this; }

 private:
  // What outlives the reactor: the running call, and the Retry-After of a refusal.
  struct Link {
    absl::Mutex mu;
    std::shared_ptr<ChatCall> call ABSL_GUARDED_BY(mu);
    bool client_gone ABSL_GUARDED_BY(mu) = false;
    absl::Duration retry_after ABSL_GUARDED_BY(mu);
  };

  void CancelCall() {
    std::shared_ptr<ChatCall> call;
    {
      absl::MutexLock lock(&link_->mu);
      link_->client_gone = true;
      call = link_->call;
    }
    if (call != nullptr) call->Cancel();
  }

  GatewayServices* const services_;
  grpc::CallbackServerContext* const context_;
  std::shared_ptr<Link> link_;
  std::shared_ptr<ChunkWriter> writer_;
};

namespace {

// A unary call that needs only the caller's key: UNAUTHENTICATED when it is refused, else `fill`
// writes the response and the call ends OK.
grpc::ServerUnaryReactor* AuthenticatedUnary(Dispatcher* dispatcher,
                                             grpc::CallbackServerContext* context,
                                             const std::function<void()>& fill) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> tenant =
      dispatcher->Authenticate(ApiKeyFromMetadata(context->client_metadata()));
  if (!tenant.ok()) {
    reactor->Finish(ToGrpcStatus(tenant.status()));
    return reactor;
  }
  fill();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace

class GatewayServices::ChatImpl final : public chatpb::Chat::CallbackService {
 public:
  explicit ChatImpl(GatewayServices* services) : services_(services) {}

  grpc::ServerWriteReactor<chatpb::ChatChunk>* Chat(grpc::CallbackServerContext* context,
                                                    const chatpb::ChatRequest* request) override {
    auto* reactor = new ChatReactor(services_, context);
    reactor->Start(*request);
    return reactor;
  }

  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const chatpb::ListModelsRequest* request,
                                       chatpb::ListModelsResponse* response) override {
    return AuthenticatedUnary(services_->dispatcher_, context,
                              [&] { *response = services_->dispatcher_->ListModels(); });
  }

 private:
  GatewayServices* const services_;
};

class GatewayServices::GatewayImpl final : public gatewaypb::Gateway::CallbackService {
 public:
  explicit GatewayImpl(GatewayServices* services) : services_(services) {}

  grpc::ServerUnaryReactor* ClusterStatus(grpc::CallbackServerContext* context,
                                          const gatewaypb::ClusterStatusRequest* request,
                                          gatewaypb::ClusterStatusResponse* response) override {
    return AuthenticatedUnary(services_->dispatcher_, context, [&] {
      *response = services_->dispatcher_->ClusterStatus();
      response->set_version(services_->options_.version);
    });
  }

 private:
  GatewayServices* const services_;
};

GatewayServices::GatewayServices(Dispatcher* dispatcher, GatewayServicesOptions options)
    : dispatcher_(dispatcher),
      options_(std::move(options)),
      chat_impl_(std::make_unique<ChatImpl>(this)),
      gateway_impl_(std::make_unique<GatewayImpl>(this)) {}

GatewayServices::~GatewayServices() = default;

grpc::Service* GatewayServices::chat_service() { return chat_impl_.get(); }
grpc::Service* GatewayServices::gateway_service() { return gateway_impl_.get(); }

}  // namespace shardserve
