// Between the chat API's messages (shardserve.chat.v1) and the engine's types: request
// validation, the chat template and tokenization on the way in, ChatChunks on the way out, and
// absl::Status -> grpc::Status (the one place the conversion happens).
//
// Pure functions over a loaded model's text side (ModelText): no engine, no threads, so they are
// unit-tested on the real model's tokenizer and template. Thread-safe (ModelText is immutable).
#ifndef SHARDSERVE_WORKER_RPC_CHAT_CONVERSION_H_
#define SHARDSERVE_WORKER_RPC_CHAT_CONVERSION_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/support/status.h"
#include "shardserve/chat/v1/chat.pb.h"
#include "worker/engine/engine.h"
#include "worker/rpc/chat_validation.h"
#include "worker/text/model_text.h"

namespace shardserve {

// What the worker needs beyond the request to prepare it.
struct PrepareOptions {
  std::string served_model_name;  // ChatRequest.model must be this (or empty)
  int64_t context_length = 0;     // the engine's
  int default_max_tokens = 0;     // for max_tokens 0; 0: up to the context length
  // Seed for requests that set none (OpenAI: unseeded requests differ run to run). Called once
  // per unseeded request; injected so tests are deterministic.
  std::function<uint64_t()> random_seed;
};

// Checks `request` (ValidateChatRequest with one choice, then what needs the model) and turns it
// into an engine request (id left empty). Errors name the field:
//   NOT_FOUND         model is not the served one;
//   INVALID_ARGUMENT  messages empty, messages[i].role unspecified or unknown, n not 0 or 1,
//                     more than 16 stop strings or an empty one, top_logprobs > 20 or without
//                     logprobs, a sampling value out of range (ValidateSamplingOptions: the
//                     `sampling.` field), a template that fails on the messages;
//   RESOURCE_EXHAUSTED  is left to Engine::Submit (prompt + max_tokens over the context).
// Sampling defaults for unset fields: temperature 1.0, top_p 1, top_k 0, min_p 0, penalties
// off (OpenAI's and vLLM's defaults when the model ships no generation_config defaults); seed:
// options.random_seed(). The conversation is rendered with the model's chat template
// (add_generation_prompt true unless set) and tokenized without adding special tokens (the
// template already holds them). A raw `prompt` is tokenized with the tokenizer's special tokens
// and no template. max_tokens 0 becomes default_max_tokens, capped at what the
// context leaves after the prompt.
absl::StatusOr<GenerationRequest> PrepareGeneration(const chat::v1::ChatRequest& request,
                                                    const ModelText& text,
                                                    const PrepareOptions& options);

// The text of a token and its raw bytes, as TokenLogprob shows them: `token` is the token
// decoded alone (valid UTF-8, a partial character as U+FFFD), `token_bytes` the bytes it
// contributes to the output (byte-level BPE pieces and <0xNN> byte tokens mapped back).
void FillTokenLogprob(const Tokenizer& tokenizer, int32_t token, float logprob,
                      chat::v1::TokenLogprob* out);

// The chunk for one engine output: delta text, token ids, logprobs (when present),
// finish_reason. usage and timings are filled when the output is the last one (finish set).
// request_id and model are the caller's to set on the first chunk.
chat::v1::ChatChunk ToChatChunk(const GenerationOutput& output, const Tokenizer& tokenizer);

chat::v1::FinishReason ToProtoFinishReason(FinishReason reason);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_RPC_CHAT_CONVERSION_H_
