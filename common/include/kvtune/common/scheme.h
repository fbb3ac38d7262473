// The KV quantization scheme of a job, shared by every layer: how integer
// formats group values (per-token-asym or kivi) and code them.
#pragma once

#include <string>

#include "kvtune/kernels/quant.h"

namespace kvtune {

struct Scheme {
  kernels::Grouping grouping = kernels::Grouping::PerToken;
  int group_size = 32;  // kivi G
  int residual = 32;    // kivi R
  kernels::ZeroPoint zero_point = kernels::ZeroPoint::Int;

  // "per-token-asym" or "kivi".
  std::string name() const;
  // A canonical description that identifies the scheme in cache keys.
  std::string key() const;
  // Validates names and sizes; throws kvtune::Error naming the option.
  static Scheme parse(const std::string& name, int group_size, int residual,
                      const std::string& zero_point);
  // The kernel spec of one tensor (keys or values) at `bits`.
  kernels::IntSpec int_spec(kernels::Role role, int bits) const;
};

}  // namespace kvtune
