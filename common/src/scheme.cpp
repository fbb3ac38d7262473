#include "kvtune/common/scheme.h"

#include "kvtune/common/engine_target.h"
#include "kvtune/common/error.h"
#include "kvtune/kernels/ggml_math.h"

namespace kvtune {
namespace kk = kvtune::kernels;

std::string Scheme::name() const {
  if (target == Target::Kvtuner) {
    return grouping == kk::Grouping::Kivi ? "per-channel-asym" : "per-token-asym";
  }
  return grouping == kk::Grouping::Kivi ? "kivi" : "per-token-asym";
}

std::string Scheme::target_name() const {
  return target == Target::Kvtuner ? "kvtuner" : "kvtune";
}

std::string Scheme::label() const {
  return target == Target::Kvtuner ? "kvtuner:" + name() : name();
}

std::string_view rotation_name(Rotation r) {
  switch (r) {
    case Rotation::On:
      return "on";
    case Rotation::Off:
      return "off";
    case Rotation::Auto:
      break;
  }
  return "auto";
}

Rotation parse_rotation(std::string_view text) {
  for (Rotation r : {Rotation::Auto, Rotation::On, Rotation::Off}) {
    if (text == rotation_name(r)) return r;
  }
  throw Error("rotate '" + std::string(text) +
              "' is not one of auto (llama.cpp's rule: on for its quantized cache types when "
              "head_dim % 64 == 0), on or off (LLAMA_ATTN_ROT_DISABLE=1)");
}

std::string Scheme::key() const {
  std::string scales =
      kv_scales == KvScales::One ? "" : "/kv_scales=" + std::string(kv_scales_name(kv_scales));
  if (rotation != Rotation::Auto) scales += "/rotate=" + std::string(rotation_name(rotation));
  if (target == Target::Kvtuner) {
    return label() + "/G=" + std::to_string(group_size) + "/R=" + std::to_string(residual) + scales;
  }
  std::string k = name();
  if (grouping == kk::Grouping::Kivi) {
    k += "/G=" + std::to_string(group_size) + "/R=" + std::to_string(residual);
  }
  return k + (zero_point == kk::ZeroPoint::Int ? "/zp=int" : "/zp=float") + scales;
}

namespace {

Scheme parse_kvtuner(const std::string& name, int group_size, int residual,
                     const std::string& zero_point) {
  Scheme s;
  s.target = Scheme::Target::Kvtuner;
  if (name == "per-token-asym") {
    s.grouping = kk::Grouping::PerToken;
  } else if (name == "per-channel-asym") {
    s.grouping = kk::Grouping::Kivi;
  } else {
    throw Error("scheme '" + name +
                "' is not one of KVTuner's per-token-asym, per-channel-asym (target kvtuner)");
  }
  if (zero_point != "int") {
    throw Error("zero-point '" + zero_point +
                "': KVTuner's quantizer has an integer zero point (target kvtuner takes int)");
  }
  if (group_size < 0 || (group_size == 0 && s.grouping == kk::Grouping::Kivi)) {
    throw Error("group size " + std::to_string(group_size) +
                " must be positive (or 0 for head_dim, per-token-asym only)");
  }
  if (residual < 0) throw Error("residual " + std::to_string(residual) + " must be 0 or more");
  s.group_size = group_size;
  s.residual = residual;
  return s;
}

}  // namespace

Scheme Scheme::parse(const std::string& name, int group_size, int residual,
                     const std::string& zero_point, const std::string& target) {
  if (target == "kvtuner") return parse_kvtuner(name, group_size, residual, zero_point);
  if (target != "kvtune") throw Error("target '" + target + "' is not one of " + target_names());
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

Scheme Scheme::from_options(const std::string& target, const std::string& name,
                            std::optional<int> group_size, std::optional<int> residual,
                            const std::string& zero_point) {
  if (target == "kvtuner") {
    const Scheme setting = kvtuner(name);
    const int g = !group_size ? setting.group_size : *group_size == -1 ? 0 : *group_size;
    return parse(name, g, residual.value_or(setting.residual), zero_point, target);
  }
  const int g = group_size.value_or(32);
  return parse(name, g, !residual || *residual == 0 ? g : *residual, zero_point, target);
}

Scheme Scheme::kvtuner(const std::string& name) {
  const bool channel = name == "per-channel-asym";
  return parse_kvtuner(name, channel ? 32 : 0, channel ? 32 : 0, "int");
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

std::string Scheme::refusal(const KvFormat& format) const {
  if (format.kind == KvFormat::Kind::Engine) {
    const EngineDtype& d = format.engine_dtype();
    if (target == Target::Kvtuner) {
      return "format " + format.name() + " is " + std::string(d.engine) +
             "'s, not KVTuner's: the kvtuner target takes 2, 4 or 8 bits, or 16 (unquantized)";
    }
    if (kv_scales == KvScales::Calculated && d.engine != "vllm" &&
        d.scale == EngineDtype::Scale::Layer) {
      return "format " + format.name() + ": kv_scales 'calculated' is vLLM's " +
             "--calculate-kv-scales, which " + std::string(d.engine) +
             " does not have (use one or calibrated)";
    }
    return "";
  }
  if (target != Target::Kvtuner || format.kind == KvFormat::Kind::Full) return "";
  if (format.kind == KvFormat::Kind::Int &&
      (format.bits == 2 || format.bits == 4 || format.bits == 8)) {
    return "";
  }
  return "format " + format.name() +
         " is not KVTuner's: the kvtuner target takes 2, 4 or 8 bits, or 16 (unquantized)";
}

kk::EngineSpec Scheme::engine_spec(const KvFormat& format, kk::Role role, float amax,
                                   int64_t head_dim) const {
  const EngineDtype& d = format.engine_dtype();
  kk::EngineSpec spec{d.arith, engine_layer_scale(d, kv_scales, role == kk::Role::Key, amax)};
  spec.rotate_chunk = rotate_chunk(format, role, head_dim);
  return spec;
}

int Scheme::rotate_chunk(const KvFormat& format, kk::Role role, int64_t head_dim) const {
  if (format.kind != KvFormat::Kind::Engine || rotation == Rotation::Off || head_dim <= 0) {
    return 0;
  }
  const EngineDtype& d = format.engine_dtype();
  if (d.engine != "llama.cpp") return 0;
  if (rotation == Rotation::Auto) return kk::ggml_rotation_chunk(d.arith, role, head_dim);
  const int chunk = kk::ggml_rotation_chunk(role, head_dim);
  if (chunk > 0) return chunk;
  // Forced where llama.cpp would not rotate: the largest power of two
  // dividing head_dim, at most llama.cpp's value chunk.
  int n = 1;
  while (n < 64 && head_dim % (2 * n) == 0) n *= 2;
  return n >= 2 ? n : 0;
}

kk::KvtunerSpec Scheme::kvtuner_spec(kk::Role role, int bits) const {
  kk::KvtunerSpec s;
  const bool channel_keys = grouping == kk::Grouping::Kivi && role == kk::Role::Key;
  s.axis = channel_keys ? kk::KvtunerAxis::Channel : kk::KvtunerAxis::Token;
  s.bits = bits;
  s.group_size = group_size;
  return s;
}

}  // namespace kvtune
