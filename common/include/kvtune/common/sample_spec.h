// Calibration data sampled from the model itself: "sample:N:L:SEED" is N
// sequences of L tokens drawn at temperature 1 with that seed. The syntax
// alone; the worker checks L against the model's context when it samples.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace kvtune {

struct SampleSpec {
  int64_t count = 0, length = 0;
  uint64_t seed = 0;

  std::string str() const;  // "sample:N:L:SEED"
};

// nullopt when `spec` does not start with "sample:"; otherwise its parts, or
// a kvtune::Error naming the part that is not a count (N >= 1, L >= 2).
std::optional<SampleSpec> parse_sample_spec(const std::string& spec);

}  // namespace kvtune
