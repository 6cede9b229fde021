// An HTTP/1.1 server for every service's plain-HTTP side (the gateway's OpenAI API, `/metrics`,
// `/live`, `/ready`, later hub_sync's mirror), over cpp-httplib: routes are registered on
// server() before Start, handlers run on a bounded pool of threads.
//
// Bounded under any load: `threads` connections are served at once and at most
// `max_queued_connections` more wait; beyond that the accept loop serves the next connection
// itself, so it stops accepting and further clients wait in the kernel's listen backlog.
#ifndef SHARDSERVE_COMMON_HTTP_SERVER_H_
#define SHARDSERVE_COMMON_HTTP_SERVER_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/host_port.h"
#include "common/metrics.h"
#include "httplib.h"

namespace shardserve {

struct HttpServerOptions {
  int threads = 64;
  int max_queued_connections = 256;
  size_t max_body_bytes = 16 << 20;  // larger bodies get 413
  absl::Duration read_timeout = absl::Seconds(30);
  absl::Duration write_timeout = absl::Seconds(30);
  absl::Duration keep_alive_timeout = absl::Seconds(5);
};

class HttpServer {
 public:
  explicit HttpServer(HttpServerOptions options = {});
  ~HttpServer();  // Stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Register routes here before Start.
  httplib::Server& server() { return *server_; }

  // Binds "host:port" (port 0 picks a free one) and runs the accept loop on its own thread.
  // INVALID_ARGUMENT for an address that is not host:port; UNAVAILABLE when it cannot be bound.
  absl::Status Start(const std::string& address);
  // The bound port (after Start).
  int port() const { return port_; }
  // "host:port" as bound.
  std::string address() const;

  // Stops accepting, lets running handlers finish and joins the threads. Idempotent.
  void Stop();

 private:
  class BoundedQueue;
  HttpServerOptions options_;
  std::unique_ptr<httplib::Server> server_;
  std::thread loop_;
  std::string host_;
  int port_ = 0;
  int listen_fd_ = -1;  // set by the socket-options hook when the server binds
};

// The probe and metrics routes every service serves:
//   GET /metrics  registry->Render() as text/plain; version=0.0.4 (on_scrape runs first, to set
//                 gauges that are read rather than pushed; may be null);
//   GET /live     200 "ok" while the process serves HTTP at all;
//   GET /ready    200 "ready" when ready() is OK, else 503 with its message;
//   GET /health   the same as /ready (the name vLLM and TGI use).
void AddProbeRoutes(HttpServer* server, const MetricsRegistry* registry,
                    std::function<void()> on_scrape, std::function<absl::Status()> ready);

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_HTTP_SERVER_H_
