#include "worker/rpc/health_service.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;
using ::testing::HasSubstr;

HealthCheckResponse::ServingStatus Check(HealthService& health, const std::string& service,
                                         grpc::Status* status) {
  grpc::ServerContext context;
  HealthCheckRequest request;
  request.set_service(service);
  HealthCheckResponse response;
  *status = health.Check(&context, &request, &response);
  return response.status();
}

TEST(HealthServiceTest, NotServingUntilToldThenServingThenNotAfterShutdown) {
  HealthService health;
  health.SetServing("", false);
  health.SetServing("shardserve.worker.v1.Worker", false);
  grpc::Status status;
  EXPECT_EQ(Check(health, "", &status), HealthCheckResponse::NOT_SERVING);
  EXPECT_TRUE(status.ok());
  health.SetServing("", true);
  EXPECT_EQ(Check(health, "", &status), HealthCheckResponse::SERVING);
  EXPECT_EQ(Check(health, "shardserve.worker.v1.Worker", &status),
            HealthCheckResponse::NOT_SERVING);
  health.Shutdown();
  EXPECT_EQ(Check(health, "", &status), HealthCheckResponse::NOT_SERVING);
}

TEST(HealthServiceTest, UnknownServiceIsNotFound) {
  HealthService health;
  grpc::Status status;
  Check(health, "no.such.Service", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("'no.such.Service'"));
}

}  // namespace
}  // namespace shardserve
