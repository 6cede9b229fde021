// `shardserve chat`: a gRPC client of shardserve.chat.v1.Chat (a worker now, the gateway later).
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "cli/commands.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "shardserve/chat/v1/chat.grpc.pb.h"

namespace shardserve::cli {
namespace {

namespace chatpb = ::shardserve::chat::v1;
namespace healthpb = ::grpc::health::v1;

int PrintError(const std::string& what, const grpc::Status& status) {
  std::fprintf(stderr, "shardserve chat: %s: %s: %s\n", what.c_str(),
               absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())).c_str(),
               status.error_message().c_str());
  return 1;
}

std::chrono::system_clock::time_point After(double seconds) {
  return std::chrono::system_clock::now() +
         std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

// Waits until the target's Chat service reports SERVING: Health.Watch streams each change, so
// nothing polls. DEADLINE_EXCEEDED when it does not within `seconds`.
grpc::Status WaitUntilServing(const std::shared_ptr<grpc::Channel>& channel, double seconds) {
  healthpb::Health::Stub health(channel);
  grpc::ClientContext context;
  context.set_deadline(After(seconds));
  context.set_wait_for_ready(true);  // also wait for the server to come up
  healthpb::HealthCheckRequest request;
  request.set_service("shardserve.chat.v1.Chat");
  std::unique_ptr<grpc::ClientReader<healthpb::HealthCheckResponse>> reader =
      health.Watch(&context, request);
  healthpb::HealthCheckResponse response;
  while (reader->Read(&response)) {
    if (response.status() == healthpb::HealthCheckResponse::SERVING) {
      context.TryCancel();
      reader->Finish();
      return grpc::Status::OK;
    }
  }
  grpc::Status status = reader->Finish();
  if (status.ok()) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "health watch ended");
  return status;
}

// Streams one reply to stdout; returns the reply's text through `reply`.
grpc::Status StreamReply(chatpb::Chat::Stub& stub, const chatpb::ChatRequest& request,
                         const std::string& api_key, std::string* reply) {
  grpc::ClientContext context;
  if (!api_key.empty()) context.AddMetadata("authorization", "Bearer " + api_key);
  std::unique_ptr<grpc::ClientReader<chatpb::ChatChunk>> reader = stub.Chat(&context, request);
  chatpb::ChatChunk chunk;
  chatpb::ChatChunk last;
  while (reader->Read(&chunk)) {
    std::fwrite(chunk.delta().data(), 1, chunk.delta().size(), stdout);
    std::fflush(stdout);
    reply->append(chunk.delta());
    if (chunk.has_usage()) last = chunk;
  }
  if (!reply->empty()) std::fputc('\n', stdout);
  std::fflush(stdout);
  grpc::Status status = reader->Finish();
  if (status.ok() && last.has_usage()) {
    const double decode = last.timings().decode_seconds();
    const uint32_t completion = last.usage().completion_tokens();
    std::fprintf(
        stderr, "[%s: %u prompt + %u completion tokens, first token after %.2f s, %.1f tokens/s]\n",
        chatpb::FinishReason_Name(last.finish_reason()).c_str(), last.usage().prompt_tokens(),
        completion, last.timings().time_to_first_token_seconds(),
        decode > 0 && completion > 1 ? (completion - 1) / decode : 0.0);
  }
  return status;
}

}  // namespace

int RunChat(const ChatOptions& options) {
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateChannel(options.target, grpc::InsecureChannelCredentials());
  if (options.wait_seconds > 0) {
    grpc::Status status = WaitUntilServing(channel, options.wait_seconds);
    if (!status.ok()) return PrintError("waiting for " + options.target + " to serve", status);
  }
  chatpb::Chat::Stub stub(channel);

  std::string model = options.model;
  if (model.empty()) {
    grpc::ClientContext context;
    context.set_deadline(After(30));
    if (!options.api_key.empty()) context.AddMetadata("authorization", "Bearer " + options.api_key);
    chatpb::ListModelsResponse models;
    grpc::Status status = stub.ListModels(&context, chatpb::ListModelsRequest(), &models);
    if (!status.ok()) return PrintError("ListModels on " + options.target, status);
    if (models.models().empty()) {
      std::fprintf(stderr, "shardserve chat: %s serves no model\n", options.target.c_str());
      return 1;
    }
    model = models.models(0).id();
  }

  chatpb::ChatRequest request;
  request.set_model(model);
  if (options.max_tokens > 0) request.set_max_tokens(static_cast<uint32_t>(options.max_tokens));
  if (options.temperature >= 0) request.mutable_sampling()->set_temperature(options.temperature);
  if (options.seed >= 0) request.mutable_sampling()->set_seed(static_cast<uint64_t>(options.seed));
  if (!options.system.empty()) {
    chatpb::Message* m = request.add_messages();
    m->set_role(chatpb::ROLE_SYSTEM);
    m->set_content(options.system);
  }

  auto ask = [&](const std::string& prompt) -> bool {
    chatpb::Message* m = request.add_messages();
    m->set_role(chatpb::ROLE_USER);
    m->set_content(prompt);
    std::string reply;
    grpc::Status status = StreamReply(stub, request, options.api_key, &reply);
    if (!status.ok()) {
      PrintError("Chat on " + options.target, status);
      return false;
    }
    chatpb::Message* answer = request.add_messages();
    answer->set_role(chatpb::ROLE_ASSISTANT);
    answer->set_content(reply);
    return true;
  };

  if (!options.prompt.empty()) return ask(options.prompt) ? 0 : 1;

  // Interactive: one user turn per line, the conversation kept; an empty line or EOF ends.
  std::fprintf(stderr, "chatting with %s on %s (empty line or Ctrl-D ends)\n", model.c_str(),
               options.target.c_str());
  std::string line;
  while (true) {
    std::fputs("> ", stderr);
    std::fflush(stderr);
    if (!std::getline(std::cin, line) || line.empty()) break;
    if (!ask(line)) return 1;
  }
  return 0;
}

}  // namespace shardserve::cli
