#include "kvtune/common/sample_spec.h"

#include <charconv>
#include <string_view>
#include <vector>

#include "kvtune/common/error.h"

namespace kvtune {
namespace {

template <typename T>
T parse_part(const std::string& spec, std::string_view part, const char* name) {
  T value{};
  const auto [end, ec] = std::from_chars(part.data(), part.data() + part.size(), value);
  if (part.empty() || ec != std::errc() || end != part.data() + part.size()) {
    throw Error("calibration spec '" + spec + "': " + name + " = '" + std::string(part) +
                "' is not a non-negative integer (expected sample:N:L:SEED)");
  }
  return value;
}

}  // namespace

std::string SampleSpec::str() const {
  return "sample:" + std::to_string(count) + ":" + std::to_string(length) + ":" +
         std::to_string(seed);
}

std::optional<SampleSpec> parse_sample_spec(const std::string& spec) {
  if (!spec.starts_with("sample:")) return std::nullopt;
  std::vector<std::string_view> parts;
  std::string_view rest(spec);
  for (size_t colon; (colon = rest.find(':')) != std::string_view::npos;) {
    parts.push_back(rest.substr(0, colon));
    rest.remove_prefix(colon + 1);
  }
  parts.push_back(rest);
  if (parts.size() != 4) {
    throw Error("calibration spec '" + spec + "': expected sample:N:L:SEED, got " +
                std::to_string(parts.size()) + " ':'-separated parts");
  }
  SampleSpec s;
  s.count = parse_part<int64_t>(spec, parts[1], "N (sequences)");
  s.length = parse_part<int64_t>(spec, parts[2], "L (tokens per sequence)");
  s.seed = parse_part<uint64_t>(spec, parts[3], "SEED");
  if (s.count < 1) {
    throw Error("calibration spec '" + spec + "': N = " + std::to_string(s.count) +
                " sequences; need at least 1");
  }
  if (s.length < 2) {
    throw Error("calibration spec '" + spec + "': L = " + std::to_string(s.length) +
                " tokens; need at least 2");
  }
  return s;
}

}  // namespace kvtune
