#include "exports.h"

#include <nlohmann/json.hpp>
#include <optional>

#include "kvtune/common/config_file.h"
#include "kvtune/common/error.h"

namespace kvtune::exports {
namespace {

constexpr const char* kKvtunerSource = "https://github.com/cmd2001/KVTuner";
constexpr const char* kTrtllmPr = "https://github.com/NVIDIA/TensorRT-LLM/pull/13695";
constexpr const char* kTrtllmOldPr = "https://github.com/NVIDIA/TensorRT-LLM/pull/13345";
constexpr const char* kTrtllmDocs =
    "https://nvidia.github.io/TensorRT-LLM/features/quantization.html";
constexpr const char* kSglangPr = "https://github.com/sgl-project/sglang/pull/17530";
constexpr const char* kSglangDocs =
    "https://github.com/sgl-project/sglang/blob/main/docs/advanced_features/"
    "quantized_kv_cache.md";
constexpr const char* kModeloptPr = "https://github.com/NVIDIA/Model-Optimizer/pull/2272";
constexpr const char* kVllmPr = "https://github.com/vllm-project/vllm/pull/56116";
constexpr const char* kVllmRfc = "https://github.com/vllm-project/vllm/issues/57445";

void require_layers(const std::vector<PrecisionPair>& layers, const char* format) {
  if (layers.empty()) throw Error(std::string(format) + ": the configuration has no layers");
}

std::string where(size_t layer, const PrecisionPair& pair, const char* format) {
  return std::string(format) + ": layer " + std::to_string(layer) + " (" + pair.name() + ")";
}

// The one format of a layer whose engine stores keys and values alike; throws
// naming the constraint otherwise. Integer widths are refused: kvtune's are
// asymmetric group quantizers, which none of these engines implement.
KvFormat same_hardware_format(size_t layer, const PrecisionPair& pair, const char* format,
                              const char* engine) {
  if (pair.key != pair.value) {
    throw Error(where(layer, pair, format) + ": " + engine +
                " stores one KV dtype per layer, so keys and values must use the same "
                "format (got key " +
                pair.key.name() + ", value " + pair.value.name() + ")");
  }
  if (pair.key.kind == KvFormat::Kind::Int) {
    throw Error(where(layer, pair, format) + ": " + engine +
                " supports only fp8, nvfp4 and unquantized (16) KV caches, not kvtune's " +
                std::to_string(pair.key.bits) + "-bit integer format");
  }
  return pair.key;
}

}  // namespace

std::vector<FormatInfo> describe_formats() {
  return {
      {"kvtuner",
       "KVTuner (per-layer presets; kvtune imports it too)",
       "0:\n  nbits_key: 8\n  nbits_value: 4\n",
       "integer widths 1/2/3/4/8, K and V apart (not 16: KVTuner has no unquantized layer)",
       "KVTuner's own preset format.",
       {kKvtunerSource, "common/include/kvtune/common/config_file.h"}},
      {"trtllm",
       "TensorRT-LLM (KvCacheConfig.dtype / kv_cache_config: dtype:)",
       "0-3:fp8,4-35:nvfp4",
       "KVfp8, KVnvfp4, KV16 (written as the model dtype, default bfloat16)",
       "Per-layer range syntax from pull request #13695 (open when written); released "
       "TensorRT-LLM takes one KV dtype: auto, fp8 or nvfp4.",
       {kTrtllmPr, kTrtllmOldPr, kTrtllmDocs}},
      {"sglang",
       "SGLang (--kv-cache-per-layer-dtype FILE.yaml)",
       "kv_cache_per_layer_dtype:\n  0: fp8_e4m3\n  1: bf16\n",
       "KVfp8 (fp8_e4m3), KVnvfp4 (fp4_e2m1), KV16 (bf16)",
       "Proposed in pull request #17530 (closed, not merged); released SGLang takes one "
       "--kv-cache-dtype. SGLang's fp4_e2m1 always uses power-of-two (UE8M0) block "
       "scales, not kvtune's nvfp4 E4M3 ones.",
       {kSglangPr, kSglangDocs}},
      {"hf_quant_config",
       "vLLM, via NVIDIA ModelOpt's hf_quant_config.json in the checkpoint directory",
       "{\"producer\": {\"name\": \"modelopt\", ...}, \"quantization\": {\"quant_algo\": null, "
       "\"kv_cache_quant_algo\": \"FP8\", \"kv_cache_quantized_layers\": "
       "{\"model.layers.0.self_attn\": "
       "{\"quant_algo\": \"FP8\"}}, \"kv_cache_schema_version\": 1}}",
       "KVfp8 (FP8), KVnvfp4 (NVFP4), KV16 (left out of the map); MIXED_PRECISION only when "
       "both fp8 and nvfp4 layers occur",
       "ModelOpt writes schema 1 since pull request #2272 (merged); vLLM reads it in pull "
       "request #56116 (open when written, RFC #57445). compressed-tensors' kv_cache_scheme is "
       "model-wide only.",
       {kModeloptPr, kVllmPr, kVllmRfc}},
  };
}

std::string describe_formats_text() {
  std::string out;
  for (const FormatInfo& f : describe_formats()) {
    out += f.id + "\n  engine:  " + f.engine + "\n  accepts: " + f.accepts +
           "\n  status:  " + f.status + "\n  sources:";
    for (const std::string& s : f.sources) out += "\n    " + s;
    out += "\n";
  }
  return out;
}

std::string kvtuner_yaml(const std::vector<PrecisionPair>& layers) {
  require_layers(layers, "KVTuner YAML");
  // 16 is not "unquantized" to KVTuner: its vanilla backend clips to int8
  // codes and corrupts the values, quanto and HQQ reject it.
  for (size_t l = 0; l < layers.size(); ++l) {
    for (const bool keys : {true, false}) {
      const KvFormat& f = keys ? layers[l].key : layers[l].value;
      const bool integer = f.kind == KvFormat::Kind::Int || f.kind == KvFormat::Kind::Full;
      if (!integer || f.bits != 16) continue;  // fp8 and nvfp4: below
      throw Error("KVTuner YAML: layer " + std::to_string(l) + " (" + layers[l].name() + ") has " +
                  f.name() + "-bit " + (keys ? "keys" : "values") +
                  "; KVTuner has no unquantized layer (its vanilla backend clips 16 bits to "
                  "int8 codes, quanto and HQQ reject it)");
    }
  }
  try {
    return to_kvtuner_yaml(layers);
  } catch (const Error& e) {
    throw Error(std::string("KVTuner YAML: ") + e.what());
  }
}

std::string trtllm_ranges(const std::vector<PrecisionPair>& layers,
                          std::string_view unquantized_dtype) {
  constexpr const char* kFormat = "TensorRT-LLM per-layer KV dtype";
  require_layers(layers, kFormat);
  if (unquantized_dtype != "bfloat16" && unquantized_dtype != "float16") {
    throw Error(std::string(kFormat) +
                ": the unquantized dtype must be bfloat16 or float16, not '" +
                std::string(unquantized_dtype) + "'");
  }
  std::vector<std::string> dtypes;
  for (size_t l = 0; l < layers.size(); ++l) {
    const KvFormat f = same_hardware_format(l, layers[l], kFormat, "TensorRT-LLM");
    dtypes.push_back(f.kind == KvFormat::Kind::Fp8     ? "fp8"
                     : f.kind == KvFormat::Kind::Nvfp4 ? "nvfp4"
                                                       : std::string(unquantized_dtype));
  }
  std::string out;
  for (size_t start = 0; start < dtypes.size();) {
    size_t end = start;
    while (end + 1 < dtypes.size() && dtypes[end + 1] == dtypes[start]) ++end;
    if (!out.empty()) out += ",";
    out += std::to_string(start);
    if (end > start) out += "-" + std::to_string(end);
    out += ":" + dtypes[start];
    start = end + 1;
  }
  return out;
}

std::string sglang_yaml(const std::vector<PrecisionPair>& layers) {
  constexpr const char* kFormat = "SGLang per-layer KV dtype YAML";
  require_layers(layers, kFormat);
  std::string body;
  bool has_fp4 = false;
  for (size_t l = 0; l < layers.size(); ++l) {
    const KvFormat f = same_hardware_format(l, layers[l], kFormat, "SGLang");
    const char* dtype = "bf16";
    if (f.kind == KvFormat::Kind::Fp8) dtype = "fp8_e4m3";
    if (f.kind == KvFormat::Kind::Nvfp4) {
      dtype = "fp4_e2m1";
      has_fp4 = true;
    }
    body += "  " + std::to_string(l) + ": " + dtype + "\n";
  }
  std::string out =
      "# SGLang per-layer KV cache dtypes (--kv-cache-per-layer-dtype FILE), as proposed in\n"
      "# https://github.com/sgl-project/sglang/pull/17530 (not in released SGLang).\n";
  if (has_fp4) {
    out +=
        "# fp4_e2m1 stands for kvtune's nvfp4 only approximately: SGLang's fp4_e2m1 always\n"
        "# uses power-of-two (UE8M0) block scales (SGLANG_EXPERIMENTAL_NVFP4 only picks\n"
        "# between two such exponents), kvtune's nvfp4 E4M3 ones. SGLang's main branch also\n"
        "# has --kv-cache-dtype nvfp4 (E4M3 block scales); its first release is unverified.\n";
  }
  return out + "kv_cache_per_layer_dtype:\n" + body;
}

std::string hf_quant_config(const std::vector<PrecisionPair>& layers,
                            const HfQuantOptions& options) {
  constexpr const char* kFormat = "hf_quant_config.json (ModelOpt schema 1, read by vLLM)";
  require_layers(layers, kFormat);
  nlohmann::ordered_json map = nlohmann::ordered_json::object();
  std::optional<KvFormat> uniform;
  bool mixed = false;
  for (size_t l = 0; l < layers.size(); ++l) {
    const KvFormat f = same_hardware_format(l, layers[l], kFormat, "vLLM");
    // As ModelOpt writes it: 16-bit layers are absent from the map and do not
    // make the envelope MIXED_PRECISION; only two quantized formats do.
    if (f.kind == KvFormat::Kind::Full) continue;
    if (!uniform) uniform = f;
    if (f != *uniform) mixed = true;
    map[options.module_prefix + std::to_string(l) + options.module_suffix] = {
        {"quant_algo", f.kind == KvFormat::Kind::Fp8 ? "FP8" : "NVFP4"}};
  }
  if (map.empty()) {
    throw Error(std::string(kFormat) +
                ": every layer is unquantized (KV16), so there is no KV format to declare; "
                "serve the model without KV-cache quantization");
  }
  const char* algo = mixed                                  ? "MIXED_PRECISION"
                     : uniform->kind == KvFormat::Kind::Fp8 ? "FP8"
                                                            : "NVFP4";
  nlohmann::ordered_json doc = {
      {"producer", {{"name", options.producer_name}, {"version", options.producer_version}}},
      {"quantization",
       {{"quant_algo", nullptr},  // KV-only: the weights stay as they are
        {"kv_cache_quant_algo", algo},
        {"kv_cache_quantized_layers", map},
        {"kv_cache_schema_version", 1}}}};
  return doc.dump(2) + "\n";
}

std::string export_config(std::string_view format_id, const std::vector<PrecisionPair>& layers) {
  if (format_id == "kvtuner") return kvtuner_yaml(layers);
  if (format_id == "trtllm") return trtllm_ranges(layers);
  if (format_id == "sglang") return sglang_yaml(layers);
  if (format_id == "hf_quant_config") return hf_quant_config(layers);
  throw Error("unknown export format '" + std::string(format_id) +
              "' (one of kvtuner, trtllm, sglang, hf_quant_config)");
}

}  // namespace kvtune::exports
