#include "exports.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "kvtune/common/config_file.h"
#include "kvtune/common/error.h"

namespace kvtune::exports {
namespace {

constexpr const char* kLlamaCppArgs =
    "https://github.com/ggml-org/llama.cpp/blob/master/common/arg.cpp";
constexpr const char* kKvtunerSource = "https://github.com/cmd2001/KVTuner";
constexpr const char* kTrtllmPr = "https://github.com/NVIDIA/TensorRT-LLM/pull/13695";
constexpr const char* kTrtllmOldPr = "https://github.com/NVIDIA/TensorRT-LLM/pull/13345";
constexpr const char* kTrtllmDocs =
    "https://nvidia.github.io/TensorRT-LLM/features/quantization.html";
constexpr const char* kTrtllmServe =
    "https://github.com/NVIDIA/TensorRT-LLM/blob/main/tensorrt_llm/commands/serve.py";
constexpr const char* kSglangPr = "https://github.com/sgl-project/sglang/pull/17530";
constexpr const char* kSglangDocs =
    "https://github.com/sgl-project/sglang/blob/main/docs/advanced_features/"
    "quantized_kv_cache.md";
constexpr const char* kModeloptPr = "https://github.com/NVIDIA/Model-Optimizer/pull/2272";
constexpr const char* kModeloptConvert =
    "https://github.com/NVIDIA/Model-Optimizer/blob/main/modelopt/torch/export/"
    "convert_hf_config.py";
constexpr const char* kVllmPr = "https://github.com/vllm-project/vllm/pull/56116";
constexpr const char* kVllmRfc = "https://github.com/vllm-project/vllm/issues/57445";
constexpr const char* kVllmSkipPr = "https://github.com/vllm-project/vllm/pull/33695";
constexpr const char* kVllmWeightUtils =
    "https://github.com/vllm-project/vllm/blob/main/vllm/model_executor/model_loader/"
    "weight_utils.py";
constexpr const char* kVllmDocs =
    "https://docs.vllm.ai/en/latest/features/quantization/quantized_kvcache/";
constexpr const char* kVllmTorchUtils =
    "https://github.com/vllm-project/vllm/blob/main/vllm/utils/torch_utils.py";
constexpr const char* kVllmModelopt =
    "https://github.com/vllm-project/vllm/blob/main/vllm/model_executor/layers/quantization/"
    "modelopt.py";

void require_layers(const std::vector<PrecisionPair>& layers, const char* format) {
  if (layers.empty()) throw Error(std::string(format) + ": the configuration has no layers");
}

std::string where(size_t layer, const PrecisionPair& pair, const char* format) {
  return std::string(format) + ": layer " + std::to_string(layer) + " (" + pair.name() + ")";
}

bool unquantized(const PrecisionPair& p) {
  return p.key.kind == KvFormat::Kind::Full && p.value.kind == KvFormat::Kind::Full;
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

// A per-layer format's name for fp8 / nvfp4 ("" for KV16): kvtune's fp8 and
// nvfp4, or `engine_id`'s dtypes of those names ("trtllm:fp8"); refuses other
// engine dtypes.
std::string fp8_nvfp4_name(size_t layer, const PrecisionPair& pair, const KvFormat& f,
                           const char* format, const char* engine, std::string_view engine_id) {
  switch (f.kind) {
    case KvFormat::Kind::Fp8:
      return "fp8";
    case KvFormat::Kind::Nvfp4:
      return "nvfp4";
    case KvFormat::Kind::Full:
      return "";
    case KvFormat::Kind::Engine: {
      const EngineDtype& d = f.engine_dtype();
      if (d.engine == engine_id && (d.flag == "fp8" || d.flag == "nvfp4")) {
        return std::string(d.flag);
      }
      const std::string id(engine_id);
      throw Error(where(layer, pair, format) + ": " + engine + " takes fp8 (kvtune's or " + id +
                  ":fp8), nvfp4 (kvtune's or " + id + ":nvfp4) and unquantized (16) layers, not " +
                  std::string(d.name));
    }
    case KvFormat::Kind::Int:
      break;
  }
  throw Error(where(layer, pair, format) + ": not an fp8 or nvfp4 format");  // refused above
}

std::string_view engine_label(std::string_view engine) {
  if (engine == "vllm") return "vLLM";
  if (engine == "sglang") return "SGLang";
  if (engine == "trtllm") return "TensorRT-LLM";
  return engine;
}

// "vllm:fp8, vllm:fp8_e5m2, ...": the engine's dtypes, for refusals.
std::string dtype_list(std::string_view engine) {
  std::string out;
  for (const EngineDtype& d : engine_dtypes()) {
    if (d.engine == engine) out += (out.empty() ? "" : ", ") + std::string(d.name);
  }
  return out;
}

// A released engine's configuration: one engine dtype for every layer, and
// (when `allow_full`) the layers kept unquantized.
struct EngineConfig {
  const EngineDtype* dtype = nullptr;
  std::vector<size_t> full;
};

EngineConfig engine_config(const std::vector<PrecisionPair>& layers, const char* format,
                           std::string_view engine, std::string_view option, bool allow_full) {
  require_layers(layers, format);
  const std::string label(engine_label(engine));
  const std::string rule = " (keys and values share one of " + dtype_list(engine) + ")";
  EngineConfig out;
  size_t first = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    const PrecisionPair& p = layers[l];
    if (unquantized(p)) {
      if (!allow_full) {
        throw Error(where(l, p, format) + ": " + label + " keeps every layer in the one " +
                    std::string(option) + "; it cannot leave a layer unquantized");
      }
      out.full.push_back(l);
      continue;
    }
    if (p.key != p.value) {
      throw Error(where(l, p, format) + ": " + label +
                  " stores keys and values in one cache dtype (got key " + p.key.name() +
                  ", value " + p.value.name() + ")" + rule);
    }
    const KvFormat& f = p.key;
    if (f.kind != KvFormat::Kind::Engine) {
      const std::string what = f.kind == KvFormat::Kind::Int
                                   ? "kvtune's " + std::to_string(f.bits) + "-bit integer format"
                                   : "kvtune's " + f.name() + " (per-head scales)";
      throw Error(where(l, p, format) + ": " + what + " is not a " + label + " cache dtype" + rule);
    }
    const EngineDtype& d = f.engine_dtype();
    if (d.engine != engine) {
      throw Error(where(l, p, format) + ": " + std::string(d.name) + " is " +
                  std::string(engine_label(d.engine)) + "'s cache dtype, not " + label + "'s" +
                  rule);
    }
    if (out.dtype == nullptr) {
      out.dtype = &d;
      first = l;
    } else if (out.dtype != &d) {
      throw Error(where(l, p, format) + ": " + label + " takes one " + std::string(option) +
                  " for the model, and layer " + std::to_string(first) + " has " +
                  layers[first].name());
    }
  }
  if (out.dtype == nullptr) {
    throw Error(std::string(format) + ": every layer is unquantized (KV16), so there is no " +
                label + " cache dtype to set; serve the model without one");
  }
  return out;
}

std::string availability_note(const EngineDtype& d) {
  if (d.availability.empty()) return "";
  return "# " + std::string(d.name) + " needs " + std::string(d.availability) + "\n";
}

void refuse_calculated(const DeployOptions& deploy, const char* format, const char* engine) {
  if (deploy.kv_scales == KvScales::Calculated) {
    throw Error(std::string(format) + ": kv_scales 'calculated' is vLLM's --calculate-kv-scales; " +
                engine + " computes no KV scales (use 'one' or 'calibrated')");
  }
}

// ModelOpt's KV-only layer map and envelope algorithm.
struct ModeloptKv {
  nlohmann::ordered_json layers = nlohmann::ordered_json::object();
  std::string algo;  // "FP8", "NVFP4" or "MIXED_PRECISION"
};

ModeloptKv modelopt_kv(const std::vector<PrecisionPair>& layers, const char* format,
                       const HfQuantOptions& options) {
  require_layers(layers, format);
  ModeloptKv out;
  for (size_t l = 0; l < layers.size(); ++l) {
    const KvFormat f = same_hardware_format(l, layers[l], format, "vLLM");
    const std::string name = fp8_nvfp4_name(l, layers[l], f, format, "vLLM", "vllm");
    // As ModelOpt writes it: 16-bit layers are absent from the map and do not
    // make the envelope MIXED_PRECISION; only two quantized formats do.
    if (name.empty()) continue;
    const std::string algo = name == "fp8" ? "FP8" : "NVFP4";
    if (out.algo.empty()) out.algo = algo;
    if (algo != out.algo) out.algo = "MIXED_PRECISION";
    out.layers[options.module_prefix + std::to_string(l) + options.module_suffix] = {
        {"quant_algo", algo}};
  }
  if (out.layers.empty()) {
    throw Error(std::string(format) +
                ": every layer is unquantized (KV16), so there is no KV format to declare; "
                "serve the model without KV-cache quantization");
  }
  return out;
}

}  // namespace

std::string shell_word(const std::string& model) {
  if (model.empty()) throw Error("deploy options: the model is empty");
  bool plain = true;
  for (const char c : model) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f)
      throw Error("deploy options: the model name has a control character");
    const bool safe = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      std::string_view("_./:@+=,%-").find(c) != std::string_view::npos;
    plain = plain && safe;
  }
  if (plain) return model;
  std::string out = "'";
  for (const char c : model) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::vector<FormatInfo> describe_formats() {
  return {
      {"vllm",
       "vLLM (vllm serve --kv-cache-dtype, --kv-cache-dtype-skip-layers)",
       "vllm serve MODEL --kv-cache-dtype fp8 --kv-cache-dtype-skip-layers 0 1 27",
       "one vllm:* dtype on every layer (keys = values), KV16 layers as skip layers",
       "Released: --kv-cache-dtype-skip-layers since pull request #33695; vllm:nvfp4 and the "
       "per-token-head dtypes are on vLLM main, first release unverified.",
       {kVllmSkipPr, kVllmDocs}},
      {"sglang-launch",
       "SGLang (python -m sglang.launch_server --kv-cache-dtype)",
       "python -m sglang.launch_server --model-path MODEL --kv-cache-dtype fp8_e4m3",
       "one sglang:* dtype on every layer (keys = values); no KV16 layer",
       "Released: one --kv-cache-dtype per model.",
       {kSglangDocs}},
      {"trtllm-serve",
       "TensorRT-LLM (trtllm-serve --extra_llm_api_options YAML, kv_cache_config.dtype)",
       "kv_cache_config:\n  dtype: fp8\n",
       "one trtllm:* dtype on every layer (keys = values); no KV16 layer",
       "Released: one KV dtype per model (auto, fp8 or nvfp4); nvfp4 needs a ModelOpt "
       "checkpoint.",
       {kTrtllmServe, kTrtllmDocs}},
      {"llama.cpp",
       "llama.cpp (llama-server / llama-cli -ctk, -ctv, -fa)",
       "llama-server -m MODEL.gguf -ctk q8_0 -ctv q4_0 -fa on",
       "one llama.cpp:* key type and one value type for every layer",
       "Released: one K and one V cache type per model; the Hadamard rotation (PR #21038) is "
       "on by default for quantized types when head_dim % 64 == 0.",
       {kLlamaCppArgs}},
      {"ik_llama.cpp",
       "ik_llama.cpp (llama-server / llama-cli -ctk, -ctv, -ctk-first, -ctk-last, -ctv-first, "
       "-ctv-last)",
       "llama-server -m MODEL.gguf -ctk q4_0 -ctv q4_0 -ctk-first q8_0,2 -ctv-last q8_0,1 -fa on",
       "llama.cpp:* types other than f32 and bf16, keys and values each a base type with one "
       "type on the first N layers and one on the last N",
       "Merged in pull request #1599 (2026-04), no release tag; the Hadamard rotation is opt-in "
       "(-khad, -vhad).",
       {"https://github.com/ikawrakow/ik_llama.cpp/pull/1599"}},
      {"kvtuner",
       "KVTuner (per-layer presets; kvtune imports it too)",
       "0:\n  nbits_key: 8\n  nbits_value: 4\n",
       "integer widths, K and V apart (not 16: KVTuner has no unquantized layer)",
       "KVTuner's own preset format.",
       {kKvtunerSource, "common/include/kvtune/common/config_file.h"}},
      {"trtllm",
       "TensorRT-LLM (KvCacheConfig.dtype / kv_cache_config: dtype:)",
       "0-3:fp8,4-35:nvfp4",
       "KVfp8 or KVtrtllm:fp8, KVnvfp4 or KVtrtllm:nvfp4, KV16 (written as the model dtype, "
       "default bfloat16)",
       "Per-layer range syntax from pull request #13695 (open when written); released "
       "TensorRT-LLM takes one KV dtype: auto, fp8 or nvfp4.",
       {kTrtllmPr, kTrtllmOldPr, kTrtllmDocs}},
      {"sglang",
       "SGLang (--kv-cache-per-layer-dtype FILE.yaml)",
       "kv_cache_per_layer_dtype:\n  0: fp8_e4m3\n  1: bf16\n",
       "KVfp8 (fp8_e4m3), KVnvfp4 (fp4_e2m1), sglang:* dtypes, KV16 (bf16)",
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
       "KVfp8 or KVvllm:fp8 (FP8), KVnvfp4 or KVvllm:nvfp4 (NVFP4), KV16 (left out of the "
       "map); MIXED_PRECISION only when both FP8 and NVFP4 layers occur",
       "ModelOpt writes schema 1 since pull request #2272 (merged); vLLM reads it in pull "
       "request #56116 (open when written, RFC #57445). compressed-tensors' kv_cache_scheme is "
       "model-wide only.",
       {kModeloptPr, kVllmPr, kVllmRfc}},
      {"hf_config_json",
       "vLLM, via config.json's quantization_config (the same KV-only ModelOpt checkpoint)",
       "{\"quant_method\": \"modelopt\", \"producer\": {...}, \"ignore\": [], "
       "\"kv_cache_quant_algo\": \"FP8\", \"kv_cache_scheme\": {\"dynamic\": false, "
       "\"num_bits\": 8, \"type\": \"float\"}, \"kv_cache_quantized_layers\": {...}, "
       "\"kv_cache_schema_version\": 1}",
       "as hf_quant_config",
       "What ModelOpt's convert_hf_quant_config_format writes for a KV-only export. Released "
       "vLLM resolves --kv-cache-dtype auto from it but its ModelOpt config refuses a missing "
       "quant_algo, so loading it needs pull request #56116.",
       {kVllmTorchUtils, kVllmModelopt, kModeloptConvert, kVllmPr}},
      {"kv_scales",
       "the checkpoint's calibrated per-layer k_scale / v_scale tensors (ModelOpt names)",
       "{\"model.layers.0.self_attn.k_proj.k_scale\": 0.0123, "
       "\"model.layers.0.self_attn.v_proj.v_scale\": 0.0045}",
       "layers of vllm:fp8, vllm:fp8_e5m2, vllm:nvfp4, sglang:fp8_*, trtllm:nvfp4 with kv_scales "
       "calibrated",
       "Released: vLLM loads these names (maybe_remap_kv_scale_name); merge them into the "
       "checkpoint's safetensors.",
       {kVllmWeightUtils}},
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

std::string vllm_command(const std::vector<PrecisionPair>& layers, const DeployOptions& deploy) {
  constexpr const char* kFormat = "vLLM command";
  const EngineConfig c = engine_config(layers, kFormat, "vllm", "--kv-cache-dtype", true);
  const EngineDtype& d = *c.dtype;
  std::string notes = availability_note(d);
  bool calculate = false;
  if (d.scale == EngineDtype::Scale::Layer) {
    calculate = deploy.kv_scales == KvScales::Calculated;
    if (deploy.kv_scales == KvScales::Calibrated) {
      notes +=
          "# The checkpoint must carry calibrated per-layer k_scale/v_scale that vLLM loads (as "
          "NVIDIA ModelOpt or llm-compressor export them; --format kv_scales writes kvtune's).\n";
    }
  } else if (deploy.kv_scales != KvScales::One) {
    notes += "# " + std::string(d.name) +
             " computes its own scales per token and head; per-layer k/v scales (" +
             std::string(kv_scales_name(deploy.kv_scales)) + ") do not apply.\n";
  }
  std::string cmd =
      "vllm serve " + shell_word(deploy.model) + " --kv-cache-dtype " + std::string(d.flag);
  if (!c.full.empty()) {
    cmd += " --kv-cache-dtype-skip-layers";
    for (const size_t l : c.full) cmd += " " + std::to_string(l);
  }
  if (calculate) cmd += " --calculate-kv-scales";
  return notes + cmd + "\n";
}

std::string sglang_command(const std::vector<PrecisionPair>& layers, const DeployOptions& deploy) {
  constexpr const char* kFormat = "SGLang launch command";
  const EngineConfig c = engine_config(layers, kFormat, "sglang", "--kv-cache-dtype", false);
  refuse_calculated(deploy, kFormat, "SGLang");
  const EngineDtype& d = *c.dtype;
  std::string notes = availability_note(d);
  if (d.flag == "fp8_e4m3") {
    notes += "# SGLang's fp8_e4m3 cast does not saturate: |x / scale| > 448 becomes NaN.\n";
  }
  if (deploy.kv_scales == KvScales::Calibrated) {
    notes += d.scale == EngineDtype::Scale::Layer
                 ? "# k_scale/v_scale come from the checkpoint (or --quantization-param-path "
                   "FILE).\n"
                 : "# " + std::string(d.name) +
                       " uses power-of-two block scales; the checkpoint's k/v scales do not "
                       "apply.\n";
  }
  return notes + "python -m sglang.launch_server --model-path " + shell_word(deploy.model) +
         " --kv-cache-dtype " + std::string(d.flag) + "\n";
}

std::string trtllm_serve(const std::vector<PrecisionPair>& layers, const DeployOptions& deploy) {
  constexpr const char* kFormat = "TensorRT-LLM serve options";
  const EngineConfig c = engine_config(layers, kFormat, "trtllm", "kv_cache_config.dtype", false);
  refuse_calculated(deploy, kFormat, "TensorRT-LLM");
  const EngineDtype& d = *c.dtype;
  std::string out =
      "# kv.yaml: LLM API options for trtllm-serve --extra_llm_api_options (newer releases\n"
      "# also spell it --config; tensorrt_llm/commands/serve.py).\n" +
      availability_note(d);
  if (d.flag == "nvfp4") {
    out +=
        "# nvfp4 needs a ModelOpt checkpoint: its per-layer global scales come from the "
        "checkpoint's k_scale/v_scale.\n";
  }
  if (d.scale == EngineDtype::Scale::AlwaysOne && deploy.kv_scales == KvScales::Calibrated) {
    out += "# TensorRT-LLM's " + std::string(d.flag) +
           " cache uses a scale of 1.0; the checkpoint's k_scale/v_scale are not applied.\n";
  }
  return out + "kv_cache_config:\n  dtype: " + std::string(d.flag) +
         "\n# Serve with: trtllm-serve " + shell_word(deploy.model) +
         " --extra_llm_api_options kv.yaml\n";
}

std::string kvtuner_yaml(const std::vector<PrecisionPair>& layers) {
  require_layers(layers, "KVTuner YAML");
  // 16 is not "unquantized" to KVTuner: its vanilla backend clips to int8
  // codes and corrupts the values, quanto and HQQ reject it.
  for (size_t l = 0; l < layers.size(); ++l) {
    for (const bool keys : {true, false}) {
      const KvFormat& f = keys ? layers[l].key : layers[l].value;
      const bool integer = f.kind == KvFormat::Kind::Int || f.kind == KvFormat::Kind::Full;
      if (!integer || f.bits != 16) continue;  // fp8, nvfp4, engine dtypes: below
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
    const std::string name = fp8_nvfp4_name(l, layers[l], f, kFormat, "TensorRT-LLM", "trtllm");
    dtypes.push_back(name.empty() ? std::string(unquantized_dtype) : name);
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
    std::string dtype = "bf16";
    if (f.kind == KvFormat::Kind::Fp8) dtype = "fp8_e4m3";
    if (f.kind == KvFormat::Kind::Nvfp4) {
      dtype = "fp4_e2m1";
      has_fp4 = true;
    }
    if (f.kind == KvFormat::Kind::Engine) {
      const EngineDtype& d = f.engine_dtype();
      if (d.engine != "sglang") {
        throw Error(where(l, layers[l], kFormat) +
                    ": SGLang takes fp8, nvfp4, unquantized (16) and its own dtypes (" +
                    dtype_list("sglang") + "), not " + std::string(d.name));
      }
      dtype = std::string(d.flag);
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
  const ModeloptKv kv =
      modelopt_kv(layers, "hf_quant_config.json (ModelOpt schema 1, read by vLLM)", options);
  nlohmann::ordered_json doc = {
      {"producer", {{"name", options.producer_name}, {"version", options.producer_version}}},
      {"quantization",
       {{"quant_algo", nullptr},  // KV-only: the weights stay as they are
        {"kv_cache_quant_algo", kv.algo},
        {"kv_cache_quantized_layers", kv.layers},
        {"kv_cache_schema_version", 1}}}};
  return doc.dump(2) + "\n";
}

std::string hf_config_json_block(const std::vector<PrecisionPair>& layers,
                                 const HfQuantOptions& options) {
  const ModeloptKv kv = modelopt_kv(
      layers, "config.json quantization_config (ModelOpt KV-only, read by vLLM)", options);
  // No quant_algo: ModelOpt leaves it out of a KV-only export.
  nlohmann::ordered_json doc = {
      {"quant_method", "modelopt"},
      {"producer", {{"name", options.producer_name}, {"version", options.producer_version}}},
      {"ignore", nlohmann::ordered_json::array()},
      {"kv_cache_quant_algo", kv.algo}};
  if (kv.algo == "FP8") {
    // ModelOpt's FP8 kv_cache_scheme; vLLM's get_kv_cache_quant_algo_string
    // reads it before kv_cache_quant_algo.
    doc["kv_cache_scheme"] = {{"dynamic", false}, {"num_bits", 8}, {"type", "float"}};
  }
  doc["kv_cache_quantized_layers"] = kv.layers;
  doc["kv_cache_schema_version"] = 1;
  return doc.dump(2) + "\n";
}

std::string kv_scales_json(const std::vector<PrecisionPair>& layers, const DeployOptions& deploy,
                           const HfQuantOptions& options) {
  constexpr const char* kFormat = "kv_scales";
  if (deploy.kv_scales != KvScales::Calibrated) {
    throw Error(std::string(kFormat) + ": the job's k/v scales are '" +
                std::string(kv_scales_name(deploy.kv_scales)) + "': " +
                (deploy.kv_scales == KvScales::One
                     ? "the engine applies 1.0 without checkpoint scales"
                     : "vLLM computes them at start-up (--calculate-kv-scales)") +
                "; there is nothing to write (search with kv_scales calibrated)");
  }
  nlohmann::ordered_json out = nlohmann::ordered_json::object();  // in layer order
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const KvFormat& f = layers[l].key;
    if (!f.takes_layer_scale()) continue;
    if (l >= deploy.k_scales.size() || l >= deploy.v_scales.size() ||
        !(deploy.k_scales[l] > 0.0f && deploy.v_scales[l] > 0.0f)) {
      throw Error(where(l, layers[l], kFormat) + ": its evaluation reported no k/v scales");
    }
    const std::string module = options.module_prefix + std::to_string(l) + options.module_suffix;
    out[module + ".k_proj.k_scale"] = deploy.k_scales[l];
    out[module + ".v_proj.v_scale"] = deploy.v_scales[l];
  }
  if (out.empty()) {
    throw Error(std::string(kFormat) + ": no layer has a dtype with a per-layer k/v scale");
  }
  return out.dump(2) + "\n";
}

std::string export_config(std::string_view format_id, const std::vector<PrecisionPair>& layers) {
  return export_config(format_id, layers, DeployOptions{});
}

std::string export_config(std::string_view format_id, const std::vector<PrecisionPair>& layers,
                          const DeployOptions& deploy) {
  if (format_id == "vllm") return vllm_command(layers, deploy);
  if (format_id == "sglang-launch") return sglang_command(layers, deploy);
  if (format_id == "trtllm-serve") return trtllm_serve(layers, deploy);
  if (format_id == "llama.cpp") return llama_cpp_command(layers, deploy);
  if (format_id == "ik_llama.cpp") return ik_llama_cpp_command(layers, deploy);
  if (format_id == "kvtuner") return kvtuner_yaml(layers);
  if (format_id == "trtllm") return trtllm_ranges(layers);
  if (format_id == "sglang") return sglang_yaml(layers);
  if (format_id == "hf_quant_config") return hf_quant_config(layers);
  if (format_id == "hf_config_json") return hf_config_json_block(layers);
  if (format_id == "kv_scales") return kv_scales_json(layers, deploy);
  std::string ids;
  for (const FormatInfo& f : describe_formats()) ids += (ids.empty() ? "" : ", ") + f.id;
  throw Error("unknown export format '" + std::string(format_id) + "' (one of " + ids + ")");
}

}  // namespace kvtune::exports
