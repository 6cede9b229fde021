// Test tool: renders a batch of (template, context) cases and prints the results as JSON, for
// tests/fixtures/chat_templates/differential_fuzz.py, which compares them with Python's Jinja2.
//
//   chat_template_batch_render CASES.json > RESULTS.json
//
// CASES.json: [{"template": "...", "context": {...}}, ...]. Each result is {"text": ...} or
// {"error": message, "phase": "parse"|"render", "code": absl status code}. strftime_now() sees
// the fixed instant the fixtures use (2025-03-07 09:05:03 UTC).
#include <iostream>
#include <string>

#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "common/mapped_file.h"
#include "nlohmann/json.hpp"
#include "worker/text/chat_template.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: chat_template_batch_render CASES.json\n";
    return 2;
  }
  auto text = shardserve::ReadFileToString(argv[1]);
  if (!text.ok()) {
    std::cerr << text.status() << "\n";
    return 1;
  }
  auto cases = nlohmann::ordered_json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (!cases.is_array()) {
    std::cerr << argv[1] << ": expected a JSON array of cases\n";
    return 1;
  }
  shardserve::ChatTemplateOptions options;
  options.clock = [] {
    return absl::FromCivil(absl::CivilSecond(2025, 3, 7, 9, 5, 3), absl::UTCTimeZone());
  };
  options.time_zone = absl::UTCTimeZone();
  nlohmann::ordered_json results = nlohmann::ordered_json::array();
  for (const auto& c : cases) {
    nlohmann::ordered_json r;
    const auto& source = c.value("template", "");
    auto tmpl = shardserve::ChatTemplate::Parse(source, "t", options);
    if (!tmpl.ok()) {
      r["error"] = std::string(tmpl.status().message());
      r["phase"] = "parse";
      r["code"] = static_cast<int>(tmpl.status().code());
    } else {
      auto out =
          tmpl->Render(c.contains("context") ? c["context"] : nlohmann::ordered_json::object());
      if (out.ok()) {
        r["text"] = *out;
      } else {
        r["error"] = std::string(out.status().message());
        r["phase"] = "render";
        r["code"] = static_cast<int>(out.status().code());
      }
    }
    results.push_back(std::move(r));
  }
  std::cout << results.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace)
            << "\n";
  return 0;
}
