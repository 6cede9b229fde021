#include "worker/rpc/chat_conversion.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/text/unicode.h"

namespace shardserve {

namespace chatpb = ::shardserve::chat::v1;

absl::StatusOr<GenerationRequest> PrepareGeneration(const chatpb::ChatRequest& request,
                                                    const ModelText& text,
                                                    const PrepareOptions& options) {
  if (!request.model().empty() && request.model() != options.served_model_name) {
    return absl::NotFoundError(absl::StrCat("model: '", request.model(),
                                            "' is not served here (this worker serves '",
                                            options.served_model_name, "')"));
  }
  RETURN_IF_ERROR(ValidateChatRequest(request, /*max_choices=*/1));
  ASSIGN_OR_RETURN(SamplingOptions sampling, ToSamplingOptions(request));
  if (!request.sampling().has_seed() && options.random_seed) sampling.seed = options.random_seed();

  GenerationRequest out;
  if (!request.prompt().empty()) {
    // A raw prompt (completions): the tokenizer's own special tokens, no template.
    out.prompt = text.tokenizer->Encode(request.prompt(), /*add_special_tokens=*/true);
    if (out.prompt.empty()) return absl::InvalidArgumentError("prompt: no tokens");
  } else {
    nlohmann::ordered_json messages = nlohmann::ordered_json::array();
    for (int i = 0; i < request.messages_size(); ++i) {
      const chatpb::Message& m = request.messages(i);
      ASSIGN_OR_RETURN(const char* role, RoleName(m.role(), i));
      nlohmann::ordered_json message = {{"role", role}, {"content", m.content()}};
      if (!m.name().empty()) message["name"] = m.name();
      messages.push_back(std::move(message));
    }
    const bool add_generation_prompt =
        request.has_add_generation_prompt() ? request.add_generation_prompt() : true;
    absl::StatusOr<std::string> prompt = text.RenderChat(messages, add_generation_prompt);
    if (!prompt.ok()) {
      const absl::StatusCode code = prompt.status().code() == absl::StatusCode::kFailedPrecondition
                                        ? absl::StatusCode::kFailedPrecondition
                                        : absl::StatusCode::kInvalidArgument;
      return absl::Status(
          code, absl::StrCat("messages: the chat template failed: ", prompt.status().message()));
    }

    out.prompt = text.tokenizer->Encode(*prompt, /*add_special_tokens=*/false);
    if (out.prompt.empty()) {
      return absl::InvalidArgumentError("messages: the rendered prompt has no tokens");
    }
  }
  out.sampling = sampling;
  out.stop.assign(request.stop().begin(), request.stop().end());
  const int64_t prompt_tokens = static_cast<int64_t>(out.prompt.size());
  if (request.max_tokens() > 0) {
    // Beyond int range it cannot fit any context: let the engine refuse it with the numbers.
    out.max_tokens = static_cast<int>(std::min<uint32_t>(request.max_tokens(), 1u << 30));
  } else if (options.default_max_tokens > 0) {
    const int64_t room = options.context_length - prompt_tokens;
    // When the prompt leaves no room the default stays, and the engine names the numbers.
    out.max_tokens = room > 0
                         ? static_cast<int>(std::min<int64_t>(options.default_max_tokens, room))
                         : options.default_max_tokens;
  }
  return out;
}

void FillTokenLogprob(const Tokenizer& tokenizer, int32_t token, float logprob,
                      chatpb::TokenLogprob* out) {
  out->set_token_id(token);
  out->set_logprob(logprob);
  const std::string decoded = tokenizer.Decode({token}, /*skip_special_tokens=*/false);
  out->set_token(decoded);
  // Raw bytes: a byte-level BPE piece maps back through GPT-2's byte table, a SentencePiece
  // byte token "<0xNN>" is its byte; either is accepted only when it decodes to what the
  // tokenizer itself gives, otherwise the decoded text is the bytes.
  std::optional<std::string> piece = tokenizer.IdToToken(token);
  if (piece.has_value() && text::IsValidUtf8(*piece)) {
    std::string raw;
    bool byte_level = true;
    for (size_t pos = 0; pos < piece->size();) {
      const int b = text::CharToByte(text::NextCodepoint(*piece, &pos));
      if (b < 0) {
        byte_level = false;
        break;
      }
      raw.push_back(static_cast<char>(b));
    }
    if (byte_level && text::ToValidUtf8(raw) == decoded) {
      out->set_token_bytes(std::move(raw));
      return;
    }
    absl::string_view p = *piece;
    int value = 0;
    if (p.size() == 6 && absl::ConsumePrefix(&p, "<0x") && absl::ConsumeSuffix(&p, ">") &&
        absl::SimpleHexAtoi(p, &value)) {
      out->set_token_bytes(std::string(1, static_cast<char>(value)));
      return;
    }
  }
  out->set_token_bytes(decoded);
}

chatpb::FinishReason ToProtoFinishReason(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return chatpb::FINISH_REASON_STOP;
    case FinishReason::kLength:
      return chatpb::FINISH_REASON_LENGTH;
    case FinishReason::kCancelled:
      return chatpb::FINISH_REASON_CANCELLED;
    case FinishReason::kError:
      return chatpb::FINISH_REASON_ERROR;
    case FinishReason::kNone:
      break;
  }
  return chatpb::FINISH_REASON_UNSPECIFIED;
}

chatpb::ChatChunk ToChatChunk(const GenerationOutput& output, const Tokenizer& tokenizer) {
  chatpb::ChatChunk chunk;
  chunk.set_delta(output.text);
  for (int32_t id : output.token_ids) chunk.add_token_ids(id);
  for (const SampleResult& r : output.logprobs) {
    chatpb::PositionLogprobs* position = chunk.add_logprobs();
    FillTokenLogprob(tokenizer, r.token, r.logprob, position->mutable_sampled());
    for (const TokenLogprob& alt : r.top) {
      FillTokenLogprob(tokenizer, alt.token, alt.logprob, position->add_top());
    }
  }
  if (output.finish != FinishReason::kNone) {
    chunk.set_finish_reason(ToProtoFinishReason(output.finish));
    chatpb::Usage* usage = chunk.mutable_usage();
    usage->set_prompt_tokens(static_cast<uint32_t>(std::max(0, output.prompt_tokens)));
    usage->set_completion_tokens(static_cast<uint32_t>(std::max(0, output.completion_tokens)));
    chatpb::Timings* t = chunk.mutable_timings();
    t->set_queue_seconds(output.timings.queue_seconds);
    t->set_time_to_first_token_seconds(output.timings.time_to_first_token_seconds);
    t->set_decode_seconds(output.timings.decode_seconds);
    t->set_prefill_seconds(output.timings.prefill_seconds);
  }
  return chunk;
}

}  // namespace shardserve
