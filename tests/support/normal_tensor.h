// Normal values N(0, stddev) for a KV tensor of a shape, from a seed: the
// random input the kernel tests share.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "kvtune/kernels/quant.h"

namespace kvtune::testing {

inline std::vector<float> normal_tensor(const kernels::CacheShape& shape, uint32_t seed,
                                        float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> x(static_cast<size_t>(shape.elements()));
  for (float& v : x) v = normal(rng);
  return x;
}

}  // namespace kvtune::testing
