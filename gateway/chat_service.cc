#include "gateway/chat_service.h"

#include <chrono>
#include <cmath>
#include <deque>
#include <functional>
#include <optional>
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
// all go through State::Pump, which lets one thread at a time drive the stream (start the next
// write, or Finish once everything queued is written), as the worker's GenerateReactor does.
// After Finish the reactor may be deleted (OnDone), so what the callbacks touch lives in a
// shared State and the reactor pointer is used only by the driving thread before finishing.
class GatewayServices::ChatReactor : public grpc::ServerWriteReactor<chatpb::ChatChunk> {
 public:
  ChatReactor(GatewayServices* services, grpc::CallbackServerContext* context)
      : services_(services), context_(context), state_(std::make_shared<State>()) {
    state_->reactor = this;
    state_->retry_after = services_->options_.retry_after;
  }

  void Start(const chatpb::ChatRequest& request) {
    DispatchRequest dispatch;
    dispatch.request = request;
    dispatch.api_key = ApiKeyFromMetadata(context_->client_metadata());
    dispatch.deadline = DeadlineOf(context_);
    dispatch.front = "grpc";
    std::shared_ptr<State> state = state_;
    ChatCallbacks callbacks;
    callbacks.on_chunk = [state](chatpb::ChatChunk chunk) { state->Push(std::move(chunk)); };
    callbacks.on_done = [state](absl::Status status) { state->Done(status); };
    absl::Duration retry_after = absl::ZeroDuration();
    absl::StatusOr<std::shared_ptr<ChatCall>> call =
        services_->dispatcher_->Start(std::move(dispatch), std::move(callbacks), &retry_after);
    if (!call.ok()) {
      {
        absl::MutexLock lock(&state->mu);
        if (retry_after > absl::ZeroDuration()) state->retry_after = retry_after;
        state->finish_status = ToGrpcStatus(call.status());
      }
      state->Pump();
      return;
    }
    bool cancel;
    {
      absl::MutexLock lock(&state->mu);
      state->call = *call;
      cancel = state->broken;  // the client left before Start returned
    }
    if (cancel) (*call)->Cancel();
  }

  void OnWriteDone(bool ok) override {
    std::shared_ptr<ChatCall> call;
    {
      absl::MutexLock lock(&state_->mu);
      state_->writing = false;
      if (!ok) {
        state_->BreakLocked(
            grpc::Status(grpc::StatusCode::CANCELLED, "the client stopped reading the stream"));
        call = state_->call;
      }
    }
    if (call != nullptr) call->Cancel();
    state_->Pump();
  }

  void OnCancel() override {
    std::shared_ptr<ChatCall> call;
    {
      absl::MutexLock lock(&state_->mu);
      state_->BreakLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client"));
      call = state_->call;
    }
    if (call != nullptr) call->Cancel();
    state_->Pump();
  }

  void OnDone() override { delete this; }

 private:
  struct State {
    absl::Mutex mu;
    ChatReactor* reactor = nullptr;  // alive until finished (see the class comment)
    std::shared_ptr<ChatCall> call ABSL_GUARDED_BY(mu);
    std::deque<chatpb::ChatChunk> pending ABSL_GUARDED_BY(mu);
    std::optional<grpc::Status> finish_status ABSL_GUARDED_BY(mu);
    absl::Duration retry_after ABSL_GUARDED_BY(mu);
    bool writing ABSL_GUARDED_BY(mu) = false;
    bool finished ABSL_GUARDED_BY(mu) = false;
    bool broken ABSL_GUARDED_BY(mu) = false;  // cancelled or a write failed: write no more
    chatpb::ChatChunk current;                // the chunk being written (driving thread's)

    void Push(chatpb::ChatChunk chunk) {
      {
        absl::MutexLock lock(&mu);
        if (finished || broken) return;
        if (!pending.empty() && pending.back().index() == chunk.index()) {
          MergeChatChunk(&pending.back(), std::move(chunk));
        } else {
          pending.push_back(std::move(chunk));
        }
      }
      Pump();
    }

    void Done(const absl::Status& status) {
      {
        absl::MutexLock lock(&mu);
        if (!finish_status.has_value()) finish_status = ToGrpcStatus(status);
      }
      Pump();
    }

    void BreakLocked(grpc::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
      broken = true;
      pending.clear();
      if (!finish_status.has_value()) finish_status = std::move(status);
    }

    // Starts the next write or finishes, unless another thread is driving the stream.
    void Pump() {
      ChatReactor* r = nullptr;
      bool write = false, last = false;
      grpc::Status status;
      int retry_seconds = 0;
      {
        absl::MutexLock lock(&mu);
        if (writing || finished) return;
        r = reactor;
        if (!pending.empty() && !broken) {
          current = std::move(pending.front());
          pending.pop_front();
          writing = true;
          write = true;
          last = pending.empty() && finish_status.has_value() && finish_status->ok();
          if (last) finished = true;  // written together with the OK status
          status = last ? *finish_status : grpc::Status::OK;
        } else if (finish_status.has_value()) {
          finished = true;
          status = *finish_status;
          if (CarriesRetryAfter(status.error_code()))
            retry_seconds = RetryAfterSeconds(retry_after);
        } else {
          return;
        }
      }
      if (write && last) {
        r->StartWriteAndFinish(&current, grpc::WriteOptions(), status);
      } else if (write) {
        r->StartWrite(&current);
      } else {
        if (retry_seconds > 0) {
          r->context_->AddTrailingMetadata("retry-after", std::to_string(retry_seconds));
        }
        r->Finish(status);
      }
    }
  };

  GatewayServices* const services_;
  grpc::CallbackServerContext* const context_;
  std::shared_ptr<State> state_;
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
