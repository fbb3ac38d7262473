#include "kvtune/common/config_file.h"

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <map>
#include <sstream>

#include "kvtune/common/error.h"

namespace kvtune {
namespace {

KvFormat format_field(const YAML::Node& node, const std::string& where) {
  if (!node) throw Error(where + " is missing");
  try {
    return KvFormat::parse(node.as<std::string>());
  } catch (const YAML::Exception&) {
    throw Error(where + " is not a KV format (a number of bits, fp8 or nvfp4)");
  } catch (const Error& e) {
    throw Error(where + ": " + e.what());
  }
}

std::vector<PrecisionPair> from_names(const YAML::Node& list, int num_layers,
                                      const std::string& origin) {
  std::string joined;
  for (size_t i = 0; i < list.size(); ++i) {
    if (!list[i].IsScalar()) {
      throw Error(origin + ": entry " + std::to_string(i) + " is not a pair name such as K8V4");
    }
    joined += (i ? "," : "") + list[i].as<std::string>();
  }
  try {
    return parse_layer_config(joined, num_layers);
  } catch (const Error& e) {
    throw Error(origin + ": " + e.what());
  }
}

// KVTuner's mapping: {layer index: {nbits_key, nbits_value}}.
std::vector<PrecisionPair> from_kvtuner(const YAML::Node& map, int num_layers,
                                        const std::string& origin) {
  std::map<int, PrecisionPair> layers;
  for (const auto& item : map) {
    int layer = -1;
    try {
      layer = item.first.as<int>();
    } catch (const YAML::Exception&) {
      throw Error(origin + ": key '" + item.first.as<std::string>() + "' is not a layer index");
    }
    const std::string where = origin + ": layer " + std::to_string(layer);
    if (layer < 0 || layer >= num_layers) {
      throw Error(where + " is outside the model's " + std::to_string(num_layers) + " layers");
    }
    if (!item.second.IsMap()) throw Error(where + " is not a {nbits_key, nbits_value} mapping");
    layers[layer] = {format_field(item.second["nbits_key"], where + " nbits_key"),
                     format_field(item.second["nbits_value"], where + " nbits_value")};
  }
  std::string missing;
  for (int l = 0; l < num_layers; ++l) {
    if (!layers.contains(l)) missing += (missing.empty() ? "" : ", ") + std::to_string(l);
  }
  if (!missing.empty()) throw Error(origin + ": no entry for layer(s) " + missing);
  std::vector<PrecisionPair> out;
  for (const auto& [l, pair] : layers) out.push_back(pair);
  return out;
}

}  // namespace

std::vector<PrecisionPair> parse_layer_config_text(const std::string& text, int num_layers,
                                                   const std::string& origin) {
  YAML::Node root;
  try {
    root = YAML::Load(text);  // YAML is a superset of JSON: one parser for both
  } catch (const YAML::Exception& e) {
    throw Error(origin + ": not valid YAML or JSON: " + e.what());
  }
  if (root.IsSequence()) return from_names(root, num_layers, origin);
  if (root.IsMap() && root["layers"]) return from_names(root["layers"], num_layers, origin);
  if (root.IsMap()) return from_kvtuner(root, num_layers, origin);
  throw Error(origin + ": expected KVTuner's {layer: {nbits_key, nbits_value}} or a list of pairs");
}

std::vector<PrecisionPair> load_layer_config_file(const std::string& path, int num_layers) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot read the config file");
  std::stringstream text;
  text << in.rdbuf();
  return parse_layer_config_text(text.str(), num_layers, path);
}

std::string read_layer_config_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot read the config file");
  std::stringstream text;
  text << in.rdbuf();
  YAML::Node root;
  try {
    root = YAML::Load(text.str());
  } catch (const YAML::Exception& e) {
    throw Error(path + ": not valid YAML or JSON: " + e.what());
  }
  // The layer count the file itself gives: KVTuner's mapping names every
  // layer; a list gives one pair per layer (or one for all).
  std::size_t layers = 0;
  if (root.IsSequence()) {
    layers = root.size();
  } else if (root.IsMap() && root["layers"]) {
    layers = root["layers"].size();
  } else if (root.IsMap()) {
    layers = root.size();
  }
  if (layers == 0) throw Error(path + ": the config names no layers");
  return format_layer_config(parse_layer_config_text(text.str(), static_cast<int>(layers), path));
}

std::string to_kvtuner_yaml(const std::vector<PrecisionPair>& layers) {
  std::string out;
  for (size_t l = 0; l < layers.size(); ++l) {
    for (const KvFormat& f : {layers[l].key, layers[l].value}) {
      if (f.kind != KvFormat::Kind::Int && f.kind != KvFormat::Kind::Full) {
        throw Error("layer " + std::to_string(l) + " uses " + f.name() +
                    ", which KVTuner's YAML (integer bits) cannot express");
      }
    }
    out += std::to_string(l) + ":\n  nbits_key: " + std::to_string(layers[l].key.bits) +
           "\n  nbits_value: " + std::to_string(layers[l].value.bits) + "\n";
  }
  return out;
}

}  // namespace kvtune
