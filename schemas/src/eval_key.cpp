#include "kvtune/schemas/eval_key.h"

#include <capnp/message.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "kvtune/common/engine_dtype.h"
#include "kvtune/common/error.h"

namespace kvtune {
namespace {

schema::KvFormat::Kind to_schema(KvFormat::Kind kind) {
  switch (kind) {
    case KvFormat::Kind::Int:
      return schema::KvFormat::Kind::INT;
    case KvFormat::Kind::Fp8:
      return schema::KvFormat::Kind::FP8;
    case KvFormat::Kind::Nvfp4:
      return schema::KvFormat::Kind::NVFP4;
    case KvFormat::Kind::Full:
      return schema::KvFormat::Kind::FULL;
    case KvFormat::Kind::Engine:
      return schema::KvFormat::Kind::ENGINE;
  }
  throw Error("unknown KV format kind " + std::to_string(static_cast<int>(kind)));
}

void set_format(const KvFormat& format, schema::KvFormat::Builder out) {
  out.setKind(to_schema(format.kind));
  out.setBits(static_cast<uint8_t>(format.bits));
  if (format.kind == KvFormat::Kind::Engine) out.setEngineDtype(format.name());
}

KvFormat read_format(schema::KvFormat::Reader in, const std::string& where) {
  const int bits = in.getBits();
  switch (in.getKind()) {
    case schema::KvFormat::Kind::INT:
      try {
        return KvFormat::integer(bits);
      } catch (const Error& e) {
        throw Error(where + ": " + e.what());
      }
    case schema::KvFormat::Kind::FP8:
      return KvFormat::fp8();
    case schema::KvFormat::Kind::NVFP4:
      return KvFormat::nvfp4();
    case schema::KvFormat::Kind::FULL:
      return KvFormat::full();
    case schema::KvFormat::Kind::ENGINE: {
      const std::string name = in.getEngineDtype();
      if (const EngineDtype* d = find_engine_dtype(name)) return KvFormat::of(*d);
      throw Error(where + ": unknown engine dtype '" + name + "' (known: " + engine_dtype_names() +
                  ")");
    }
  }
  throw Error(where + ": unknown format kind " + std::to_string(static_cast<int>(in.getKind())));
}

void copy_format(schema::KvFormat::Reader in, schema::KvFormat::Builder out) {
  out.setKind(in.getKind());
  out.setBits(in.getBits());
  if (in.getKind() == schema::KvFormat::Kind::ENGINE) out.setEngineDtype(in.getEngineDtype());
}

bool takes_layer_scales(capnp::List<schema::PrecisionPair>::Reader layers) {
  for (const auto pair : layers) {
    for (const auto f : {pair.getKey(), pair.getValue()}) {
      if (f.getKind() != schema::KvFormat::Kind::ENGINE) continue;
      const EngineDtype* d = find_engine_dtype(f.getEngineDtype().cStr());
      if (d != nullptr && d->scale == EngineDtype::Scale::Layer) return true;
    }
  }
  return false;
}

// Whether a layer has one of llama.cpp's types (which the rotation acts on).
bool takes_rotation(capnp::List<schema::PrecisionPair>::Reader layers) {
  for (const auto pair : layers) {
    for (const auto f : {pair.getKey(), pair.getValue()}) {
      if (f.getKind() != schema::KvFormat::Kind::ENGINE) continue;
      const EngineDtype* d = find_engine_dtype(f.getEngineDtype().cStr());
      if (d != nullptr && d->engine == "llama.cpp") return true;
    }
  }
  return false;
}

schema::Rotation to_schema(Rotation r) {
  switch (r) {
    case Rotation::On:
      return schema::Rotation::ON;
    case Rotation::Off:
      return schema::Rotation::OFF;
    case Rotation::Auto:
      break;
  }
  return schema::Rotation::AUTO;
}

Rotation from_schema(schema::Rotation r) {
  switch (r) {
    case schema::Rotation::ON:
      return Rotation::On;
    case schema::Rotation::OFF:
      return Rotation::Off;
    case schema::Rotation::AUTO:
      return Rotation::Auto;
  }
  throw Error("scheme.rotation: unknown value " + std::to_string(static_cast<int>(r)));
}

schema::KvScales to_schema(KvScales s) {
  switch (s) {
    case KvScales::Calculated:
      return schema::KvScales::CALCULATED;
    case KvScales::Calibrated:
      return schema::KvScales::CALIBRATED;
    case KvScales::One:
      break;
  }
  return schema::KvScales::ONE;
}

KvScales from_schema(schema::KvScales s) {
  switch (s) {
    case schema::KvScales::CALCULATED:
      return KvScales::Calculated;
    case schema::KvScales::CALIBRATED:
      return KvScales::Calibrated;
    case schema::KvScales::ONE:
      return KvScales::One;
  }
  throw Error("scheme.kvScales: unknown value " + std::to_string(static_cast<int>(s)));
}

}  // namespace

EvalInputs read_eval_request(const schema::EvalRequest::Reader& request) {
  EvalInputs in;
  in.model_spec = request.getModelSpec();
  in.model_fingerprint = request.getModelFingerprint();
  in.data_spec = request.getDataSpec();
  in.data_fingerprint = request.getDataFingerprint();
  in.seq_len = static_cast<int>(request.getSeqLen());
  const auto scheme = request.getScheme();
  const bool kivi = scheme.getGrouping() == schema::Scheme::Grouping::KIVI;
  const bool float_zero = scheme.getZeroPoint() == schema::Scheme::ZeroPoint::FLOAT;
  const bool kvtuner = scheme.getKvtuner();
  // A kvtune per-token scheme ignores G and R; the key normalizes them to 0.
  const int group_size = kivi || kvtuner ? static_cast<int>(scheme.getGroupSize()) : 32;
  const int residual = kivi || kvtuner ? static_cast<int>(scheme.getResidual()) : 32;
  try {
    const std::string name = kivi ? (kvtuner ? "per-channel-asym" : "kivi") : "per-token-asym";
    in.scheme = Scheme::parse(name, group_size, residual, float_zero ? "float" : "int",
                              kvtuner ? "kvtuner" : "kvtune");
  } catch (const Error& e) {
    throw Error(std::string("scheme: ") + e.what());
  }
  in.scheme.kv_scales = from_schema(scheme.getKvScales());
  in.scheme.rotation = from_schema(scheme.getRotation());
  const auto layers = request.getLayers();
  if (layers.size() == 0) throw Error("layers: the request has no layers");
  for (unsigned i = 0; i < layers.size(); ++i) {
    const std::string where = "layers[" + std::to_string(i) + "]";
    in.layers.push_back(PrecisionPair{read_format(layers[i].getKey(), where + ".key"),
                                      read_format(layers[i].getValue(), where + ".value")});
  }
  in.metric = request.getMetric();
  if (in.metric != "kl") throw Error("metric '" + in.metric + "' is not supported (kl)");
  in.prompt_tokens = request.getPromptTokens();
  const auto source = [](schema::ReadSource s) {
    return s == schema::ReadSource::CACHE ? ReadRule::Source::Cache : ReadRule::Source::Fresh;
  };
  in.read.prefill = source(request.getReadPrefill());
  in.read.current = source(request.getReadCurrent());
  const auto free_run = request.getFreeRun();
  in.free_run = {free_run.getPrompts(), free_run.getPromptTokens(), free_run.getNewTokens()};
  if (in.free_run.prompts > 0 && (in.free_run.prompt_tokens == 0 || in.free_run.new_tokens == 0)) {
    throw Error("freeRun: " + std::to_string(in.free_run.prompts) +
                " prompts need promptTokens and newTokens > 0");
  }
  return in;
}

void build_eval_request(const EvalInputs& inputs, schema::EvalRequest::Builder out) {
  if (inputs.seq_len < 0) throw Error("seq_len " + std::to_string(inputs.seq_len) + " < 0");
  out.setModelSpec(inputs.model_spec);
  out.setModelFingerprint(inputs.model_fingerprint);
  out.setDataSpec(inputs.data_spec);
  out.setDataFingerprint(inputs.data_fingerprint);
  out.setSeqLen(static_cast<uint32_t>(inputs.seq_len));
  auto scheme = out.initScheme();
  const bool kivi = inputs.scheme.grouping == kernels::Grouping::Kivi;
  scheme.setGrouping(kivi ? schema::Scheme::Grouping::KIVI : schema::Scheme::Grouping::PER_TOKEN);
  scheme.setGroupSize(static_cast<uint32_t>(inputs.scheme.group_size));
  scheme.setResidual(static_cast<uint32_t>(inputs.scheme.residual));
  scheme.setZeroPoint(inputs.scheme.zero_point == kernels::ZeroPoint::Int
                          ? schema::Scheme::ZeroPoint::INT
                          : schema::Scheme::ZeroPoint::FLOAT);
  scheme.setKvtuner(inputs.scheme.target == Scheme::Target::Kvtuner);
  scheme.setKvScales(to_schema(inputs.scheme.kv_scales));
  scheme.setRotation(to_schema(inputs.scheme.rotation));
  auto layers = out.initLayers(static_cast<unsigned>(inputs.layers.size()));
  for (unsigned i = 0; i < inputs.layers.size(); ++i) {
    set_format(inputs.layers[i].key, layers[i].initKey());
    set_format(inputs.layers[i].value, layers[i].initValue());
  }
  out.setMetric(inputs.metric);
  if (inputs.prompt_tokens < 0) {
    throw Error("prompt_tokens " + std::to_string(inputs.prompt_tokens) + " < 0");
  }
  const auto source = [](ReadRule::Source s) {
    return s == ReadRule::Source::Cache ? schema::ReadSource::CACHE : schema::ReadSource::FRESH;
  };
  out.setPromptTokens(static_cast<uint32_t>(inputs.prompt_tokens));
  out.setReadPrefill(source(inputs.read.prefill));
  out.setReadCurrent(source(inputs.read.current));
  const auto& f = inputs.free_run;
  if (f.prompts < 0 || f.prompt_tokens < 0 || f.new_tokens < 0) {
    throw Error("free_run: negative sizes " + std::to_string(f.prompts) + "," +
                std::to_string(f.prompt_tokens) + "," + std::to_string(f.new_tokens));
  }
  if (f.prompts > 0) {
    auto free_run = out.initFreeRun();
    free_run.setPrompts(static_cast<uint32_t>(f.prompts));
    free_run.setPromptTokens(static_cast<uint32_t>(f.prompt_tokens));
    free_run.setNewTokens(static_cast<uint32_t>(f.new_tokens));
  }
}

std::string evaluation_key(const schema::EvalRequest::Reader& request) {
  // Copy field by field: an unset text field and one set to its default
  // encode differently, and unknown fields of a newer schema must not count.
  capnp::MallocMessageBuilder message;
  auto norm = message.initRoot<schema::EvalRequest>();
  norm.setModelSpec(request.getModelSpec());
  norm.setModelFingerprint(request.getModelFingerprint());
  norm.setDataSpec(request.getDataSpec());
  norm.setDataFingerprint(request.getDataFingerprint());
  norm.setSeqLen(request.getSeqLen());
  const auto in_scheme = request.getScheme();
  auto scheme = norm.initScheme();
  scheme.setGrouping(in_scheme.getGrouping());
  scheme.setZeroPoint(in_scheme.getZeroPoint());
  // false (kvtune's own schemes) encodes as the field's absence: old keys stay.
  scheme.setKvtuner(in_scheme.getKvtuner());
  if (in_scheme.getGrouping() == schema::Scheme::Grouping::KIVI || in_scheme.getKvtuner()) {
    scheme.setGroupSize(in_scheme.getGroupSize());
    scheme.setResidual(in_scheme.getResidual());
  } else {  // per-token-asym has no groups over tokens and no residual window
    scheme.setGroupSize(0);
    scheme.setResidual(0);
  }
  const auto in_layers = request.getLayers();
  auto layers = norm.initLayers(in_layers.size());
  for (unsigned i = 0; i < in_layers.size(); ++i) {
    copy_format(in_layers[i].getKey(), layers[i].initKey());
    copy_format(in_layers[i].getValue(), layers[i].initValue());
  }
  // The scale source counts only where a layer has a per-layer-scaled dtype.
  if (takes_layer_scales(in_layers)) scheme.setKvScales(in_scheme.getKvScales());
  // The rotation counts only where a layer has a llama.cpp type (auto, the
  // default, encodes as absent: old keys stay).
  if (takes_rotation(in_layers)) scheme.setRotation(in_scheme.getRotation());
  norm.setMetric(request.getMetric());
  norm.setPromptTokens(request.getPromptTokens());
  norm.setReadCurrent(request.getReadCurrent());
  // Without a prompt (and JSONL prompts are in the data fingerprint) the
  // prefill rule reads nothing.
  if (request.getPromptTokens() > 0) norm.setReadPrefill(request.getReadPrefill());
  // Absent (no free run) encodes as before: old keys stay.
  if (const auto f = request.getFreeRun(); f.getPrompts() > 0) {
    auto free_run = norm.initFreeRun();
    free_run.setPrompts(f.getPrompts());
    free_run.setPromptTokens(f.getPromptTokens());
    free_run.setNewTokens(f.getNewTokens());
  }

  const kj::Array<capnp::word> canonical = capnp::canonicalize(norm.asReader());
  const auto bytes = canonical.asBytes();
  XXH128_canonical_t digest;
  XXH128_canonicalFromHash(&digest, XXH3_128bits(bytes.begin(), bytes.size()));
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * sizeof(digest.digest));
  for (unsigned char byte : digest.digest) {
    hex.push_back(kHex[byte >> 4]);
    hex.push_back(kHex[byte & 0xf]);
  }
  return hex;
}

}  // namespace kvtune
