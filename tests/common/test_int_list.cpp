// Comma-separated integer lists from command lines.
#include <gtest/gtest.h>

#include "kvtune/common/error.h"
#include "kvtune/common/int_list.h"

namespace kvtune {
namespace {

std::string bad(const std::string& item) {
  return "'" + item + "' is wrong";
}

std::string message_of(const std::string& text, int64_t min) {
  try {
    parse_int_list(text, min, bad);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(IntList, ParsesEveryItemAndNamesTheBadOne) {
  EXPECT_EQ(parse_int_list("4,1,16", 1, bad), (std::vector<int64_t>{4, 1, 16}));
  EXPECT_EQ(parse_int_list("0", 0, bad), std::vector<int64_t>{0});
  EXPECT_EQ(message_of("4,,16", 1), "'' is wrong");
  EXPECT_EQ(message_of("4,x,16", 1), "'x' is wrong");
  EXPECT_EQ(message_of("4,5abc", 1), "'5abc' is wrong");
  EXPECT_EQ(message_of("4,0", 1), "'0' is wrong");
  EXPECT_EQ(message_of("", 0), "'' is wrong");
  EXPECT_EQ(message_of("99999999999999999999", 0), "'99999999999999999999' is wrong");
}

}  // namespace
}  // namespace kvtune
