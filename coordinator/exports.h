// Exports of a per-layer KV-cache configuration (one PrecisionPair per
// transformer layer) to the files and strings inference engines load.
//
// Status of per-layer KV formats in the engines, as researched for this file
// (re-check the cited pull requests before relying on an engine's support):
//
// - KVTuner: `{layer: {nbits_key: B, nbits_value: B}}` YAML. Integer widths
//   Integer widths only (16 is not unquantized there). Read back with
//   kvtune::parse_layer_config_text (common/include/kvtune/common/config_file.h), so import needs
//   no code here.
//
// - TensorRT-LLM: `KvCacheConfig.dtype` accepts a range string such as
//   "0-3:fp8,4-35:nvfp4" in NVIDIA/TensorRT-LLM pull request #13695 (open when
//   written; its predecessor #13345 was closed). Released TensorRT-LLM accepts
//   only one KV dtype for the model: "auto", "fp8" or "nvfp4".
//
// - SGLang: `--kv-cache-per-layer-dtype FILE.yaml` with
//   `kv_cache_per_layer_dtype: {layer: dtype}` was proposed in sgl-project/sglang
//   pull request #17530 (closed, not merged); released SGLang has one
//   `--kv-cache-dtype` per model. Its `fp4_e2m1` cache uses E2M1 values in blocks
//   of 16 with power-of-two (UE8M0) block scales, always
//   (SGLANG_EXPERIMENTAL_NVFP4 only chooses between two power-of-two exponents),
//   so it does not exactly match kvtune's nvfp4 (E4M3 block scales). SGLang's main
//   branch also has `--kv-cache-dtype nvfp4` (E4M3 block scales, a per-layer
//   global scale); its first release is unverified.
//
// - vLLM: reads per-layer KV formats from NVIDIA ModelOpt's schema-1 checkpoint
//   metadata (`hf_quant_config.json`: `quantization.kv_cache_quantized_layers`),
//   which ModelOpt writes since NVIDIA/Model-Optimizer pull request #2272
//   (merged). vLLM's reader is vllm-project/vllm pull request #56116 (open when
//   written, RFC #57445); it supports whole-layer FP8 and NVFP4 only and rejects
//   FP8 keys with NVFP4 values in one layer. Released vLLM reads only the
//   model-wide `kv_cache_quant_algo`. llm-compressor/compressed-tensors'
//   `quantization_config.kv_cache_scheme` is model-wide (no per-layer form), so
//   it is not emitted.
//
// Every export throws kvtune::Error naming the layer, the pair, the format and
// the engine constraint a configuration breaks.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "kvtune/common/precision.h"

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

// The formats below, in the order kvtuner, trtllm, sglang, hf_quant_config.
std::vector<FormatInfo> describe_formats();
// describe_formats() as a human-readable table (one block per format).
std::string describe_formats_text();

// KVTuner's YAML: `0:\n  nbits_key: 8\n  nbits_value: 4\n...` (wraps
// kvtune::to_kvtuner_yaml). Integer widths only: KVTuner has no unquantized
// layer (`nbits_key: 16` is clipped to int8 by its vanilla backend), so KV16
// layers are refused, named.
// Source: https://github.com/cmd2001/KVTuner (its per-layer config presets)
// and common/include/kvtune/common/config_file.h.
std::string kvtuner_yaml(const std::vector<PrecisionPair>& layers);

// TensorRT-LLM's per-layer range syntax for KvCacheConfig.dtype, e.g.
// "0-3:fp8,4-35:nvfp4": consecutive layers with the same dtype merged, one
// layer as "5:fp8". Each layer needs keys and values in the same format: fp8,
// nvfp4, or 16 (written as `unquantized_dtype`, the model's own cache dtype;
// TensorRT-LLM's dtype strings are "bfloat16" and "float16"; "auto" is avoided
// because it follows the checkpoint's KV metadata instead).
// Source: https://github.com/NVIDIA/TensorRT-LLM/pull/13695 (and #13345),
// https://nvidia.github.io/TensorRT-LLM/features/quantization.html.
std::string trtllm_ranges(const std::vector<PrecisionPair>& layers,
                          std::string_view unquantized_dtype = "bfloat16");

// SGLang's per-layer KV dtype YAML as proposed in sgl-project/sglang#17530:
//   kv_cache_per_layer_dtype:
//     0: fp8_e4m3
//     1: bf16
// listing every layer (so the result does not depend on --kv-cache-dtype).
// fp8 -> fp8_e4m3, nvfp4 -> fp4_e2m1 (see the caveat above; the output says so
// in a comment), 16 -> bf16. Keys and values of a layer must match.
// Source: https://github.com/sgl-project/sglang/pull/17530,
// https://github.com/sgl-project/sglang/blob/main/docs/advanced_features/quantized_kv_cache.md.
std::string sglang_yaml(const std::vector<PrecisionPair>& layers);

// Options of the Hugging Face checkpoint metadata.
struct HfQuantOptions {
  // Attention module of layer i: prefix + i + suffix (ModelOpt's names for
  // Llama/Qwen-style Hugging Face models: "model.layers.3.self_attn").
  std::string module_prefix = "model.layers.";
  std::string module_suffix = ".self_attn";
  // `producer`: vLLM's loader recognizes the file as ModelOpt's only when the
  // producer name is "modelopt"; the version records that kvtune wrote it.
  std::string producer_name = "modelopt";
  std::string producer_version = "kvtune";
};

// ModelOpt's `hf_quant_config.json` for a KV-only checkpoint (weights left as
// they are), schema version 1, pretty-printed JSON:
//   {"producer": {"name": "modelopt", "version": "kvtune"},
//    "quantization": {"kv_cache_quant_algo": "MIXED_PRECISION",
//                     "kv_cache_quantized_layers": {
//                         "model.layers.0.self_attn": {"quant_algo": "FP8"}, ...},
//                     "kv_cache_schema_version": 1}}
// Layers at 16 are left out of the map (kept unquantized); kv_cache_quant_algo
// is "FP8" or "NVFP4" when every layer has that format, else
// "MIXED_PRECISION". Keys and values of a layer must match (vLLM rejects
// ModelOpt's FP8_K_NVFP4_V); at least one layer must be quantized.
// The checkpoint still needs the calibrated k/v scales (k_scale, v_scale) in
// its weights; this file only names the formats.
// Sources: https://github.com/NVIDIA/Model-Optimizer/pull/2272 (producer,
// modelopt/torch/export/quant_utils.py and tests/.../test_convert_hf_config.py),
// https://github.com/vllm-project/vllm/pull/56116 (consumer),
// https://github.com/vllm-project/vllm/issues/57445 (RFC).
std::string hf_quant_config(const std::vector<PrecisionPair>& layers,
                            const HfQuantOptions& options = {});

// Dispatches on a FormatInfo::id ("kvtuner", "trtllm", "sglang",
// "hf_quant_config") with default options; throws kvtune::Error listing the
// ids for an unknown one.
std::string export_config(std::string_view format_id, const std::vector<PrecisionPair>& layers);

}  // namespace kvtune::exports
