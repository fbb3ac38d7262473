// Exports of a per-layer KV-cache configuration (one PrecisionPair per
// transformer layer) to the command lines and files inference engines load.
// Engine facts: ../shared/ENGINES.md; re-check the cited pull requests before
// relying on an unreleased format.
//
// Released engines (one KV dtype per model; engine_dtype.h names them):
// - vllm:          `vllm serve M --kv-cache-dtype D [--kv-cache-dtype-skip-layers L..]`
//                  (skip layers: vllm-project/vllm PR #33695, merged).
// - sglang-launch: `python -m sglang.launch_server --model-path M --kv-cache-dtype D`.
// - trtllm-serve:  `kv_cache_config: {dtype: D}` in trtllm-serve's options YAML.
// - llama.cpp:     `llama-server -m M.gguf -ctk K -ctv V [-fa on]` (exports_llama.cpp).
// - ik_llama.cpp:  the same with `-ctk-first T,N -ctv-last T,N ...` overrides (PR #1599,
//                  merged, no release tag; exports_llama.cpp).
// Per-layer formats (open or closed pull requests, not released):
// - trtllm:          KvCacheConfig.dtype ranges "0-3:fp8,4-35:nvfp4" (TensorRT-LLM PR
//                    #13695, open when written; #13345 closed).
// - sglang:          `kv_cache_per_layer_dtype: {layer: dtype}` YAML (SGLang PR #17530,
//                    closed unmerged).
// - hf_quant_config: ModelOpt's schema-1 `kv_cache_quantized_layers`, written by
//                    NVIDIA/Model-Optimizer PR #2272 (merged), read by vLLM PR #56116
//                    (open when written, RFC #57445); hf_config_json is its config.json
//                    block. Whole-layer FP8 and NVFP4 only.
// - kvtuner:         KVTuner's `{layer: {nbits_key, nbits_value}}` YAML; integer widths
//                    only, no KV16. Read back with kvtune::parse_layer_config_text
//                    (common/include/kvtune/common/config_file.h).
// llm-compressor's `kv_cache_scheme` is model-wide only, so it is not emitted.
//
// Every export throws kvtune::Error naming the layer, its pair, the format and
// the engine rule a configuration breaks.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "kvtune/common/engine_dtype.h"
#include "kvtune/common/precision.h"
#include "kvtune/common/scheme.h"

namespace kvtune::exports {

// One export format, with where its definition comes from.
struct FormatInfo {
  std::string id;                    // the name export_config() takes, e.g. "trtllm"
  std::string engine;                // who loads it
  std::string example;               // a small sample of the output
  std::string accepts;               // which pairs it can express
  std::string status;                // upstream support, in one sentence
  std::vector<std::string> sources;  // URLs of the code and docs it follows
};

// The formats below: the released engines' (vllm, sglang-launch,
// trtllm-serve, llama.cpp), ik_llama.cpp, then kvtuner, trtllm, sglang, hf_quant_config,
// hf_config_json.
std::vector<FormatInfo> describe_formats();
// describe_formats() as a human-readable table (one block per format).
std::string describe_formats_text();

// What the command lines need besides the layers.
struct DeployOptions {
  std::string model = "MODEL";         // the model path or name, written into the command
  KvScales kv_scales = KvScales::One;  // where the job's per-layer k/v scales came from
  Rotation rotation = Rotation::Auto;  // llama.cpp's Hadamard rotation as evaluated
  // The per-layer k_scale / v_scale the evaluation applied (a result's
  // "k_scales" / "v_scales"; 0 for a layer without one): for kv_scales_json.
  std::vector<float> k_scales, v_scales;
};

// vLLM's released per-layer mechanism, e.g.
//   vllm serve MODEL --kv-cache-dtype fp8 --kv-cache-dtype-skip-layers 0 1 27
// Every layer is one `vllm:*` dtype (keys = values) or KV16; the KV16 layers
// become --kv-cache-dtype-skip-layers (ascending). kv_scales Calculated adds
// --calculate-kv-scales; Calibrated adds a comment that the checkpoint must
// carry k_scale/v_scale. `# ` comment lines precede the command: the scale
// note, and the dtype's availability when no verified release runs it.
// Refuses other engines' dtypes, kvtune's formats, mixed dtypes, K != V and a
// configuration with every layer at KV16.
// Sources: https://github.com/vllm-project/vllm/pull/33695, ENGINES.md "vLLM".
std::string vllm_command(const std::vector<PrecisionPair>& layers,
                         const DeployOptions& deploy = {});

// SGLang's launch command, one `sglang:*` dtype on every layer:
//   python -m sglang.launch_server --model-path MODEL --kv-cache-dtype fp8_e4m3
// Comments: fp8_e4m3's cast does not saturate (|x/scale| > 448 becomes NaN);
// with Calibrated, fp8 scales come from the checkpoint (or
// --quantization-param-path). Refuses kv_scales Calculated (SGLang computes no
// scales), KV16 layers, mixed dtypes and any other format.
// Source:
// https://github.com/sgl-project/sglang/blob/main/docs/advanced_features/quantized_kv_cache.md
std::string sglang_command(const std::vector<PrecisionPair>& layers,
                           const DeployOptions& deploy = {});

// TensorRT-LLM's released form, one `trtllm:*` dtype on every layer: an
// options YAML (valid as written; the command is in a comment)
//   # kv.yaml: ...
//   kv_cache_config:
//     dtype: fp8
//   # trtllm-serve MODEL --extra_llm_api_options kv.yaml
// `--extra_llm_api_options` is trtllm-serve's option (newer releases also
// spell it --config; tensorrt_llm/commands/serve.py). nvfp4 notes that it
// needs a ModelOpt checkpoint; fp8 with Calibrated notes that TensorRT-LLM
// applies 1.0, not the checkpoint's scales. Refuses kv_scales Calculated,
// KV16 layers, mixed dtypes and any other format.
// Sources: https://nvidia.github.io/TensorRT-LLM/features/quantization.html,
// https://github.com/NVIDIA/TensorRT-LLM/blob/main/tensorrt_llm/commands/serve.py
std::string trtllm_serve(const std::vector<PrecisionPair>& layers,
                         const DeployOptions& deploy = {});

// llama.cpp's flags, one -ctk and one -ctv type for every layer (every layer
// one pair of `llama.cpp:*` types; refuses anything else, naming the layer):
//   # MODEL.gguf: ... converted to GGUF (llama.cpp's convert_hf_to_gguf.py).
//   llama-server -m MODEL.gguf -ctk q8_0 -ctv q4_0 -fa on
//   llama-cli -m MODEL.gguf -ctk q8_0 -ctv q4_0 -fa on
// `-fa on` when V is quantized (llama.cpp refuses a quantized V cache without
// flash attention). Rotation Off prefixes LLAMA_ATTN_ROT_DISABLE=1; On adds a
// note that llama.cpp rotates only when head_dim % 64 == 0 (PR #21038).
// Sources: llama.cpp common/arg.cpp (-ctk, -ctv, -fa), ../shared/ENGINES.md.
std::string llama_cpp_command(const std::vector<PrecisionPair>& layers,
                              const DeployOptions& deploy = {});

// ik_llama.cpp's flags (PR #1599, merged, no release tag): per role a base
// type (-ctk / -ctv) and optional first-N and last-N overrides, e.g.
//   # ik_llama.cpp (PR #1599, ...): a build of its main branch.
//   # MODEL.gguf: ... converted to GGUF (llama.cpp's convert_hf_to_gguf.py).
//   # A quantized V cache needs flash attention (-fa on).
//   llama-server -m MODEL.gguf -ctk q4_0 -ctv q4_0 -ctk-first q8_0,2 -ctv-last q8_0,1 -fa on
//   llama-cli -m MODEL.gguf -ctk q4_0 -ctv q4_0 -ctk-first q8_0,2 -ctv-last q8_0,1 -fa on
// Each role's type sequence over layers must have at most three runs (first
// override, base, last override; two runs: the longer is the base, the second
// on a tie). Every layer's types are ik_llama.cpp target dtypes (no KV16).
// `-fa on` when any value type is quantized. Rotation On adds -khad -vhad
// (ik's Hadamard is opt-in; its match with llama.cpp's is unverified); Auto
// and Off add nothing (ik's default is off). Refusals name the layer.
// Sources: ikawrakow/ik_llama.cpp PR #1599, ../shared/ENGINES.md; flags and the
// override rule checked in its common/common.cpp and src/llama.cpp at 8337e4cd
// (2026-08-15): -fa takes auto|on|off|0|1 (default on), -khad / -vhad default off.
std::string ik_llama_cpp_command(const std::vector<PrecisionPair>& layers,
                                 const DeployOptions& deploy = {});

// `model` as one shell word (single-quoted when it needs it); throws
// kvtune::Error on an empty name or a control character.
std::string shell_word(const std::string& model);

// KVTuner's YAML: `0:\n  nbits_key: 8\n  nbits_value: 4\n...` (wraps
// kvtune::to_kvtuner_yaml). KVTuner has no unquantized layer (`nbits_key: 16`
// is clipped to int8 by its vanilla backend), so KV16 layers are refused.
// Source: https://github.com/cmd2001/KVTuner (its per-layer config presets).
std::string kvtuner_yaml(const std::vector<PrecisionPair>& layers);

// TensorRT-LLM's per-layer range syntax for KvCacheConfig.dtype, e.g.
// "0-3:fp8,4-35:nvfp4": consecutive layers with the same dtype merged, one
// layer as "5:fp8". Each layer is fp8 (kvtune's or trtllm:fp8), nvfp4
// (kvtune's or trtllm:nvfp4) or KV16, written as `unquantized_dtype` (the
// model's cache dtype, "bfloat16" or "float16"; "auto" is avoided because it
// follows the checkpoint's KV metadata).
// Source: https://github.com/NVIDIA/TensorRT-LLM/pull/13695 (and #13345).
std::string trtllm_ranges(const std::vector<PrecisionPair>& layers,
                          std::string_view unquantized_dtype = "bfloat16");

// SGLang's per-layer KV dtype YAML as proposed in sgl-project/sglang#17530:
//   kv_cache_per_layer_dtype:
//     0: fp8_e4m3
//     1: bf16
// listing every layer. kvtune fp8 -> fp8_e4m3, kvtune nvfp4 -> fp4_e2m1 (only
// approximately: SGLang's fp4_e2m1 uses power-of-two block scales; the output
// says so), `sglang:*` dtypes -> their own name, KV16 -> bf16.
// Source: https://github.com/sgl-project/sglang/pull/17530.
std::string sglang_yaml(const std::vector<PrecisionPair>& layers);

// Options of the Hugging Face checkpoint metadata.
struct HfQuantOptions {
  // Attention module of layer i: prefix + i + suffix (ModelOpt's names for
  // Llama/Qwen-style Hugging Face models: "model.layers.3.self_attn").
  std::string module_prefix = "model.layers.";
  std::string module_suffix = ".self_attn";
  // `producer`: vLLM sets quant_method from quant_algo only for producer
  // "modelopt"; the version records that kvtune wrote it.
  std::string producer_name = "modelopt";
  std::string producer_version = "kvtune";
};

// ModelOpt's `hf_quant_config.json` for a KV-only checkpoint (weights left as
// they are), schema version 1, pretty-printed JSON:
//   {"producer": {"name": "modelopt", "version": "kvtune"},
//    "quantization": {"quant_algo": null,
//                     "kv_cache_quant_algo": "MIXED_PRECISION",
//                     "kv_cache_quantized_layers": {
//                         "model.layers.0.self_attn": {"quant_algo": "FP8"}, ...},
//                     "kv_cache_schema_version": 1}}
// FP8 layers: kvtune fp8 or vllm:fp8; NVFP4: kvtune nvfp4 or vllm:nvfp4. KV16
// layers are left out of the map; kv_cache_quant_algo is "FP8" or "NVFP4"
// when every quantized layer has that format, else "MIXED_PRECISION". Keys
// and values of a layer must match (vLLM PR #56116 rejects FP8_K_NVFP4_V); at
// least one layer must be quantized. The checkpoint still needs the
// calibrated k_scale/v_scale in its weights; this file only names formats.
// Sources: https://github.com/NVIDIA/Model-Optimizer/pull/2272,
// https://github.com/vllm-project/vllm/pull/56116 (reader; RFC #57445).
std::string hf_quant_config(const std::vector<PrecisionPair>& layers,
                            const HfQuantOptions& options = {});

// The object to merge into config.json as "quantization_config" for the
// same KV-only checkpoint (released vLLM reads hf_quant_config.json only when
// config.json has none; vllm/transformers_utils/config.py get_config). As
// ModelOpt's convert_hf_quant_config_format writes it for KV-only exports
// (Model-Optimizer tests/.../test_convert_hf_config.py), pretty-printed:
//   {"quant_method": "modelopt", "producer": {...}, "ignore": [],
//    "kv_cache_quant_algo": "FP8",
//    "kv_cache_scheme": {"dynamic": false, "num_bits": 8, "type": "float"},
//    "kv_cache_quantized_layers": {...}, "kv_cache_schema_version": 1}
// no "quant_algo" (the weights are not quantized), kv_cache_scheme only when
// every quantized layer is FP8. What released vLLM reads of it:
// - vllm/utils/torch_utils.py get_kv_cache_quant_algo_string (used by
//   resolve_kv_cache_dtype_string for --kv-cache-dtype auto): needs
//   quant_method starting with "modelopt"; reads kv_cache_scheme, else
//   kv_cache_quant_algo ("fp8" -> fp8_e4m3; "nvfp4" and "mixed_precision"
//   only on newer vLLM, else "auto").
// - vllm/model_executor/layers/quantization/modelopt.py
//   ModelOptQuantConfigBase.from_config: quant_method "modelopt" makes vLLM
//   build this config, and it raises "Missing 'quant_algo' in quantization
//   config" when quant_algo is absent or null. So released vLLM does not load
//   a KV-only ModelOpt checkpoint; that needs PR #56116. With a released vLLM
//   deploy through vllm_command instead.
std::string hf_config_json_block(const std::vector<PrecisionPair>& layers,
                                 const HfQuantOptions& options = {});

// The calibrated per-layer k/v scales of a configuration, as the tensors a
// ModelOpt checkpoint carries them, for the user to merge into the
// checkpoint's safetensors (vLLM's maybe_remap_kv_scale_name maps these
// names onto its attention layers):
//   {"model.layers.0.self_attn.k_proj.k_scale": 0.0123,
//    "model.layers.0.self_attn.v_proj.v_scale": 0.0045, ...}
// One entry per layer whose dtype takes a per-layer scale (vllm:fp8,
// vllm:fp8_e5m2, vllm:nvfp4, sglang:fp8_*, trtllm:nvfp4). Only for kv_scales
// Calibrated: with One the engine applies 1.0 and with Calculated vLLM
// computes them at start-up, so there is nothing to write (refused, saying
// so), as is a configuration without such a layer or without its scales.
// Source: vllm/model_executor/model_loader/weight_utils.py
// (maybe_remap_kv_scale_name, its modelopt_scale_names).
std::string kv_scales_json(const std::vector<PrecisionPair>& layers, const DeployOptions& deploy,
                           const HfQuantOptions& options = {});

// Dispatches on a FormatInfo::id (vllm, sglang-launch, trtllm-serve,
// llama.cpp, ik_llama.cpp, kvtuner, trtllm, sglang, hf_quant_config, hf_config_json, kv_scales)
// with default options; throws kvtune::Error listing the ids for an unknown one.
std::string export_config(std::string_view format_id, const std::vector<PrecisionPair>& layers);
// The same, with the model and scale source the command lines need.
std::string export_config(std::string_view format_id, const std::vector<PrecisionPair>& layers,
                          const DeployOptions& deploy);

}  // namespace kvtune::exports
