#include "kvtune/common/int_list.h"

#include <algorithm>
#include <exception>

#include "kvtune/common/error.h"

namespace kvtune {

std::vector<int64_t> parse_int_list(std::string_view text, int64_t min,
                                    const std::function<std::string(const std::string&)>& bad) {
  std::vector<int64_t> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string item(text.substr(start, comma - start));
    size_t used = 0;
    int64_t value = 0;
    try {
      value = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size() || value < min) throw Error(bad(item));
    out.push_back(value);
    start = comma + 1;
  }
  return out;
}

}  // namespace kvtune
