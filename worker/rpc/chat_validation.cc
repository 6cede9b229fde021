#include "worker/rpc/chat_validation.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace shardserve {

namespace chatpb = ::shardserve::chat::v1;

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

absl::StatusOr<const char*> RoleName(chatpb::Role role, int index) {
  switch (role) {
    case chatpb::ROLE_SYSTEM:
      return "system";
    case chatpb::ROLE_USER:
      return "user";
    case chatpb::ROLE_ASSISTANT:
      return "assistant";
    case chatpb::ROLE_TOOL:
      return "tool";
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "messages[", index, "].role: ",
          role == chatpb::ROLE_UNSPECIFIED ? "unspecified" : absl::StrCat("unknown value ", role),
          " (system, user, assistant or tool)"));
  }
}

absl::StatusOr<SamplingOptions> ToSamplingOptions(const chatpb::ChatRequest& request) {
  const chatpb::SamplingParams& p = request.sampling();
  SamplingOptions s;  // the defaults documented in the header
  if (p.has_temperature()) s.temperature = p.temperature();
  if (p.has_top_p()) s.top_p = p.top_p();
  if (p.has_top_k()) s.top_k = p.top_k();
  if (p.has_min_p()) s.min_p = p.min_p();
  if (p.has_repetition_penalty()) s.repetition_penalty = p.repetition_penalty();
  if (p.has_frequency_penalty()) s.frequency_penalty = p.frequency_penalty();
  if (p.has_presence_penalty()) s.presence_penalty = p.presence_penalty();
  if (p.has_seed()) s.seed = p.seed();
  absl::Status valid = ValidateSamplingOptions(s);
  if (!valid.ok()) {
    return absl::Status(valid.code(), absl::StrCat("sampling.", valid.message()));
  }
  // Checked here, not by the sampler, so the error names the request's own fields.
  if (request.top_logprobs() > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(absl::StrCat("top_logprobs: ", request.top_logprobs(),
                                                   " is out of range [0, ", kMaxTopLogprobs, "]"));
  }
  if (request.top_logprobs() > 0 && !request.logprobs()) {
    return absl::InvalidArgumentError("top_logprobs: requires logprobs to be true");
  }
  s.logprobs = request.logprobs();
  s.top_logprobs = static_cast<int>(request.top_logprobs());
  return s;
}

absl::Status ValidateChatRequest(const chatpb::ChatRequest& request, int max_choices) {
  if (!request.prompt().empty() && !request.messages().empty()) {
    return absl::InvalidArgumentError("prompt: set together with messages; send one or the other");
  }
  if (request.prompt().empty() && request.messages().empty()) {
    return absl::InvalidArgumentError("messages: at least one message is required");
  }
  if (request.n() > static_cast<uint32_t>(max_choices)) {
    return absl::InvalidArgumentError(
        max_choices == 1
            ? absl::StrCat("n: ", request.n(), " choices requested; this worker generates 1")
            : absl::StrCat("n: ", request.n(), " choices requested; at most ", max_choices));
  }
  if (request.stop_size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(
        absl::StrCat("stop: ", request.stop_size(), " strings; at most ", kMaxStopStrings));
  }
  for (int i = 0; i < request.stop_size(); ++i) {
    if (request.stop(i).empty()) {
      return absl::InvalidArgumentError(absl::StrCat("stop[", i, "]: empty string"));
    }
  }
  for (int i = 0; i < request.messages_size(); ++i) {
    RETURN_IF_ERROR(RoleName(request.messages(i).role(), i).status());
  }
  return ToSamplingOptions(request).status();
}

void MergeChatChunk(chatpb::ChatChunk* into, chatpb::ChatChunk&& next) {
  into->mutable_delta()->append(next.delta());
  into->mutable_token_ids()->MergeFrom(next.token_ids());
  for (chatpb::PositionLogprobs& p : *next.mutable_logprobs()) {
    *into->add_logprobs() = std::move(p);
  }
  if (next.finish_reason() != chatpb::FINISH_REASON_UNSPECIFIED) {
    into->set_finish_reason(next.finish_reason());
  }
  if (next.has_usage()) *into->mutable_usage() = next.usage();
  if (next.has_timings()) *into->mutable_timings() = next.timings();
  if (!next.request_id().empty()) into->set_request_id(next.request_id());
  if (!next.model().empty()) into->set_model(next.model());
}

}  // namespace shardserve
