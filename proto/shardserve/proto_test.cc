// Holds the three protocols to the rules that keep them stable: every enum starts with a
// *_UNSPECIFIED zero value, every message, field, enum value, service and method is commented,
// and the RPC shapes are what the gateway, workers and operators rely on.
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "google/protobuf/descriptor.pb.h"
#include "gtest/gtest.h"
#include "shardserve/chat/v1/chat.grpc.pb.h"
#include "shardserve/gateway/v1/gateway.grpc.pb.h"
#include "shardserve/hub/v1/hub_sync.grpc.pb.h"
#include "shardserve/worker/v1/worker.grpc.pb.h"

namespace shardserve {
namespace {

using google::protobuf::FileDescriptorProto;
using google::protobuf::FileDescriptorSet;
using google::protobuf::SourceCodeInfo;

FileDescriptorSet LoadDescriptorSet() {
  FileDescriptorSet set;
  std::ifstream in(SHARDSERVE_PROTO_DESCRIPTOR_SET, std::ios::binary);
  EXPECT_TRUE(in.good()) << SHARDSERVE_PROTO_DESCRIPTOR_SET;
  EXPECT_TRUE(set.ParseFromIstream(&in));
  return set;
}

// Paths (as in SourceCodeInfo.Location.path) of every declaration that must carry a comment.
void CollectDeclarations(const FileDescriptorProto& file,
                         std::vector<std::pair<std::vector<int>, std::string>>* out) {
  // Field numbers of FileDescriptorProto / DescriptorProto / ... per descriptor.proto.
  constexpr int kFileMessage = 4, kFileEnum = 5, kFileService = 6;
  constexpr int kMessageField = 2, kMessageNested = 3, kMessageEnum = 4;
  constexpr int kEnumValue = 2, kServiceMethod = 2;
  auto add_enum = [&](std::vector<int> path, const google::protobuf::EnumDescriptorProto& e) {
    out->push_back({path, "enum " + e.name()});
    for (int v = 0; v < e.value_size(); ++v) {
      std::vector<int> p = path;
      p.insert(p.end(), {kEnumValue, v});
      // The zero value is self-explanatory by convention.
      if (v > 0) out->push_back({p, "enum value " + e.value(v).name()});
    }
  };
  std::function<void(std::vector<int>, const google::protobuf::DescriptorProto&)> add_message =
      [&](std::vector<int> path, const google::protobuf::DescriptorProto& m) {
        out->push_back({path, "message " + m.name()});
        for (int f = 0; f < m.field_size(); ++f) {
          std::vector<int> p = path;
          p.insert(p.end(), {kMessageField, f});
          out->push_back({p, "field " + m.name() + "." + m.field(f).name()});
        }
        for (int n = 0; n < m.nested_type_size(); ++n) {
          std::vector<int> p = path;
          p.insert(p.end(), {kMessageNested, n});
          add_message(p, m.nested_type(n));
        }
        for (int e = 0; e < m.enum_type_size(); ++e) {
          std::vector<int> p = path;
          p.insert(p.end(), {kMessageEnum, e});
          add_enum(p, m.enum_type(e));
        }
      };
  for (int i = 0; i < file.message_type_size(); ++i)
    add_message({kFileMessage, i}, file.message_type(i));
  for (int i = 0; i < file.enum_type_size(); ++i) add_enum({kFileEnum, i}, file.enum_type(i));
  for (int i = 0; i < file.service_size(); ++i) {
    out->push_back({{kFileService, i}, "service " + file.service(i).name()});
    for (int m = 0; m < file.service(i).method_size(); ++m) {
      out->push_back(
          {{kFileService, i, kServiceMethod, m}, "rpc " + file.service(i).method(m).name()});
    }
  }
}

TEST(ProtoTest, EveryDeclarationIsCommented) {
  FileDescriptorSet set = LoadDescriptorSet();
  ASSERT_EQ(set.file_size(), 4);
  for (const FileDescriptorProto& file : set.file()) {
    std::map<std::vector<int>, const SourceCodeInfo::Location*> locations;
    for (const auto& loc : file.source_code_info().location()) {
      locations[std::vector<int>(loc.path().begin(), loc.path().end())] = &loc;
    }
    std::vector<std::pair<std::vector<int>, std::string>> declarations;
    CollectDeclarations(file, &declarations);
    for (const auto& [path, what] : declarations) {
      auto it = locations.find(path);
      bool commented = it != locations.end() && (!it->second->leading_comments().empty() ||
                                                 !it->second->trailing_comments().empty() ||
                                                 it->second->leading_detached_comments_size() > 0);
      EXPECT_TRUE(commented) << file.name() << ": " << what << " has no comment";
    }
  }
}

TEST(ProtoTest, EnumsStartWithUnspecified) {
  FileDescriptorSet set = LoadDescriptorSet();
  for (const FileDescriptorProto& file : set.file()) {
    for (const auto& e : file.enum_type()) {
      ASSERT_GT(e.value_size(), 0);
      EXPECT_EQ(e.value(0).number(), 0) << e.name();
      const std::string& zero = e.value(0).name();
      EXPECT_TRUE(zero.size() > 12 && zero.substr(zero.size() - 12) == "_UNSPECIFIED")
          << file.name() << ": " << e.name() << " starts with " << zero;
    }
  }
}

TEST(ProtoTest, RpcShapes) {
  const auto* chat = chat::v1::ChatRequest::descriptor()->file()->FindServiceByName("Chat");
  ASSERT_NE(chat, nullptr);
  EXPECT_EQ(chat->full_name(), "shardserve.chat.v1.Chat");
  EXPECT_TRUE(chat->FindMethodByName("Chat")->server_streaming());
  EXPECT_FALSE(chat->FindMethodByName("Chat")->client_streaming());
  EXPECT_FALSE(chat->FindMethodByName("ListModels")->server_streaming());

  const auto* worker =
      worker::v1::GenerateRequest::descriptor()->file()->FindServiceByName("Worker");
  EXPECT_EQ(worker->full_name(), "shardserve.worker.v1.Worker");
  EXPECT_TRUE(worker->FindMethodByName("Generate")->server_streaming());
  EXPECT_EQ(worker->FindMethodByName("Generate")->output_type()->full_name(),
            "shardserve.chat.v1.ChatChunk");
  EXPECT_FALSE(worker->FindMethodByName("Status")->server_streaming());

  const auto* hub = hub::v1::SyncRequest::descriptor()->file()->FindServiceByName("HubSync");
  EXPECT_EQ(hub->full_name(), "shardserve.hub.v1.HubSync");
  EXPECT_TRUE(hub->FindMethodByName("Sync")->server_streaming());
  EXPECT_NE(hub->FindMethodByName("List"), nullptr);
  EXPECT_NE(hub->FindMethodByName("Delete"), nullptr);

  const auto* gateway =
      gateway::v1::ClusterStatusRequest::descriptor()->file()->FindServiceByName("Gateway");
  ASSERT_NE(gateway, nullptr);
  EXPECT_EQ(gateway->full_name(), "shardserve.gateway.v1.Gateway");
  EXPECT_FALSE(gateway->FindMethodByName("ClusterStatus")->server_streaming());
}

TEST(ProtoTest, ChatRequestRoundTrips) {
  chat::v1::ChatRequest request;
  request.set_model("HuggingFaceTB/SmolLM2-135M-Instruct");
  auto* m = request.add_messages();
  m->set_role(chat::v1::ROLE_USER);
  m->set_content("héllo 👋");
  request.mutable_sampling()->set_temperature(0.0f);
  request.add_stop("\n\n");
  std::string wire = request.SerializeAsString();
  chat::v1::ChatRequest back;
  ASSERT_TRUE(back.ParseFromString(wire));
  EXPECT_EQ(back.messages(0).content(), "héllo 👋");
  // An explicit temperature of 0 (greedy) is distinguishable from "unset".
  EXPECT_TRUE(back.sampling().has_temperature());
  EXPECT_FALSE(back.sampling().has_top_p());
}

}  // namespace
}  // namespace shardserve
