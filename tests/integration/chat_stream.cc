#include "tests/integration/chat_stream.h"

namespace shardserve::testing {

chat::v1::ChatRequest GreedyRequest(const std::string& model, const std::string& prompt,
                                    int max_tokens) {
  chat::v1::ChatRequest r;
  r.set_model(model);
  chat::v1::Message* m = r.add_messages();
  m->set_role(chat::v1::ROLE_USER);
  m->set_content(prompt);
  r.mutable_sampling()->set_temperature(0);
  r.set_max_tokens(max_tokens);
  return r;
}

StreamResult CollectStream(grpc::ClientReaderInterface<chat::v1::ChatChunk>* reader,
                           const std::function<void(const StreamResult&)>& on_chunk) {
  StreamResult result;
  chat::v1::ChatChunk chunk;
  while (reader->Read(&chunk)) {
    result.text += chunk.delta();
    result.ids.insert(result.ids.end(), chunk.token_ids().begin(), chunk.token_ids().end());
    result.chunks.push_back(chunk);
    if (on_chunk) on_chunk(result);
  }
  result.status = reader->Finish();
  return result;
}

}  // namespace shardserve::testing
