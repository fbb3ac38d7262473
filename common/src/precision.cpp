#include "kvtune/common/precision.h"

#include <charconv>

#include "kvtune/common/engine_dtype.h"
#include "kvtune/common/error.h"
#include "kvtune/kernels/engine.h"

namespace kvtune {
namespace {

std::string quoted(std::string_view s) {
  return "'" + std::string(s) + "'";
}

}  // namespace

double KvFormat::budget_bits() const {
  if (kind != Kind::Engine || engine_dtype().engine != "llama.cpp") return bits;
  // Shape-free for ggml's blocks of 32: their fp16 scale (and min) included.
  return kernels::engine_storage_bits({engine_dtype().arith, 1.0f}, {1, 1, 32});
}

KvFormat KvFormat::integer(int bits) {
  if (bits == 16) return full();
  if (bits != 1 && bits != 2 && bits != 3 && bits != 4 && bits != 8) {
    throw Error("integer KV width " + std::to_string(bits) +
                " is not supported (1, 2, 3, 4, 8 or 16)");
  }
  return {Kind::Int, bits};
}

KvFormat KvFormat::of(const EngineDtype& dtype) {
  const auto all = engine_dtypes();
  for (size_t i = 0; i < all.size(); ++i) {
    if (all[i].name == dtype.name) return {Kind::Engine, dtype.bits, static_cast<int>(i)};
  }
  throw Error("unknown engine dtype " + quoted(dtype.name));
}

bool KvFormat::takes_layer_scale() const {
  return kind == Kind::Engine && engine_dtype().scale == EngineDtype::Scale::Layer;
}

const EngineDtype& KvFormat::engine_dtype() const {
  const auto all = engine_dtypes();
  if (kind != Kind::Engine || engine < 0 || static_cast<size_t>(engine) >= all.size()) {
    throw Error("KV format " + name() + " is not an engine dtype");
  }
  return all[static_cast<size_t>(engine)];
}

std::string KvFormat::name() const {
  switch (kind) {
    case Kind::Engine:
      return engine >= 0 && static_cast<size_t>(engine) < engine_dtypes().size()
                 ? std::string(engine_dtypes()[static_cast<size_t>(engine)].name)
                 : "engine?";
    case Kind::Fp8:
      return "fp8";
    case Kind::Nvfp4:
      return "nvfp4";
    case Kind::Full:
      return "16";
    case Kind::Int:
      return std::to_string(bits);
  }
  return "?";
}

KvFormat KvFormat::parse(std::string_view text) {
  if (text == "fp8") return fp8();
  if (text == "nvfp4") return nvfp4();
  if (text.find(':') != std::string_view::npos) {
    if (const EngineDtype* d = find_engine_dtype(text)) return of(*d);
    throw Error("KV format " + quoted(text) + " is not an engine dtype: " + engine_dtype_names());
  }
  int bits = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), bits);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) {
    throw Error("KV format " + quoted(text) +
                " is not one of 1, 2, 3, 4, 8, 16, fp8, nvfp4 or an engine dtype such as vllm:fp8");
  }
  try {
    return integer(bits);
  } catch (const Error& e) {
    throw Error("KV format " + quoted(text) + ": " + e.what());
  }
}

std::string PrecisionPair::name() const {
  if (key == value) return "KV" + key.name();
  return "K" + key.name() + "V" + value.name();
}

PrecisionPair PrecisionPair::parse(std::string_view text) {
  try {
    if (text.starts_with("KV")) {
      const KvFormat both = KvFormat::parse(text.substr(2));
      return {both, both};
    }
    if (text.starts_with("K")) {
      const size_t v = text.find('V', 1);
      if (v != std::string_view::npos) {
        return {KvFormat::parse(text.substr(1, v - 1)), KvFormat::parse(text.substr(v + 1))};
      }
    }
  } catch (const Error& e) {
    throw Error("precision pair " + quoted(text) + ": " + e.what());
  }
  throw Error("precision pair " + quoted(text) +
              " is not of the form K<key>V<value> or KV<both>, e.g. K8V4, KV4, Kfp8Vnvfp4");
}

std::vector<PrecisionPair> kvtuner_candidates() {
  std::vector<PrecisionPair> pairs;
  for (int k : {8, 4, 2}) {
    for (int v : {8, 4, 2}) pairs.push_back({KvFormat::integer(k), KvFormat::integer(v)});
  }
  return pairs;
}

std::vector<PrecisionPair> parse_layer_config(std::string_view text, int num_layers) {
  std::vector<PrecisionPair> layers;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    const std::string_view item =
        text.substr(start, comma == std::string_view::npos ? text.size() - start : comma - start);
    try {
      layers.push_back(PrecisionPair::parse(item));
    } catch (const Error& e) {
      throw Error("layer config entry " + std::to_string(layers.size()) + ": " + e.what());
    }
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  if (layers.size() == 1)
    return std::vector<PrecisionPair>(static_cast<size_t>(num_layers), layers[0]);
  if (static_cast<int>(layers.size()) != num_layers) {
    throw Error("layer config has " + std::to_string(layers.size()) + " pairs but the model has " +
                std::to_string(num_layers) + " layers (give one pair, or one per layer)");
  }
  return layers;
}

std::string format_layer_config(const std::vector<PrecisionPair>& layers) {
  std::string out;
  for (const PrecisionPair& p : layers) {
    if (!out.empty()) out += ',';
    out += p.name();
  }
  return out;
}

double average_bits(const std::vector<PrecisionPair>& layers) {
  if (layers.empty()) return 0.0;
  double sum = 0.0;
  for (const PrecisionPair& p : layers) sum += p.equivalent_bits();
  return sum / static_cast<double>(layers.size());
}

}  // namespace kvtune
