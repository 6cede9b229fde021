#include "worker/engine/text_output.h"

#include <algorithm>
#include <utility>

#include "absl/strings/string_view.h"

namespace shardserve {

namespace {

bool IsContinuationByte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// Moves `pos` back to the start of the UTF-8 character it is in (pending text is whole
// characters; this only matters for a stop string that itself starts mid-character).
size_t CharStart(const std::string& s, size_t pos) {
  while (pos > 0 && pos < s.size() && IsContinuationByte(s[pos])) --pos;
  return pos;
}

}  // namespace

TextOutput::TextOutput(const Tokenizer& tokenizer, std::vector<std::string> stop,
                       bool skip_special_tokens)
    : decoder_(tokenizer.NewStreamDecoder(skip_special_tokens)) {
  for (std::string& s : stop) {
    if (!s.empty()) stop_.push_back(std::move(s));
  }
}

TextOutput::Delta TextOutput::Push(int32_t token) {
  Delta delta;
  if (stopped_) {
    delta.stopped = true;
    return delta;
  }
  pending_ += decoder_.Step(token);

  // The earliest complete stop string ends the text where it starts.
  size_t match = std::string::npos;
  for (const std::string& s : stop_) match = std::min(match, pending_.find(s));
  if (match != std::string::npos) {
    match = CharStart(pending_, match);
    delta.text = pending_.substr(0, match);
    delta.stopped = true;
    emitted_ += delta.text;
    pending_.clear();
    stopped_ = true;
    return delta;
  }

  // Hold back the longest tail that is a proper prefix of some stop string: the earliest
  // position from which the rest of the text could still grow into a match.
  size_t hold = pending_.size();
  size_t longest = 0;
  for (const std::string& s : stop_) longest = std::max(longest, s.size());
  const size_t first = pending_.size() >= longest ? pending_.size() - longest + 1 : 0;
  for (size_t q = first; q < pending_.size() && hold == pending_.size(); ++q) {
    const absl::string_view tail = absl::string_view(pending_).substr(q);
    for (const std::string& s : stop_) {
      if (s.size() > tail.size() && absl::string_view(s).substr(0, tail.size()) == tail) {
        hold = q;
        break;
      }
    }
  }
  hold = CharStart(pending_, hold);
  delta.text = pending_.substr(0, hold);
  pending_.erase(0, hold);
  emitted_ += delta.text;
  return delta;
}

std::string TextOutput::Finish() {
  if (stopped_) return "";
  stopped_ = true;
  pending_ += decoder_.Finish();
  // The flushed tail (e.g. an incomplete character as U+FFFD) may still complete a stop string.
  size_t match = std::string::npos;
  for (const std::string& s : stop_) match = std::min(match, pending_.find(s));
  if (match != std::string::npos) pending_.resize(CharStart(pending_, match));
  std::string rest = std::move(pending_);
  pending_.clear();
  emitted_ += rest;
  return rest;
}

}  // namespace shardserve
