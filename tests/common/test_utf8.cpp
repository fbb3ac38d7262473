// UTF-8 well-formedness and escaping (kvtune/common/utf8.h).
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "kvtune/common/utf8.h"

namespace {

TEST(Utf8, ValidatesAndEscapesByRfc3629) {
  using kvtune::escape_utf8;
  using kvtune::valid_utf8;
  for (const std::string& good : std::vector<std::string>{
           "", "plain /v1/jobs?x=1", "caf\xC3\xA9", "\xE2\x82\xAC", "\xED\x9F\xBF", "\xEE\x80\x80",
           "\xF0\x9F\x98\x80", "\xF4\x8F\xBF\xBF", std::string("nul\0byte", 8)}) {
    EXPECT_TRUE(valid_utf8(good)) << escape_utf8(good);
    EXPECT_EQ(escape_utf8(good), good);
  }
  const std::pair<std::string, std::string> bad[] = {
      {"\xFF", "\\xFF"},
      {"a\xFF\xFE!", "a\\xFF\\xFE!"},
      {"\xC3", "\\xC3"},                             // truncated
      {"\xC3(", "\\xC3("},                           // a bad continuation
      {"\xC0\x80", "\\xC0\\x80"},                    // overlong NUL
      {"\xE0\x80\xAF", "\\xE0\\x80\\xAF"},           // overlong '/'
      {"\xED\xA0\x80", "\\xED\\xA0\\x80"},           // a UTF-16 surrogate
      {"\xF4\x90\x80\x80", "\\xF4\\x90\\x80\\x80"},  // over U+10FFFF
      {"\xF8\x88\x80\x80\x80", "\\xF8\\x88\\x80\\x80\\x80"},
      {"\x80-caf\xC3\xA9", "\\x80-caf\xC3\xA9"},  // valid text after a bad byte is kept
  };
  for (const auto& [text, escaped] : bad) {
    EXPECT_FALSE(valid_utf8(text)) << escaped;
    EXPECT_EQ(escape_utf8(text), escaped);
    EXPECT_TRUE(valid_utf8(escape_utf8(text)));
  }
}

}  // namespace
