// The chat protocol's request rules and stream helpers, shared by the worker and the gateway
// (which checks requests at the edge with exactly the worker's rules and codes, before it picks
// a worker). Needs no model: pure functions over the messages.
#ifndef SHARDSERVE_WORKER_RPC_CHAT_VALIDATION_H_
#define SHARDSERVE_WORKER_RPC_CHAT_VALIDATION_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/support/status.h"
#include "shardserve/chat/v1/chat.pb.h"
#include "worker/engine/sampler.h"

namespace shardserve {

inline constexpr int kMaxStopStrings = 16;
inline constexpr int kMaxTopLogprobs = 20;
inline constexpr int kMaxChoices = 16;

// absl::Status -> grpc::Status: same code (abseil's codes are gRPC's), same message.
grpc::Status ToGrpcStatus(const absl::Status& status);
// grpc::Status -> absl::Status, the other way.
absl::Status FromGrpcStatus(const grpc::Status& status);

// Checks everything about `request` that needs no model. INVALID_ARGUMENT naming the field:
//   messages empty (and no prompt), or both messages and prompt set;
//   messages[i].role unspecified or unknown;
//   n above `max_choices` (the worker generates 1; the gateway fans out up to kMaxChoices);
//   more than kMaxStopStrings stop strings or an empty one;
//   top_logprobs > kMaxTopLogprobs or set without logprobs;
//   a sampling value out of range (ValidateSamplingOptions, named `sampling.FIELD`).
absl::Status ValidateChatRequest(const chat::v1::ChatRequest& request, int max_choices);

// The request's sampling fields over the defaults (temperature 1, top_p 1, top_k 0, min_p 0,
// penalties off; seed 0 when unset), validated as above. logprobs / top_logprobs copied.
absl::StatusOr<SamplingOptions> ToSamplingOptions(const chat::v1::ChatRequest& request);

// The role's name as chat templates know it ("system", "user", "assistant", "tool");
// INVALID_ARGUMENT naming messages[index].role otherwise.
absl::StatusOr<const char*> RoleName(chat::v1::Role role, int index);

// Appends `next` onto `into` (the chunks of one stream coalesced into one write): delta text
// and ids and logprobs appended, finish/usage/timings taken from `next` when set there.
void MergeChatChunk(chat::v1::ChatChunk* into, chat::v1::ChatChunk&& next);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_RPC_CHAT_VALIDATION_H_
