// libFuzzer target for the tokenizer. The first input byte picks what the rest is:
//   0: tokenizer.json text (must load or fail with a status, never crash);
//   1: text for SmolLM2's byte-level tokenizer: Decode(Encode(text)) must give the text back
//      (after invalid UTF-8 is replaced) when every byte has its byte-level token (SmolLM2 lacks
//      a few, e.g. 0xF1 and 0xF2, whose characters the library then drops), and streaming
//      decode must equal Decode;
//   2: text for TinyLlama's SentencePiece tokenizer: encode, then stream decode == Decode;
//   3: little-endian uint16 ids for both tokenizers: stream decode == Decode, valid UTF-8.
// The reference tokenizers are read from $SHARDSERVE_SOURCE_DIR/../shared/reference/tokenizers
// (or ../shared/reference/tokenizers from the working directory).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "worker/text/tokenizer.h"
#include "worker/text/unicode.h"

namespace {

using shardserve::Tokenizer;

std::unique_ptr<Tokenizer> LoadReference(const char* name) {
  const char* src = std::getenv("SHARDSERVE_SOURCE_DIR");
  const std::string dir =
      std::string(src != nullptr ? src : ".") + "/../shared/reference/tokenizers/";
  auto tok = Tokenizer::FromFile(dir + name);
  if (!tok.ok()) {
    std::fprintf(stderr, "cannot load %s: %s\n", name, tok.status().ToString().c_str());
    std::abort();
  }
  return *std::move(tok);
}

const Tokenizer& SmolLM2() {
  static const Tokenizer* tok = LoadReference("SmolLM2-135M-Instruct.tokenizer.json").release();
  return *tok;
}

const Tokenizer& TinyLlama() {
  static const Tokenizer* tok = LoadReference("TinyLlama-1.1B-Chat-v1.0.tokenizer.json").release();
  return *tok;
}

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "tokenizer_fuzzer: %s\n", what);
    std::abort();
  }
}

void CheckStream(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  for (bool skip : {false, true}) {
    const std::string whole = tok.Decode(ids, skip);
    Check(shardserve::text::IsValidUtf8(whole), "Decode returned invalid UTF-8");
    auto stream = tok.NewStreamDecoder(skip);
    std::string streamed;
    for (int32_t id : ids) {
      std::string piece = stream.Step(id);
      Check(shardserve::text::IsValidUtf8(piece), "StreamDecoder returned invalid UTF-8");
      streamed += piece;
    }
    streamed += stream.Finish();
    Check(streamed == whole, "streamed decode differs from Decode");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 4) {
    case 0: {
      auto tok = Tokenizer::FromJson(rest, "fuzz input");
      if (tok.ok()) {
        const auto ids = (*tok)->Encode("Hello world 123 <s>", true);
        CheckStream(**tok, ids);
      }
      break;
    }
    case 1: {
      const Tokenizer& tok = SmolLM2();
      static const std::vector<bool>* has_byte = [&tok] {
        auto* v = new std::vector<bool>(256);
        for (int b = 0; b < 256; ++b) {
          (*v)[b] =
              tok.TokenToId(shardserve::text::ByteToChar(static_cast<uint8_t>(b))).has_value();
        }
        return v;
      }();
      const std::string valid = shardserve::text::ToValidUtf8(rest);
      bool covered = true;
      for (unsigned char b : valid) covered = covered && (*has_byte)[b];
      const auto ids = tok.Encode(rest, false);
      Check(!covered || tok.Decode(ids, false) == valid, "byte-level round trip failed");
      CheckStream(tok, ids);
      break;
    }
    case 2: {
      const Tokenizer& tok = TinyLlama();
      CheckStream(tok, tok.Encode(rest, true));
      break;
    }
    case 3: {
      std::vector<int32_t> ids;
      for (size_t i = 0; i + 1 < rest.size(); i += 2) {
        ids.push_back(static_cast<uint8_t>(rest[i]) | (static_cast<uint8_t>(rest[i + 1]) << 8));
      }
      CheckStream(SmolLM2(), ids);
      CheckStream(TinyLlama(), ids);
      break;
    }
  }
  return 0;
}
