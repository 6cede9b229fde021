#include "worker/text/chat_template.h"

#include <utility>

#include "common/status_macros.h"
#include "worker/text/jinja_ast.h"
#include "worker/text/jinja_interpreter.h"
#include "worker/text/jinja_parser.h"

namespace shardserve {

ChatTemplate::ChatTemplate(std::shared_ptr<const jinja::Template> tmpl, ChatTemplateOptions options)
    : template_(std::move(tmpl)), options_(std::move(options)) {}

absl::StatusOr<ChatTemplate> ChatTemplate::Parse(std::string_view source, absl::string_view what,
                                                 ChatTemplateOptions options) {
  ASSIGN_OR_RETURN(std::unique_ptr<jinja::Template> tmpl,
                   jinja::ParseTemplate(absl::string_view(source.data(), source.size()), what));
  jinja::FoldConstants(tmpl.get());
  return ChatTemplate(std::shared_ptr<const jinja::Template>(std::move(tmpl)), std::move(options));
}

absl::StatusOr<std::string> ChatTemplate::Render(const nlohmann::ordered_json& context) const {
  jinja::RenderOptions options;
  options.clock = options_.clock;
  options.time_zone = options_.time_zone;
  options.max_output_bytes = options_.max_output_bytes;
  options.max_steps = options_.max_steps;
  options.max_call_depth = options_.max_call_depth;
  return jinja::RenderTemplate(*template_, context, options);
}

const std::string& ChatTemplate::what() const { return template_->what; }

}  // namespace shardserve
