// Client-side helpers the integration tests share for shardserve.chat.v1 streams.
#ifndef SHARDSERVE_TESTS_INTEGRATION_CHAT_STREAM_H_
#define SHARDSERVE_TESTS_INTEGRATION_CHAT_STREAM_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "grpcpp/support/sync_stream.h"
#include "shardserve/chat/v1/chat.pb.h"

namespace shardserve::testing {

// A one-message user conversation, greedy, at most `max_tokens`.
chat::v1::ChatRequest GreedyRequest(const std::string& model, const std::string& prompt,
                                    int max_tokens);

// Everything one stream returned.
struct StreamResult {
  std::vector<chat::v1::ChatChunk> chunks;
  std::string text;          // the deltas, concatenated
  std::vector<int32_t> ids;  // the token ids, concatenated
  grpc::Status status;
  const chat::v1::ChatChunk* final_chunk() const {
    return chunks.empty() ? nullptr : &chunks.back();
  }
};

// Reads a stream to its end; `on_chunk` (may be null) runs after each chunk.
StreamResult CollectStream(grpc::ClientReaderInterface<chat::v1::ChatChunk>* reader,
                           const std::function<void(const StreamResult&)>& on_chunk = nullptr);

}  // namespace shardserve::testing

#endif  // SHARDSERVE_TESTS_INTEGRATION_CHAT_STREAM_H_
