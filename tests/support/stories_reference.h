// The reference greedy decode of stories260K in ../shared, as token ids.
#pragma once

#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "shared_files.h"

namespace kvtune::testing {

// BOS followed by the reference greedy continuation: real text of the model.
inline std::vector<int64_t> stories_reference_ids() {
  auto ids = nlohmann::json::parse(std::ifstream(kStoriesReference))["greedy_next_ids"]
                 .get<std::vector<int64_t>>();
  ids.insert(ids.begin(), 1);
  return ids;
}

}  // namespace kvtune::testing
