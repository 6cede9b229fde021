#include "gateway/openai/http_front.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/json.h"
#include "common/log.h"
#include "gateway/openai/openai_api.h"

namespace shardserve {

namespace {

namespace chatpb = ::shardserve::chat::v1;
using json = nlohmann::json;
using openai::Endpoint;

// How long a stream's content provider waits for events before it returns to cpp-httplib,
// which checks whether the server is stopping between calls.
constexpr absl::Duration kStreamTick = absl::Milliseconds(200);
constexpr size_t kMaxRequestIdLength = 128;
constexpr char kJson[] = "application/json";

// The events of one ChatCall: queued by the dispatcher's callbacks (which must not block) and
// taken by the HTTP handler's thread.
class CallEvents {
 public:
  void Push(chatpb::ChatChunk chunk) {
    absl::MutexLock lock(&mu_);
    chunks_.push_back(std::move(chunk));
  }

  void End(absl::Status status) {
    absl::MutexLock lock(&mu_);
    ended_ = true;
    status_ = std::move(status);
  }

  // Waits up to `timeout` for a chunk or the end, then moves the queued chunks onto *chunks.
  // Returns true, with *status set, once the call has ended (all its chunks then taken).
  bool Take(absl::Duration timeout, std::vector<chatpb::ChatChunk>* chunks, absl::Status* status) {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(this, &CallEvents::ReadyLocked), timeout);
    for (chatpb::ChatChunk& c : chunks_) chunks->push_back(std::move(c));
    chunks_.clear();
    if (!ended_) return false;
    *status = status_;
    return true;
  }

 private:
  bool ReadyLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return ended_ || !chunks_.empty(); }

  absl::Mutex mu_;
  std::vector<chatpb::ChatChunk> chunks_ ABSL_GUARDED_BY(mu_);
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

// One streamed response, shared by cpp-httplib's content provider and its releaser (both run
// on the handler's thread, one after the other).
struct SseStream {
  std::shared_ptr<CallEvents> events;
  std::shared_ptr<ChatCall> call;
  std::unique_ptr<openai::StreamEncoder> encoder;
  std::vector<chatpb::ChatChunk> pending;  // taken from `events`, not yet encoded
  bool call_ended = false;
  absl::Status call_status;   // when call_ended
  absl::Status failed;        // a CANCELLED / ERROR finish seen by the encoder
  bool stream_ended = false;  // the last event went out
  absl::Time last_write;
};

int64_t NowUnixSeconds() { return absl::ToUnixSeconds(absl::Now()); }

std::string ApiKey(const httplib::Request& req) {
  const std::string auth = req.get_header_value("Authorization");
  if (!auth.empty()) {
    absl::string_view v = absl::StripAsciiWhitespace(auth);
    if (v.size() > 7 && absl::EqualsIgnoreCase(v.substr(0, 7), "bearer ")) {
      return std::string(absl::StripAsciiWhitespace(v.substr(7)));
    }
    return "";
  }
  if (req.has_header("api-key")) return req.get_header_value("api-key");
  return req.get_header_value("x-api-key");
}

// The client's x-request-id ("" when absent); INVALID_ARGUMENT when it is not 1-128 printable
// ASCII characters.
absl::Status ClientRequestId(const httplib::Request& req, std::string* id) {
  *id = req.get_header_value("x-request-id");
  if (id->size() > kMaxRequestIdLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("x-request-id: longer than ", kMaxRequestIdLength, " characters"));
  }
  for (char c : *id) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(
          "x-request-id: only printable ASCII characters without spaces are allowed");
    }
  }
  return absl::OkStatus();
}

// The request's body and x-request-id (*client_id: "" when absent or invalid).
absl::StatusOr<openai::ParsedRequest> Parse(Endpoint endpoint, const httplib::Request& req,
                                            std::string* client_id) {
  if (absl::Status id = ClientRequestId(req, client_id); !id.ok()) {
    client_id->clear();
    return id;
  }
  return endpoint == Endpoint::kChatCompletions ? openai::ParseChatCompletionRequest(req.body)
                                                : openai::ParseCompletionRequest(req.body);
}

class OpenAiFront {
 public:
  OpenAiFront(Dispatcher* dispatcher, OpenAiFrontOptions options)
      : dispatcher_(dispatcher), options_(std::move(options)), created_(NowUnixSeconds()) {}

  void Generate(Endpoint endpoint, const httplib::Request& req, httplib::Response& res);
  void ListModels(const httplib::Request& req, httplib::Response& res);
  void GetModel(const httplib::Request& req, httplib::Response& res);
  void Preflight(const httplib::Request& req, httplib::Response& res);
  void NotFound(const httplib::Request& req, httplib::Response& res);

 private:
  // CORS response headers when the request's Origin is allowed; whether it is.
  bool AddCors(const httplib::Request& req, httplib::Response& res) const;
  void SendJson(httplib::Response& res, int status, const json& body) const;
  // The error response for `status`; Retry-After on 429 / 503 (`retry_after`, or 1 s).
  void SendError(httplib::Response& res, const absl::Status& status, absl::Duration retry_after,
                 const std::string& request_id) const;
  bool Authenticate(const httplib::Request& req, httplib::Response& res) const;
  void Stream(httplib::Response& res, Endpoint endpoint, const openai::ParsedRequest& parsed,
              std::shared_ptr<ChatCall> call, std::shared_ptr<CallEvents> events) const;
  void Respond(httplib::Response& res, Endpoint endpoint, const openai::ParsedRequest& parsed,
               const std::shared_ptr<ChatCall>& call,
               const std::shared_ptr<CallEvents>& events) const;

  Dispatcher* const dispatcher_;
  const OpenAiFrontOptions options_;
  const int64_t created_;
};

bool OpenAiFront::AddCors(const httplib::Request& req, httplib::Response& res) const {
  if (options_.cors_allowed_origins.empty() || !req.has_header("Origin")) return false;
  const std::string origin = req.get_header_value("Origin");
  const auto& allowed = options_.cors_allowed_origins;
  const bool listed = std::find(allowed.begin(), allowed.end(), origin) != allowed.end();
  const bool any = std::find(allowed.begin(), allowed.end(), "*") != allowed.end();
  if (!listed && !any) return false;
  if (listed) {
    res.set_header("Access-Control-Allow-Origin", origin);
    res.set_header("Vary", "Origin");
  } else {
    res.set_header("Access-Control-Allow-Origin", "*");
  }
  res.set_header("Access-Control-Expose-Headers", "x-request-id, Retry-After");
  return true;
}

void OpenAiFront::SendJson(httplib::Response& res, int status, const json& body) const {
  res.status = status;
  res.set_content(DumpJson(body), kJson);
}

void OpenAiFront::SendError(httplib::Response& res, const absl::Status& status,
                            absl::Duration retry_after, const std::string& request_id) const {
  const openai::OpenAiError error = openai::ErrorFromStatus(status);
  if (error.http_status == 429 || error.http_status == 503) {
    const absl::Duration after =
        retry_after > absl::ZeroDuration() ? retry_after : absl::Seconds(1);
    res.set_header("Retry-After", std::to_string(openai::RetryAfterSeconds(after)));
  }
  if (!request_id.empty() && !res.has_header("x-request-id")) {
    res.set_header("x-request-id", request_id);
  }
  SendJson(res, error.http_status, openai::ErrorJson(error));
}

bool OpenAiFront::Authenticate(const httplib::Request& req, httplib::Response& res) const {
  absl::StatusOr<std::string> tenant = dispatcher_->Authenticate(ApiKey(req));
  if (tenant.ok()) return true;
  SendError(res, tenant.status(), absl::ZeroDuration(), "");
  return false;
}

void OpenAiFront::Generate(Endpoint endpoint, const httplib::Request& req, httplib::Response& res) {
  AddCors(req, res);
  std::string client_id;
  absl::StatusOr<openai::ParsedRequest> parsed = Parse(endpoint, req, &client_id);
  if (!parsed.ok()) {
    // The dispatcher logs the requests it sees; this one never reaches it.
    LogJsonLine(json{{"event", "request"},
                     {"front", "http"},
                     {"path", req.path},
                     {"request_id", client_id},
                     {"code", absl::StatusCodeToString(parsed.status().code())},
                     {"error", std::string(parsed.status().message())}});
    SendError(res, parsed.status(), absl::ZeroDuration(), client_id);
    return;
  }
  chatpb::ChatRequest& request = parsed->request;
  if (request.max_tokens() == 0 && options_.default_max_tokens > 0) {
    request.set_max_tokens(static_cast<uint32_t>(options_.default_max_tokens));
  }
  request.set_request_id(client_id);

  DispatchRequest dispatch;
  dispatch.request = request;
  dispatch.api_key = ApiKey(req);
  dispatch.front = "http";
  auto events = std::make_shared<CallEvents>();
  ChatCallbacks callbacks;
  callbacks.on_chunk = [events](chatpb::ChatChunk chunk) { events->Push(std::move(chunk)); };
  callbacks.on_done = [events](absl::Status status) { events->End(std::move(status)); };
  absl::Duration retry_after = absl::ZeroDuration();
  absl::StatusOr<std::shared_ptr<ChatCall>> call =
      dispatcher_->Start(std::move(dispatch), std::move(callbacks), &retry_after);
  if (!call.ok()) {
    SendError(res, call.status(), retry_after, client_id);
    return;
  }
  res.set_header("x-request-id", (*call)->request_id());
  if (parsed->stream) {
    Stream(res, endpoint, *parsed, *std::move(call), std::move(events));
  } else {
    Respond(res, endpoint, *parsed, *call, events);
  }
}

void OpenAiFront::Respond(httplib::Response& res, Endpoint endpoint,
                          const openai::ParsedRequest& parsed,
                          const std::shared_ptr<ChatCall>& call,
                          const std::shared_ptr<CallEvents>& events) const {
  openai::ChatAccumulator accumulator;
  absl::Status failed;
  absl::Status status;
  bool ended = false;
  while (!ended) {
    std::vector<chatpb::ChatChunk> chunks;
    ended = events->Take(absl::InfiniteDuration(), &chunks, &status);
    for (chatpb::ChatChunk& chunk : chunks) {
      if (!failed.ok()) break;
      failed = accumulator.Add(std::move(chunk));
    }
  }
  // on_done's error says more than a CANCELLED / ERROR finish_reason; that one counts only when
  // the call itself ended OK.
  if (status.ok()) status = failed;
  if (!status.ok()) {
    SendError(res, status, absl::ZeroDuration(), call->request_id());
    return;
  }
  openai::ResponseMeta meta;
  meta.request_id = call->request_id();
  meta.model = accumulator.model().empty() ? parsed.request.model() : accumulator.model();
  meta.created = NowUnixSeconds();
  const bool logprobs = parsed.request.logprobs();
  SendJson(res, 200,
           endpoint == Endpoint::kChatCompletions ? accumulator.ChatCompletion(meta, logprobs)
                                                  : accumulator.TextCompletion(meta, logprobs));
}

// Writes what the stream has for the client; see the header for the protocol. Returns false to
// make cpp-httplib drop the connection (the client is gone: the call is cancelled first).
bool ProvideSse(SseStream& s, httplib::DataSink& sink, absl::Duration keepalive) {
  if (!sink.is_writable()) {
    s.call->Cancel();
    return false;
  }
  if (s.pending.empty() && !s.call_ended) {
    s.call_ended = s.events->Take(kStreamTick, &s.pending, &s.call_status);
  }
  std::string out;
  for (const chatpb::ChatChunk& chunk : s.pending) {
    if (!s.failed.ok()) break;  // nothing after a failed choice; wait for the status
    absl::StatusOr<std::vector<json>> events = s.encoder->Encode(chunk);
    if (!events.ok()) {
      s.failed = events.status();
      break;
    }
    for (const json& e : *events) absl::StrAppend(&out, openai::SseEvent(e));
  }
  s.pending.clear();
  bool last = false;
  if (s.call_ended) {
    last = true;
    const absl::Status status = s.call_status.ok() ? s.failed : s.call_status;
    if (status.ok()) {
      for (const json& e : s.encoder->Finish()) absl::StrAppend(&out, openai::SseEvent(e));
      absl::StrAppend(&out, openai::kSseDone);
    } else {
      absl::StrAppend(&out, openai::SseEvent(openai::ErrorJson(openai::ErrorFromStatus(status))));
    }
  }
  const absl::Time now = absl::Now();
  if (out.empty()) {
    if (now - s.last_write < keepalive) return true;
    out = ": keep-alive\n\n";
  }
  if (!sink.write(out.data(), out.size())) {
    s.call->Cancel();
    return false;
  }
  s.last_write = now;
  if (last) {
    s.stream_ended = true;
    sink.done();
  }
  return true;
}

void OpenAiFront::Stream(httplib::Response& res, Endpoint endpoint,
                         const openai::ParsedRequest& parsed, std::shared_ptr<ChatCall> call,
                         std::shared_ptr<CallEvents> events) const {
  auto s = std::make_shared<SseStream>();
  // The status code waits for the first event: an error before any chunk is a plain error.
  s->call_ended = events->Take(absl::InfiniteDuration(), &s->pending, &s->call_status);
  if (s->pending.empty() && s->call_ended && !s->call_status.ok()) {
    SendError(res, s->call_status, absl::ZeroDuration(), call->request_id());
    return;
  }
  openai::ResponseMeta meta;
  meta.request_id = call->request_id();
  meta.model = parsed.request.model();
  if (!s->pending.empty() && !s->pending.front().model().empty()) {
    meta.model = s->pending.front().model();
  }
  meta.created = NowUnixSeconds();
  s->encoder = std::make_unique<openai::StreamEncoder>(
      endpoint, std::move(meta), parsed.include_usage, parsed.request.logprobs());
  s->events = std::move(events);
  s->call = std::move(call);
  s->last_write = absl::Now();
  res.status = 200;
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");  // proxies (nginx) must not buffer the stream
  const absl::Duration keepalive = options_.keepalive_interval;
  res.set_chunked_content_provider(
      "text/event-stream",
      [s, keepalive](size_t /*offset*/, httplib::DataSink& sink) {
        return ProvideSse(*s, sink, keepalive);
      },
      [s](bool /*success*/) {
        // The stream did not reach its end: the client left or the server is stopping.
        if (!s->stream_ended) s->call->Cancel();
      });
}

void OpenAiFront::ListModels(const httplib::Request& req, httplib::Response& res) {
  AddCors(req, res);
  if (!Authenticate(req, res)) return;
  SendJson(res, 200, openai::ModelListJson(dispatcher_->ListModels(), created_));
}

void OpenAiFront::GetModel(const httplib::Request& req, httplib::Response& res) {
  AddCors(req, res);
  if (!Authenticate(req, res)) return;
  const std::string id = req.matches.size() > 1 ? std::string(req.matches[1]) : "";
  const chatpb::ListModelsResponse models = dispatcher_->ListModels();
  for (const chatpb::ModelInfo& m : models.models()) {
    if (m.id() == id) {
      SendJson(res, 200, openai::ModelJson(m, created_));
      return;
    }
  }
  SendError(res, absl::NotFoundError(absl::StrCat("The model '", id, "' does not exist")),
            absl::ZeroDuration(), "");
}

void OpenAiFront::Preflight(const httplib::Request& req, httplib::Response& res) {
  if (!AddCors(req, res)) {
    SendError(
        res,
        absl::PermissionDeniedError(absl::StrCat("CORS: origin '", req.get_header_value("Origin"),
                                                 "' is not allowed (cors_allowed_origins)")),
        absl::ZeroDuration(), "");
    return;
  }
  res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
  const std::string asked = req.get_header_value("Access-Control-Request-Headers");
  res.set_header(
      "Access-Control-Allow-Headers",
      asked.empty() ? "authorization, content-type, api-key, x-api-key, x-request-id" : asked);
  res.set_header("Access-Control-Max-Age", "86400");
  res.status = 204;
}

void OpenAiFront::NotFound(const httplib::Request& req, httplib::Response& res) {
  AddCors(req, res);
  openai::OpenAiError error;
  error.http_status = 404;
  error.type = "invalid_request_error";
  error.message = absl::StrCat("Invalid URL (", req.method, " ", req.path, ")");
  SendJson(res, 404, openai::ErrorJson(error));
}

}  // namespace

void RegisterOpenAiRoutes(HttpServer* server, Dispatcher* dispatcher,
                          const OpenAiFrontOptions& options) {
  auto front = std::make_shared<OpenAiFront>(dispatcher, options);
  httplib::Server& s = server->server();
  s.Post("/v1/chat/completions", [front](const httplib::Request& req, httplib::Response& res) {
    front->Generate(Endpoint::kChatCompletions, req, res);
  });
  s.Post("/v1/completions", [front](const httplib::Request& req, httplib::Response& res) {
    front->Generate(Endpoint::kCompletions, req, res);
  });
  s.Get("/v1/models", [front](const httplib::Request& req, httplib::Response& res) {
    front->ListModels(req, res);
  });
  s.Get("/v1/models/(.+)", [front](const httplib::Request& req, httplib::Response& res) {
    front->GetModel(req, res);
  });
  s.Options("/v1/.*", [front](const httplib::Request& req, httplib::Response& res) {
    front->Preflight(req, res);
  });
  // Registered last: cpp-httplib tries routes in order, so these only catch unknown /v1 paths.
  auto not_found = [front](const httplib::Request& req, httplib::Response& res) {
    front->NotFound(req, res);
  };
  s.Get("/v1/.*", not_found);
  s.Post("/v1/.*", not_found);
  s.Put("/v1/.*", not_found);
  s.Patch("/v1/.*", not_found);
  s.Delete("/v1/.*", not_found);
}

}  // namespace shardserve
