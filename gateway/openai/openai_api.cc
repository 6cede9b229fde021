#include "gateway/openai/openai_api.h"

#include <cfloat>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/json.h"
#include "common/status_macros.h"
#include "worker/rpc/chat_validation.h"

namespace shardserve::openai {

namespace chatpb = ::shardserve::chat::v1;
using json = nlohmann::json;

namespace {

constexpr char kSystemFingerprint[] = "fp_shardserve";

absl::Status Invalid(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
}

const char* Describe(const json& value) {
  switch (value.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::string:
      return "a string";
    case json::value_t::array:
      return "an array";
    case json::value_t::object:
      return "an object";
    case json::value_t::number_float:
      return "a non-integer number";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "an integer";
    default:
      return "an unsupported value";
  }
}

absl::Status WrongType(absl::string_view field, absl::string_view expected, const json& got) {
  return Invalid(field, absl::StrCat("expected ", expected, ", got ", Describe(got)));
}

// The member `key` of `object`, or nullptr when it is absent or null (OpenAI treats null as
// absent).
const json* Member(const json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::Status ReadBool(const json& value, absl::string_view field, bool* out) {
  if (!value.is_boolean()) return WrongType(field, "a boolean", value);
  *out = value.get<bool>();
  return absl::OkStatus();
}

absl::Status ReadString(const json& value, absl::string_view field, std::string* out) {
  if (!value.is_string()) return WrongType(field, "a string", value);
  *out = value.get<std::string>();
  return absl::OkStatus();
}

// A number that fits a float (the protocol's type).
absl::Status ReadFloat(const json& value, absl::string_view field, float* out) {
  if (!value.is_number()) return WrongType(field, "a number", value);
  const double d = value.get<double>();
  if (!std::isfinite(d) || std::fabs(d) > FLT_MAX) return Invalid(field, "number out of range");
  *out = static_cast<float>(d);
  return absl::OkStatus();
}

// An integer in [min, max]; a number with an integral value (2.0) counts, as pydantic's lax mode
// (OpenAI's server) accepts it.
absl::Status ReadInt(const json& value, absl::string_view field, int64_t min, int64_t max,
                     int64_t* out) {
  int64_t v = 0;
  if (value.is_number_unsigned()) {
    const uint64_t u = value.get<uint64_t>();
    if (u > static_cast<uint64_t>(max)) {
      return Invalid(field, absl::StrCat(u, " is out of range [", min, ", ", max, "]"));
    }
    v = static_cast<int64_t>(u);
  } else if (value.is_number_integer()) {
    v = value.get<int64_t>();
  } else if (value.is_number_float()) {
    const double d = value.get<double>();
    // 2^63 bounds what converts to int64 without undefined behaviour.
    if (!(std::floor(d) == d && d >= -9.2e18 && d <= 9.2e18)) {
      return WrongType(field, "an integer", value);
    }
    v = static_cast<int64_t>(d);
  } else {
    return WrongType(field, "an integer", value);
  }
  if (v < min || v > max) {
    return Invalid(field, absl::StrCat(v, " is out of range [", min, ", ", max, "]"));
  }
  *out = v;
  return absl::OkStatus();
}

// Any 64-bit integer, signed or not (negative seeds wrap to their two's complement).
absl::Status ReadSeed(const json& value, absl::string_view field, uint64_t* out) {
  if (value.is_number_unsigned()) {
    *out = value.get<uint64_t>();
  } else if (value.is_number_integer()) {
    *out = static_cast<uint64_t>(value.get<int64_t>());
  } else if (value.is_number_float()) {
    const double d = value.get<double>();
    if (!(std::floor(d) == d && d >= -9.2e18 && d <= 1.8e19)) {
      return WrongType(field, "a 64-bit integer", value);
    }
    *out = d < 0 ? static_cast<uint64_t>(static_cast<int64_t>(d)) : static_cast<uint64_t>(d);
  } else {
    return WrongType(field, "an integer", value);
  }
  return absl::OkStatus();
}

constexpr int64_t kMaxUint32 = std::numeric_limits<uint32_t>::max();
constexpr int64_t kMaxInt32 = std::numeric_limits<int32_t>::max();

// A message's content: a string, null (an assistant turn that only called tools), or an array
// of content parts of which only text parts are supported.
absl::Status ReadContent(const json& content, const std::string& field, std::string* out) {
  out->clear();
  if (content.is_null()) return absl::OkStatus();
  if (content.is_string()) return ReadString(content, field, out);
  if (!content.is_array()) {
    return WrongType(field, "a string or an array of content parts", content);
  }
  std::vector<std::string> texts;
  for (size_t i = 0; i < content.size(); ++i) {
    const json& part = content[i];
    const std::string part_field = absl::StrCat(field, "[", i, "]");
    if (!part.is_object()) return WrongType(part_field, "a content part object", part);
    const json* type = Member(part, "type");
    if (type == nullptr) return Invalid(absl::StrCat(part_field, ".type"), "required");
    std::string type_name;
    RETURN_IF_ERROR(ReadString(*type, absl::StrCat(part_field, ".type"), &type_name));
    if (type_name != "text") {
      return Invalid(absl::StrCat(part_field, ".type"),
                     absl::StrCat("'", type_name, "' parts are not supported (text only)"));
    }
    const json* text = Member(part, "text");
    if (text == nullptr) return Invalid(absl::StrCat(part_field, ".text"), "required");
    std::string t;
    RETURN_IF_ERROR(ReadString(*text, absl::StrCat(part_field, ".text"), &t));
    texts.push_back(std::move(t));
  }
  *out = absl::StrJoin(texts, "\n");
  return absl::OkStatus();
}

absl::Status ReadMessages(const json& body, chatpb::ChatRequest* request) {
  const json* messages = Member(body, "messages");
  if (messages == nullptr) return Invalid("messages", "required");
  if (!messages->is_array()) return WrongType("messages", "an array of messages", *messages);
  if (messages->empty()) return Invalid("messages", "at least one message is required");
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string field = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return WrongType(field, "a message object", m);
    chatpb::Message* out = request->add_messages();

    const json* role = Member(m, "role");
    if (role == nullptr) return Invalid(absl::StrCat(field, ".role"), "required");
    std::string role_name;
    RETURN_IF_ERROR(ReadString(*role, absl::StrCat(field, ".role"), &role_name));
    if (role_name == "system" || role_name == "developer") {
      out->set_role(chatpb::ROLE_SYSTEM);
    } else if (role_name == "user") {
      out->set_role(chatpb::ROLE_USER);
    } else if (role_name == "assistant") {
      out->set_role(chatpb::ROLE_ASSISTANT);
    } else if (role_name == "tool") {
      out->set_role(chatpb::ROLE_TOOL);
    } else {
      return Invalid(
          absl::StrCat(field, ".role"),
          absl::StrCat("'", role_name, "' is not one of system, developer, user, assistant, tool"));
    }

    auto content = m.find("content");
    if (content == m.end()) return Invalid(absl::StrCat(field, ".content"), "required");
    RETURN_IF_ERROR(ReadContent(*content, absl::StrCat(field, ".content"), out->mutable_content()));

    if (const json* name = Member(m, "name")) {
      RETURN_IF_ERROR(ReadString(*name, absl::StrCat(field, ".name"), out->mutable_name()));
    }
  }
  return absl::OkStatus();
}

absl::Status ReadPrompt(const json& body, chatpb::ChatRequest* request) {
  const json* prompt = Member(body, "prompt");
  if (prompt == nullptr) return Invalid("prompt", "required");
  std::string text;
  if (prompt->is_string()) {
    text = prompt->get<std::string>();
  } else if (prompt->is_array()) {
    if (prompt->empty()) return Invalid("prompt", "empty array; send one prompt string");
    for (const json& item : *prompt) {
      if (!item.is_string()) {
        return Invalid("prompt", "token-id prompts are not supported; send the prompt as text");
      }
    }
    if (prompt->size() > 1) {
      return Invalid("prompt", absl::StrCat(prompt->size(),
                                            " prompts given; only one prompt per request is "
                                            "supported (send one request per prompt)"));
    }
    text = (*prompt)[0].get<std::string>();
  } else {
    return WrongType("prompt", "a string", *prompt);
  }
  if (text.empty()) return Invalid("prompt", "must not be empty");
  request->set_prompt(std::move(text));
  return absl::OkStatus();
}

// The fields both endpoints share.
absl::Status ReadCommon(const json& body, ParsedRequest* parsed) {
  chatpb::ChatRequest* request = &parsed->request;
  chatpb::SamplingParams* sampling = request->mutable_sampling();

  const json* model = Member(body, "model");
  if (model == nullptr) return Invalid("model", "required");
  RETURN_IF_ERROR(ReadString(*model, "model", request->mutable_model()));
  if (request->model().empty()) return Invalid("model", "must not be empty");

  // max_completion_tokens is the current name; max_tokens the deprecated one. Either must leave
  // room for one token.
  int64_t max_tokens = 0;
  if (const json* v = Member(body, "max_completion_tokens")) {
    RETURN_IF_ERROR(ReadInt(*v, "max_completion_tokens", 1, kMaxUint32, &max_tokens));
  } else if (const json* v = Member(body, "max_tokens")) {
    RETURN_IF_ERROR(ReadInt(*v, "max_tokens", 1, kMaxUint32, &max_tokens));
  }
  request->set_max_tokens(static_cast<uint32_t>(max_tokens));

  if (const json* v = Member(body, "n")) {
    int64_t n = 0;
    RETURN_IF_ERROR(ReadInt(*v, "n", 1, kMaxUint32, &n));
    request->set_n(static_cast<uint32_t>(n));
  }

  if (const json* v = Member(body, "stop")) {
    if (v->is_string()) {
      request->add_stop(v->get<std::string>());
    } else if (v->is_array()) {
      for (size_t i = 0; i < v->size(); ++i) {
        RETURN_IF_ERROR(ReadString((*v)[i], absl::StrCat("stop[", i, "]"), request->add_stop()));
      }
    } else {
      return WrongType("stop", "a string or an array of strings", *v);
    }
  }

  if (const json* v = Member(body, "seed")) {
    uint64_t seed = 0;
    RETURN_IF_ERROR(ReadSeed(*v, "seed", &seed));
    sampling->set_seed(seed);
  }

  struct FloatField {
    const char* name;
    void (chatpb::SamplingParams::*set)(float);
  };
  static constexpr FloatField kFloats[] = {
      {"temperature", &chatpb::SamplingParams::set_temperature},
      {"top_p", &chatpb::SamplingParams::set_top_p},
      {"presence_penalty", &chatpb::SamplingParams::set_presence_penalty},
      {"frequency_penalty", &chatpb::SamplingParams::set_frequency_penalty},
      {"min_p", &chatpb::SamplingParams::set_min_p},
      {"repetition_penalty", &chatpb::SamplingParams::set_repetition_penalty},
  };
  for (const FloatField& f : kFloats) {
    if (const json* v = Member(body, f.name)) {
      float x = 0;
      RETURN_IF_ERROR(ReadFloat(*v, f.name, &x));
      (sampling->*f.set)(x);
    }
  }

  if (const json* v = Member(body, "top_k")) {
    int64_t k = 0;
    RETURN_IF_ERROR(ReadInt(*v, "top_k", -1, kMaxInt32, &k));
    sampling->set_top_k(k < 0 ? 0 : static_cast<int32_t>(k));  // vLLM: -1 disables
  }

  if (const json* v = Member(body, "user")) {
    RETURN_IF_ERROR(ReadString(*v, "user", request->mutable_user()));
  }
  if (const json* v = Member(body, "stream")) {
    RETURN_IF_ERROR(ReadBool(*v, "stream", &parsed->stream));
  }
  if (const json* v = Member(body, "stream_options")) {
    if (!v->is_object()) return WrongType("stream_options", "an object", *v);
    if (const json* u = Member(*v, "include_usage")) {
      RETURN_IF_ERROR(ReadBool(*u, "stream_options.include_usage", &parsed->include_usage));
    }
  }
  if (const json* v = Member(body, "logit_bias")) {
    if (!v->is_object()) return WrongType("logit_bias", "an object", *v);
    if (!v->empty()) return Invalid("logit_bias", "is not supported");
  }
  return absl::OkStatus();
}

absl::StatusOr<json> ParseBody(absl::string_view body) {
  ASSIGN_OR_RETURN(json parsed, ParseJson(body, "request body"));
  if (!parsed.is_object()) return WrongType("request body", "a JSON object", parsed);
  return parsed;
}

bool NonEmptyArray(const json* v) { return v != nullptr && (!v->is_array() || !v->empty()); }

double FiniteLogprob(float logprob) { return std::isfinite(logprob) ? logprob : -9999.0; }

// The bytes a token contributes to the text.
const std::string& TokenBytes(const chatpb::TokenLogprob& t) {
  return t.token_bytes().empty() ? t.token() : t.token_bytes();
}

json BytesJson(const std::string& bytes) {
  json out = json::array();
  for (unsigned char c : bytes) out.push_back(static_cast<int>(c));
  return out;
}

json ChatTokenJson(const chatpb::TokenLogprob& t) {
  return json{{"token", t.token()},
              {"logprob", FiniteLogprob(t.logprob())},
              {"bytes", BytesJson(TokenBytes(t))}};
}

json UsageJson(const chatpb::Usage& usage) {
  json out{
      {"prompt_tokens", usage.prompt_tokens()},
      {"completion_tokens", usage.completion_tokens()},
      {"total_tokens", static_cast<uint64_t>(usage.prompt_tokens()) + usage.completion_tokens()}};
  if (usage.cached_prompt_tokens() > 0) {
    out["prompt_tokens_details"] = json{{"cached_tokens", usage.cached_prompt_tokens()}};
  }
  return out;
}

// CANCELLED / ERROR finishes end the request with an error instead of an answer.
absl::Status CheckFinish(const chatpb::ChatChunk& chunk) {
  switch (chunk.finish_reason()) {
    case chatpb::FINISH_REASON_CANCELLED:
      return absl::CancelledError(absl::StrCat("choice ", chunk.index(), " was cancelled"));
    case chatpb::FINISH_REASON_ERROR:
      return absl::InternalError(absl::StrCat("generation failed for choice ", chunk.index()));
    default:
      return absl::OkStatus();
  }
}

absl::Status CheckIndex(const chatpb::ChatChunk& chunk) {
  if (chunk.index() >= static_cast<uint32_t>(kMaxChoices)) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk index ", chunk.index(), " is not below ", kMaxChoices));
  }
  return absl::OkStatus();
}

std::vector<chatpb::PositionLogprobs> Positions(const chatpb::ChatChunk& chunk) {
  return {chunk.logprobs().begin(), chunk.logprobs().end()};
}

const char* IdPrefix(Endpoint endpoint) {
  return endpoint == Endpoint::kChatCompletions ? "chatcmpl-" : "cmpl-";
}

// The field path a message starts with ("messages[0].content: ..." -> "messages[0].content"),
// or "" when it does not start with one.
std::string LeadingField(absl::string_view message) {
  const size_t colon = message.find(": ");
  if (colon == absl::string_view::npos || colon == 0) return "";
  absl::string_view field = message.substr(0, colon);
  for (char c : field) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '.' || c == '[' || c == ']';
    if (!ok) return "";
  }
  if (absl::StartsWith(field, "sampling.")) field.remove_prefix(9);
  return std::string(field);
}

}  // namespace

absl::StatusOr<ParsedRequest> ParseChatCompletionRequest(absl::string_view body) {
  ASSIGN_OR_RETURN(json j, ParseBody(body));
  ParsedRequest parsed;
  RETURN_IF_ERROR(ReadCommon(j, &parsed));
  RETURN_IF_ERROR(ReadMessages(j, &parsed.request));

  chatpb::ChatRequest* request = &parsed.request;
  if (const json* v = Member(j, "logprobs")) {
    bool logprobs = false;
    RETURN_IF_ERROR(ReadBool(*v, "logprobs", &logprobs));
    request->set_logprobs(logprobs);
  }
  if (const json* v = Member(j, "top_logprobs")) {
    int64_t top = 0;
    RETURN_IF_ERROR(ReadInt(*v, "top_logprobs", 0, kMaxUint32, &top));
    request->set_top_logprobs(static_cast<uint32_t>(top));
  }
  if (const json* v = Member(j, "add_generation_prompt")) {
    bool add = true;
    RETURN_IF_ERROR(ReadBool(*v, "add_generation_prompt", &add));
    request->set_add_generation_prompt(add);
  }
  if (NonEmptyArray(Member(j, "tools"))) return Invalid("tools", "tool calling is not supported");
  if (NonEmptyArray(Member(j, "functions"))) {
    return Invalid("functions", "function calling is not supported");
  }
  if (const json* v = Member(j, "response_format")) {
    if (!v->is_object()) return WrongType("response_format", "an object", *v);
    const json* type = Member(*v, "type");
    if (type != nullptr && !(type->is_string() && type->get<std::string>() == "text")) {
      return Invalid("response_format", "only {\"type\": \"text\"} is supported");
    }
  }
  return parsed;
}

absl::StatusOr<ParsedRequest> ParseCompletionRequest(absl::string_view body) {
  ASSIGN_OR_RETURN(json j, ParseBody(body));
  ParsedRequest parsed;
  RETURN_IF_ERROR(ReadCommon(j, &parsed));
  RETURN_IF_ERROR(ReadPrompt(j, &parsed.request));

  chatpb::ChatRequest* request = &parsed.request;
  if (const json* v = Member(j, "logprobs")) {
    int64_t top = 0;
    RETURN_IF_ERROR(ReadInt(*v, "logprobs", 0, kMaxUint32, &top));
    request->set_logprobs(true);
    request->set_top_logprobs(static_cast<uint32_t>(top));
  }
  if (const json* v = Member(j, "echo")) {
    bool echo = false;
    RETURN_IF_ERROR(ReadBool(*v, "echo", &echo));
    if (echo) return Invalid("echo", "is not supported");
  }
  if (const json* v = Member(j, "suffix")) {
    std::string suffix;
    RETURN_IF_ERROR(ReadString(*v, "suffix", &suffix));
    if (!suffix.empty()) return Invalid("suffix", "is not supported");
  }
  if (const json* v = Member(j, "best_of")) {
    int64_t best_of = 0;
    RETURN_IF_ERROR(ReadInt(*v, "best_of", 1, kMaxUint32, &best_of));
    if (best_of > 1) return Invalid("best_of", "values above 1 are not supported");
  }
  return parsed;
}

OpenAiError ErrorFromStatus(const absl::Status& status) {
  const std::string message(status.message());
  auto error = [&message](int http_status, const char* type, std::string param, const char* code) {
    return OpenAiError{http_status, message, type, std::move(param), code};
  };
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
      return error(400, "invalid_request_error", LeadingField(message), "");
    case absl::StatusCode::kNotFound:
      return error(404, "invalid_request_error", "model", "model_not_found");
    case absl::StatusCode::kUnauthenticated:
      return error(401, "invalid_request_error", "", "invalid_api_key");
    case absl::StatusCode::kPermissionDenied:
      return error(403, "invalid_request_error", "", "permission_denied");
    case absl::StatusCode::kResourceExhausted:
      // The worker says so when a prompt cannot fit: a client error no retry will fix.
      if (absl::StrContains(message, "exceeds the context length") ||
          absl::StrContains(message, "exceeds the KV cache")) {
        return error(400, "invalid_request_error", "messages", "context_length_exceeded");
      }
      return error(429, absl::StrContains(message, "tokens per minute") ? "tokens" : "requests", "",
                   "rate_limit_exceeded");
    case absl::StatusCode::kUnavailable:
      return error(503, "server_error", "", "service_unavailable");
    case absl::StatusCode::kDeadlineExceeded:
      return error(504, "server_error", "", "timeout");
    case absl::StatusCode::kCancelled:
      return error(499, "invalid_request_error", "", "cancelled");
    case absl::StatusCode::kOk: {
      OpenAiError internal = error(500, "server_error", "", "");
      internal.message = "internal error: OK status";
      return internal;
    }
    default:
      return error(500, "server_error", "", "");
  }
}

json ErrorJson(const OpenAiError& error) {
  return json{{"error",
               {{"message", error.message},
                {"type", error.type},
                {"param", error.param.empty() ? json(nullptr) : json(error.param)},
                {"code", error.code.empty() ? json(nullptr) : json(error.code)}}}};
}

int64_t RetryAfterSeconds(absl::Duration retry_after) {
  const int64_t seconds = absl::ToInt64Seconds(absl::Ceil(retry_after, absl::Seconds(1)));
  return seconds < 1 ? 1 : seconds;
}

json FinishReasonJson(chatpb::FinishReason reason) {
  switch (reason) {
    case chatpb::FINISH_REASON_STOP:
      return "stop";
    case chatpb::FINISH_REASON_LENGTH:
      return "length";
    default:
      return nullptr;
  }
}

json ChatLogprobsJson(const std::vector<chatpb::PositionLogprobs>& positions) {
  json content = json::array();
  for (const chatpb::PositionLogprobs& p : positions) {
    json entry = ChatTokenJson(p.sampled());
    json top = json::array();
    for (const chatpb::TokenLogprob& t : p.top()) top.push_back(ChatTokenJson(t));
    entry["top_logprobs"] = std::move(top);
    content.push_back(std::move(entry));
  }
  return json{{"content", std::move(content)}};
}

json CompletionLogprobsJson(const std::vector<chatpb::PositionLogprobs>& positions,
                            int64_t offset) {
  json tokens = json::array();
  json token_logprobs = json::array();
  json top_logprobs = json::array();
  json text_offset = json::array();
  for (const chatpb::PositionLogprobs& p : positions) {
    tokens.push_back(p.sampled().token());
    token_logprobs.push_back(FiniteLogprob(p.sampled().logprob()));
    json top = json::object();
    for (const chatpb::TokenLogprob& t : p.top()) top[t.token()] = FiniteLogprob(t.logprob());
    top_logprobs.push_back(std::move(top));
    text_offset.push_back(offset);
    offset += static_cast<int64_t>(TokenBytes(p.sampled()).size());
  }
  return json{{"tokens", std::move(tokens)},
              {"token_logprobs", std::move(token_logprobs)},
              {"top_logprobs", std::move(top_logprobs)},
              {"text_offset", std::move(text_offset)}};
}

// --- ChatAccumulator ---

absl::Status ChatAccumulator::Add(chatpb::ChatChunk chunk) {
  RETURN_IF_ERROR(CheckIndex(chunk));
  RETURN_IF_ERROR(CheckFinish(chunk));
  if (model_.empty() && !chunk.model().empty()) model_ = chunk.model();
  if (chunk.has_usage()) usage_ = chunk.usage();
  Choice& choice = choices_[chunk.index()];
  choice.text += chunk.delta();
  for (chatpb::PositionLogprobs& p : *chunk.mutable_logprobs()) {
    choice.logprobs.push_back(std::move(p));
  }
  if (chunk.finish_reason() != chatpb::FINISH_REASON_UNSPECIFIED) {
    choice.finish = chunk.finish_reason();
  }
  return absl::OkStatus();
}

json ChatAccumulator::ChatCompletion(const ResponseMeta& meta, bool logprobs) const {
  json choices = json::array();
  for (const auto& [index, choice] : choices_) {
    choices.push_back(
        json{{"index", index},
             {"message", {{"role", "assistant"}, {"content", choice.text}}},
             {"logprobs", logprobs ? ChatLogprobsJson(choice.logprobs) : json(nullptr)},
             {"finish_reason", FinishReasonJson(choice.finish)}});
  }
  return json{{"id", absl::StrCat("chatcmpl-", meta.request_id)},
              {"object", "chat.completion"},
              {"created", meta.created},
              {"model", meta.model},
              {"system_fingerprint", kSystemFingerprint},
              {"choices", std::move(choices)},
              {"usage", UsageJson(usage_)}};
}

json ChatAccumulator::TextCompletion(const ResponseMeta& meta, bool logprobs) const {
  json choices = json::array();
  for (const auto& [index, choice] : choices_) {
    choices.push_back(
        json{{"index", index},
             {"text", choice.text},
             {"logprobs", logprobs ? CompletionLogprobsJson(choice.logprobs, 0) : json(nullptr)},
             {"finish_reason", FinishReasonJson(choice.finish)}});
  }
  return json{{"id", absl::StrCat("cmpl-", meta.request_id)},
              {"object", "text_completion"},
              {"created", meta.created},
              {"model", meta.model},
              {"system_fingerprint", kSystemFingerprint},
              {"choices", std::move(choices)},
              {"usage", UsageJson(usage_)}};
}

// --- StreamEncoder ---

StreamEncoder::StreamEncoder(Endpoint endpoint, ResponseMeta meta, bool include_usage,
                             bool logprobs)
    : endpoint_(endpoint),
      meta_(std::move(meta)),
      include_usage_(include_usage),
      logprobs_(logprobs) {}

json StreamEncoder::Envelope() const {
  json out{{"id", absl::StrCat(IdPrefix(endpoint_), meta_.request_id)},
           {"object",
            endpoint_ == Endpoint::kChatCompletions ? "chat.completion.chunk" : "text_completion"},
           {"created", meta_.created},
           {"model", meta_.model},
           {"system_fingerprint", kSystemFingerprint}};
  if (include_usage_) out["usage"] = nullptr;
  return out;
}

json StreamEncoder::ChatChoice(uint32_t index, json delta, const chatpb::ChatChunk* logprobs_from,
                               chatpb::FinishReason finish) const {
  json logprobs = nullptr;
  if (logprobs_ && logprobs_from != nullptr) logprobs = ChatLogprobsJson(Positions(*logprobs_from));
  return json{{"index", index},
              {"delta", std::move(delta)},
              {"logprobs", std::move(logprobs)},
              {"finish_reason", FinishReasonJson(finish)}};
}

json StreamEncoder::CompletionChoice(uint32_t index, const std::string& text,
                                     const chatpb::ChatChunk* logprobs_from,
                                     chatpb::FinishReason finish) {
  int64_t& sent = text_bytes_[index];
  json logprobs = nullptr;
  if (logprobs_ && logprobs_from != nullptr) {
    logprobs = CompletionLogprobsJson(Positions(*logprobs_from), sent);
  }
  sent += static_cast<int64_t>(text.size());
  return json{{"index", index},
              {"text", text},
              {"logprobs", std::move(logprobs)},
              {"finish_reason", FinishReasonJson(finish)}};
}

absl::StatusOr<std::vector<json>> StreamEncoder::Encode(const chatpb::ChatChunk& chunk) {
  RETURN_IF_ERROR(CheckIndex(chunk));
  RETURN_IF_ERROR(CheckFinish(chunk));
  if (chunk.has_usage()) usage_ = chunk.usage();
  std::vector<json> events;
  auto event = [&](json choice) {
    json e = Envelope();
    e["choices"] = json::array({std::move(choice)});
    events.push_back(std::move(e));
  };
  const uint32_t index = chunk.index();
  const bool has_content = !chunk.delta().empty() || chunk.logprobs_size() > 0;
  const bool finished = chunk.finish_reason() != chatpb::FINISH_REASON_UNSPECIFIED;
  if (endpoint_ == Endpoint::kChatCompletions) {
    if (text_bytes_.find(index) == text_bytes_.end()) {
      text_bytes_[index] = 0;
      event(ChatChoice(index, json{{"role", "assistant"}, {"content", ""}}, nullptr,
                       chatpb::FINISH_REASON_UNSPECIFIED));
    }
    if (has_content) {
      text_bytes_[index] += static_cast<int64_t>(chunk.delta().size());
      event(ChatChoice(index, json{{"content", chunk.delta()}}, &chunk,
                       chatpb::FINISH_REASON_UNSPECIFIED));
    }
    if (finished) event(ChatChoice(index, json::object(), nullptr, chunk.finish_reason()));
  } else {
    if (has_content) {
      event(CompletionChoice(index, chunk.delta(), &chunk, chatpb::FINISH_REASON_UNSPECIFIED));
    }
    if (finished) event(CompletionChoice(index, "", nullptr, chunk.finish_reason()));
  }
  return events;
}

std::vector<json> StreamEncoder::Finish() {
  std::vector<json> events;
  if (include_usage_) {
    json e = Envelope();
    e["choices"] = json::array();
    e["usage"] = UsageJson(usage_);
    events.push_back(std::move(e));
  }
  return events;
}

std::string SseEvent(const json& data) { return absl::StrCat("data: ", DumpJson(data), "\n\n"); }

json ModelJson(const chatpb::ModelInfo& model, int64_t created) {
  json out{
      {"id", model.id()}, {"object", "model"}, {"created", created}, {"owned_by", "shardserve"}};
  if (model.context_length() > 0) out["max_model_len"] = model.context_length();
  return out;
}

json ModelListJson(const chatpb::ListModelsResponse& models, int64_t created) {
  json data = json::array();
  for (const chatpb::ModelInfo& m : models.models()) data.push_back(ModelJson(m, created));
  return json{{"object", "list"}, {"data", std::move(data)}};
}

}  // namespace shardserve::openai
