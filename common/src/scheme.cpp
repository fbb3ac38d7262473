#include "kvtune/common/scheme.h"

#include "kvtune/common/error.h"

namespace kvtune {
namespace kk = kvtune::kernels;

std::string Scheme::name() const {
  return grouping == kk::Grouping::Kivi ? "kivi" : "per-token-asym";
}

std::string Scheme::key() const {
  std::string k = name();
  if (grouping == kk::Grouping::Kivi) {
    k += "/G=" + std::to_string(group_size) + "/R=" + std::to_string(residual);
  }
  return k + (zero_point == kk::ZeroPoint::Int ? "/zp=int" : "/zp=float");
}

Scheme Scheme::parse(const std::string& name, int group_size, int residual,
                     const std::string& zero_point) {
  Scheme s;
  if (name == "per-token-asym") {
    s.grouping = kk::Grouping::PerToken;
  } else if (name == "kivi") {
    s.grouping = kk::Grouping::Kivi;
  } else {
    throw Error("scheme '" + name + "' is not one of per-token-asym, kivi");
  }
  if (zero_point == "int") {
    s.zero_point = kk::ZeroPoint::Int;
  } else if (zero_point == "float") {
    s.zero_point = kk::ZeroPoint::Float;
  } else {
    throw Error("zero-point '" + zero_point + "' is not one of int, float");
  }
  if (group_size <= 0)
    throw Error("group size " + std::to_string(group_size) + " must be positive");
  if (residual <= 0 || residual % group_size != 0) {
    throw Error("residual " + std::to_string(residual) +
                " must be a positive multiple of group size " + std::to_string(group_size));
  }
  s.group_size = group_size;
  s.residual = residual;
  return s;
}

kk::IntSpec Scheme::int_spec(kk::Role role, int bits) const {
  kk::IntSpec s;
  s.grouping = grouping;
  s.role = role;
  s.bits = bits;
  s.zero_point = zero_point;
  s.group_size = group_size;
  s.residual = residual;
  return s;
}

}  // namespace kvtune
