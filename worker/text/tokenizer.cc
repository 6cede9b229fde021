#include "worker/text/tokenizer.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/json.h"
#include "common/status_macros.h"
#include "worker/text/added_vocabulary.h"
#include "worker/text/bpe.h"
#include "worker/text/decoder.h"
#include "worker/text/json_fields.h"
#include "worker/text/normalizer.h"
#include "worker/text/pre_tokenizer.h"
#include "worker/text/spm.h"
#include "worker/text/unicode.h"

namespace shardserve {

using text::JsonContext;

namespace {

// Llama-3's pre-tokenization regex (tokenizer.json and llama.cpp's "llama-bpe").
constexpr char kLlama3Pattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

constexpr char kSpmSpace[] = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK

// Token ids index dense tables; real vocabularies stay far below this.
constexpr int64_t kMaxId = (int64_t{1} << 24) - 1;

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseMerges(
    const nlohmann::json& merges, const JsonContext& ctx) {
  if (!merges.is_array()) return ctx.Error("field 'merges' must be an array");
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const nlohmann::json& m = merges[i];
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      std::vector<std::string> parts = absl::StrSplit(s, ' ');
      if (parts.size() != 2) {
        return ctx.Error(absl::StrCat("merges[", i, "]: invalid merge '", s,
                                      "' (expected two tokens separated by one space)"));
      }
      out.emplace_back(std::move(parts[0]), std::move(parts[1]));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      out.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      return ctx.Error(absl::StrCat("merges[", i, "]: invalid merge ", DumpJson(m),
                                    " (expected \"a b\" or [\"a\", \"b\"])"));
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<text::Model>> ParseModel(const nlohmann::json& j,
                                                        const JsonContext& ctx) {
  RETURN_IF_ERROR(text::RequireObject(j, ctx));
  ASSIGN_OR_RETURN(std::string type, text::GetOptionalString(j, "type", "", ctx));
  if (type.empty()) {
    if (!j.contains("merges")) return ctx.Error("missing field 'type'");
    type = "BPE";  // the library infers BPE from the fields
  }
  if (type != "BPE") return text::UnsupportedType("model", type, ctx);
  auto vocab_it = j.find("vocab");
  if (vocab_it == j.end() || !vocab_it->is_object()) {
    return ctx.Error("missing object field 'vocab'");
  }
  text::Vocab vocab;
  for (auto it = vocab_it->begin(); it != vocab_it->end(); ++it) {
    if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > kMaxId) {
      return ctx.Error(
          absl::StrCat("vocab['", it.key(), "']: id must be an integer in [0, ", kMaxId, "]"));
    }
    if (!text::IsValidUtf8(it.key())) return ctx.Error("vocab has a token that is not UTF-8");
    vocab.Add(it.key(), static_cast<int32_t>(it->get<int64_t>()));
  }
  auto merges_it = j.find("merges");
  std::vector<std::pair<std::string, std::string>> merges;
  if (merges_it != j.end() && !merges_it->is_null()) {
    ASSIGN_OR_RETURN(merges, ParseMerges(*merges_it, ctx));
  }
  if (auto d = j.find("dropout"); d != j.end() && !d->is_null()) {
    if (!d->is_number()) return ctx.Error("field 'dropout' must be a number");
    if (d->get<double>() > 0) return ctx.Error("BPE dropout is not supported (not deterministic)");
  }
  text::BpeOptions options;
  ASSIGN_OR_RETURN(std::string unk, text::GetOptionalString(j, "unk_token", "", ctx));
  if (j.contains("unk_token") && !j["unk_token"].is_null()) options.unk_token = unk;
  if (j.contains("continuing_subword_prefix") && !j["continuing_subword_prefix"].is_null()) {
    ASSIGN_OR_RETURN(options.continuing_subword_prefix,
                     text::GetString(j, "continuing_subword_prefix", ctx));
  }
  if (j.contains("end_of_word_suffix") && !j["end_of_word_suffix"].is_null()) {
    ASSIGN_OR_RETURN(options.end_of_word_suffix, text::GetString(j, "end_of_word_suffix", ctx));
  }
  ASSIGN_OR_RETURN(options.fuse_unk, text::GetBool(j, "fuse_unk", false, ctx));
  ASSIGN_OR_RETURN(options.byte_fallback, text::GetBool(j, "byte_fallback", false, ctx));
  ASSIGN_OR_RETURN(options.ignore_merges, text::GetBool(j, "ignore_merges", false, ctx));
  ASSIGN_OR_RETURN(auto model,
                   text::BpeModel::Create(std::move(vocab), merges, std::move(options), ctx));
  return std::unique_ptr<text::Model>(std::move(model));
}

absl::StatusOr<std::vector<text::AddedToken>> ParseAddedTokens(const nlohmann::json& j,
                                                               const text::Vocab& model_vocab,
                                                               const JsonContext& ctx) {
  std::vector<text::AddedToken> tokens;
  if (j.is_null()) return tokens;
  if (!j.is_array()) return ctx.Error("must be an array");
  // Ids are assigned as the library's AddedVocabulary::add_tokens does (the file's "id" is only
  // checked there, with a warning): a content seen before keeps its id, a token of the model's
  // vocabulary gets the model's id, any other the next id after the model vocabulary and the
  // added tokens so far.
  absl::flat_hash_map<std::string, int32_t> assigned;
  const int64_t model_size = static_cast<int64_t>(model_vocab.size());
  int64_t max_added = -1;
  for (size_t i = 0; i < j.size(); ++i) {
    const JsonContext c = ctx.Child(absl::StrCat("[", i, "]"));
    RETURN_IF_ERROR(text::RequireObject(j[i], c));
    text::AddedToken t;
    ASSIGN_OR_RETURN(t.content, text::GetString(j[i], "content", c));
    if (!text::IsValidUtf8(t.content)) return c.Error("content is not UTF-8");
    ASSIGN_OR_RETURN(t.special, text::GetBool(j[i], "special", false, c));
    ASSIGN_OR_RETURN(t.single_word, text::GetBool(j[i], "single_word", false, c));
    ASSIGN_OR_RETURN(t.lstrip, text::GetBool(j[i], "lstrip", false, c));
    ASSIGN_OR_RETURN(t.rstrip, text::GetBool(j[i], "rstrip", false, c));
    ASSIGN_OR_RETURN(t.normalized, text::GetBool(j[i], "normalized", !t.special, c));
    if (t.content.empty()) continue;  // ignored by the library
    int64_t id;
    if (auto it = assigned.find(t.content); it != assigned.end()) {
      id = it->second;
    } else if (auto model_id = model_vocab.Find(t.content); model_id.has_value()) {
      id = *model_id;
    } else if (max_added < 0) {
      id = model_size;
    } else {
      id = max_added >= model_size || model_size == 0 ? max_added + 1 : model_size;
    }
    if (id > kMaxId) return c.Error("too many added tokens");
    t.id = static_cast<int32_t>(id);
    assigned[t.content] = t.id;
    max_added = std::max(max_added, id);
    tokens.push_back(std::move(t));
  }
  return tokens;
}

// The id of a post-processor's [token, id] pair (BertProcessing / RobertaProcessing).
absl::StatusOr<int32_t> ParseIdPair(const nlohmann::json& pair, const JsonContext& ctx) {
  if (!pair.is_array() || pair.size() != 2 || !pair[0].is_string() ||
      !pair[1].is_number_integer() || pair[1].get<int64_t>() < 0 ||
      pair[1].get<int64_t>() > kMaxId) {
    return ctx.Error("expected [token, id]");
  }
  return static_cast<int32_t>(pair[1].get<int64_t>());
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

namespace {

using TemplateItems = std::vector<std::pair<bool, std::vector<int32_t>>>;

absl::Status ParsePostProcessor(const nlohmann::json& j, const JsonContext& ctx,
                                std::vector<TemplateItems>* out) {
  if (j.is_null()) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::string type, text::GetType(j, ctx));
  if (type == "ByteLevel") return absl::OkStatus();  // only changes offsets
  if (type == "Sequence") {
    auto it = j.find("processors");
    if (it == j.end() || !it->is_array()) return ctx.Error("missing array field 'processors'");
    for (size_t i = 0; i < it->size(); ++i) {
      RETURN_IF_ERROR(
          ParsePostProcessor((*it)[i], ctx.Child(absl::StrCat("processors[", i, "]")), out));
    }
    return absl::OkStatus();
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    auto cls = j.find("cls");
    auto sep = j.find("sep");
    if (cls == j.end() || sep == j.end()) return ctx.Error("missing 'cls' or 'sep'");
    ASSIGN_OR_RETURN(int32_t cls_id, ParseIdPair(*cls, ctx.Child("cls")));
    ASSIGN_OR_RETURN(int32_t sep_id, ParseIdPair(*sep, ctx.Child("sep")));
    out->push_back({{false, {cls_id}}, {true, {}}, {false, {sep_id}}});
    return absl::OkStatus();
  }
  if (type != "TemplateProcessing") return text::UnsupportedType("post_processor", type, ctx);
  auto single = j.find("single");
  if (single == j.end() || !single->is_array()) return ctx.Error("missing array field 'single'");
  auto specials = j.find("special_tokens");
  TemplateItems items;
  for (size_t i = 0; i < single->size(); ++i) {
    const nlohmann::json& item = (*single)[i];
    const JsonContext c = ctx.Child(absl::StrCat("single[", i, "]"));
    if (item.is_object() && item.contains("Sequence")) {
      const nlohmann::json& seq = item["Sequence"];
      if (!seq.is_object() || seq.value("id", "") != "A") {
        return c.Error("a single-sequence template may only hold sequence 'A'");
      }
      items.push_back({true, {}});
    } else if (item.is_object() && item.contains("SpecialToken")) {
      ASSIGN_OR_RETURN(std::string name, text::GetString(item["SpecialToken"], "id", c));
      if (specials == j.end() || !specials->is_object() || !specials->contains(name)) {
        return c.Error(absl::StrCat("special token '", name, "' is not in special_tokens"));
      }
      const nlohmann::json& spec = (*specials)[name];
      auto ids = spec.find("ids");
      if (ids == spec.end() || !ids->is_array()) {
        return c.Error(absl::StrCat("special_tokens['", name, "'] has no 'ids' array"));
      }
      std::vector<int32_t> v;
      for (const auto& id : *ids) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxId) {
          return c.Error(absl::StrCat("special_tokens['", name, "'] has an invalid id"));
        }
        v.push_back(static_cast<int32_t>(id.get<int64_t>()));
      }
      items.push_back({false, std::move(v)});
    } else {
      return c.Error("expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
  }
  out->push_back(std::move(items));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(nlohmann::json j, ParseJsonFile(path));
  return FromJsonValue(j, path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(absl::string_view json,
                                                               absl::string_view what) {
  ASSIGN_OR_RETURN(nlohmann::json j, ParseJson(json, what));
  return FromJsonValue(j, what);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJsonValue(const nlohmann::json& j,
                                                                    absl::string_view what) {
  auto section = [&](const char* key) -> const nlohmann::json& {
    static const nlohmann::json* null_json = new nlohmann::json();
    auto it = j.find(key);
    return it == j.end() ? *null_json : *it;
  };
  try {
    if (!j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": not a tokenizer.json object"));
    }
    auto tok = std::unique_ptr<Tokenizer>(new Tokenizer());
    if (!j.contains("model")) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": missing 'model'"));
    }
    ASSIGN_OR_RETURN(tok->model_, ParseModel(j["model"], JsonContext{what, "model"}));
    if (const auto& n = section("normalizer"); !n.is_null()) {
      ASSIGN_OR_RETURN(tok->normalizer_, text::ParseNormalizer(n, JsonContext{what, "normalizer"}));
    }
    if (const auto& p = section("pre_tokenizer"); !p.is_null()) {
      ASSIGN_OR_RETURN(tok->pre_tokenizer_,
                       text::ParsePreTokenizer(p, JsonContext{what, "pre_tokenizer"}));
    }
    ASSIGN_OR_RETURN(tok->decoder_,
                     text::Decoder::Parse(section("decoder"), JsonContext{what, "decoder"}));
    std::vector<TemplateItems> templates;
    RETURN_IF_ERROR(ParsePostProcessor(section("post_processor"),
                                       JsonContext{what, "post_processor"}, &templates));
    for (auto& t : templates) {
      std::vector<TemplateItem> items;
      for (auto& [is_sequence, ids] : t) items.push_back(TemplateItem{is_sequence, ids});
      tok->templates_.push_back(std::move(items));
    }
    ASSIGN_OR_RETURN(std::vector<text::AddedToken> added,
                     ParseAddedTokens(section("added_tokens"), tok->model_->vocab(),
                                      JsonContext{what, "added_tokens"}));
    tok->added_ = std::make_unique<text::AddedVocabulary>(added, tok->normalizer_.get());

    // BOS / EOS: what the post-processor puts around the text.
    constexpr int32_t kMarker = std::numeric_limits<int32_t>::min();
    std::vector<int32_t> probe = {kMarker};
    for (const auto& t : tok->templates_) {
      std::vector<int32_t> next;
      for (const TemplateItem& item : t) {
        if (item.is_sequence) {
          next.insert(next.end(), probe.begin(), probe.end());
        } else {
          next.insert(next.end(), item.ids.begin(), item.ids.end());
        }
      }
      probe = std::move(next);
    }
    if (!probe.empty() && probe.front() != kMarker) tok->bos_id_ = probe.front();
    if (!probe.empty() && probe.back() != kMarker) tok->eos_id_ = probe.back();
    if (auto unk = j["model"].find("unk_token"); unk != j["model"].end() && unk->is_string()) {
      tok->unk_id_ = tok->TokenToId(unk->get<std::string>()).value_or(-1);
    }
    return tok;
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": malformed tokenizer.json: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGgufVocab(const GgufVocab& v) {
  constexpr absl::string_view kWhat = "GGUF tokenizer metadata";
  auto error = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(kWhat, ": ", parts...));
  };
  const size_t n = v.tokens.size();
  if (n == 0) return error("tokenizer.ggml.tokens is empty");
  if (n > static_cast<size_t>(kMaxId)) return error("too many tokens");
  if (!v.token_types.empty() && v.token_types.size() != n) {
    return error("tokenizer.ggml.token_type has ", v.token_types.size(), " entries for ", n,
                 " tokens");
  }
  if (!v.scores.empty() && v.scores.size() != n) {
    return error("tokenizer.ggml.scores has ", v.scores.size(), " entries for ", n, " tokens");
  }
  for (const auto& [name, id] : {std::pair<const char*, int64_t>{"bos", v.bos_id},
                                 {"eos", v.eos_id},
                                 {"unknown", v.unk_id},
                                 {"padding", v.pad_id}}) {
    if (id < -1 || id >= static_cast<int64_t>(n)) {
      return error(name, " token id ", id, " is outside the vocabulary of ", n);
    }
  }
  if (v.add_bos && v.bos_id < 0) return error("add_bos is set but there is no bos token id");
  if (v.add_eos && v.eos_id < 0) return error("add_eos is set but there is no eos token id");

  constexpr int32_t kUnknown = 2, kControl = 3, kUserDefined = 4;
  auto type_of = [&v](size_t id) { return v.token_types.empty() ? 1 : v.token_types[id]; };
  text::Vocab vocab;
  std::vector<text::AddedToken> added;
  for (size_t id = 0; id < n; ++id) {
    if (!text::IsValidUtf8(v.tokens[id])) return error("token ", id, " is not valid UTF-8");
    vocab.Add(v.tokens[id], static_cast<int32_t>(id));
    const int32_t type = type_of(id);
    if (type == kControl || type == kUnknown || type == kUserDefined) {
      text::AddedToken t;
      t.content = v.tokens[id];
      t.id = static_cast<int32_t>(id);
      t.special = type != kUserDefined;
      added.push_back(std::move(t));
    }
  }

  auto tok = std::unique_ptr<Tokenizer>(new Tokenizer());
  const JsonContext ctx{kWhat, "tokenizer"};
  nlohmann::json decoder_json;
  if (v.model == "gpt2") {
    if (v.merges.empty()) return error("model 'gpt2' needs tokenizer.ggml.merges");
    std::vector<std::pair<std::string, std::string>> merges;
    merges.reserve(v.merges.size());
    for (size_t i = 0; i < v.merges.size(); ++i) {
      std::vector<std::string> parts = absl::StrSplit(v.merges[i], ' ');
      if (parts.size() != 2) {
        return error("tokenizer.ggml.merges[", i, "]: invalid merge '", v.merges[i],
                     "' (expected two tokens separated by one space)");
      }
      merges.emplace_back(std::move(parts[0]), std::move(parts[1]));
    }
    const nlohmann::json byte_level_no_regex = {
        {"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
    nlohmann::json pre;
    text::BpeOptions options;
    if (v.pre == "smollm") {
      pre = {{"type", "Sequence"},
             {"pretokenizers",
              {{{"type", "Digits"}, {"individual_digits", true}},
               {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}}}};
    } else if (v.pre == "llama-bpe" || v.pre == "llama3" || v.pre == "llama-v3") {
      pre = {{"type", "Sequence"},
             {"pretokenizers",
              {{{"type", "Split"},
                {"pattern", {{"Regex", kLlama3Pattern}}},
                {"behavior", "Isolated"},
                {"invert", false}},
               byte_level_no_regex}}};
      options.ignore_merges = true;
    } else if (v.pre == "default" || v.pre == "gpt2" || v.pre == "gpt-2") {
      pre = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
    } else {
      return error("unsupported tokenizer.ggml.pre '", v.pre, "' for model 'gpt2'");
    }
    ASSIGN_OR_RETURN(tok->pre_tokenizer_, text::ParsePreTokenizer(pre, ctx));
    ASSIGN_OR_RETURN(auto model,
                     text::BpeModel::Create(std::move(vocab), merges, std::move(options),
                                            JsonContext{kWhat, "tokenizer.ggml.merges"}));
    tok->model_ = std::move(model);
    decoder_json = {{"type", "ByteLevel"}};
  } else if (v.model == "llama") {
    if (v.scores.empty()) return error("model 'llama' needs tokenizer.ggml.scores");
    nlohmann::json replace = {
        {"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpmSpace}};
    nlohmann::json normalizer =
        v.add_space_prefix
            ? nlohmann::json{{"type", "Sequence"},
                             {"normalizers",
                              {{{"type", "Prepend"}, {"prepend", kSpmSpace}}, replace}}}
            : replace;
    ASSIGN_OR_RETURN(tok->normalizer_, text::ParseNormalizer(normalizer, ctx));
    std::vector<bool> mergeable(n);
    for (size_t id = 0; id < n; ++id) {
      const int32_t type = type_of(id);
      mergeable[id] = type == 0 || type == 1 || type == kUserDefined;
    }
    tok->model_ = text::SpmModel::Create(std::move(vocab), v.scores, std::move(mergeable),
                                         static_cast<int32_t>(v.unk_id));
    decoder_json = {{"type", "Sequence"},
                    {"decoders",
                     {{{"type", "Replace"}, {"pattern", {{"String", kSpmSpace}}}, {"content", " "}},
                      {{"type", "ByteFallback"}},
                      {{"type", "Fuse"}}}}};
    if (v.add_space_prefix) {
      decoder_json["decoders"].push_back(
          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
    }
  } else {
    return error("unsupported tokenizer.ggml.model '", v.model, "'");
  }
  ASSIGN_OR_RETURN(tok->decoder_, text::Decoder::Parse(decoder_json, ctx));
  tok->added_ = std::make_unique<text::AddedVocabulary>(added, tok->normalizer_.get());
  std::vector<TemplateItem> items;
  if (v.add_bos) items.push_back(TemplateItem{false, {static_cast<int32_t>(v.bos_id)}});
  items.push_back(TemplateItem{true, {}});
  if (v.add_eos) items.push_back(TemplateItem{false, {static_cast<int32_t>(v.eos_id)}});
  if (items.size() > 1) tok->templates_.push_back(std::move(items));
  tok->bos_id_ = static_cast<int32_t>(v.bos_id);
  tok->eos_id_ = static_cast<int32_t>(v.eos_id);
  tok->unk_id_ = static_cast<int32_t>(v.unk_id);
  tok->pad_id_ = static_cast<int32_t>(v.pad_id);
  return tok;
}

std::vector<int32_t> Tokenizer::Encode(absl::string_view input, bool add_special_tokens) const {
  std::string sanitized;
  absl::string_view text = input;
  if (!text::IsValidUtf8(input)) {
    sanitized = text::ToValidUtf8(input);
    text = sanitized;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::vector<text::Piece> pieces;
  for (const auto& part : added_->Split(text, /*normalized_tokens=*/false)) {
    if (part.id >= 0) {
      ids.push_back(part.id);
      continue;
    }
    std::string normalized(text.substr(part.begin, part.end - part.begin));
    if (normalizer_ != nullptr) normalizer_->Normalize(&normalized);
    const bool at_start = part.begin == 0;
    for (const auto& sub : added_->Split(normalized, /*normalized_tokens=*/true)) {
      if (sub.id >= 0) {
        ids.push_back(sub.id);
        continue;
      }
      if (sub.end <= sub.begin) continue;
      pieces.clear();
      pieces.push_back(text::Piece{normalized.substr(sub.begin, sub.end - sub.begin),
                                   at_start && sub.begin == 0});
      if (pre_tokenizer_ != nullptr) pre_tokenizer_->PreTokenize(&pieces);
      for (const text::Piece& piece : pieces) model_->Tokenize(piece.text, &ids);
    }
  }
  if (add_special_tokens) {
    for (const auto& items : templates_) {
      std::vector<int32_t> next;
      next.reserve(ids.size() + items.size());
      for (const TemplateItem& item : items) {
        if (item.is_sequence) {
          next.insert(next.end(), ids.begin(), ids.end());
        } else {
          next.insert(next.end(), item.ids.begin(), item.ids.end());
        }
      }
      ids = std::move(next);
    }
  }
  return ids;
}

const std::string* Tokenizer::DecodeToken(int32_t id, bool skip_special_tokens) const {
  const std::string* token = nullptr;
  if (const text::AddedToken* a = added_->FindById(id)) {
    token = &a->decode_text;
  } else {
    token = model_->vocab().Token(id);
  }
  if (token == nullptr || (skip_special_tokens && added_->IsSpecialContent(*token))) {
    return nullptr;
  }
  return token;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (const std::string* t = DecodeToken(id, skip_special_tokens)) tokens.push_back(*t);
  }
  return decoder_->Decode(std::move(tokens));
}

StreamDecoder Tokenizer::NewStreamDecoder(bool skip_special_tokens) const {
  return StreamDecoder(this, skip_special_tokens);
}

int32_t Tokenizer::vocab_size() const {
  return std::max(model_->vocab().end_id(), added_->end_id());
}

std::optional<int32_t> Tokenizer::TokenToId(absl::string_view token) const {
  if (auto id = added_->FindByContent(token); id.has_value()) return id;
  return model_->vocab().Find(token);
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  if (const text::AddedToken* a = added_->FindById(id)) return a->decode_text;
  if (const std::string* t = model_->vocab().Token(id)) return *t;
  return std::nullopt;
}

bool Tokenizer::IsSpecial(int32_t id) const {
  const text::AddedToken* a = added_->FindById(id);
  return a != nullptr && a->special;
}

StreamDecoder::StreamDecoder(const Tokenizer* tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer),
      skip_special_tokens_(skip_special_tokens),
      stream_(tokenizer->decoder_->NewStream()) {}
StreamDecoder::StreamDecoder(StreamDecoder&&) noexcept = default;
StreamDecoder& StreamDecoder::operator=(StreamDecoder&&) noexcept = default;
StreamDecoder::~StreamDecoder() = default;

std::string StreamDecoder::Step(int32_t id) {
  std::string out;
  if (const std::string* t = tokenizer_->DecodeToken(id, skip_special_tokens_)) {
    stream_->Push(*t, &out);
  }
  return out;
}

std::string StreamDecoder::Finish() {
  std::string out;
  stream_->Finish(&out);
  return out;
}

}  // namespace shardserve
