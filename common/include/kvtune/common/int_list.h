// Comma-separated integer lists as command lines take them ("1,5,9", "T,H,D").
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace kvtune {

// The integers of `text`, each at least `min`. An item that is empty, not an
// integer, or below `min` throws kvtune::Error(bad(item)).
std::vector<int64_t> parse_int_list(std::string_view text, int64_t min,
                                    const std::function<std::string(const std::string&)>& bad);

}  // namespace kvtune
