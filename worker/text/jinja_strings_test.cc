#include "worker/text/jinja_strings.h"

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve::jinja {
namespace {

using ::testing::ElementsAre;

TEST(JinjaStrings, FloatReprMatchesPython) {
  EXPECT_EQ(PyFloatRepr(1.0), "1.0");
  EXPECT_EQ(PyFloatRepr(-0.0), "-0.0");
  EXPECT_EQ(PyFloatRepr(0.1 + 0.2), "0.30000000000000004");
  EXPECT_EQ(PyFloatRepr(1e16), "1e+16");
  EXPECT_EQ(PyFloatRepr(1e15), "1000000000000000.0");
  EXPECT_EQ(PyFloatRepr(123456789.123), "123456789.123");
  EXPECT_EQ(PyFloatRepr(0.0001), "0.0001");
  EXPECT_EQ(PyFloatRepr(0.00001), "1e-05");
  EXPECT_EQ(PyFloatRepr(1.5e-7), "1.5e-07");
  EXPECT_EQ(PyFloatRepr(1.5e300), "1.5e+300");
  EXPECT_EQ(PyFloatRepr(5e-324), "5e-324");
  EXPECT_EQ(PyFloatRepr(std::numeric_limits<double>::infinity()), "inf");
  EXPECT_EQ(PyFloatRepr(-std::numeric_limits<double>::infinity()), "-inf");
  EXPECT_EQ(PyFloatRepr(std::nan("")), "nan");
}

TEST(JinjaStrings, Utf8Helpers) {
  EXPECT_TRUE(IsValidUtf8("h\xC3\xA9 \xF0\x9F\xA6\x99"));
  EXPECT_FALSE(IsValidUtf8("\xC3"));              // truncated
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // beyond U+10FFFF
  EXPECT_EQ(CodePointCount("h\xC3\xA9\xF0\x9F\xA6\x99"), 3);
  EXPECT_THAT(SplitCodePoints("a\xC3\xA9"), ElementsAre("a", "\xC3\xA9"));
  // Invalid bytes decode one at a time and never read past the end.
  size_t pos = 0;
  EXPECT_EQ(DecodeUtf8("\xE2\x82", &pos), 0xE2u);
  EXPECT_EQ(pos, 1u);
}

TEST(JinjaStrings, StripUsesPythonWhitespace) {
  EXPECT_EQ(PyStrip("  a b \n\t", std::nullopt, true, true), "a b");
  // U+00A0, U+3000 and U+2028 are whitespace for str.strip().
  EXPECT_EQ(PyStrip("\xC2\xA0x\xE3\x80\x80\xE2\x80\xA8", std::nullopt, true, true), "x");
  EXPECT_EQ(PyStrip("xxaxx", std::string("x"), true, false), "axx");
  EXPECT_EQ(PyStrip("xxaxx", std::string("x"), false, true), "xxa");
  EXPECT_EQ(PyStrip("\xC3\xA9"
                    "a\xC3\xA9",
                    std::string("\xC3\xA9"), true, true),
            "a");
  EXPECT_EQ(PyStrip("", std::nullopt, true, true), "");
}

TEST(JinjaStrings, SplitMatchesPython) {
  EXPECT_THAT(PySplit("  a  b c ", std::nullopt, -1), ElementsAre("a", "b", "c"));
  EXPECT_THAT(PySplit("  a  b  ", std::nullopt, 1), ElementsAre("a", "b  "));
  EXPECT_THAT(PySplit("a,,b", std::string(","), -1), ElementsAre("a", "", "b"));
  EXPECT_THAT(PySplit("a,b,c", std::string(","), 1), ElementsAre("a", "b,c"));
  EXPECT_THAT(PySplit("", std::nullopt, -1), ElementsAre());
  EXPECT_THAT(PySplit("", std::string(","), -1), ElementsAre(""));
  EXPECT_THAT(PyRSplit("a,b,c", std::string(","), 1), ElementsAre("a,b", "c"));
  EXPECT_THAT(PyRSplit("  a  b  ", std::nullopt, 1), ElementsAre("  a", "b"));
  EXPECT_THAT(PySplitLines("l1\nl2\r\nl3\rl4", false), ElementsAre("l1", "l2", "l3", "l4"));
  EXPECT_THAT(PySplitLines("a\n", true), ElementsAre("a\n"));
}

TEST(JinjaStrings, ReplaceFindCount) {
  EXPECT_EQ(PyReplace("aaa", "a", "b", 2), "bba");
  EXPECT_EQ(PyReplace("ab", "", "-", -1), "-a-b-");
  EXPECT_EQ(PyReplace("h\xC3\xA9", "", "|", -1), "|h|\xC3\xA9|");
  EXPECT_EQ(PyFind("h\xC3\xA9llo", "l", false), 2);
  EXPECT_EQ(PyFind("hello", "l", true), 3);
  EXPECT_EQ(PyFind("hello", "z", false), -1);
  EXPECT_EQ(PyCount("hello", "l"), 2);
  EXPECT_EQ(PyCount("ab", ""), 3);
}

TEST(JinjaStrings, CaseMapping) {
  EXPECT_EQ(PyUpper("stra\xC3\x9F"
                    "e"),
            "STRASSE");
  EXPECT_EQ(PyLower("\xC3\x84"
                    "bC"),
            "\xC3\xA4"
            "bc");
  EXPECT_EQ(PyLower("\xCE\xA3\xCE\x91\xCE\xA3"), "\xCF\x83\xCE\xB1\xCF\x82");  // ΣΑΣ -> σας
  EXPECT_EQ(PyTitle("they're bill's"), "They'Re Bill'S");
  EXPECT_EQ(PyCapitalize("hELLO wORLD"), "Hello world");
  EXPECT_EQ(PySwapCase("aBc"), "AbC");
  EXPECT_EQ(JinjaTitle("hello wORLD-foo (bar)"), "Hello World-Foo (Bar)");
  EXPECT_TRUE(PyIsLower("abc1"));
  EXPECT_FALSE(PyIsLower("Abc"));
  EXPECT_TRUE(PyIsUpper("ABC"));
  EXPECT_TRUE(PyIsTitle("Title Case"));
  EXPECT_TRUE(PyIsDigit("\xC2\xB2"));  // superscript two
  EXPECT_FALSE(PyIsDecimal("\xC2\xB2"));
  EXPECT_TRUE(PyIsNumeric("\xC2\xBD"));  // one half
  EXPECT_FALSE(PyIsAlpha(""));
}

TEST(JinjaStrings, ReprQuotesAndEscapesLikePython) {
  EXPECT_EQ(PyRepr("a"), "'a'");
  EXPECT_EQ(PyRepr("it's"), "\"it's\"");
  EXPECT_EQ(PyRepr("both'\""), "'both\\'\"'");
  EXPECT_EQ(PyRepr("a\nb\t\\"), "'a\\nb\\t\\\\'");
  EXPECT_EQ(PyRepr("\x01\x7f"), "'\\x01\\x7f'");
  EXPECT_EQ(PyRepr("\xC3\xA9"), "'\xC3\xA9'");                  // printable: kept
  EXPECT_EQ(PyRepr("\xC2\xA0\xE2\x80\x8B"), "'\\xa0\\u200b'");  // not printable
  EXPECT_EQ(PyRepr("\xF0\x9F\xA6\x99"), "'\xF0\x9F\xA6\x99'");
}

}  // namespace
}  // namespace shardserve::jinja
