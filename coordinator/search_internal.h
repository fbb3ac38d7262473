// Private to kvtune_search: the definitions its source files share. Not
// installed, not included outside coordinator/search*.cpp and nsga2.cpp.
#pragma once

#include <limits>

namespace kvtune::search::detail {

inline constexpr double kInf = std::numeric_limits<double>::infinity();

}  // namespace kvtune::search::detail
