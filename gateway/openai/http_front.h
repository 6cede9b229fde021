// The OpenAI-compatible HTTP API of the gateway, as routes on an HttpServer over the Dispatcher
// (which authenticates, validates, admits, routes and relays; see dispatcher.h). The JSON side
// is openai_api.h; this file is the HTTP side: headers, status codes, SSE streaming, CORS and
// client disconnects.
//
// Routes:
//   POST /v1/chat/completions   chat.completion, or with "stream": true an SSE stream of
//                               chat.completion.chunk events ending with `data: [DONE]`;
//   POST /v1/completions        text_completion (raw prompt, no chat template), same streaming;
//   GET  /v1/models             {"object": "list", "data": [...]};
//   GET  /v1/models/{id}        one model ({id} may contain '/'); 404 model_not_found otherwise;
//   OPTIONS /v1/...             CORS preflight (204);
//   any other /v1/... path      404 in OpenAI's error shape.
//
// Requests: the API key comes from `Authorization: Bearer KEY`, else `api-key`, else
// `x-api-key` (a wrong or missing key is 401 when keys are configured; /v1/models needs one
// too). The body is parsed as JSON whatever its Content-Type says (curl -d sends
// application/x-www-form-urlencoded; rejecting it would help nobody): a body that is not a JSON
// object is 400. A client's `x-request-id` (1-128 printable ASCII characters, else 400) becomes
// ChatRequest.request_id; every response carries the request's id as `x-request-id`.
//
// Errors are OpenAI's JSON ({"error": {...}}, openai::ErrorFromStatus) with the mapped HTTP code;
// 429 and 503 carry `Retry-After` (whole seconds, rounded up; the dispatcher's value, else 1).
// Streaming: the handler waits for the request's first event before it picks the status, so an
// error before any chunk (including every retry failing) is a plain JSON error with its code;
// after that the response is 200 text/event-stream, and an error ends the stream with
// `data: {"error": {...}}` and no [DONE]. While a stream waits for tokens it sends an SSE
// comment (`: keep-alive`) every keepalive_interval.
//
// Client disconnects: a streaming response whose write fails, or that cpp-httplib abandons
// (server stopping, connection gone: the content provider's releaser runs without the stream
// having ended), cancels the ChatCall, so the worker stops generating. A non-streaming request
// cannot see its client leave (cpp-httplib 0.11 gives handlers no socket): it runs to its end,
// bounded by max_tokens and the request deadline.
//
// Threads: handlers run on the HttpServer's pool and block while their request runs (streams
// included); the dispatcher's callbacks only queue. HttpServer::Stop waits for running handlers:
// streams end at the next keepalive tick, but non-streaming and not-yet-started requests end
// only when their ChatCall does, so a server that must stop promptly cancels those first.
#ifndef SHARDSERVE_GATEWAY_OPENAI_HTTP_FRONT_H_
#define SHARDSERVE_GATEWAY_OPENAI_HTTP_FRONT_H_

#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/http_server.h"
#include "gateway/dispatcher.h"

namespace shardserve {

struct OpenAiFrontOptions {
  // Origins whose browsers may call the API: "*" allows any; empty sends no CORS headers.
  std::vector<std::string> cors_allowed_origins;
  // max_tokens for requests that set neither max_tokens nor max_completion_tokens; 0 leaves it
  // to the worker (up to the context length).
  int default_max_tokens = 0;
  // Idle time after which a stream sends an SSE comment, which also detects a gone client.
  absl::Duration keepalive_interval = absl::Seconds(5);
};

// Registers the routes above on `server` (before server->Start). `dispatcher` is not owned and
// must outlive the server's handlers (stop the HttpServer before destroying the dispatcher).
void RegisterOpenAiRoutes(HttpServer* server, Dispatcher* dispatcher,
                          const OpenAiFrontOptions& options);

}  // namespace shardserve

#endif  // SHARDSERVE_GATEWAY_OPENAI_HTTP_FRONT_H_
