// `shardserve status` (the cluster as a gateway or a worker sees it) and `shardserve hash-key`.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "common/json.h"
#include "gateway/admission.h"
#include "google/protobuf/util/json_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "shardserve/gateway/v1/gateway.grpc.pb.h"
#include "shardserve/worker/v1/worker.grpc.pb.h"

namespace shardserve::cli {
namespace {

namespace chatpb = ::shardserve::chat::v1;
namespace gatewaypb = ::shardserve::gateway::v1;
namespace workerpb = ::shardserve::worker::v1;
namespace healthpb = ::grpc::health::v1;

std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

int PrintError(const std::string& what, const grpc::Status& status) {
  std::fprintf(stderr, "shardserve status: %s: %s: %s\n", what.c_str(),
               CodeName(status.error_code()).c_str(), status.error_message().c_str());
  return 1;
}

std::chrono::system_clock::time_point After(double seconds) {
  return std::chrono::system_clock::now() +
         std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

// Columns padded to their widest cell, two spaces apart; the last column is not padded.
class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  std::string Render(const std::string& indent) const {
    std::vector<size_t> width;
    for (const auto& row : rows_) {
      if (width.size() < row.size()) width.resize(row.size(), 0);
      for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
    }
    std::string out;
    for (const auto& row : rows_) {
      std::string line = indent;
      for (size_t i = 0; i < row.size(); ++i) {
        absl::StrAppend(&line, row[i]);
        if (i + 1 < row.size()) line.append(width[i] - row[i].size() + 2, ' ');
      }
      while (!line.empty() && line.back() == ' ') line.pop_back();
      absl::StrAppend(&out, line, "\n");
    }
    return out;
  }

 private:
  std::vector<std::vector<std::string>> rows_;
};

std::string KvText(uint64_t used, uint64_t total) {
  if (total == 0) return "-";
  return absl::StrFormat("%d/%d (%.1f%%)", used, total, 100.0 * used / total);
}

std::string ModelLine(const chatpb::ModelInfo& model) {
  return absl::StrCat("model ", model.id(), "  context ", model.context_length(), "  quantization ",
                      model.quantization().empty() ? "-" : model.quantization());
}

const std::vector<std::string> kWorkerHeader = {"WORKER",  "UP",      "HEALTHY",   "RUNNING",
                                                "WAITING", "KV USED", "IN FLIGHT", "MESSAGE"};

// The message in protobuf's JSON mapping (proto field names, defaults included).
nlohmann::json ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string text;
  if (!google::protobuf::util::MessageToJsonString(message, &text, options).ok()) return nullptr;
  absl::StatusOr<nlohmann::json> json = ParseJson(text, message.GetTypeName());
  return json.ok() ? *std::move(json) : nullptr;
}

void PrintCluster(const std::string& target, const gatewaypb::ClusterStatusResponse& cluster) {
  std::printf("gateway %s (version %s): %d model%s\n", target.c_str(),
              cluster.version().empty() ? "?" : cluster.version().c_str(), cluster.models_size(),
              cluster.models_size() == 1 ? "" : "s");
  for (const gatewaypb::ModelStatus& m : cluster.models()) {
    std::printf("\n%s  ready replicas %u/%d  queued %u  discovery %s\n",
                ModelLine(m.model()).c_str(), m.model().ready_replicas(), m.workers_size(),
                m.queued_requests(), m.discovery().empty() ? "-" : m.discovery().c_str());
    if (m.workers().empty()) {
      std::printf("  (no workers)\n");
      continue;
    }
    Table table(kWorkerHeader);
    for (const gatewaypb::WorkerInfo& w : m.workers()) {
      table.Add({w.address(), w.up() ? "up" : "down", w.healthy() ? "yes" : "no",
                 absl::StrCat(w.running_sequences()), absl::StrCat(w.waiting_sequences()),
                 KvText(w.kv_blocks_used(), w.kv_blocks_total()),
                 absl::StrCat(w.gateway_in_flight()), w.message()});
    }
    std::fputs(table.Render("  ").c_str(), stdout);
  }
}

// Health.Check on "": SERVING or not, with the reason when the check itself fails.
bool Healthy(const std::shared_ptr<grpc::Channel>& channel, double timeout, std::string* why) {
  healthpb::Health::Stub health(channel);
  grpc::ClientContext context;
  context.set_deadline(After(timeout));
  healthpb::HealthCheckRequest request;
  healthpb::HealthCheckResponse response;
  grpc::Status status = health.Check(&context, request, &response);
  if (!status.ok()) {
    *why =
        absl::StrCat("health check: ", CodeName(status.error_code()), ": ", status.error_message());
    return false;
  }
  return response.status() == healthpb::HealthCheckResponse::SERVING;
}

void PrintWorker(const std::string& target, const workerpb::StatusResponse& s, bool healthy,
                 const std::string& health_error) {
  std::printf("worker %s (version %s, backend %s, world size %u): %s\n", target.c_str(),
              s.version().empty() ? "?" : s.version().c_str(),
              s.backend().empty() ? "?" : s.backend().c_str(), s.world_size(),
              workerpb::WorkerState_Name(s.state()).c_str());
  std::printf("\n%s  ready replicas %u  decode %.1f tokens/s  prefill %.1f tokens/s\n",
              ModelLine(s.model()).c_str(), s.model().ready_replicas(),
              s.decode_tokens_per_second(), s.prefill_tokens_per_second());
  Table table(kWorkerHeader);
  std::string message = s.message();
  if (!health_error.empty())
    message = absl::StrCat(message, message.empty() ? "" : "; ", health_error);
  table.Add({target, "up", healthy ? "yes" : "no", absl::StrCat(s.running_sequences()),
             absl::StrCat(s.waiting_sequences()), KvText(s.kv_blocks_used(), s.kv_blocks_total()),
             "-", message});
  std::fputs(table.Render("  ").c_str(), stdout);
}

}  // namespace

int RunStatus(const StatusOptions& options) {
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateChannel(options.target, grpc::InsecureChannelCredentials());

  // A gateway answers ClusterStatus; a worker does not serve that service (UNIMPLEMENTED).
  gatewaypb::Gateway::Stub gateway(channel);
  gatewaypb::ClusterStatusResponse cluster;
  grpc::Status status;
  {
    grpc::ClientContext context;
    context.set_deadline(After(options.timeout_seconds));
    if (!options.api_key.empty()) context.AddMetadata("authorization", "Bearer " + options.api_key);
    status = gateway.ClusterStatus(&context, gatewaypb::ClusterStatusRequest(), &cluster);
  }
  if (status.ok()) {
    if (options.json) {
      std::printf("%s\n", DumpJson({{"gateway", ToJson(cluster)}}, 2).c_str());
    } else {
      PrintCluster(options.target, cluster);
    }
    return 0;
  }
  if (status.error_code() != grpc::StatusCode::UNIMPLEMENTED) {
    return PrintError("ClusterStatus on " + options.target, status);
  }

  workerpb::Worker::Stub worker(channel);
  workerpb::StatusResponse response;
  {
    grpc::ClientContext context;
    context.set_deadline(After(options.timeout_seconds));
    status = worker.Status(&context, workerpb::StatusRequest(), &response);
  }
  if (!status.ok()) {
    return PrintError(options.target + " is neither a gateway nor a worker: Worker/Status", status);
  }
  std::string health_error;
  const bool healthy = Healthy(channel, options.timeout_seconds, &health_error);
  if (options.json) {
    std::printf("%s\n", DumpJson({{"worker", ToJson(response)}, {"healthy", healthy}}, 2).c_str());
  } else {
    PrintWorker(options.target, response, healthy, health_error);
  }
  return 0;
}

int RunHashKey(const HashKeyOptions& options) {
  std::string key = options.key;
  if (key == "-") {
    key.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    while (!key.empty() && (key.back() == '\n' || key.back() == '\r')) key.pop_back();
  }
  if (key.empty()) {
    std::fprintf(stderr, "shardserve hash-key: the key is empty\n");
    return 1;
  }
  std::printf("%s\n", Sha256Hex(key).c_str());
  return 0;
}

}  // namespace shardserve::cli
