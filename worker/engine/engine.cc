#include "worker/engine/engine.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine/scheduler.h"
#include "worker/engine/text_output.h"

namespace shardserve {

struct Engine::Sequence {
  GenerationRequest request;
  OutputCallback on_output;
  int64_t seq_id = 0;
  std::unique_ptr<Sampler> sampler;
  std::unique_ptr<TextOutput> text;
  // Prompt then generated tokens; the first `computed` are in the KV cache.
  std::vector<int32_t> tokens;
  int64_t prompt_tokens = 0;
  int64_t computed = 0;
  int generated = 0;
  bool admitted = false;
  bool finished = false;  // ended this step; removed from running_ before the next
  absl::Time arrival;
  absl::Time admitted_at;
  absl::Time first_token_at;
  double prefill_seconds = 0;
};

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kError:
      return "error";
    case FinishReason::kNone:
      break;
  }
  return "none";
}

namespace {

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::unique_ptr<ModelRunner> runner,
                                                       const Tokenizer* tokenizer,
                                                       std::vector<int32_t> eos_ids,
                                                       const EngineOptions& options) {
  if (runner == nullptr || tokenizer == nullptr) {
    return absl::InvalidArgumentError("engine needs a model runner and a tokenizer");
  }
  if (options.max_running <= 0 || options.max_waiting < 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_running ", options.max_running,
                                                   " must be positive, max_waiting ",
                                                   options.max_waiting, " not negative"));
  }
  auto engine = std::unique_ptr<Engine>(new Engine());
  engine->runner_ = std::move(runner);
  engine->tokenizer_ = tokenizer;
  engine->eos_ids_ = std::move(eos_ids);
  engine->options_ = options;
  absl::MutexLock lock(&engine->mu_);
  engine->stats_.kv_blocks_total = engine->runner_->blocks().num_blocks();
  engine->stats_.kv_block_tokens = engine->runner_->blocks().block_tokens();
  return engine;
}

Engine::~Engine() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  // Whatever is left ends cancelled (the loop drains on stop; this covers a never-started one).
  auto cancel = [](Sequence& s) {
    GenerationOutput out;
    out.finish = FinishReason::kCancelled;
    out.prompt_tokens = static_cast<int>(s.prompt_tokens);
    out.completion_tokens = s.generated;
    s.on_output(std::move(out));
  };
  for (auto& s : incoming_) cancel(*s);
  for (auto& s : waiting_) cancel(*s);
  for (auto& s : running_) cancel(*s);
}

int64_t Engine::context_length() const { return runner_->context_length(); }

absl::Status Engine::Start() {
  {
    absl::MutexLock lock(&mu_);
    if (started_) return absl::FailedPreconditionError("engine already started");
  }
  // Warm-up: one real step (touches every weight page and the kernels' code paths).
  const int32_t token = 0;
  absl::Status status =
      runner_->Score(absl::MakeConstSpan(&token, 1), [](int64_t, const float*) {});
  if (!status.ok()) {
    return absl::Status(status.code(), absl::StrCat("warm-up step failed: ", status.message()));
  }
  absl::MutexLock lock(&mu_);
  started_ = true;
  thread_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

absl::Status Engine::Submit(GenerationRequest request, OutputCallback on_output) {
  if (request.id.empty()) return absl::InvalidArgumentError("request id is empty");
  if (request.prompt.empty()) return absl::InvalidArgumentError("prompt: no tokens");
  const int vocab = runner_->vocab_size();
  for (int32_t t : request.prompt) {
    if (t < 0 || t >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt: token id ", t, " outside the vocabulary of ", vocab));
    }
  }
  RETURN_IF_ERROR(ValidateSamplingOptions(request.sampling));
  if (request.max_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens: ", request.max_tokens, " is negative"));
  }
  const int64_t context = runner_->context_length();
  const int64_t prompt = static_cast<int64_t>(request.prompt.size());
  const int64_t wanted = prompt + std::max(1, request.max_tokens);
  if (wanted > context) {
    return absl::ResourceExhaustedError(
        absl::StrCat("prompt (", prompt, " tokens) + max_tokens (", request.max_tokens,
                     ") exceeds the context length of ", context, " tokens"));
  }
  const KvBlockManager& blocks = runner_->blocks();
  if (blocks.BlocksFor(wanted) > blocks.num_blocks()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("prompt (", prompt, " tokens) + max_tokens (", request.max_tokens,
                     ") exceeds the KV cache of ",
                     int64_t{blocks.num_blocks()} * blocks.block_tokens(), " tokens"));
  }

  auto seq = std::make_unique<Sequence>();
  seq->sampler = std::make_unique<Sampler>(request.sampling, request.prompt);
  seq->text = std::make_unique<TextOutput>(*tokenizer_, request.stop);
  seq->tokens = request.prompt;
  seq->prompt_tokens = prompt;
  seq->arrival = absl::Now();
  seq->on_output = std::move(on_output);
  seq->request = std::move(request);

  absl::MutexLock lock(&mu_);
  if (!started_ || stopping_) return absl::FailedPreconditionError("engine is not running");
  if (live_ids_.contains(seq->request.id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("request id '", seq->request.id, "' is already in use"));
  }
  if (static_cast<int>(incoming_.size()) + stats_.waiting >= options_.max_waiting) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the queue is full (", options_.max_waiting, " requests waiting)"));
  }
  live_ids_.insert(seq->request.id);
  seq->seq_id = next_seq_id_++;
  incoming_.push_back(std::move(seq));
  stats_.waiting = static_cast<int>(incoming_.size()) + static_cast<int>(waiting_.size());
  return absl::OkStatus();
}

void Engine::Cancel(const std::string& id) {
  absl::MutexLock lock(&mu_);
  if (live_ids_.contains(id)) cancelled_.push_back(id);
}

EngineStats Engine::Stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void Engine::Loop() {
  KvBlockManager& blocks = runner_->blocks();
  std::vector<float> logits;
  double decode_rate = 0, prefill_rate = 0;
  uint64_t preemptions = 0;
  SchedulerConfig scheduler_config;
  scheduler_config.block_tokens = blocks.block_tokens();
  scheduler_config.max_step_tokens = runner_->options().max_step_tokens;
  scheduler_config.max_running = options_.max_running;

  while (true) {
    std::vector<std::string> cancelled;
    {
      absl::MutexLock lock(&mu_);
      auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !incoming_.empty() || !cancelled_.empty() || !waiting_.empty() ||
               !running_.empty();
      };
      mu_.Await(absl::Condition(&has_work));
      if (stopping_) {
        for (auto& s : incoming_) waiting_.push_back(std::move(s));
        incoming_.clear();
        for (auto& s : waiting_) cancelled.push_back(s->request.id);
        for (auto& s : running_) cancelled.push_back(s->request.id);
      }
      while (!incoming_.empty()) {
        waiting_.push_back(std::move(incoming_.front()));
        incoming_.pop_front();
      }
      cancelled.insert(cancelled.end(), cancelled_.begin(), cancelled_.end());
      cancelled_.clear();
    }

    // Ends a sequence: frees its blocks, sends the last event.
    std::vector<std::string> finished_ids;
    auto finish = [&](Sequence& s, FinishReason reason, absl::Status error, GenerationOutput out) {
      blocks.Free(s.seq_id);
      const absl::Time now = absl::Now();
      out.text += s.text->Finish();  // "" after a stop string matched
      out.finish = reason;
      out.error = std::move(error);
      out.prompt_tokens = static_cast<int>(s.prompt_tokens);
      out.completion_tokens = s.generated;
      if (s.admitted)
        out.timings.queue_seconds = Seconds(s.admitted_at - s.arrival);
      else
        out.timings.queue_seconds = Seconds(now - s.arrival);
      if (s.generated > 0) {
        out.timings.time_to_first_token_seconds = Seconds(s.first_token_at - s.arrival);
        out.timings.decode_seconds = Seconds(now - s.first_token_at);
      }
      out.timings.prefill_seconds = s.prefill_seconds;
      s.on_output(std::move(out));
      finished_ids.push_back(s.request.id);
      s.finished = true;
    };
    auto drop_finished = [&] { std::erase_if(running_, [](auto& s) { return s->finished; }); };

    // Cancellations and deadlines.
    const absl::Time now = absl::Now();
    auto should_end = [&](Sequence& s) -> bool {
      if (std::find(cancelled.begin(), cancelled.end(), s.request.id) != cancelled.end()) {
        finish(s, FinishReason::kCancelled, absl::OkStatus(), {});
        return true;
      }
      if (now > s.request.deadline) {
        finish(s, FinishReason::kError,
               absl::DeadlineExceededError("the request's deadline passed"), {});
        return true;
      }
      return false;
    };
    std::erase_if(waiting_, [&](auto& s) { return should_end(*s); });
    std::erase_if(running_, [&](auto& s) { return should_end(*s); });

    // The policy decides (scheduler.h); the loop applies it.
    SchedulerSnapshot snapshot;
    for (auto& s : running_) {
      snapshot.running.push_back({s->seq_id, static_cast<int64_t>(s->tokens.size()), s->computed,
                                  static_cast<int>(blocks.BlockTable(s->seq_id).size())});
    }
    for (auto& s : waiting_) {
      snapshot.waiting.push_back({s->seq_id, static_cast<int64_t>(s->tokens.size()), 0, 0});
    }
    snapshot.free_blocks = blocks.free_blocks();
    const Schedule schedule = ScheduleStep(snapshot, scheduler_config);

    for (int64_t id : schedule.preempt) {
      auto it =
          std::find_if(running_.begin(), running_.end(), [&](auto& s) { return s->seq_id == id; });
      if (it == running_.end()) continue;
      blocks.Free(id);
      ++preemptions;
      (*it)->computed = 0;  // recomputes prompt and generated tokens when readmitted
      waiting_.push_front(std::move(*it));
      running_.erase(it);
    }
    for (int64_t id : schedule.admit) {
      auto it =
          std::find_if(waiting_.begin(), waiting_.end(), [&](auto& s) { return s->seq_id == id; });
      if (it == waiting_.end()) continue;
      (*it)->admitted = true;
      (*it)->admitted_at = absl::Now();
      running_.push_back(std::move(*it));
      waiting_.erase(it);
    }
    auto find_running = [&](int64_t id) -> Sequence* {
      for (auto& s : running_) {
        if (s->seq_id == id) return s.get();
      }
      return nullptr;
    };

    StepPlan plan;
    plan.step = step_++;
    std::vector<Sequence*> sampled;  // in the order of the plan's logit rows
    std::vector<Sequence*> prefilling;
    int prefill_tokens = 0;
    auto add = [&](Sequence* s, int64_t start, int64_t count, bool samples) {
      absl::Status st = runner_->AddToPlan(
          s->seq_id, start, absl::MakeConstSpan(s->tokens).subspan(start, count),
          samples ? ModelRunner::Logits::kLast : ModelRunner::Logits::kNone, &plan);
      if (!st.ok()) {
        // The scheduler's block accounting and the block manager disagree: a bug, but one
        // that ends this request only.
        finish(*s, FinishReason::kError,
               absl::InternalError(absl::StrCat("scheduling failed: ", st.message())), {});
        return false;
      }
      if (samples) sampled.push_back(s);
      return true;
    };
    for (int64_t id : schedule.decode) {
      Sequence* s = find_running(id);
      if (s != nullptr) add(s, s->computed, 1, true);
    }
    for (const PrefillChunk& chunk : schedule.prefill) {
      Sequence* s = find_running(chunk.id);
      if (s == nullptr || !add(s, chunk.start, chunk.tokens, chunk.samples)) continue;
      prefilling.push_back(s);
      prefill_tokens += chunk.tokens;
    }
    drop_finished();

    if (plan.num_tokens() == 0) {
      // Nothing can run now (should not happen with work queued; avoid spinning).
      absl::MutexLock lock(&mu_);
      auto news = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !incoming_.empty() || !cancelled_.empty();
      };
      mu_.AwaitWithTimeout(absl::Condition(&news), absl::Milliseconds(5));
    } else {
      // Map logits rows (in plan order) back to sequences in the order they were added.
      // `sampled` was filled in the same order as logit rows.
      const absl::Time t0 = absl::Now();
      absl::Status st = runner_->Step(plan, &logits);
      const absl::Time t1 = absl::Now();
      const double step_seconds = Seconds(t1 - t0);
      for (Sequence* s : prefilling) s->prefill_seconds += step_seconds;
      if (options_.on_step) {
        StepInfo info;
        info.seconds = step_seconds;
        info.prefill_tokens = prefill_tokens;
        info.decode_tokens = plan.num_tokens() - prefill_tokens;
        info.sequences = static_cast<int>(plan.seq_ids.size());
        info.ok = st.ok();
        options_.on_step(info);
      }
      if (!st.ok()) {
        // A failed forward pass is fatal for the sequences in it, not for the worker.
        for (auto& s : running_) {
          if (std::find(plan.seq_ids.begin(), plan.seq_ids.end(), s->seq_id) ==
              plan.seq_ids.end()) {
            continue;
          }
          finish(*s, FinishReason::kError, st, {});
        }
        drop_finished();
      } else {
        // Every sequence in the plan now has its chunk in the cache.
        for (size_t i = 0; i < plan.seq_ids.size(); ++i) {
          for (auto& s : running_) {
            if (s->seq_id == plan.seq_ids[i]) s->computed = plan.context_len[i];
          }
        }
        const int vocab = runner_->vocab_size();
        int decoded = 0;
        for (size_t i = 0; i < sampled.size(); ++i) {
          Sequence& s = *sampled[i];
          if (s.computed < s.prompt_tokens + s.generated) continue;  // recomputing
          SampleResult result = s.sampler->Sample(logits.data() + i * vocab, vocab);
          if (s.generated == 0) s.first_token_at = absl::Now();
          ++s.generated;
          ++decoded;
          s.tokens.push_back(result.token);
          GenerationOutput out;
          out.token_ids.push_back(result.token);
          if (s.request.sampling.logprobs) out.logprobs.push_back(result);
          const bool eos = !s.request.ignore_eos && std::find(eos_ids_.begin(), eos_ids_.end(),
                                                              result.token) != eos_ids_.end();
          if (eos) {
            finish(s, FinishReason::kStop, absl::OkStatus(), std::move(out));
            continue;
          }
          TextOutput::Delta delta = s.text->Push(result.token);
          out.text = std::move(delta.text);
          if (delta.stopped) {
            finish(s, FinishReason::kStop, absl::OkStatus(), std::move(out));
          } else if ((s.request.max_tokens > 0 && s.generated >= s.request.max_tokens) ||
                     static_cast<int64_t>(s.tokens.size()) >= runner_->context_length()) {
            finish(s, FinishReason::kLength, absl::OkStatus(), std::move(out));
          } else {
            s.on_output(std::move(out));
          }
        }
        drop_finished();
        if (step_seconds > 0) {
          const double alpha = 0.2;
          if (prefilling.empty() && decoded > 0) {
            decode_rate = decode_rate == 0
                              ? decoded / step_seconds
                              : (1 - alpha) * decode_rate + alpha * decoded / step_seconds;
          } else if (!prefilling.empty()) {
            const double rate = std::max(1, prefill_tokens) / step_seconds;
            prefill_rate = prefill_rate == 0 ? rate : (1 - alpha) * prefill_rate + alpha * rate;
          }
        }
        absl::MutexLock lock(&mu_);
        stats_.last_step_seconds = step_seconds;
      }
    }

    absl::MutexLock lock(&mu_);
    for (const std::string& id : finished_ids) live_ids_.erase(id);
    stats_.running = static_cast<int>(running_.size());
    stats_.waiting = static_cast<int>(waiting_.size() + incoming_.size());
    stats_.kv_blocks_used = blocks.used_blocks();
    stats_.decode_tokens_per_second = decode_rate;
    stats_.prefill_tokens_per_second = prefill_rate;
    stats_.steps = step_;
    stats_.preemptions = preemptions;
    if (stopping_ && waiting_.empty() && running_.empty()) break;
  }
}

}  // namespace shardserve
