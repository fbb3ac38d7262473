// Per-layer KV configurations read from files: KVTuner's YAML presets
// ({layer: {nbits_key: 8, nbits_value: 4}}), or a list of pair names
// (["K8V4", "KV4", ...] or {"layers": [...]}), in YAML or JSON.
#pragma once

#include <string>
#include <vector>

#include "kvtune/common/precision.h"

namespace kvtune {

// Throws kvtune::Error naming the file, the layer and the field at fault, and
// the layers a KVTuner mapping leaves out.
std::vector<PrecisionPair> load_layer_config_file(const std::string& path, int num_layers);

// The same from text already read (`origin` names it in errors).
std::vector<PrecisionPair> parse_layer_config_text(const std::string& text, int num_layers,
                                                   const std::string& origin);

// A config file as the layer config string `parse_layer_config` reads
// ("K8V4,KV4,..."), with as many layers as the file names: for job specs,
// whose model is only known to the workers. Errors name the file and field.
std::string read_layer_config_file(const std::string& path);

// KVTuner's YAML for a configuration (integer widths and 16 only).
std::string to_kvtuner_yaml(const std::vector<PrecisionPair>& layers);

}  // namespace kvtune
