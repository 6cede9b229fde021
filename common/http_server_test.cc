#include "common/http_server.h"

#include <atomic>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

using ::testing::HasSubstr;

TEST(HttpServerTest, ServesProbesAndMetrics) {
  MetricsRegistry registry;
  registry.Counter("shardserve_test_total", "A test counter.")->Add({}, 3);
  std::atomic<bool> ready{false};
  std::atomic<int> scrapes{0};
  HttpServer server;
  AddProbeRoutes(
      &server, &registry, [&] { scrapes++; },
      [&] { return ready ? absl::OkStatus() : absl::UnavailableError("no healthy worker"); });
  ASSERT_TRUE(server.Start("127.0.0.1:0").ok());
  ASSERT_GT(server.port(), 0);

  httplib::Client client("127.0.0.1", server.port());
  auto live = client.Get("/live");
  ASSERT_TRUE(live);
  EXPECT_EQ(live->status, 200);

  auto not_ready = client.Get("/ready");
  ASSERT_TRUE(not_ready);
  EXPECT_EQ(not_ready->status, 503);
  EXPECT_THAT(not_ready->body, HasSubstr("no healthy worker"));
  auto not_healthy = client.Get("/health");
  ASSERT_TRUE(not_healthy);
  EXPECT_EQ(not_healthy->status, 503);
  ready = true;
  auto healthy = client.Get("/health");
  ASSERT_TRUE(healthy);
  EXPECT_EQ(healthy->status, 200);
  auto is_ready = client.Get("/ready");
  ASSERT_TRUE(is_ready);
  EXPECT_EQ(is_ready->status, 200);

  auto metrics = client.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  EXPECT_THAT(metrics->get_header_value("Content-Type"), HasSubstr("version=0.0.4"));
  EXPECT_THAT(metrics->body, HasSubstr("shardserve_test_total 3"));
  EXPECT_EQ(scrapes.load(), 1);

  auto missing = client.Get("/nope");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  server.Stop();
  server.Stop();  // idempotent
}

TEST(HttpServerTest, SecondBindOnTheSamePortFails) {
  HttpServer first;
  ASSERT_TRUE(first.Start("127.0.0.1:0").ok());
  HttpServer second;
  absl::Status s = second.Start(first.address());
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.message(), HasSubstr("cannot bind"));
}

TEST(HttpServerTest, MoreConnectionsThanThreadsAreAllServed) {
  HttpServerOptions options;
  options.threads = 2;
  options.max_queued_connections = 1;
  HttpServer server(options);
  server.server().Get("/slow", [](const httplib::Request&, httplib::Response& res) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    res.set_content("done", "text/plain");
  });
  ASSERT_TRUE(server.Start("127.0.0.1:0").ok());
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int i = 0; i < 8; ++i) {
    clients.emplace_back([&] {
      httplib::Client client("127.0.0.1", server.port());
      auto res = client.Get("/slow");
      if (res && res->status == 200 && res->body == "done") ok++;
    });
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(ok.load(), 8);
}

// A burst of connections larger than the listen backlog cpp-httplib uses (5) is queued by the
// kernel, not reset.
TEST(HttpServerTest, ABurstOfConnectionsIsNotReset) {
  HttpServerOptions options;
  options.threads = 2;
  HttpServer server(options);
  AddProbeRoutes(&server, nullptr, nullptr, nullptr);
  ASSERT_TRUE(server.Start("127.0.0.1:0").ok());
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int i = 0; i < 64; ++i) {
    clients.emplace_back([&] {
      httplib::Client client("127.0.0.1", server.port());
      auto res = client.Get("/live");
      if (res && res->status == 200) ok++;
    });
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(ok.load(), 64);
}

}  // namespace
}  // namespace shardserve
