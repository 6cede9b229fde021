#include "worker/text/pre_tokenizer.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/status_macros.h"
#include "worker/text/unicode.h"

namespace shardserve::text {

void SplitPiece(const Piece& piece, std::vector<MatchSpan> spans, SplitBehavior behavior,
                std::vector<Piece>* out) {
  struct Part {
    size_t begin, end;
    bool remove;
  };
  std::vector<Part> parts;
  parts.reserve(spans.size());
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const MatchSpan& s : spans) parts.push_back({s.begin, s.end, false});
      break;
    case SplitBehavior::kRemoved:
      for (const MatchSpan& s : spans) parts.push_back({s.begin, s.end, s.is_match});
      break;
    case SplitBehavior::kContiguous:
      for (const MatchSpan& s : spans) {
        if (s.is_match == previous_match && !parts.empty()) {
          parts.back().end = s.end;
        } else {
          parts.push_back({s.begin, s.end, false});
        }
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const MatchSpan& s : spans) {
        if (s.is_match && !previous_match && !parts.empty()) {
          parts.back().end = s.end;
        } else {
          parts.push_back({s.begin, s.end, false});
        }
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !parts.empty()) {
          parts.back().begin = it->begin;
        } else {
          parts.push_back({it->begin, it->end, false});
        }
        previous_match = it->is_match;
      }
      std::reverse(parts.begin(), parts.end());
      break;
  }
  for (const Part& p : parts) {
    if (p.remove || p.end <= p.begin) continue;
    out->push_back(
        Piece{piece.text.substr(p.begin, p.end - p.begin), piece.at_start && p.begin == 0});
  }
}

namespace {

// Spans where every character satisfying `pred` is a match of its own (tokenizers' Pattern for
// Fn(char) -> bool and for char).
template <typename Pred>
std::vector<MatchSpan> CharMatches(absl::string_view text, Pred pred) {
  std::vector<MatchSpan> spans;
  if (text.empty()) {
    spans.push_back({0, 0, false});
    return spans;
  }
  size_t last = 0, i = 0;
  while (i < text.size()) {
    const size_t start = i;
    if (pred(NextCodepoint(text, &i))) {
      if (last < start) spans.push_back({last, start, false});
      spans.push_back({start, i, true});
      last = i;
    }
  }
  if (last < text.size()) spans.push_back({last, text.size(), false});
  return spans;
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(std::unique_ptr<Regex> pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}

  void PreTokenize(std::vector<Piece>* pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces->size() * 2);
    for (const Piece& piece : *pieces) {
      std::vector<MatchSpan> spans = pattern_->FindMatches(piece.text);
      if (invert_) {
        for (MatchSpan& s : spans) s.is_match = !s.is_match;
      }
      SplitPiece(piece, std::move(spans), behavior_, &out);
    }
    *pieces = std::move(out);
  }

 private:
  std::unique_ptr<Regex> pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}

  void PreTokenize(std::vector<Piece>* pieces) const override {
    std::vector<Piece> split;
    split.reserve(pieces->size() * 4);
    for (Piece& piece : *pieces) {
      if (add_prefix_space_ && (piece.text.empty() || piece.text[0] != ' ')) {
        piece.text.insert(piece.text.begin(), ' ');
      }
      if (regex_ != nullptr) {
        SplitPiece(piece, regex_->FindMatches(piece.text), SplitBehavior::kIsolated, &split);
      } else if (!piece.text.empty()) {
        split.push_back(std::move(piece));
      }
    }
    for (Piece& piece : split) {
      std::string mapped;
      mapped.reserve(piece.text.size() * 2);
      for (unsigned char b : piece.text) mapped.append(ByteToChar(b));
      piece.text = std::move(mapped);
    }
    *pieces = std::move(split);
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;  // null when use_regex is false
};

class DigitsPreTokenizer : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual) : individual_(individual) {}

  void PreTokenize(std::vector<Piece>* pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces->size() * 2);
    for (const Piece& piece : *pieces) {
      SplitPiece(piece, CharMatches(piece.text, IsNumeric),
                 individual_ ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, &out);
    }
    *pieces = std::move(out);
  }

 private:
  bool individual_;
};

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(char32_t replacement, PrependScheme scheme, bool split)
      : replacement_(replacement), scheme_(scheme), split_(split) {
    AppendUtf8(replacement, &replacement_str_);
  }

  void PreTokenize(std::vector<Piece>* pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces->size() * 4);
    for (Piece& piece : *pieces) {
      piece.text = absl::StrReplaceAll(piece.text, {{" ", replacement_str_}});
      const bool starts_with_replacement =
          absl::string_view(piece.text).substr(0, replacement_str_.size()) == replacement_str_;
      if (!starts_with_replacement && (scheme_ == PrependScheme::kAlways ||
                                       (scheme_ == PrependScheme::kFirst && piece.at_start))) {
        piece.text.insert(0, replacement_str_);
      }
      if (split_) {
        const char32_t r = replacement_;
        SplitPiece(piece, CharMatches(piece.text, [r](char32_t c) { return c == r; }),
                   SplitBehavior::kMergedWithNext, &out);
      } else if (!piece.text.empty()) {
        out.push_back(std::move(piece));
      }
    }
    *pieces = std::move(out);
  }

 private:
  char32_t replacement_;
  std::string replacement_str_;
  PrependScheme scheme_;
  bool split_;
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void PreTokenize(std::vector<Piece>* pieces) const override {
    for (const auto& step : steps_) step->PreTokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

absl::StatusOr<SplitBehavior> ParseBehavior(const nlohmann::json& j, const JsonContext& ctx) {
  ASSIGN_OR_RETURN(std::string behavior, GetString(j, "behavior", ctx));
  if (behavior == "Removed") return SplitBehavior::kRemoved;
  if (behavior == "Isolated") return SplitBehavior::kIsolated;
  if (behavior == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (behavior == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (behavior == "Contiguous") return SplitBehavior::kContiguous;
  return ctx.Error(absl::StrCat("unsupported Split behavior '", behavior, "'"));
}

}  // namespace

absl::StatusOr<MetaspaceOptions> ParseMetaspaceOptions(const nlohmann::json& j,
                                                       const JsonContext& ctx) {
  ASSIGN_OR_RETURN(std::string replacement, GetString(j, "replacement", ctx));
  size_t pos = 0;
  if (replacement.empty() || !IsValidUtf8(replacement) ||
      (NextCodepoint(replacement, &pos), pos != replacement.size())) {
    return ctx.Error("field 'replacement' must be a single character");
  }
  pos = 0;
  const char32_t r = NextCodepoint(replacement, &pos);
  // Current files carry prepend_scheme (default "always"); older ones add_prefix_space, which
  // the library accepts as false only together with prepend_scheme "never".
  PrependScheme scheme = PrependScheme::kAlways;
  ASSIGN_OR_RETURN(std::string s, GetOptionalString(j, "prepend_scheme", "always", ctx));
  if (s == "first") {
    scheme = PrependScheme::kFirst;
  } else if (s == "never") {
    scheme = PrependScheme::kNever;
  } else if (s != "always") {
    return ctx.Error(absl::StrCat("unsupported prepend_scheme '", s, "'"));
  }
  ASSIGN_OR_RETURN(bool add_prefix_space, GetBool(j, "add_prefix_space", true, ctx));
  if (!add_prefix_space && scheme != PrependScheme::kNever) {
    return ctx.Error("add_prefix_space does not match declared prepend_scheme");
  }
  return MetaspaceOptions{r, scheme};
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const nlohmann::json& j,
                                                                const JsonContext& ctx) {
  ASSIGN_OR_RETURN(std::string type, GetType(j, ctx));
  if (type == "Split") {
    ASSIGN_OR_RETURN(std::unique_ptr<Regex> pattern, GetPattern(j, ctx));
    ASSIGN_OR_RETURN(SplitBehavior behavior, ParseBehavior(j, ctx));
    ASSIGN_OR_RETURN(bool invert, GetBool(j, "invert", false, ctx));
    return std::make_unique<SplitPreTokenizer>(std::move(pattern), behavior, invert);
  }
  if (type == "ByteLevel") {
    ASSIGN_OR_RETURN(bool add_prefix_space, GetBool(j, "add_prefix_space", true, ctx));
    ASSIGN_OR_RETURN(bool use_regex, GetBool(j, "use_regex", true, ctx));
    std::unique_ptr<Regex> regex;
    if (use_regex) {
      ASSIGN_OR_RETURN(regex, Regex::Compile(kGpt2Pattern));
    }
    return std::make_unique<ByteLevelPreTokenizer>(add_prefix_space, std::move(regex));
  }
  if (type == "Digits") {
    ASSIGN_OR_RETURN(bool individual, GetBool(j, "individual_digits", false, ctx));
    return std::make_unique<DigitsPreTokenizer>(individual);
  }
  if (type == "Metaspace") {
    ASSIGN_OR_RETURN(MetaspaceOptions options, ParseMetaspaceOptions(j, ctx));
    ASSIGN_OR_RETURN(bool split, GetBool(j, "split", true, ctx));
    return std::make_unique<MetaspacePreTokenizer>(options.replacement, options.scheme, split);
  }
  if (type == "Sequence") {
    auto it = j.find("pretokenizers");
    if (it == j.end() || !it->is_array()) return ctx.Error("missing array field 'pretokenizers'");
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (size_t i = 0; i < it->size(); ++i) {
      ASSIGN_OR_RETURN(auto step, ParsePreTokenizer(
                                      (*it)[i], ctx.Child(absl::StrCat("pretokenizers[", i, "]"))));
      steps.push_back(std::move(step));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  return UnsupportedType("pre_tokenizer", type, ctx);
}

}  // namespace shardserve::text
