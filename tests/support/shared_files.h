// The files of ../shared the tests read, the skip for where they are absent,
// and the message of an expected kvtune::Error.
#pragma once

#include <filesystem>
#include <functional>
#include <string>

#include "kvtune/common/error.h"

namespace kvtune::testing {

inline const std::string kSharedDir = KVTUNE_SHARED_DIR;
inline const std::string kStoriesModel = kSharedDir + "/models/stories260K.bin";
inline const std::string kStoriesReference = kSharedDir + "/reference/stories260K-greedy.json";

// The message of the kvtune::Error `f` throws, or a text that says none was.
inline std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no kvtune::Error thrown)";
}

}  // namespace kvtune::testing

// Skips a test that needs stories260K (and, for the second, its reference
// greedy decode) where ../shared is not beside the checkout.
#define SKIP_WITHOUT_STORIES()                                          \
  if (!std::filesystem::exists(::kvtune::testing::kStoriesModel))       \
  GTEST_SKIP() << ::kvtune::testing::kStoriesModel                      \
               << " is absent here; this test needs the shared folder " \
                  "beside the checkout"
#define SKIP_WITHOUT_SHARED()                                                         \
  if (!std::filesystem::exists(::kvtune::testing::kStoriesModel) ||                   \
      !std::filesystem::exists(::kvtune::testing::kStoriesReference))                 \
  GTEST_SKIP() << "../shared (stories260K and its reference decode) is absent here; " \
                  "this test needs the shared folder beside the checkout"
