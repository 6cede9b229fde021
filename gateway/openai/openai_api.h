// OpenAI's HTTP API, as JSON, to and from the chat protocol (shardserve.chat.v1): request bodies
// of /v1/chat/completions and /v1/completions become ChatRequests; the ChatChunks of a request
// become chat.completion / text_completion responses, their streamed chunk objects, and
// /v1/models listings; statuses become OpenAI's error objects and HTTP codes.
//
// Pure functions and small single-threaded state classes: no sockets, no clock (times are passed
// in), so every mapping is unit-tested on its own. The HTTP side is http_front.h.
//
// Requests: unknown fields are ignored (as OpenAI does), and `null` counts as absent. Known fields
// are read with their types checked; a wrong type, a value out of the field's domain, or a
// feature this server does not have (image parts, tools, echo, ...) is INVALID_ARGUMENT whose
// message starts with the field's path ("messages[1].content[0].type: ..."), which becomes the
// error's `param`. Value ranges the worker checks (temperature, top_p, n, stop count, ...) are
// left to ValidateChatRequest, which the dispatcher runs, with the same field names.
#ifndef SHARDSERVE_GATEWAY_OPENAI_OPENAI_API_H_
#define SHARDSERVE_GATEWAY_OPENAI_OPENAI_API_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "shardserve/chat/v1/chat.pb.h"

namespace shardserve::openai {

// Which OpenAI endpoint a request or response belongs to.
enum class Endpoint {
  kChatCompletions,  // POST /v1/chat/completions: chat.completion(.chunk)
  kCompletions,      // POST /v1/completions: text_completion
};

// A parsed request body.
struct ParsedRequest {
  chat::v1::ChatRequest request;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
};

// POST /v1/chat/completions. Reads: model (required), messages (required, non-empty; role
// system / developer (-> system) / user / assistant / tool, content a string, null, or an array
// of {"type": "text", "text": ...} parts joined with "\n", name), max_completion_tokens (wins) or
// max_tokens (>= 1), n (>= 1), stop (string or array of strings), seed (any 64-bit integer;
// negative ones wrap), temperature, top_p, presence_penalty, frequency_penalty, logprobs (bool),
// top_logprobs (>= 0), user, stream, stream_options.include_usage, and vLLM's top_k (-1 = off),
// min_p, repetition_penalty, add_generation_prompt. Rejected as unsupported: non-text content
// parts, non-empty tools / functions / logit_bias, response_format other than text.
absl::StatusOr<ParsedRequest> ParseChatCompletionRequest(absl::string_view body);

// POST /v1/completions. As above but with `prompt` (required: a non-empty string, or an array of
// exactly one such string; several prompts or token-id arrays are rejected) instead of messages,
// and logprobs an integer >= 0 (logprobs = true, top_logprobs = the value). Rejected as
// unsupported: echo true, a non-empty suffix, best_of > 1.
absl::StatusOr<ParsedRequest> ParseCompletionRequest(absl::string_view body);

// An error as OpenAI reports it. Empty param / code are JSON null.
struct OpenAiError {
  int http_status = 500;
  std::string message;
  std::string type;   // "invalid_request_error", "requests" / "tokens" (429), "server_error"
  std::string param;  // the offending request field, when known
  std::string code;   // "invalid_api_key", "model_not_found", "rate_limit_exceeded", ...
};

// Maps a status of the gateway (parse errors, Dispatcher::Start, on_done) to OpenAI's error:
//   INVALID_ARGUMENT    400 invalid_request_error, param = the message's leading field path
//                       ("sampling." dropped: the OpenAI field is top-level);
//   NOT_FOUND           404 invalid_request_error, param "model", code "model_not_found";
//   UNAUTHENTICATED     401 invalid_request_error, code "invalid_api_key";
//   PERMISSION_DENIED   403 invalid_request_error, code "permission_denied";
//   RESOURCE_EXHAUSTED  429 type "tokens" (a tokens-per-minute limit) or "requests", code
//                       "rate_limit_exceeded"; except prompt + max_tokens over the model's
//                       context or KV cache (the worker's "exceeds the context length" /
//                       "exceeds the KV cache"): 400 invalid_request_error, param "messages",
//                       code "context_length_exceeded" (not retryable, so no 429);
//   UNAVAILABLE         503 server_error, code "service_unavailable";
//   DEADLINE_EXCEEDED   504 server_error, code "timeout";
//   CANCELLED           499 (nginx's "client closed request") invalid_request_error, "cancelled";
//   anything else       500 server_error.
// `status` must not be OK (an OK status maps to 500 "internal error: OK status").
OpenAiError ErrorFromStatus(const absl::Status& status);

// {"error": {"message", "type", "param", "code"}}.
nlohmann::json ErrorJson(const OpenAiError& error);

// Retry-After in whole seconds, rounded up, at least 1.
int64_t RetryAfterSeconds(absl::Duration retry_after);

// What every response object of one request shares.
struct ResponseMeta {
  std::string request_id;  // id = "chatcmpl-" / "cmpl-" + request_id
  std::string model;
  int64_t created = 0;  // Unix seconds
};

// "stop", "length", or null (unspecified). CANCELLED and ERROR never reach a response (they end
// the request with an error instead), and map to null too.
nlohmann::json FinishReasonJson(chat::v1::FinishReason reason);

// The logprobs object of a chat choice: {"content": [{token, logprob, bytes, top_logprobs:
// [{token, logprob, bytes}]}]}. Non-finite logprobs become -9999.0, as OpenAI reports them.
nlohmann::json ChatLogprobsJson(const std::vector<chat::v1::PositionLogprobs>& positions);

// The legacy logprobs object of a completion choice: {tokens, token_logprobs, top_logprobs
// (one {token: logprob} object per position), text_offset}. `text_offset` is the byte offset of
// each token in the choice's text, counting from `offset` (the bytes before these positions);
// a token's length is its token_bytes (its token text when token_bytes is empty).
nlohmann::json CompletionLogprobsJson(const std::vector<chat::v1::PositionLogprobs>& positions,
                                      int64_t offset);

// Collects the chunks of one request into the non-streaming response. Choices are kept by
// ChatChunk.index (n > 1 interleaves them); usage is taken from the chunk that carries it.
// Single-threaded.
class ChatAccumulator {
 public:
  // Adds one chunk. A finish_reason of CANCELLED or ERROR is not an answer: CANCELLED /
  // INTERNAL naming the choice (the stream's own status, from on_done, says more and should be
  // preferred). INVALID_ARGUMENT for an index above kMaxChoices.
  absl::Status Add(chat::v1::ChatChunk chunk);

  // The model named by the first chunk that names one ("" if none did).
  const std::string& model() const { return model_; }

  // {"id": "chatcmpl-ID", "object": "chat.completion", created, model, system_fingerprint,
  // "choices": [{index, "message": {"role": "assistant", content}, logprobs (or null),
  // finish_reason}], "usage": {prompt_tokens, completion_tokens, total_tokens}}. `logprobs`
  // says whether they were requested (null otherwise).
  nlohmann::json ChatCompletion(const ResponseMeta& meta, bool logprobs) const;

  // {"id": "cmpl-ID", "object": "text_completion", created, model, system_fingerprint,
  // "choices": [{index, text, logprobs (legacy shape or null), finish_reason}], usage}.
  nlohmann::json TextCompletion(const ResponseMeta& meta, bool logprobs) const;

 private:
  struct Choice {
    std::string text;
    std::vector<chat::v1::PositionLogprobs> logprobs;
    chat::v1::FinishReason finish = chat::v1::FINISH_REASON_UNSPECIFIED;
  };
  std::map<uint32_t, Choice> choices_;
  chat::v1::Usage usage_;
  std::string model_;
};

// Turns the chunks of one streamed request into the JSON objects to send as SSE `data:` events,
// in order. Single-threaded; one per request.
//
// Chat: the first chunk of each choice is preceded by {"delta": {"role": "assistant",
// "content": ""}}; text (and logprobs) go out as {"delta": {"content": ...}}; a choice's finish
// is its own chunk with an empty delta and the finish_reason. With include_usage every chunk has
// "usage": null and Finish() adds one last chunk with "choices": [] and the usage.
// Completions: {"choices": [{index, text, logprobs, finish_reason}]} likewise (no role chunk;
// the finish chunk has text "").
class StreamEncoder {
 public:
  StreamEncoder(Endpoint endpoint, ResponseMeta meta, bool include_usage, bool logprobs);

  // The events for `chunk` (possibly none). A CANCELLED / ERROR finish is an error as in
  // ChatAccumulator::Add.
  absl::StatusOr<std::vector<nlohmann::json>> Encode(const chat::v1::ChatChunk& chunk);

  // The events after the last chunk, when the stream ended OK (the usage chunk, if asked for).
  std::vector<nlohmann::json> Finish();

 private:
  nlohmann::json Envelope() const;
  nlohmann::json ChatChoice(uint32_t index, nlohmann::json delta,
                            const chat::v1::ChatChunk* logprobs_from,
                            chat::v1::FinishReason finish) const;
  nlohmann::json CompletionChoice(uint32_t index, const std::string& text,
                                  const chat::v1::ChatChunk* logprobs_from,
                                  chat::v1::FinishReason finish);

  Endpoint endpoint_;
  ResponseMeta meta_;
  bool include_usage_;
  bool logprobs_;
  std::map<uint32_t, int64_t> text_bytes_;  // per choice: started, and bytes sent so far
  chat::v1::Usage usage_;
};

// "data: <json>\n\n", one server-sent event.
std::string SseEvent(const nlohmann::json& data);
// The stream's last event after a normal end.
inline constexpr char kSseDone[] = "data: [DONE]\n\n";

// One model of /v1/models: {id, "object": "model", created, "owned_by": "shardserve"}, plus
// vLLM's max_model_len when the context length is known.
nlohmann::json ModelJson(const chat::v1::ModelInfo& model, int64_t created);
// GET /v1/models: {"object": "list", "data": [ModelJson...]}.
nlohmann::json ModelListJson(const chat::v1::ListModelsResponse& models, int64_t created);

}  // namespace shardserve::openai

#endif  // SHARDSERVE_GATEWAY_OPENAI_OPENAI_API_H_
