#include "worker/text/chat_template.h"

#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/civil_time.h"
#include "common/mapped_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using json = nlohmann::ordered_json;

std::string SourceDir() {
  const char* dir = std::getenv("SHARDSERVE_SOURCE_DIR");
  return dir != nullptr ? dir : ".";
}

// The shared reference data lives beside the repository (shared/ next to the clone).
std::string SharedTemplateDir() { return SourceDir() + "/../shared/reference/chat_templates"; }

std::string FixtureDir() { return SourceDir() + "/tests/fixtures/chat_templates"; }

// strftime_now() returns this instant; render_expected.py uses the same (FIXED_NOW, UTC).
absl::Time FixedNow() {
  return absl::FromCivil(absl::CivilSecond(2025, 3, 7, 9, 5, 3), absl::UTCTimeZone());
}

ChatTemplateOptions TestOptions() {
  ChatTemplateOptions options;
  options.clock = FixedNow;
  options.time_zone = absl::UTCTimeZone();
  return options;
}

json LoadJson(const std::string& path) {
  auto text = ReadFileToString(path);
  EXPECT_TRUE(text.ok()) << text.status();
  if (!text.ok()) return json();
  try {
    return json::parse(*text);
  } catch (const json::exception& e) {
    ADD_FAILURE() << path << ": " << e.what();
    return json();
  }
}

std::string ReadText(const std::string& path) {
  auto text = ReadFileToString(path);
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : "";
}

// Renders `tmpl` for `context` and compares with one expected.json entry: {"text": ...} must match
// byte for byte; {"error": msg} must be an INVALID_ARGUMENT whose message contains msg. Returns
// whether it matched (failures are also reported through gtest).
bool CheckRender(const ChatTemplate& tmpl, const json& context, const json& expected,
                 const std::string& label) {
  absl::StatusOr<std::string> got = tmpl.Render(context);
  if (expected.contains("text")) {
    const std::string want = expected["text"].get<std::string>();
    EXPECT_TRUE(got.ok()) << label << ": " << got.status();
    if (!got.ok()) return false;
    EXPECT_EQ(*got, want) << label;
    return *got == want;
  }
  if (expected.value("error_type", "") == "RecursionError") {
    // Python overflows its stack; we stop at the macro depth limit.
    EXPECT_FALSE(got.ok()) << label;
    if (got.ok()) return false;
    EXPECT_EQ(got.status().code(), absl::StatusCode::kResourceExhausted) << label;
    EXPECT_THAT(std::string(got.status().message()), HasSubstr("macro calls nested deeper than"))
        << label;
    return got.status().code() == absl::StatusCode::kResourceExhausted;
  }
  const std::string want_error = expected["error"].get<std::string>();
  EXPECT_FALSE(got.ok()) << label << ": expected error '" << want_error << "', rendered:\n"
                         << (got.ok() ? *got : "");
  if (got.ok()) return false;
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument)
      << label << ": " << got.status();
  EXPECT_THAT(std::string(got.status().message()), HasSubstr(want_error)) << label;
  return got.status().code() == absl::StatusCode::kInvalidArgument &&
         std::string(got.status().message()).find(want_error) != std::string::npos;
}

// --- The shared reference set: what transformers renders -------------------------------------

TEST(ChatTemplateReference, EveryTemplateAndConversationMatchesTransformers) {
  const std::string dir = SharedTemplateDir();
  ASSERT_TRUE(std::filesystem::exists(dir + "/expected.json"))
      << "shared reference data not found at " << dir
      << " (the repository expects shared/ beside its checkout)";
  const json conversations = LoadJson(dir + "/conversations.json");
  const json expected = LoadJson(dir + "/expected.json");
  ASSERT_TRUE(conversations.is_object());
  ASSERT_TRUE(expected.is_object());

  // Every template file in the directory has expectations.
  std::set<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() == ".jinja") files.insert(entry.path().stem().string());
  }
  for (const std::string& stem : files) EXPECT_TRUE(expected.contains(stem)) << stem;
  EXPECT_EQ(files.size(), expected.size());

  int pairs = 0;
  int matched = 0;
  for (const auto& [name, entry] : expected.items()) {
    const std::string source = ReadText(dir + "/" + entry["file"].get<std::string>());
    auto tmpl = ChatTemplate::Parse(source, name, TestOptions());
    ASSERT_TRUE(tmpl.ok()) << tmpl.status();
    for (const auto& [conv_name, want] : entry["conversations"].items()) {
      const json& conv = conversations[conv_name];
      json context;
      context["messages"] = conv["messages"];
      context["add_generation_prompt"] = conv["add_generation_prompt"];
      if (!entry["bos_token"].is_null()) context["bos_token"] = entry["bos_token"];
      if (!entry["eos_token"].is_null()) context["eos_token"] = entry["eos_token"];
      ++pairs;
      if (CheckRender(*tmpl, context, want, absl::StrCat(name, " / ", conv_name))) ++matched;
    }
  }
  std::cout << "[ reference ] " << matched << " of " << pairs
            << " (template, conversation) pairs match transformers\n";
  EXPECT_EQ(pairs, 15 * 6);
  EXPECT_EQ(matched, pairs);
}

// --- The fixture set: more conversations and templates, rendered by render_expected.py ---------

json FixtureContext(const json& conv, const json& entry) {
  json context;
  context["messages"] = conv["messages"];
  context["add_generation_prompt"] = conv["add_generation_prompt"];
  context["tools"] = conv.contains("tools") ? conv["tools"] : json(nullptr);
  context["documents"] = conv.contains("documents") ? conv["documents"] : json(nullptr);
  if (conv.contains("kwargs")) {
    for (const auto& [k, v] : conv["kwargs"].items()) context[k] = v;
  }
  if (!entry["bos_token"].is_null()) context["bos_token"] = entry["bos_token"];
  if (!entry["eos_token"].is_null()) context["eos_token"] = entry["eos_token"];
  return context;
}

TEST(ChatTemplateFixtures, EveryTemplateAndConversationMatchesJinja2) {
  const std::string dir = FixtureDir();
  ASSERT_TRUE(std::filesystem::exists(SharedTemplateDir()))
      << "shared reference data not found at " << SharedTemplateDir();
  const json conversations = LoadJson(dir + "/conversations.json");
  const json expected = LoadJson(dir + "/expected.json");
  ASSERT_TRUE(expected.is_object());
  int pairs = 0;
  int matched = 0;
  for (const auto& [name, entry] : expected.items()) {
    const std::string base = entry["source"] == "shared" ? SharedTemplateDir() : dir;
    const std::string source = ReadText(base + "/" + entry["file"].get<std::string>());
    auto tmpl = ChatTemplate::Parse(source, name, TestOptions());
    ASSERT_TRUE(tmpl.ok()) << tmpl.status();
    for (const auto& [conv_name, want] : entry["conversations"].items()) {
      ++pairs;
      if (CheckRender(*tmpl, FixtureContext(conversations[conv_name], entry), want,
                      absl::StrCat(name, " / ", conv_name))) {
        ++matched;
      }
    }
  }
  std::cout << "[ fixtures ] " << matched << " of " << pairs
            << " (template, conversation) pairs match Jinja2\n";
  EXPECT_EQ(pairs, static_cast<int>(expected.size() * conversations.size()));
  EXPECT_EQ(matched, pairs);
}

// Small templates exercising one language feature each (features.json), rendered by Jinja2.
TEST(ChatTemplateFixtures, LanguageFeaturesMatchJinja2) {
  const json cases = LoadJson(FixtureDir() + "/features_expected.json");
  ASSERT_TRUE(cases.is_object());
  int matched = 0;
  for (const auto& [name, c] : cases.items()) {
    const std::string source = c["template"].get<std::string>();
    auto tmpl = ChatTemplate::Parse(source, name, TestOptions());
    if (c.value("phase", "") == "parse") {
      // Python rejects it at compile time; so must we (messages differ, code must not).
      EXPECT_FALSE(tmpl.ok()) << name << " should not parse";
      if (!tmpl.ok()) {
        EXPECT_EQ(tmpl.status().code(), absl::StatusCode::kInvalidArgument) << name;
        EXPECT_THAT(std::string(tmpl.status().message()), HasSubstr(name + " line ")) << name;
        ++matched;
      }
      continue;
    }
    EXPECT_TRUE(tmpl.ok()) << name << ": " << tmpl.status();
    if (!tmpl.ok()) continue;
    if (CheckRender(*tmpl, c["context"], c, name)) ++matched;
  }
  std::cout << "[ features ] " << matched << " of " << cases.size() << " cases match Jinja2\n";
  EXPECT_EQ(matched, static_cast<int>(cases.size()));
}

// --- Direct tests of behaviour the Python fixtures cannot express -----------------------------

absl::StatusOr<std::string> RenderSource(const std::string& source, const json& context = {},
                                         ChatTemplateOptions options = TestOptions()) {
  auto tmpl = ChatTemplate::Parse(source, "chat_template", std::move(options));
  if (!tmpl.ok()) return tmpl.status();
  return tmpl->Render(context.is_null() ? json::object() : context);
}

TEST(ChatTemplate, RendersSmolLMStyleConversation) {
  const std::string source =
      "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
      "message['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
      "{{ '<|im_start|>assistant\\n' }}{% endif %}";
  json context = json::parse(R"({"messages": [{"role": "user", "content": "Hi"}],
                                 "add_generation_prompt": true})");
  auto out = RenderSource(source, context);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, RaiseExceptionIsAnErrorNamingTemplateLineAndMessage) {
  auto tmpl = ChatTemplate::Parse(
      "line one\n{% if true %}\n{{ raise_exception('No system role') }}"
      "{% endif %}",
      "gemma tokenizer_config.json");
  ASSERT_TRUE(tmpl.ok()) << tmpl.status();
  auto out = tmpl->Render(json::object());
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(out.status().message(), "gemma tokenizer_config.json line 3: No system role");
}

struct ParseErrorCase {
  std::string source;
  std::string expected;  // substring of the message
};

TEST(ChatTemplate, UnsupportedOrInvalidSyntaxNamesLineColumnAndConstruct) {
  const std::vector<ParseErrorCase> cases = {
      {"a\nb\n{{ x | wordwrap(10) }}",
       "chat_template line 3 column 8: unsupported filter 'wordwrap'"},
      {"{{ x | frobnicate }}", "chat_template line 1 column 8: unknown filter 'frobnicate'"},
      {"{{ x | groupby('a') }}", "unsupported filter 'groupby'"},
      {"\n\n  {% include 'other.jinja' %}",
       "chat_template line 3 column 6: unsupported tag 'include'"},
      {"{% extends 'base' %}", "unsupported tag 'extends'"},
      {"{% block body %}{% endblock %}", "unsupported tag 'block'"},
      {"{% call m() %}x{% endcall %}", "unsupported tag 'call'"},
      {"{% frobnicate %}", "line 1 column 4: unknown tag 'frobnicate'"},
      {"{{ x is frobnicated }}", "line 1 column 9: unknown test 'frobnicated'"},
      {"{% for x in y recursive %}{% endfor %}", "unsupported: recursive for loops"},
      {"{{ f(*args) }}", "unsupported: *args / **kwargs in calls"},
      {"{{ xs|select('frobnicated') }}", "unknown test 'frobnicated'"},
      {"{{ xs|map('wordwrap') }}", "unsupported filter 'wordwrap'"},
      {"{% for x in [1] %}\n{% endif %}",
       "line 2 column 4: unexpected tag 'endif' (expected 'endfor' or 'else')"},
      {"{% endfor %}", "unexpected tag 'endfor' (no open block)"},
      {"{% if true %}\nx",
       "line 2 column 2: unexpected end of template: expected 'elif' or 'else' or 'endif' to close "
       "the 'if' block opened on line 1"},
      {"{{ 'abc }}", "line 1 column 4: unterminated string literal"},
      {"{{ x ", "line 1 column 1: unterminated expression: missing '}}'"},
      {"{# never closed", "unterminated comment"},
      {"{{ (1 + 2 }}", "unexpected '}', expected ')'"},
      {"{{ 1 + }}", "line 1 column 8: unexpected '}}' in expression"},
      {"{% set 1 = 2 %}", "can't assign to this expression"},
      {"{% break %}", "'break' outside of a for loop"},
      {"{% macro m(a=1, b) %}{% endmacro %}", "non-default argument follows default argument"},
      {"{{ 99999999999999999999 }}", "integer literal does not fit in 64 bits"},
      {"{{ '\\N{BULLET}' }}", "\\N{...} escapes are not supported"},
      {"{{ a @ b }}", "unexpected character '@'"},
      {std::string("{{ '\xff' }}"), "template is not valid UTF-8"},
  };
  for (const auto& c : cases) {
    auto tmpl = ChatTemplate::Parse(c.source, "chat_template");
    ASSERT_FALSE(tmpl.ok()) << c.source;
    EXPECT_EQ(tmpl.status().code(), absl::StatusCode::kInvalidArgument) << c.source;
    EXPECT_THAT(std::string(tmpl.status().message()), HasSubstr(c.expected)) << c.source;
  }
}

TEST(ChatTemplate, RenderErrorsNameLineAndReason) {
  struct Case {
    std::string source;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"ok\n{{ 'a' + 1 }}", "chat_template line 2: can only concatenate str (not \"int\") to str"},
      {"\n\n{{ messages[0].content.foo.bar }}",
       "chat_template line 3: 'dict object' has no attribute 'content'"},
      {"{{ 'x'.encode() }}", "line 1: unsupported string method 'encode'"},
      {"{{ (5).bit_length() }}", "unsupported int attribute 'bit_length'"},
      {"{{ [1]|select }}", "printing a generator object is not supported"},
      {"{{ 'a'.upper }}", "printing a builtin_function_or_method object is not supported"},
      {"{{ 9223372036854775807 + 1 }}", "integer overflow"},
      {"{% set d = {1: 'a'} %}", "dict keys other than strings are not supported"},
      {"{{ cycler(1, 2) }}", "the Jinja2 global 'cycler' is not supported"},
      {"{{ ('<b>'|safe) + 'x' }}", "'+' on a Markup string"},
  };
  for (const auto& c : cases) {
    auto out = RenderSource(c.source, json::parse(R"({"messages": [{"role": "user"}]})"));
    ASSERT_FALSE(out.ok()) << c.source << " rendered " << *out;
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument) << c.source;
    EXPECT_THAT(std::string(out.status().message()), HasSubstr(c.expected)) << c.source;
  }
}

TEST(ChatTemplate, MissingTokenIsUndefinedAndPrintsEmpty) {
  auto out = RenderSource("[{{ bos_token }}]{% if bos_token is defined %}def{% endif %}");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "[]");
}

TEST(ChatTemplate, GenerationBlockRendersItsBody) {
  // transformers' AssistantTracker extension marks assistant text with {% generation %}.
  auto out = RenderSource("a{% generation %}b{{ 1 }}{% endgeneration %}c");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "ab1c");
}

TEST(ChatTemplate, StrftimeNowUsesTheInjectedClockAndZone) {
  ChatTemplateOptions options = TestOptions();
  options.clock = [] {
    return absl::FromCivil(absl::CivilSecond(2024, 12, 31, 23, 30, 0), absl::UTCTimeZone());
  };
  auto out = RenderSource("{{ strftime_now('%d %b %Y %H:%M') }}", json::object(), options);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "31 Dec 2024 23:30");
  options.time_zone = absl::FixedTimeZone(3600);
  out = RenderSource("{{ strftime_now('%d %b %Y %H:%M') }}", json::object(), options);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "01 Jan 2025 00:30");
}

TEST(ChatTemplate, ContextKeyOrderIsPreservedByTojson) {
  json context =
      json::parse(R"({"tool": {"name": "f", "description": "d", "arguments": {"z": 1, "a": 2}}})");
  auto out = RenderSource("{{ tool|tojson }}", context);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, R"({"name": "f", "description": "d", "arguments": {"z": 1, "a": 2}})");
}

TEST(ChatTemplate, ContextMustBeAnObjectWithValidUtf8) {
  auto tmpl = ChatTemplate::Parse("x", "t");
  ASSERT_TRUE(tmpl.ok());
  auto out = tmpl->Render(json::array());
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(out.status().message()),
              HasSubstr("t: the render context must be a JSON object"));
  json bad;
  bad["messages"] = json::array({json{{"content", std::string("\xc3\x28")}}});
  out = tmpl->Render(bad);
  ASSERT_FALSE(out.ok());
  EXPECT_THAT(std::string(out.status().message()),
              HasSubstr("messages[0].content: string is not valid UTF-8"));
  bad = json{{"n", 18446744073709551615ull}};
  out = tmpl->Render(bad);
  ASSERT_FALSE(out.ok());
  EXPECT_THAT(std::string(out.status().message()), HasSubstr("does not fit in 64 bits"));
}

TEST(ChatTemplate, RunawayTemplatesHitLimits) {
  ChatTemplateOptions options = TestOptions();
  options.max_output_bytes = 1 << 16;
  options.max_steps = 100000;
  options.max_call_depth = 20;
  struct Case {
    std::string source;
    absl::StatusCode code;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
       absl::StatusCode::kResourceExhausted, "step budget"},
      {"{% for i in range(10000) %}{{ 'x' * 100 }}{% endfor %}",
       absl::StatusCode::kResourceExhausted, "exceeds 65536 bytes"},
      {"{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
       "{% endfor %}",
       absl::StatusCode::kResourceExhausted, "exceeds 65536 bytes"},
      {"{{ 'x' * 100000000 }}", absl::StatusCode::kResourceExhausted, "exceeds 65536 bytes"},
      {"{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
       absl::StatusCode::kResourceExhausted, "macro calls nested deeper than 20 levels"},
      {"{% set ns = namespace(v=[]) %}{% for i in range(300) %}{% set ns.v = [ns.v] %}"
       "{% endfor %}",
       absl::StatusCode::kInvalidArgument, "value nesting deeper than 200 levels"},
      {"{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}", absl::StatusCode::kInvalidArgument,
       "value nesting deeper than"},
      {"{{ range(200000) }}", absl::StatusCode::kInvalidArgument, "Range too big"},
  };
  for (const auto& c : cases) {
    auto out = RenderSource(c.source, json::object(), options);
    ASSERT_FALSE(out.ok()) << c.source;
    EXPECT_EQ(out.status().code(), c.code) << c.source << ": " << out.status();
    EXPECT_THAT(std::string(out.status().message()), HasSubstr(c.expected)) << c.source;
    EXPECT_THAT(std::string(out.status().message()), HasSubstr("chat_template line 1")) << c.source;
  }
}

TEST(ChatTemplate, DeeplyNestedTemplateIsRejectedNotOverflowed) {
  auto tmpl = ChatTemplate::Parse(
      "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}", "t");
  ASSERT_FALSE(tmpl.ok());
  EXPECT_THAT(std::string(tmpl.status().message()), HasSubstr("nested more than"));
  std::string blocks;
  for (int i = 0; i < 1000; ++i) blocks += "{% if true %}";
  tmpl = ChatTemplate::Parse(blocks, "t");
  ASSERT_FALSE(tmpl.ok());
  EXPECT_THAT(std::string(tmpl.status().message()), HasSubstr("nested more than"));
  json nested = json::array();
  for (int i = 0; i < 1000; ++i) nested = json::array({nested});
  tmpl = ChatTemplate::Parse("{{ x|length }}", "t");
  ASSERT_TRUE(tmpl.ok());
  auto out = tmpl->Render(json{{"x", nested}});
  ASSERT_FALSE(out.ok());
  EXPECT_THAT(std::string(out.status().message()), HasSubstr("nested deeper than"));
}

TEST(ChatTemplate, ConcurrentRendersOfOneTemplateAgree) {
  // gpt-oss uses macros (closures over scopes), namespaces, recursion and strftime_now.
  const std::string source = ReadText(FixtureDir() + "/templates/gpt-oss-120b.jinja");
  auto tmpl = ChatTemplate::Parse(source, "gpt-oss", TestOptions());
  ASSERT_TRUE(tmpl.ok()) << tmpl.status();
  json context = json::parse(R"({"add_generation_prompt": true, "builtin_tools": ["python"],
      "tools": [{"type": "function", "function": {"name": "f", "description": "d",
        "parameters": {"type": "object", "properties": {"x": {"type": "array",
          "items": {"type": "object", "properties": {"y": {"type": "integer"}}}}}}}}],
      "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
          "function": {"name": "f", "arguments": {"x": [{"y": 1}]}}}]},
        {"role": "tool", "content": "ok"}, {"role": "user", "content": "U2"}]})");
  auto want = tmpl->Render(context);
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_THAT(*want, HasSubstr("Current date: 2025-03-07"));
  std::vector<std::string> mismatches(8);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        auto got = tmpl->Render(context);
        if (!got.ok() || *got != *want) {
          mismatches[t] = got.ok() ? *got : std::string(got.status().message());
          return;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (const auto& m : mismatches) EXPECT_EQ(m, "");
}

}  // namespace
}  // namespace shardserve
