#include "worker/engine/text_output.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/text/tokenizer.h"
#include "worker/text/unicode.h"

namespace shardserve {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// The real tokenizers, from shared/reference beside the repository: SmolLM2's byte-level BPE
// (the default model) and TinyLlama's SentencePiece BPE with byte-fallback tokens.
std::unique_ptr<Tokenizer> LoadTokenizer(const std::string& name) {
  const char* src = std::getenv("SHARDSERVE_SOURCE_DIR");
  const std::string path = std::string(src != nullptr ? src : ".") +
                           "/../shared/reference/tokenizers/" + name + ".tokenizer.json";
  auto tokenizer = Tokenizer::FromFile(path);
  if (!tokenizer.ok()) {
    // Every test needs it: stop here with the reason rather than fail each one on a null.
    std::fprintf(stderr, "%s (shared/reference must sit beside the repository)\n",
                 std::string(tokenizer.status().message()).c_str());
    std::exit(1);
  }
  return *std::move(tokenizer);
}

const Tokenizer& Smol() {
  static const Tokenizer* t = LoadTokenizer("SmolLM2-135M-Instruct").release();
  return *t;
}
const Tokenizer& TinyLlama() {
  static const Tokenizer* t = LoadTokenizer("TinyLlama-1.1B-Chat-v1.0").release();
  return *t;
}

// What one generated sequence streamed.
struct Streamed {
  std::vector<std::string> deltas;  // per Push
  int stopped_at = -1;              // index of the Push that matched a stop string
  std::string finish;               // Finish()'s text
  std::string all;                  // everything emitted, in order
};

Streamed Stream(const Tokenizer& tokenizer, const std::string& text,
                std::vector<std::string> stop) {
  const std::vector<int32_t> ids = tokenizer.Encode(text, /*add_special_tokens=*/false);
  TextOutput out(tokenizer, std::move(stop));
  Streamed run;
  for (size_t i = 0; i < ids.size(); ++i) {
    TextOutput::Delta d = out.Push(ids[i]);
    EXPECT_TRUE(text::IsValidUtf8(d.text)) << "delta " << i << " is broken UTF-8";
    run.deltas.push_back(d.text);
    run.all += d.text;
    if (d.stopped) {
      run.stopped_at = static_cast<int>(i);
      break;
    }
  }
  run.finish = out.Finish();
  EXPECT_TRUE(text::IsValidUtf8(run.finish));
  run.all += run.finish;
  EXPECT_EQ(out.emitted(), run.all);
  return run;
}

// Decoded text of each token on its own (to check how a test's text is split).
std::vector<std::string> Pieces(const Tokenizer& tokenizer, const std::string& text) {
  std::vector<std::string> pieces;
  for (int32_t id : tokenizer.Encode(text, false)) pieces.push_back(tokenizer.Decode({id}, false));
  return pieces;
}

TEST(TextOutputTest, WithoutStopStringsEverythingStreamsAsDecoded) {
  for (const Tokenizer* t : {&Smol(), &TinyLlama()}) {
    const std::string text = "The quick brown fox jumps over the lazy dog. 日本語 café 😀!";
    Streamed run = Stream(*t, text, {});
    EXPECT_EQ(run.stopped_at, -1);
    EXPECT_EQ(run.all, t->Decode(t->Encode(text, false), true));
    EXPECT_EQ(run.finish, "");
  }
}

TEST(TextOutputTest, StopStringSplitOverTokensIsNeverEmitted) {
  // SmolLM2: "The", " quick", " brown", " fox", " jumps", " over", ...
  const std::string text = "The quick brown fox jumps over the lazy dog";
  ASSERT_EQ(Pieces(Smol(), text)[3], " fox");
  ASSERT_EQ(Pieces(Smol(), text)[4], " jumps");
  Streamed run = Stream(Smol(), text, {"fox jumps"});
  EXPECT_EQ(run.stopped_at, 4);  // on the token that completes it
  EXPECT_EQ(run.all, "The quick brown ");
  EXPECT_EQ(run.deltas[2], " brown");
  EXPECT_EQ(run.deltas[3], " ");  // "fox" held back
  EXPECT_EQ(run.deltas[4], "");
  EXPECT_EQ(run.finish, "");

  // Over three tokens: TinyLlama splits "fox jumps" as "▁fo", "x", "▁j", "umps".
  const std::vector<std::string> pieces = Pieces(TinyLlama(), text);
  ASSERT_EQ(pieces[3], "fo");  // a lone piece decodes without its leading space
  Streamed run2 = Stream(TinyLlama(), text, {"ox jum"});
  EXPECT_EQ(run2.stopped_at, 6);  // "▁The ▁quick ▁brown ▁fo x ▁j umps"
  EXPECT_EQ(run2.all, "The quick brown f");
  EXPECT_EQ(run2.deltas[3], " f");  // "o" held
  EXPECT_EQ(run2.deltas[4], "");
  EXPECT_EQ(run2.deltas[5], "");
  EXPECT_EQ(run2.deltas[6], "");
}

TEST(TextOutputTest, HeldPrefixIsReleasedWhenTheTextDiverges) {
  const std::string text = "the fox runs and the fox jumps";
  Streamed run = Stream(Smol(), text, {"fox jumps high"});
  EXPECT_EQ(run.stopped_at, -1);
  EXPECT_EQ(run.all, text);  // nothing lost: the last "fox jumps" is released by Finish
  EXPECT_EQ(run.finish, "fox jumps");
  // " fox" was held until " runs" showed it is not the stop string.
  EXPECT_EQ(run.deltas[1], " ");
  EXPECT_EQ(run.deltas[2], "fox runs");
}

TEST(TextOutputTest, EarliestOfSeveralStopStringsWins) {
  const std::string text = "alpha beta gamma delta";
  Streamed run = Stream(Smol(), text, {"delta", "beta", "gamma"});
  EXPECT_EQ(run.all, "alpha ");
  EXPECT_EQ(run.stopped_at, 1);
  // Two matches completed by the same token: the one that starts first cuts the text.
  Streamed run2 = Stream(Smol(), text, {"mma", "beta gamma"});
  EXPECT_EQ(run2.stopped_at, 2);
  EXPECT_EQ(run2.all, "alpha ");
  // A longer stop string still pending does not delay a shorter one that completes.
  Streamed run3 = Stream(Smol(), text, {"a beta gamma delta!", "gamma"});
  EXPECT_EQ(run3.stopped_at, 2);
  EXPECT_EQ(run3.all, "alpha beta ");
}

TEST(TextOutputTest, StopInsideOneTokenCutsTheTokensText) {
  ASSERT_EQ(Pieces(Smol(), "Hello world")[1], " world");
  Streamed run = Stream(Smol(), "Hello world", {"orl"});
  EXPECT_EQ(run.stopped_at, 1);
  EXPECT_EQ(run.deltas[0], "Hell");  // "o" could start "orl"
  EXPECT_EQ(run.deltas[1], "o w");
  EXPECT_EQ(run.all, "Hello w");
  // A stop string that is a whole token's text at the very start.
  Streamed run2 = Stream(Smol(), "Hello world", {"Hello"});
  EXPECT_EQ(run2.stopped_at, 0);
  EXPECT_EQ(run2.all, "");
}

TEST(TextOutputTest, MultiByteCharactersAreNeverBroken) {
  // TinyLlama: "😀" is four byte-fallback tokens; SmolLM2 splits it over two byte-level tokens.
  const std::string text = "Hi 😀 there 🦙 done";
  for (const Tokenizer* t : {&Smol(), &TinyLlama()}) {
    Streamed run = Stream(*t, text, {});  // Stream checks every delta is valid UTF-8
    EXPECT_EQ(run.all, text);
    for (const std::string& d : run.deltas) {
      EXPECT_THAT(d, Not(HasSubstr("\xEF\xBF\xBD")));  // no U+FFFD either
    }
  }
  const std::vector<std::string> pieces = Pieces(TinyLlama(), text);
  ASSERT_GE(pieces.size(), 6u);
  Streamed run = Stream(TinyLlama(), text, {});
  // The emoji's four byte tokens emit nothing (the decoder holds a run of byte-fallback tokens
  // until a token that is not one); the next token emits the emoji with its own text.
  EXPECT_EQ(run.deltas[1], " ");
  for (int i = 2; i <= 5; ++i) EXPECT_EQ(run.deltas[i], "") << i;
  EXPECT_EQ(run.deltas[6], "😀 there");
  // CJK over byte-level tokens.
  Streamed cjk = Stream(Smol(), "naïve café 日本語", {});
  EXPECT_EQ(cjk.all, "naïve café 日本語");
}

TEST(TextOutputTest, MultiByteStopStrings) {
  Streamed run = Stream(TinyLlama(), "Hi 😀 there 🦙 done", {"🦙"});
  EXPECT_EQ(run.all, "Hi 😀 there ");
  Streamed run2 = Stream(Smol(), "naïve café 日本語です", {"本語"});
  EXPECT_EQ(run2.all, "naïve café 日");
  // A stop string starting with the emoji's bytes is never matched half way into a character.
  Streamed run3 = Stream(Smol(), "Hi 😀 there", {"😀 there"});
  EXPECT_EQ(run3.all, "Hi ");
}

TEST(TextOutputTest, FinishFlushesHeldTextAndEndsTheSequence) {
  const std::vector<int32_t> ids = Smol().Encode("the fox", false);
  TextOutput out(Smol(), {"fox jumps", ""});
  std::string streamed;
  for (int32_t id : ids) {
    TextOutput::Delta d = out.Push(id);
    EXPECT_FALSE(d.stopped);
    streamed += d.text;
  }
  EXPECT_EQ(streamed, "the ");
  EXPECT_EQ(out.Finish(), "fox");
  EXPECT_EQ(out.emitted(), "the fox");
  EXPECT_EQ(out.Finish(), "");
}

TEST(TextOutputTest, AfterAStopNothingMoreIsEmitted) {
  const std::vector<int32_t> ids = Smol().Encode("one two three four", false);
  TextOutput out(Smol(), {"two"});
  ASSERT_FALSE(out.Push(ids[0]).stopped);
  TextOutput::Delta d = out.Push(ids[1]);
  EXPECT_TRUE(d.stopped);
  EXPECT_EQ(d.text, " ");
  d = out.Push(ids[2]);
  EXPECT_TRUE(d.stopped);
  EXPECT_EQ(d.text, "");
  EXPECT_EQ(out.Finish(), "");
  EXPECT_EQ(out.emitted(), "one ");
}

TEST(TextOutputTest, EmptyStopStringsAreIgnored) {
  Streamed run = Stream(Smol(), "abc def", {"", ""});
  EXPECT_EQ(run.stopped_at, -1);
  EXPECT_EQ(run.all, "abc def");
  EXPECT_EQ(run.finish, "");
}

TEST(TextOutputTest, SpecialTokensAreSkippedUnlessAsked) {
  const std::optional<int32_t> end = Smol().TokenToId("<|im_end|>");
  ASSERT_TRUE(end.has_value());
  std::vector<int32_t> ids = Smol().Encode("Hi", false);
  TextOutput skip(Smol(), {});
  TextOutput keep(Smol(), {}, /*skip_special_tokens=*/false);
  std::string a, b;
  for (int32_t id : ids) {
    a += skip.Push(id).text;
    b += keep.Push(id).text;
  }
  a += skip.Push(*end).text;
  a += skip.Finish();
  b += keep.Push(*end).text;
  b += keep.Finish();
  EXPECT_EQ(a, "Hi");
  EXPECT_EQ(b, "Hi<|im_end|>");
}

// Against a direct reference on random texts and stop strings: the text streamed up to the
// first token after which the decoded text contains a stop string, cut at the earliest match in
// it; at every step exactly the text that cannot start a match any more is out.
TEST(TextOutputTest, MatchesAReferenceOnRandomTexts) {
  const std::vector<std::string> words = {"the", "cat",  "sat", "on", "a",  "mat", "ca", "at",
                                          "😀",   "日本", "é",   "\n", "  ", ".",   "tt", "on the"};
  std::mt19937_64 rng(77);
  for (const Tokenizer* t : {&Smol(), &TinyLlama()}) {
    for (int iter = 0; iter < 300; ++iter) {
      std::string text;
      const int n = 3 + static_cast<int>(rng() % 12);
      for (int i = 0; i < n; ++i) {
        text += words[rng() % words.size()];
        if (rng() % 2) text += " ";
      }
      std::vector<std::string> stop;
      const int k = static_cast<int>(rng() % 3);
      for (int i = 0; i < k; ++i) {
        std::string s = words[rng() % words.size()];
        if (rng() % 2) s += " " + words[rng() % words.size()];
        stop.push_back(s);
      }
      const std::vector<int32_t> ids = t->Encode(text, false);
      StreamDecoder reference = t->NewStreamDecoder(true);
      TextOutput out(*t, stop);
      std::string decoded, emitted;
      bool stopped = false;
      for (int32_t id : ids) {
        decoded += reference.Step(id);
        TextOutput::Delta d = out.Push(id);
        ASSERT_TRUE(text::IsValidUtf8(d.text));
        emitted += d.text;
        size_t match = std::string::npos;
        for (const std::string& s : stop) match = std::min(match, decoded.find(s));
        if (match != std::string::npos) {
          ASSERT_TRUE(d.stopped) << text;
          ASSERT_EQ(emitted, decoded.substr(0, match)) << text;
          stopped = true;
          break;
        }
        ASSERT_FALSE(d.stopped) << text;
        // Held back: the longest tail that is a proper prefix of a stop string.
        size_t hold = decoded.size();
        for (size_t q = 0; q < decoded.size() && hold == decoded.size(); ++q) {
          for (const std::string& s : stop) {
            if (s.size() > decoded.size() - q &&
                s.compare(0, decoded.size() - q, decoded, q, std::string::npos) == 0) {
              hold = q;
            }
          }
        }
        ASSERT_EQ(emitted, decoded.substr(0, hold)) << text;
      }
      const std::string rest = out.Finish();
      if (!stopped) {
        ASSERT_EQ(emitted + rest, decoded + reference.Finish()) << text;
      } else {
        ASSERT_EQ(rest, "");
      }
    }
  }
}

}  // namespace
}  // namespace shardserve
