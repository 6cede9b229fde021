#include "common/http_server.h"

#include <sys/socket.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace shardserve {

// cpp-httplib's ThreadPool queues without bound; this one runs the job on the caller (the
// accept loop) when the queue is full, which is what bounds memory (see the header).
class HttpServer::BoundedQueue : public httplib::TaskQueue {
 public:
  BoundedQueue(int threads, int max_queued) : max_queued_(static_cast<size_t>(max_queued)) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Work(); });
  }

  void enqueue(std::function<void()> fn) override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (jobs_.size() < max_queued_) {
        jobs_.push_back(std::move(fn));
        cv_.notify_one();
        return;
      }
    }
    fn();  // full: serve it here, and accept nothing meanwhile
  }

  void shutdown() override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      shutdown_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

 private:
  void Work() {
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return shutdown_ || !jobs_.empty(); });
        if (jobs_.empty()) return;  // shutdown_ and nothing left
        fn = std::move(jobs_.front());
        jobs_.pop_front();
      }
      fn();
    }
  }

  const size_t max_queued_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool shutdown_ = false;
  std::vector<std::thread> threads_;
};

namespace {

void SetTimeout(absl::Duration d, const std::function<void(time_t, time_t)>& set) {
  const int64_t us = absl::ToInt64Microseconds(d);
  set(static_cast<time_t>(us / 1000000), static_cast<time_t>(us % 1000000));
}

}  // namespace

HttpServer::HttpServer(HttpServerOptions options)
    : options_(options), server_(std::make_unique<httplib::Server>()) {
  const int threads = options_.threads;
  const int queued = options_.max_queued_connections;
  server_->new_task_queue = [threads, queued] { return new BoundedQueue(threads, queued); };
  // SO_REUSEADDR only: cpp-httplib's default also sets SO_REUSEPORT, which would let a second
  // server bind a port already in use instead of failing. The listening socket is remembered
  // so Start can raise its backlog.
  server_->set_socket_options([this](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_fd_ = sock;
  });
  server_->set_payload_max_length(options_.max_body_bytes);
  SetTimeout(options_.read_timeout,
             [this](time_t s, time_t us) { server_->set_read_timeout(s, us); });
  SetTimeout(options_.write_timeout,
             [this](time_t s, time_t us) { server_->set_write_timeout(s, us); });
  SetTimeout(options_.keep_alive_timeout,
             [this](time_t s, time_t) { server_->set_keep_alive_timeout(s > 0 ? s : 1); });
}

HttpServer::~HttpServer() { Stop(); }

absl::Status HttpServer::Start(const std::string& address) {
  std::string host;
  int port = 0;
  absl::Status split = SplitHostPort(address, &host, &port);
  if (!split.ok()) return split;
  if (port == 0) {
    port = server_->bind_to_any_port(host);
    if (port <= 0) {
      return absl::UnavailableError(absl::StrCat("HTTP: cannot bind ", address));
    }
  } else if (!server_->bind_to_port(host, port)) {
    return absl::UnavailableError(
        absl::StrCat("HTTP: cannot bind ", address, " (in use, or not a local address)"));
  }
  // Debian's cpp-httplib listens with a backlog of 5: a burst of connections beyond that is
  // reset by the kernel before any handler could answer it (with a 429, say). Listening again
  // on the bound socket raises it.
  if (listen_fd_ >= 0) ::listen(listen_fd_, SOMAXCONN);
  host_ = host;
  port_ = port;
  loop_ = std::thread([this] { server_->listen_after_bind(); });
  // httplib's stop() does nothing until the loop runs; wait for it so Stop never misses it.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (!server_->is_running()) {
    if (absl::Now() > give_up) {
      Stop();
      return absl::UnavailableError(
          absl::StrCat("HTTP: the server on ", address, " did not start"));
    }
    absl::SleepFor(absl::Microseconds(200));
  }
  return absl::OkStatus();
}

std::string HttpServer::address() const { return JoinHostPort(host_, port_); }

void HttpServer::Stop() {
  if (!loop_.joinable()) return;
  server_->stop();
  loop_.join();
}

void AddProbeRoutes(HttpServer* server, const MetricsRegistry* registry,
                    std::function<void()> on_scrape, std::function<absl::Status()> ready) {
  server->server().Get(
      "/metrics", [registry, on_scrape](const httplib::Request&, httplib::Response& res) {
        if (on_scrape) on_scrape();
        res.set_content(registry->Render(), "text/plain; version=0.0.4; charset=utf-8");
      });
  server->server().Get("/live", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain; charset=utf-8");
  });
  // /health is /ready under the name vLLM and TGI use, for probes and tools written for them.
  for (const char* path : {"/ready", "/health"}) {
    server->server().Get(path, [ready](const httplib::Request&, httplib::Response& res) {
      absl::Status status = ready ? ready() : absl::OkStatus();
      if (status.ok()) {
        res.set_content("ready\n", "text/plain; charset=utf-8");
      } else {
        res.status = 503;
        res.set_content(absl::StrCat("not ready: ", status.message(), "\n"),
                        "text/plain; charset=utf-8");
      }
    });
  }
}

}  // namespace shardserve
