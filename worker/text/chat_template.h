// Chat templates: the Jinja2 programs Hugging Face models ship (tokenizer_config.json
// "chat_template", GGUF "tokenizer.chat_template") that turn a conversation into the prompt text.
//
// ChatTemplate implements the Jinja2 subset those templates use, with the semantics of
// transformers' apply_chat_template: an ImmutableSandboxedEnvironment with trim_blocks and
// lstrip_blocks, the loopcontrols extension, raise_exception(), strftime_now(), a json.dumps-based
// tojson filter, and Jinja2's default (lenient) undefined values. Output matches Python byte for
// byte on the reference templates (worker/text/chat_template_test.cc).
//
// Supported: {{ }}, {% %}, {# #} with '-'/'+' whitespace control; for (else, loop filter,
// break/continue, loop.*), if/elif/else, set (names, tuples, namespace attributes, block set),
// macro, with, filter blocks, raw, and transformers' {% generation %}; the Python-like expression
// language (arithmetic, comparisons incl. chained, in/not in, and/or/not, x if c else y, ~,
// literals, slicing, attribute/item access, str/dict/list methods); Jinja2's builtin filters and
// tests except groupby, slice, striptags, urlize, urlencode, wordwrap, xmlattr, pprint, random,
// filesizeformat; globals range, dict, namespace, joiner. Anything else (include/extends/block/
// call/import tags, those filters, recursive loops, *args) is rejected with INVALID_ARGUMENT
// naming the line and construct, at parse time where possible (an unknown filter or test name is
// rejected even in code that never runs). Also unsupported, with an error rather than different
// output: dict keys other than strings, operators and methods on Markup (|safe, |escape) strings,
// a few rarely used str/int methods. Known deviations from CPython: integers are 64-bit (overflow
// is an error), Unicode case mapping covers simple mappings plus the common special cases, objects
// Python would print with a memory address cannot be printed, and generator filters (select,
// map, ...) run eagerly, so with several errors in one expression a different one may surface.
//
// Thread safety: Parse once; Render is const and may run concurrently on one ChatTemplate.
#ifndef SHARDSERVE_WORKER_TEXT_CHAT_TEMPLATE_H_
#define SHARDSERVE_WORKER_TEXT_CHAT_TEMPLATE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace shardserve {
namespace jinja {
struct Template;
}  // namespace jinja

struct ChatTemplateOptions {
  // Clock and zone for strftime_now() (transformers uses datetime.now(): local time). Tests
  // inject a fixed time. The clock is called from Render and must be thread-safe.
  std::function<absl::Time()> clock = [] { return absl::Now(); };
  absl::TimeZone time_zone = absl::LocalTimeZone();
  // Limits that bound a hostile or runaway template; exceeding one is RESOURCE_EXHAUSTED.
  size_t max_output_bytes = 16 << 20;  // rendered text, and any single string value
  int64_t max_steps = 20'000'000;      // statements + loop iterations + items walked
  int max_call_depth = 64;             // nested macro calls
};

class ChatTemplate {
 public:
  // Parses `source`. `what` names the template in every error message ("chat_template",
  // "SmolLM2-135M-Instruct tokenizer_config.json"). Syntax errors and unsupported constructs are
  // INVALID_ARGUMENT "<what> line L column C: <reason>".
  static absl::StatusOr<ChatTemplate> Parse(std::string_view source, absl::string_view what,
                                            ChatTemplateOptions options = {});

  // Renders with `context` as the template variables, e.g.
  //   {"messages": [{"role": "user", "content": "Hi"}], "add_generation_prompt": true,
  //    "bos_token": "<s>", "eos_token": "</s>", "tools": null}
  // A key that is absent is undefined inside the template (transformers omits a None token).
  // Object key order is significant (tojson prints keys in order), hence ordered_json; build it
  // with nlohmann::ordered_json::parse. Errors: INVALID_ARGUMENT "<what> line L: <reason>", where
  // a raise_exception("msg") in the template gives exactly "<what> line L: msg";
  // RESOURCE_EXHAUSTED when a limit is hit.
  absl::StatusOr<std::string> Render(const nlohmann::ordered_json& context) const;
  // nlohmann::json would convert implicitly, sorting keys; refuse it at compile time.
  absl::StatusOr<std::string> Render(const nlohmann::json& context) const = delete;

  const std::string& what() const;

 private:
  ChatTemplate(std::shared_ptr<const jinja::Template> tmpl, ChatTemplateOptions options);

  std::shared_ptr<const jinja::Template> template_;
  ChatTemplateOptions options_;
};

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_TEXT_CHAT_TEMPLATE_H_
