#include "worker/text/decoder.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "worker/text/pre_tokenizer.h"

namespace shardserve::text {
namespace {

using Step = Decoder::Step;
using Kind = Decoder::Step::Kind;

// The bytes a token stands for under ByteLevel: each character's byte, or the token's own UTF-8
// when any character is outside the 256-character table.
void AppendByteLevelBytes(absl::string_view token, std::string* out) {
  const size_t mark = out->size();
  size_t i = 0;
  while (i < token.size()) {
    const int b = CharToByte(NextCodepoint(token, &i));
    if (b < 0) {
      out->resize(mark);
      out->append(token.data(), token.size());
      return;
    }
    out->push_back(static_cast<char>(b));
  }
}

// "<0xNN>" -> NN, as the ByteFallback decoder reads it (u8::from_str_radix, which also takes a
// leading '+').
std::optional<uint8_t> ParseByteToken(absl::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return std::nullopt;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (t[3] == '+') {
    const int lo = hex(t[4]);
    if (lo < 0) return std::nullopt;
    return static_cast<uint8_t>(lo);
  }
  const int hi = hex(t[3]), lo = hex(t[4]);
  if (hi < 0 || lo < 0) return std::nullopt;
  return static_cast<uint8_t>(hi * 16 + lo);
}

// A finished run of byte tokens: its text if valid UTF-8, else one U+FFFD per byte.
void FlushByteRun(std::string* run, std::vector<std::string>* out) {
  if (run->empty()) return;
  if (IsValidUtf8(*run)) {
    out->push_back(std::move(*run));
  } else {
    for (size_t k = 0; k < run->size(); ++k) out->push_back("\xEF\xBF\xBD");
  }
  run->clear();
}

std::string MetaspaceToken(const Step& s, absl::string_view token, bool first) {
  std::string out;
  out.reserve(token.size());
  size_t i = 0;
  while (i < token.size()) {
    const size_t begin = i;
    if (NextCodepoint(token, &i) == s.replacement) {
      if (!(first && s.strip_first)) out.push_back(' ');
    } else {
      out.append(token.data() + begin, i - begin);
    }
  }
  return out;
}

std::string StripToken(const Step& s, absl::string_view token) {
  std::vector<size_t> offsets;  // byte offset of each character, plus the end
  size_t i = 0;
  std::vector<char32_t> chars;
  while (i < token.size()) {
    offsets.push_back(i);
    chars.push_back(NextCodepoint(token, &i));
  }
  offsets.push_back(token.size());
  size_t start_cut = 0;
  for (size_t k = 0; k < std::min(s.start, chars.size()) && chars[k] == s.strip_char; ++k) {
    start_cut = k + 1;
  }
  size_t stop_cut = chars.size();
  for (size_t k = 0; k < std::min(s.stop, chars.size()); ++k) {
    const size_t index = chars.size() - k - 1;
    if (chars[index] != s.strip_char) break;
    stop_cut = index;
  }
  // The library panics when the two cuts cross (a token of only strip characters); take it as
  // empty.
  if (stop_cut < start_cut) return "";
  return std::string(token.substr(offsets[start_cut], offsets[stop_cut] - offsets[start_cut]));
}

// One step of the library's decode_chain.
std::vector<std::string> ApplyStep(const Step& s, std::vector<std::string> tokens) {
  std::vector<std::string> out;
  switch (s.kind) {
    case Kind::kByteLevel: {
      std::string bytes;
      for (const std::string& t : tokens) AppendByteLevelBytes(t, &bytes);
      out.push_back(ToValidUtf8(bytes));
      break;
    }
    case Kind::kMetaspace:
      for (size_t i = 0; i < tokens.size(); ++i) {
        out.push_back(MetaspaceToken(s, tokens[i], i == 0));
      }
      break;
    case Kind::kReplace:
      for (const std::string& t : tokens) out.push_back(s.pattern->ReplaceAll(t, s.content));
      break;
    case Kind::kByteFallback: {
      std::string run;
      for (std::string& t : tokens) {
        if (auto b = ParseByteToken(t); b.has_value()) {
          run.push_back(static_cast<char>(*b));
        } else {
          FlushByteRun(&run, &out);
          out.push_back(std::move(t));
        }
      }
      FlushByteRun(&run, &out);
      break;
    }
    case Kind::kFuse:
      out.push_back(absl::StrJoin(tokens, ""));
      break;
    case Kind::kStrip:
      for (const std::string& t : tokens) out.push_back(StripToken(s, t));
      break;
  }
  return out;
}

absl::StatusOr<char32_t> GetChar(const nlohmann::json& j, const char* key, const JsonContext& ctx) {
  ASSIGN_OR_RETURN(std::string s, GetString(j, key, ctx));
  size_t pos = 0;
  if (s.empty() || !IsValidUtf8(s) || (NextCodepoint(s, &pos), pos != s.size())) {
    return ctx.Error(absl::StrCat("field '", key, "' must be a single character"));
  }
  pos = 0;
  return NextCodepoint(s, &pos);
}

absl::Status ParseSteps(const nlohmann::json& j, const JsonContext& ctx, std::vector<Step>* out) {
  ASSIGN_OR_RETURN(std::string type, GetType(j, ctx));
  Step s;
  if (type == "ByteLevel") {
    s.kind = Kind::kByteLevel;
  } else if (type == "Metaspace") {
    ASSIGN_OR_RETURN(MetaspaceOptions options, ParseMetaspaceOptions(j, ctx));
    s.kind = Kind::kMetaspace;
    s.replacement = options.replacement;
    s.strip_first = options.scheme != PrependScheme::kNever;
  } else if (type == "Replace") {
    s.kind = Kind::kReplace;
    ASSIGN_OR_RETURN(std::unique_ptr<Regex> pattern, GetPattern(j, ctx));
    s.pattern = std::move(pattern);
    if (auto p = j.find("pattern"); p->contains("String")) {
      s.literal = (*p)["String"].get<std::string>();
    }
    ASSIGN_OR_RETURN(s.content, GetString(j, "content", ctx));
  } else if (type == "ByteFallback") {
    s.kind = Kind::kByteFallback;
  } else if (type == "Fuse") {
    s.kind = Kind::kFuse;
  } else if (type == "Strip") {
    s.kind = Kind::kStrip;
    ASSIGN_OR_RETURN(s.strip_char, GetChar(j, "content", ctx));
    ASSIGN_OR_RETURN(int64_t start, GetInt(j, "start", 0, ctx));
    ASSIGN_OR_RETURN(int64_t stop, GetInt(j, "stop", 0, ctx));
    if (start < 0 || stop < 0) return ctx.Error("Strip start/stop must not be negative");
    s.start = static_cast<size_t>(start);
    s.stop = static_cast<size_t>(stop);
  } else if (type == "Sequence") {
    auto it = j.find("decoders");
    if (it == j.end() || !it->is_array()) return ctx.Error("missing array field 'decoders'");
    for (size_t i = 0; i < it->size(); ++i) {
      RETURN_IF_ERROR(ParseSteps((*it)[i], ctx.Child(absl::StrCat("decoders[", i, "]")), out));
    }
    return absl::OkStatus();
  } else {
    return UnsupportedType("decoder", type, ctx);
  }
  out->push_back(std::move(s));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Decoder>> Decoder::Parse(const nlohmann::json& j,
                                                        const JsonContext& ctx) {
  auto decoder = std::unique_ptr<Decoder>(new Decoder());
  if (!j.is_null()) {
    decoder->has_decoder_ = true;
    RETURN_IF_ERROR(ParseSteps(j, ctx, &decoder->steps_));
  }
  decoder->join_index_ = decoder->steps_.size();
  for (size_t i = 0; i < decoder->steps_.size(); ++i) {
    const Kind k = decoder->steps_[i].kind;
    if (k == Kind::kByteLevel || k == Kind::kFuse) {
      decoder->join_index_ = i;
      break;
    }
  }
  return decoder;
}

std::string Decoder::Decode(std::vector<std::string> tokens) const {
  if (!has_decoder_) return absl::StrJoin(tokens, " ");
  for (const Step& s : steps_) tokens = ApplyStep(s, std::move(tokens));
  return absl::StrJoin(tokens, "");
}

std::unique_ptr<DecodeStream> Decoder::NewStream() const {
  return std::make_unique<DecodeStream>(this);
}

// --- streaming ---------------------------------------------------------------------------------
//
// Steps before the join (the first ByteLevel or Fuse) see whole tokens, one at a time; they are
// all per-token except ByteFallback, which holds a run of byte tokens until it ends. The join
// turns tokens into one text stream (ByteLevel through an incremental lossy UTF-8 decoder). Steps
// after the join see that stream in chunks of one token: Metaspace and Fuse act per chunk, Strip
// holds back trailing strip characters, a literal Replace holds back a possible partial match,
// ByteFallback holds the first 7 bytes; the rest (ByteLevel, regex Replace) hold everything until
// Finish. The output therefore always equals Decode of the whole sequence.

DecodeStream::DecodeStream(const Decoder* decoder)
    : decoder_(decoder), state_(decoder->steps_.size()) {}

void DecodeStream::Reset() {
  state_.assign(decoder_->steps_.size(), StageState{});
  utf8_ = Utf8StreamDecoder();
  any_token_ = false;
}

void DecodeStream::Push(absl::string_view token, std::string* out) {
  if (!decoder_->has_decoder_) {
    if (any_token_) out->push_back(' ');
    out->append(token.data(), token.size());
    any_token_ = true;
    return;
  }
  PushToken(0, std::string(token), out);
}

void DecodeStream::PushToken(size_t stage, std::string token, std::string* out) {
  const auto& steps = decoder_->steps_;
  if (stage == decoder_->join_index_) {
    if (stage < steps.size() && steps[stage].kind == Kind::kByteLevel) {
      std::string bytes, text;
      AppendByteLevelBytes(token, &bytes);
      utf8_.Append(bytes, &text);
      PushText(stage + 1, std::move(text), out);
    } else {
      PushText(stage + 1, std::move(token), out);
    }
    return;
  }
  const Step& s = steps[stage];
  StageState& st = state_[stage];
  switch (s.kind) {
    case Kind::kMetaspace:
      PushToken(stage + 1, MetaspaceToken(s, token, st.tokens_seen++ == 0), out);
      break;
    case Kind::kReplace:
      PushToken(stage + 1, s.pattern->ReplaceAll(token, s.content), out);
      break;
    case Kind::kStrip:
      PushToken(stage + 1, StripToken(s, token), out);
      break;
    case Kind::kByteFallback:
      if (auto b = ParseByteToken(token); b.has_value()) {
        st.held.push_back(static_cast<char>(*b));
      } else {
        std::vector<std::string> flushed;
        FlushByteRun(&st.held, &flushed);
        for (std::string& t : flushed) PushToken(stage + 1, std::move(t), out);
        PushToken(stage + 1, std::move(token), out);
      }
      break;
    case Kind::kByteLevel:
    case Kind::kFuse:
      break;  // joins: handled above
  }
}

void DecodeStream::PushText(size_t stage, std::string text, std::string* out) {
  const auto& steps = decoder_->steps_;
  if (stage >= steps.size()) {
    out->append(text);
    return;
  }
  if (text.empty()) return;
  const Step& s = steps[stage];
  StageState& st = state_[stage];
  switch (s.kind) {
    case Kind::kMetaspace:
      PushText(stage + 1, MetaspaceToken(s, text, /*first=*/true), out);
      return;
    case Kind::kFuse:
      PushText(stage + 1, std::move(text), out);
      return;
    case Kind::kStrip: {
      std::string kept;
      size_t i = 0;
      while (i < text.size()) {
        const size_t begin = i;
        const char32_t c = NextCodepoint(text, &i);
        const absl::string_view ch(text.data() + begin, i - begin);
        if (!st.lead_done) {
          if (st.stripped < s.start && c == s.strip_char) {
            ++st.stripped;
            continue;
          }
          st.lead_done = true;
        }
        if (s.stop > 0 && c == s.strip_char) {
          st.held.append(ch.data(), ch.size());
          continue;
        }
        kept.append(st.held);
        st.held.clear();
        kept.append(ch.data(), ch.size());
      }
      PushText(stage + 1, std::move(kept), out);
      return;
    }
    case Kind::kReplace:
      if (s.literal.has_value() && !s.literal->empty()) {
        const std::string& lit = *s.literal;
        st.held.append(text);
        std::string done;
        size_t cursor = 0;
        for (size_t pos; (pos = st.held.find(lit, cursor)) != std::string::npos;) {
          done.append(st.held, cursor, pos - cursor);
          done.append(s.content);
          cursor = pos + lit.size();
        }
        // A match may still start within the last lit.size() - 1 bytes.
        size_t safe = st.held.size() >= lit.size() - 1 ? st.held.size() - (lit.size() - 1) : 0;
        safe = std::max(safe, cursor);
        while (safe > cursor && (static_cast<uint8_t>(st.held[safe]) & 0xC0) == 0x80) --safe;
        done.append(st.held, cursor, safe - cursor);
        st.held.erase(0, safe);
        PushText(stage + 1, std::move(done), out);
        return;
      }
      st.held.append(text);  // regex: needs the whole text
      return;
    case Kind::kByteFallback:
      if (st.decided) {
        PushText(stage + 1, std::move(text), out);
        return;
      }
      st.held.append(text);
      if (st.held.size() > 6) {  // longer than "<0xNN>": never a byte token
        st.decided = true;
        std::string held;
        held.swap(st.held);
        PushText(stage + 1, std::move(held), out);
      }
      return;
    case Kind::kByteLevel:
      st.held.append(text);  // the whole text decides how its characters map to bytes
      return;
  }
}

void DecodeStream::FinishText(size_t stage, std::string* out) {
  const auto& steps = decoder_->steps_;
  for (; stage < steps.size(); ++stage) {
    const Step& s = steps[stage];
    StageState& st = state_[stage];
    std::string flushed;
    switch (s.kind) {
      case Kind::kStrip: {
        // Drop up to `stop` trailing strip characters from the held run.
        size_t drop = 0, end = st.held.size();
        while (drop < s.stop && end > 0) {
          size_t b = end - 1;
          while (b > 0 && (static_cast<uint8_t>(st.held[b]) & 0xC0) == 0x80) --b;
          end = b;
          ++drop;
        }
        flushed = st.held.substr(0, end);
        break;
      }
      case Kind::kReplace:
        flushed = s.literal.has_value() && !s.literal->empty()
                      ? st.held
                      : s.pattern->ReplaceAll(st.held, s.content);
        break;
      case Kind::kByteFallback:
        if (!st.decided) {
          flushed = ApplyStep(s, {st.held}).front();
          if (st.held.empty()) flushed.clear();
        }
        break;
      case Kind::kByteLevel:
        if (!st.held.empty()) flushed = ApplyStep(s, {st.held}).front();
        break;
      case Kind::kMetaspace:
      case Kind::kFuse:
        break;
    }
    st.held.clear();
    PushText(stage + 1, std::move(flushed), out);
  }
}

void DecodeStream::Finish(std::string* out) {
  if (decoder_->has_decoder_) {
    const size_t join = decoder_->join_index_;
    // Flush token-level ByteFallback runs in order; each flush feeds the later steps.
    for (size_t stage = 0; stage < join; ++stage) {
      StageState& st = state_[stage];
      if (decoder_->steps_[stage].kind != Kind::kByteFallback || st.held.empty()) continue;
      std::vector<std::string> flushed;
      FlushByteRun(&st.held, &flushed);
      for (std::string& t : flushed) PushToken(stage + 1, std::move(t), out);
    }
    if (join < decoder_->steps_.size() && decoder_->steps_[join].kind == Kind::kByteLevel) {
      std::string text;
      utf8_.Finish(&text);
      PushText(join + 1, std::move(text), out);
    }
    FinishText(join + 1, out);
  }
  Reset();
}

}  // namespace shardserve::text
