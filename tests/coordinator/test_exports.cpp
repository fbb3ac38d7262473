// Exports of per-layer KV configurations: exact texts checked by hand against
// the sources cited in coordinator/exports.h.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>

#include "exports.h"
#include "kvtune/common/config_file.h"
#include "kvtune/common/engine_dtype.h"
#include "kvtune/common/error.h"

namespace kvtune::exports {
namespace {

std::vector<PrecisionPair> cfg(const std::string& text) {
  return parse_layer_config(text, static_cast<int>(std::count(text.begin(), text.end(), ',')) + 1);
}

// Keys and values of one engine dtype ("vllm:fp8") or kvtune format ("16").
KvFormat fmt(std::string_view name) {
  const EngineDtype* d = find_engine_dtype(name);
  return d != nullptr ? KvFormat::of(*d) : KvFormat::parse(name);
}
PrecisionPair kv(std::string_view key, std::string_view value) {
  return {fmt(key), fmt(value)};
}
PrecisionPair kv(std::string_view both) {
  return kv(both, both);
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Exports, KvtunerYamlIsKvtunersLayerMap) {
  EXPECT_EQ(kvtuner_yaml(cfg("K8V4,KV2,KV4")),
            "0:\n  nbits_key: 8\n  nbits_value: 4\n"
            "1:\n  nbits_key: 2\n  nbits_value: 2\n"
            "2:\n  nbits_key: 4\n  nbits_value: 4\n");
}

TEST(Exports, KvtunerYamlRefusesWidthsKvtunerCannotRunNamingTheLayer) {
  // KV16 is not "unquantized" in KVTuner: its vanilla backend clips to int8.
  std::string msg = error_of([] { kvtuner_yaml(cfg("K8V4,KV2,K4V16")); });
  EXPECT_NE(msg.find("layer 2 (K4V16) has 16-bit values"), std::string::npos) << msg;
  EXPECT_NE(msg.find("KVTuner has no unquantized layer"), std::string::npos) << msg;
  msg = error_of([] { kvtuner_yaml(cfg("KV16,KV2")); });
  EXPECT_NE(msg.find("layer 0 (KV16) has 16-bit keys"), std::string::npos) << msg;
  // Its vanilla and HQQ backends run 3 bits.
  EXPECT_EQ(kvtuner_yaml(cfg("KV3,KV2")),
            "0:\n  nbits_key: 3\n  nbits_value: 3\n1:\n  nbits_key: 2\n  nbits_value: 2\n");
}

TEST(Exports, KvtunerYamlRoundTripsThroughTheImporter) {
  const auto layers = cfg("K8V4,KV2,K4V8,KV8,K2V4");
  EXPECT_EQ(parse_layer_config_text(kvtuner_yaml(layers), 5, "export"), layers);
}

TEST(Exports, KvtunerYamlRefusesHardwareFormatsNamingTheLayer) {
  const std::string msg = error_of([] { kvtuner_yaml(cfg("KV8,KVfp8")); });
  EXPECT_NE(msg.find("KVTuner YAML"), std::string::npos) << msg;
  EXPECT_NE(msg.find("layer 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("fp8"), std::string::npos) << msg;
}

TEST(Exports, TrtllmMergesConsecutiveLayers) {
  // The example of TensorRT-LLM PR #13695: 4 fp8 layers then 32 nvfp4 layers.
  std::string spec = "KVfp8,KVfp8,KVfp8,KVfp8";
  for (int i = 0; i < 32; ++i) spec += ",KVnvfp4";
  EXPECT_EQ(trtllm_ranges(cfg(spec)), "0-3:fp8,4-35:nvfp4");
}

TEST(Exports, TrtllmWritesSingleLayersAndTheModelDtype) {
  EXPECT_EQ(trtllm_ranges(cfg("KV16,KVfp8,KVnvfp4,KVnvfp4,KVfp8")),
            "0:bfloat16,1:fp8,2-3:nvfp4,4:fp8");
  EXPECT_EQ(trtllm_ranges(cfg("KV16,KV16,KVfp8"), "float16"), "0-1:float16,2:fp8");
  EXPECT_EQ(trtllm_ranges(cfg("KVnvfp4")), "0:nvfp4");
  EXPECT_EQ(trtllm_ranges(cfg("KVfp8,KVfp8,KVfp8")), "0-2:fp8");
  EXPECT_THROW(trtllm_ranges(cfg("KVfp8"), "auto"), Error);
}

TEST(Exports, TrtllmRefusesIntegerFormatsNamingLayerAndConstraint) {
  const std::string msg = error_of([] { trtllm_ranges(cfg("KVfp8,KVfp8,K4V2")); });
  EXPECT_NE(msg.find("layer 2 (K4V2)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("TensorRT-LLM"), std::string::npos) << msg;
  EXPECT_NE(msg.find("same format"), std::string::npos) << msg;
  const std::string msg8 = error_of([] { trtllm_ranges(cfg("KV8")); });
  EXPECT_NE(msg8.find("layer 0 (KV8)"), std::string::npos) << msg8;
  EXPECT_NE(msg8.find("integer"), std::string::npos) << msg8;
}

TEST(Exports, TrtllmRefusesMixedKeyValueFormats) {
  const std::string msg = error_of([] { trtllm_ranges(cfg("KVfp8,Kfp8Vnvfp4")); });
  EXPECT_NE(msg.find("layer 1 (Kfp8Vnvfp4)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("keys and values must use the same format"), std::string::npos) << msg;
  EXPECT_NE(msg.find("key fp8, value nvfp4"), std::string::npos) << msg;
}

TEST(Exports, SglangYamlListsEveryLayer) {
  EXPECT_EQ(sglang_yaml(cfg("KV16,KVfp8,KVfp8")),
            "# SGLang per-layer KV cache dtypes (--kv-cache-per-layer-dtype FILE), as proposed in\n"
            "# https://github.com/sgl-project/sglang/pull/17530 (not in released SGLang).\n"
            "kv_cache_per_layer_dtype:\n"
            "  0: bf16\n"
            "  1: fp8_e4m3\n"
            "  2: fp8_e4m3\n");
}

TEST(Exports, SglangYamlNotesTheFp4Caveat) {
  const std::string out = sglang_yaml(cfg("KVfp8,KVnvfp4"));
  EXPECT_NE(out.find("always\n# uses power-of-two (UE8M0) block scales"), std::string::npos) << out;
  EXPECT_NE(out.find("--kv-cache-dtype nvfp4"), std::string::npos) << out;
  EXPECT_NE(out.find("kv_cache_per_layer_dtype:\n  0: fp8_e4m3\n  1: fp4_e2m1\n"),
            std::string::npos)
      << out;
}

TEST(Exports, SglangRefusesWhatItCannotStore) {
  const std::string msg = error_of([] { sglang_yaml(cfg("KVfp8,K16Vfp8")); });
  EXPECT_NE(msg.find("SGLang"), std::string::npos) << msg;
  EXPECT_NE(msg.find("layer 1 (K16Vfp8)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("same format"), std::string::npos) << msg;
  EXPECT_THROW(sglang_yaml(cfg("KV4")), Error);
}

TEST(Exports, HfQuantConfigMixedIsModeloptSchemaOne) {
  const std::string text = hf_quant_config(cfg("KVfp8,KVnvfp4,KV16,KVnvfp4"));
  EXPECT_EQ(text,
            "{\n"
            "  \"producer\": {\n"
            "    \"name\": \"modelopt\",\n"
            "    \"version\": \"kvtune\"\n"
            "  },\n"
            "  \"quantization\": {\n"
            "    \"quant_algo\": null,\n"
            "    \"kv_cache_quant_algo\": \"MIXED_PRECISION\",\n"
            "    \"kv_cache_quantized_layers\": {\n"
            "      \"model.layers.0.self_attn\": {\n"
            "        \"quant_algo\": \"FP8\"\n"
            "      },\n"
            "      \"model.layers.1.self_attn\": {\n"
            "        \"quant_algo\": \"NVFP4\"\n"
            "      },\n"
            "      \"model.layers.3.self_attn\": {\n"
            "        \"quant_algo\": \"NVFP4\"\n"
            "      }\n"
            "    },\n"
            "    \"kv_cache_schema_version\": 1\n"
            "  }\n"
            "}\n");
}

TEST(Exports, HfQuantConfigParsesWithTheDocumentedFields) {
  const auto doc = nlohmann::json::parse(hf_quant_config(cfg("KVnvfp4,KVnvfp4")));
  EXPECT_EQ(doc.at("producer").at("name"), "modelopt");
  const auto& q = doc.at("quantization");
  // A KV-only export says the weights are not quantized: quant_algo null
  // (ModelOpt PR #2272).
  ASSERT_TRUE(q.contains("quant_algo"));
  EXPECT_TRUE(q.at("quant_algo").is_null());
  EXPECT_EQ(q.at("kv_cache_quant_algo"), "NVFP4");
  EXPECT_EQ(q.at("kv_cache_schema_version"), 1);
  EXPECT_EQ(q.at("kv_cache_quantized_layers"),
            nlohmann::json::parse(R"({"model.layers.0.self_attn": {"quant_algo": "NVFP4"},
                                      "model.layers.1.self_attn": {"quant_algo": "NVFP4"}})"));
}

TEST(Exports, HfQuantConfigUnquantizedLayersDoNotMakeItMixed) {
  // Every quantized layer FP8 and layer 1 16-bit: ModelOpt writes "FP8" and
  // leaves layer 1 out of the map (MIXED_PRECISION was kvtune's mistake).
  const auto doc = nlohmann::json::parse(hf_quant_config(cfg("KVfp8,KV16,KVfp8")));
  EXPECT_EQ(doc["quantization"]["kv_cache_quant_algo"], "FP8");
  EXPECT_EQ(doc["quantization"]["kv_cache_quantized_layers"].size(), 2u);
  EXPECT_FALSE(
      doc["quantization"]["kv_cache_quantized_layers"].contains("model.layers.1.self_attn"));
  // Two quantized formats are what makes it mixed.
  EXPECT_EQ(nlohmann::json::parse(
                hf_quant_config(cfg("KVfp8,KV16,KVnvfp4")))["quantization"]["kv_cache_quant_algo"],
            "MIXED_PRECISION");
}

TEST(Exports, HfQuantConfigUsesTheModuleNamesAsked) {
  HfQuantOptions options;
  options.module_prefix = "language_model.model.layers.";
  options.module_suffix = ".attn";
  const auto doc = nlohmann::json::parse(hf_quant_config(cfg("KVfp8"), options));
  EXPECT_TRUE(doc["quantization"]["kv_cache_quantized_layers"].contains(
      "language_model.model.layers.0.attn"));
}

TEST(Exports, HfQuantConfigRefusals) {
  const std::string mixed = error_of([] { hf_quant_config(cfg("KVfp8,KVfp8,Kfp8Vnvfp4")); });
  EXPECT_NE(mixed.find("layer 2 (Kfp8Vnvfp4)"), std::string::npos) << mixed;
  EXPECT_NE(mixed.find("vLLM"), std::string::npos) << mixed;
  EXPECT_NE(mixed.find("keys and values must use the same format"), std::string::npos) << mixed;
  const std::string integer = error_of([] { hf_quant_config(cfg("K8V4")); });
  EXPECT_NE(integer.find("layer 0 (K8V4)"), std::string::npos) << integer;
  const std::string none = error_of([] { hf_quant_config(cfg("KV16,KV16")); });
  EXPECT_NE(none.find("every layer is unquantized"), std::string::npos) << none;
}

TEST(Exports, EmptyConfigurationsAreRefused) {
  EXPECT_THROW(trtllm_ranges({}), Error);
  EXPECT_THROW(sglang_yaml({}), Error);
  EXPECT_THROW(hf_quant_config({}), Error);
  EXPECT_THROW(kvtuner_yaml({}), Error);
  EXPECT_THROW(hf_config_json_block({}), Error);
  EXPECT_THROW(vllm_command({}), Error);
  EXPECT_THROW(sglang_command({}), Error);
  EXPECT_THROW(trtllm_serve({}), Error);
}

// ---- Released engines: vLLM ----

TEST(Exports, VllmCommandSkipsTheKv16Layers) {
  const std::vector<PrecisionPair> layers = {kv("16"), kv("16"), kv("vllm:fp8"), kv("vllm:fp8"),
                                             kv("16")};
  EXPECT_EQ(vllm_command(layers),
            "vllm serve MODEL --kv-cache-dtype fp8 --kv-cache-dtype-skip-layers 0 1 4\n");
  // No KV16 layer: no skip flag.
  EXPECT_EQ(vllm_command({kv("vllm:fp8_e5m2"), kv("vllm:fp8_e5m2")}),
            "vllm serve MODEL --kv-cache-dtype fp8_e5m2\n");
}

TEST(Exports, VllmCommandCarriesTheModelAndTheScaleSource) {
  DeployOptions deploy;
  deploy.model = "meta-llama/Llama-3.1-8B-Instruct";
  deploy.kv_scales = KvScales::Calculated;
  EXPECT_EQ(vllm_command({kv("vllm:fp8"), kv("16"), kv("vllm:fp8")}, deploy),
            "vllm serve meta-llama/Llama-3.1-8B-Instruct --kv-cache-dtype fp8 "
            "--kv-cache-dtype-skip-layers 1 --calculate-kv-scales\n");
  deploy.kv_scales = KvScales::Calibrated;
  EXPECT_EQ(vllm_command({kv("vllm:fp8"), kv("vllm:fp8")}, deploy),
            "# The checkpoint must carry calibrated per-layer k_scale/v_scale that vLLM loads (as "
            "NVIDIA ModelOpt or llm-compressor export them; --format kv_scales writes kvtune's).\n"
            "vllm serve meta-llama/Llama-3.1-8B-Instruct --kv-cache-dtype fp8\n");
  // A path that is not one plain shell word is quoted.
  deploy.model = "/models/it's mine";
  deploy.kv_scales = KvScales::One;
  EXPECT_EQ(vllm_command({kv("vllm:fp8")}, deploy),
            "vllm serve '/models/it'\\''s mine' --kv-cache-dtype fp8\n");
  deploy.model = "bad\nname";
  EXPECT_THROW(vllm_command({kv("vllm:fp8")}, deploy), Error);
}

TEST(Exports, VllmCommandNotesAnUnreleasedDtype) {
  DeployOptions deploy;
  deploy.kv_scales = KvScales::Calculated;
  EXPECT_EQ(vllm_command({kv("vllm:nvfp4"), kv("16")}, deploy),
            "# vllm:nvfp4 needs vLLM main since 2026-08 (commit 002f10e0); its first release is "
            "unverified\n"
            "vllm serve MODEL --kv-cache-dtype nvfp4 --kv-cache-dtype-skip-layers 1 "
            "--calculate-kv-scales\n");
  // Per-token-head dtypes have no per-layer scale: no --calculate-kv-scales.
  EXPECT_EQ(vllm_command({kv("vllm:fp8_per_token_head")}, deploy),
            "# vllm:fp8_per_token_head needs vLLM main since 2026-08 (commit 002f10e0); its first "
            "release is unverified\n"
            "# vllm:fp8_per_token_head computes its own scales per token and head; per-layer k/v "
            "scales (calculated) do not apply.\n"
            "vllm serve MODEL --kv-cache-dtype fp8_per_token_head\n");
}

TEST(Exports, VllmCommandRefusalsNameTheLayerAndTheRule) {
  std::string msg = error_of([] { vllm_command({kv("vllm:fp8"), kv("sglang:fp8_e4m3")}); });
  EXPECT_NE(msg.find("vLLM command: layer 1 (KVsglang:fp8_e4m3): sglang:fp8_e4m3 is SGLang's "
                     "cache dtype, not vLLM's"),
            std::string::npos)
      << msg;
  msg = error_of([] { vllm_command({kv("vllm:fp8"), kv("16"), kv("8")}); });
  EXPECT_NE(msg.find("layer 2 (KV8): kvtune's 8-bit integer format is not a vLLM cache dtype"),
            std::string::npos)
      << msg;
  msg = error_of([] { vllm_command({kv("fp8")}); });
  EXPECT_NE(msg.find("layer 0 (KVfp8): kvtune's fp8 (per-head scales) is not a vLLM cache dtype"),
            std::string::npos)
      << msg;
  msg = error_of([] { vllm_command({kv("vllm:fp8"), kv("16"), kv("vllm:fp8_e5m2")}); });
  EXPECT_NE(msg.find("layer 2 (KVvllm:fp8_e5m2): vLLM takes one --kv-cache-dtype for the model, "
                     "and layer 0 has KVvllm:fp8"),
            std::string::npos)
      << msg;
  msg = error_of([] { vllm_command({kv("vllm:fp8"), kv("16", "vllm:fp8")}); });
  EXPECT_NE(msg.find("layer 1 (K16Vvllm:fp8): vLLM stores keys and values in one cache dtype "
                     "(got key 16, value vllm:fp8)"),
            std::string::npos)
      << msg;
  msg = error_of([] { vllm_command({kv("16"), kv("16")}); });
  EXPECT_NE(msg.find("every layer is unquantized (KV16)"), std::string::npos) << msg;
  EXPECT_THROW(vllm_command({}), Error);
}

// ---- SGLang ----

TEST(Exports, SglangCommand) {
  EXPECT_EQ(sglang_command({kv("sglang:fp8_e4m3"), kv("sglang:fp8_e4m3")}),
            "# SGLang's fp8_e4m3 cast does not saturate: |x / scale| > 448 becomes NaN.\n"
            "python -m sglang.launch_server --model-path MODEL --kv-cache-dtype fp8_e4m3\n");
  DeployOptions deploy;
  deploy.model = "Qwen/Qwen3-8B";
  deploy.kv_scales = KvScales::Calibrated;
  EXPECT_EQ(sglang_command({kv("sglang:fp8_e5m2")}, deploy),
            "# k_scale/v_scale come from the checkpoint (or --quantization-param-path FILE).\n"
            "python -m sglang.launch_server --model-path Qwen/Qwen3-8B --kv-cache-dtype "
            "fp8_e5m2\n");
  EXPECT_EQ(sglang_command({kv("sglang:fp4_e2m1")}, deploy),
            "# sglang:fp4_e2m1 uses power-of-two block scales; the checkpoint's k/v scales do "
            "not apply.\n"
            "python -m sglang.launch_server --model-path Qwen/Qwen3-8B --kv-cache-dtype "
            "fp4_e2m1\n");
}

TEST(Exports, SglangCommandRefusals) {
  std::string msg = error_of([] { sglang_command({kv("sglang:fp8_e4m3"), kv("16")}); });
  EXPECT_NE(msg.find("SGLang launch command: layer 1 (KV16): SGLang keeps every layer in the one "
                     "--kv-cache-dtype; it cannot leave a layer unquantized"),
            std::string::npos)
      << msg;
  msg = error_of([] { sglang_command({kv("sglang:fp8_e4m3"), kv("sglang:fp4_e2m1")}); });
  EXPECT_NE(msg.find("layer 1 (KVsglang:fp4_e2m1): SGLang takes one --kv-cache-dtype"),
            std::string::npos)
      << msg;
  msg = error_of([] { sglang_command({kv("trtllm:fp8")}); });
  EXPECT_NE(msg.find("layer 0 (KVtrtllm:fp8): trtllm:fp8 is TensorRT-LLM's cache dtype"),
            std::string::npos)
      << msg;
  msg = error_of([] {
    DeployOptions deploy;
    deploy.kv_scales = KvScales::Calculated;
    sglang_command({kv("sglang:fp8_e4m3")}, deploy);
  });
  EXPECT_NE(msg.find("SGLang computes no KV scales"), std::string::npos) << msg;
}

// ---- TensorRT-LLM ----

TEST(Exports, TrtllmServeOptions) {
  EXPECT_EQ(trtllm_serve({kv("trtllm:fp8"), kv("trtllm:fp8")}),
            "# kv.yaml: LLM API options for trtllm-serve --extra_llm_api_options (newer releases\n"
            "# also spell it --config; tensorrt_llm/commands/serve.py).\n"
            "kv_cache_config:\n"
            "  dtype: fp8\n"
            "# Serve with: trtllm-serve MODEL --extra_llm_api_options kv.yaml\n");
  DeployOptions deploy;
  deploy.model = "/ckpt/llama-nvfp4";
  deploy.kv_scales = KvScales::Calibrated;
  EXPECT_EQ(trtllm_serve({kv("trtllm:nvfp4")}, deploy),
            "# kv.yaml: LLM API options for trtllm-serve --extra_llm_api_options (newer releases\n"
            "# also spell it --config; tensorrt_llm/commands/serve.py).\n"
            "# nvfp4 needs a ModelOpt checkpoint: its per-layer global scales come from the "
            "checkpoint's k_scale/v_scale.\n"
            "kv_cache_config:\n"
            "  dtype: nvfp4\n"
            "# Serve with: trtllm-serve /ckpt/llama-nvfp4 --extra_llm_api_options kv.yaml\n");
  const std::string fp8 = trtllm_serve({kv("trtllm:fp8")}, deploy);
  EXPECT_NE(fp8.find("# TensorRT-LLM's fp8 cache uses a scale of 1.0; the checkpoint's "
                     "k_scale/v_scale are not applied.\n"),
            std::string::npos)
      << fp8;
}

TEST(Exports, TrtllmServeRefusals) {
  std::string msg = error_of([] { trtllm_serve({kv("16"), kv("trtllm:fp8")}); });
  EXPECT_NE(msg.find("TensorRT-LLM serve options: layer 0 (KV16): TensorRT-LLM keeps every layer "
                     "in the one kv_cache_config.dtype"),
            std::string::npos)
      << msg;
  msg = error_of([] { trtllm_serve({kv("trtllm:fp8"), kv("vllm:fp8")}); });
  EXPECT_NE(msg.find("layer 1 (KVvllm:fp8): vllm:fp8 is vLLM's cache dtype"), std::string::npos)
      << msg;
  msg = error_of([] {
    DeployOptions deploy;
    deploy.kv_scales = KvScales::Calculated;
    trtllm_serve({kv("trtllm:fp8")}, deploy);
  });
  EXPECT_NE(msg.find("TensorRT-LLM computes no KV scales"), std::string::npos) << msg;
}

// ---- Per-layer exports with engine dtypes ----

TEST(Exports, TrtllmRangesTakeTrtllmDtypes) {
  EXPECT_EQ(trtllm_ranges({kv("16"), kv("trtllm:fp8"), kv("fp8"), kv("trtllm:nvfp4")}),
            "0:bfloat16,1-2:fp8,3:nvfp4");
  const std::string msg = error_of([] { trtllm_ranges({kv("trtllm:fp8"), kv("vllm:fp8")}); });
  EXPECT_NE(msg.find("layer 1 (KVvllm:fp8)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not vllm:fp8"), std::string::npos) << msg;
  EXPECT_THROW(trtllm_ranges({kv("trtllm:fp8", "trtllm:nvfp4")}), Error);
}

TEST(Exports, HfQuantConfigTakesVllmDtypes) {
  auto doc = nlohmann::json::parse(hf_quant_config({kv("vllm:fp8"), kv("fp8"), kv("16")}));
  // vllm:fp8 and kvtune's fp8 are both FP8: not mixed.
  EXPECT_EQ(doc["quantization"]["kv_cache_quant_algo"], "FP8");
  EXPECT_EQ(doc["quantization"]["kv_cache_quantized_layers"],
            nlohmann::json::parse(R"({"model.layers.0.self_attn": {"quant_algo": "FP8"},
                                      "model.layers.1.self_attn": {"quant_algo": "FP8"}})"));
  doc = nlohmann::json::parse(hf_quant_config({kv("vllm:nvfp4"), kv("vllm:fp8")}));
  EXPECT_EQ(doc["quantization"]["kv_cache_quant_algo"], "MIXED_PRECISION");
  EXPECT_EQ(
      doc["quantization"]["kv_cache_quantized_layers"]["model.layers.0.self_attn"]["quant_algo"],
      "NVFP4");
  std::string msg = error_of([] { hf_quant_config({kv("vllm:fp8"), kv("vllm:fp8_e5m2")}); });
  EXPECT_NE(msg.find("layer 1 (KVvllm:fp8_e5m2)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not vllm:fp8_e5m2"), std::string::npos) << msg;
  msg = error_of([] { hf_quant_config({kv("trtllm:fp8")}); });
  EXPECT_NE(msg.find("layer 0 (KVtrtllm:fp8)"), std::string::npos) << msg;
}

TEST(Exports, SglangYamlTakesSglangDtypes) {
  const std::string out = sglang_yaml({kv("sglang:fp8_e5m2"), kv("16"), kv("sglang:fp4_e2m1")});
  EXPECT_NE(out.find("kv_cache_per_layer_dtype:\n  0: fp8_e5m2\n  1: bf16\n  2: fp4_e2m1\n"),
            std::string::npos)
      << out;
  // SGLang's own fp4_e2m1 is exact: no caveat about kvtune's nvfp4.
  EXPECT_EQ(out.find("approximately"), std::string::npos) << out;
  const std::string msg = error_of([] { sglang_yaml({kv("vllm:fp8")}); });
  EXPECT_NE(msg.find("layer 0 (KVvllm:fp8)"), std::string::npos) << msg;
}

// ---- config.json block ----

TEST(Exports, HfConfigJsonBlockIsModeloptsKvOnlyQuantizationConfig) {
  EXPECT_EQ(hf_config_json_block({kv("vllm:fp8"), kv("16")}),
            "{\n"
            "  \"quant_method\": \"modelopt\",\n"
            "  \"producer\": {\n"
            "    \"name\": \"modelopt\",\n"
            "    \"version\": \"kvtune\"\n"
            "  },\n"
            "  \"ignore\": [],\n"
            "  \"kv_cache_quant_algo\": \"FP8\",\n"
            "  \"kv_cache_scheme\": {\n"
            "    \"dynamic\": false,\n"
            "    \"num_bits\": 8,\n"
            "    \"type\": \"float\"\n"
            "  },\n"
            "  \"kv_cache_quantized_layers\": {\n"
            "    \"model.layers.0.self_attn\": {\n"
            "      \"quant_algo\": \"FP8\"\n"
            "    }\n"
            "  },\n"
            "  \"kv_cache_schema_version\": 1\n"
            "}\n");
}

TEST(Exports, HfConfigJsonBlockFieldsVllmReads) {
  auto q = nlohmann::json::parse(hf_config_json_block({kv("fp8"), kv("fp8"), kv("16")}));
  // get_kv_cache_quant_algo_string: quant_method must start with "modelopt".
  EXPECT_EQ(q.at("quant_method"), "modelopt");
  // KV-only: no weight quant_algo (ModelOpt leaves it out).
  EXPECT_FALSE(q.contains("quant_algo"));
  EXPECT_EQ(q.at("kv_cache_scheme"),
            nlohmann::json::parse(R"({"dynamic": false, "num_bits": 8, "type": "float"})"));
  EXPECT_EQ(q.at("kv_cache_quant_algo"), "FP8");
  EXPECT_EQ(q.at("kv_cache_schema_version"), 1);
  EXPECT_EQ(q.at("ignore"), nlohmann::json::array());
  EXPECT_EQ(q.at("producer").at("name"), "modelopt");
  EXPECT_EQ(q.at("kv_cache_quantized_layers").size(), 2u);

  q = nlohmann::json::parse(hf_config_json_block({kv("vllm:nvfp4"), kv("nvfp4")}));
  EXPECT_EQ(q.at("kv_cache_quant_algo"), "NVFP4");
  EXPECT_FALSE(q.contains("kv_cache_scheme"));  // ModelOpt's FP8 scheme only
  q = nlohmann::json::parse(hf_config_json_block({kv("vllm:nvfp4"), kv("16"), kv("vllm:fp8")}));
  EXPECT_EQ(q.at("kv_cache_quant_algo"), "MIXED_PRECISION");
  EXPECT_FALSE(q.contains("kv_cache_scheme"));
  EXPECT_EQ(q.at("kv_cache_quantized_layers"),
            nlohmann::json::parse(R"({"model.layers.0.self_attn": {"quant_algo": "NVFP4"},
                                      "model.layers.2.self_attn": {"quant_algo": "FP8"}})"));

  // The same module names as hf_quant_config, and the same refusals.
  HfQuantOptions options;
  options.module_prefix = "language_model.model.layers.";
  q = nlohmann::json::parse(hf_config_json_block({kv("fp8")}, options));
  EXPECT_TRUE(q["kv_cache_quantized_layers"].contains("language_model.model.layers.0.self_attn"));
  EXPECT_THROW(hf_config_json_block({kv("16")}), Error);
  const std::string msg = error_of([] { hf_config_json_block({kv("fp8"), kv("fp8", "nvfp4")}); });
  EXPECT_NE(msg.find("layer 1 (Kfp8Vnvfp4)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("keys and values must use the same format"), std::string::npos) << msg;
}

// ---- Dispatch ----

TEST(Exports, KvScalesAreTheCheckpointTensorsVllmLoads) {
  DeployOptions deploy;
  deploy.kv_scales = KvScales::Calibrated;
  deploy.k_scales = {0.5f, 0.0f, 0.25f};
  deploy.v_scales = {0.125f, 0.0f, 2.0f};
  const auto layers = cfg("KVvllm:fp8,KV16,KVvllm:fp8");
  EXPECT_EQ(kv_scales_json(layers, deploy),
            "{\n"
            "  \"model.layers.0.self_attn.k_proj.k_scale\": 0.5,\n"
            "  \"model.layers.0.self_attn.v_proj.v_scale\": 0.125,\n"
            "  \"model.layers.2.self_attn.k_proj.k_scale\": 0.25,\n"
            "  \"model.layers.2.self_attn.v_proj.v_scale\": 2.0\n"
            "}\n");
  EXPECT_EQ(export_config("kv_scales", layers, deploy), kv_scales_json(layers, deploy));

  // Nothing to write: the engine applies 1.0, or vLLM computes them.
  DeployOptions one = deploy;
  one.kv_scales = KvScales::One;
  EXPECT_NE(error_of([&] { kv_scales_json(layers, one); }).find("applies 1.0"), std::string::npos);
  DeployOptions calculated = deploy;
  calculated.kv_scales = KvScales::Calculated;
  EXPECT_NE(error_of([&] { kv_scales_json(layers, calculated); }).find("--calculate-kv-scales"),
            std::string::npos);
  // Per-token-head dtypes have no per-layer scale; a layer without its scales is named.
  EXPECT_NE(error_of([&] {
              kv_scales_json(cfg("KVvllm:int8_per_token_head"), deploy);
            }).find("no layer has a dtype with a per-layer k/v scale"),
            std::string::npos);
  DeployOptions missing = deploy;
  missing.k_scales.resize(1);
  EXPECT_NE(error_of([&] { kv_scales_json(layers, missing); }).find("layer 2 (KVvllm:fp8)"),
            std::string::npos);
}

// ---- Released engines: llama.cpp ----

TEST(Exports, LlamaCppFlagsAreOneKeyTypeAndOneValueType) {
  const PrecisionPair k8v4 = kv("llama.cpp:q8_0", "llama.cpp:q4_0");
  EXPECT_EQ(llama_cpp_command({k8v4, k8v4}),
            "# MODEL.gguf: MODEL converted to GGUF (llama.cpp's convert_hf_to_gguf.py).\n"
            "# A quantized V cache needs flash attention (-fa on).\n"
            "llama-server -m MODEL.gguf -ctk q8_0 -ctv q4_0 -fa on\n"
            "llama-cli -m MODEL.gguf -ctk q8_0 -ctv q4_0 -fa on\n");
  DeployOptions deploy;
  deploy.model = "models/my model.gguf";
  deploy.rotation = Rotation::Off;
  // A V cache in f16 needs no flash attention; rotation off is llama.cpp's variable.
  EXPECT_EQ(llama_cpp_command({kv("llama.cpp:iq4_nl", "llama.cpp:f16")}, deploy),
            "# Evaluated without llama.cpp's Hadamard rotation (PR #21038), which this turns "
            "off.\n"
            "LLAMA_ATTN_ROT_DISABLE=1 llama-server -m 'models/my model.gguf' -ctk iq4_nl -ctv f16\n"
            "LLAMA_ATTN_ROT_DISABLE=1 llama-cli -m 'models/my model.gguf' -ctk iq4_nl -ctv f16\n");
  deploy.rotation = Rotation::On;
  EXPECT_NE(llama_cpp_command({k8v4}, deploy).find("rotates only when head_dim % 64 == 0"),
            std::string::npos);
}

TEST(Exports, LlamaCppRefusalsNameTheLayerAndTheRule) {
  const PrecisionPair k8v4 = kv("llama.cpp:q8_0", "llama.cpp:q4_0");
  const std::string mixed = error_of([&] { llama_cpp_command({k8v4, kv("llama.cpp:q8_0")}); });
  EXPECT_NE(mixed.find("layer 1 (KVllama.cpp:q8_0)"), std::string::npos) << mixed;
  const std::string kv16 = error_of([&] { llama_cpp_command({k8v4, kv("16")}); });
  EXPECT_NE(kv16.find("cannot leave a layer unquantized"), std::string::npos) << kv16;
  const std::string other = error_of([&] { llama_cpp_command({kv("vllm:fp8")}); });
  EXPECT_NE(other.find("not a llama.cpp cache dtype"), std::string::npos) << other;
  EXPECT_THROW(llama_cpp_command({}), Error);
}

// ---- ik_llama.cpp: a base type with first-N and last-N overrides per role ----

TEST(Exports, IkLlamaCppFlagsAreABaseTypeWithFirstAndLastOverrides) {
  const PrecisionPair q8 = kv("llama.cpp:q8_0"), q4 = kv("llama.cpp:q4_0");
  const PrecisionPair k8v4 = kv("llama.cpp:q8_0", "llama.cpp:q4_0");
  const PrecisionPair k4v8 = kv("llama.cpp:q4_0", "llama.cpp:q8_0");
  // The issue's example: keys q8 q8 q4 q4 q4, values q4 q4 q4 q4 q8.
  EXPECT_EQ(ik_llama_cpp_command({k8v4, k8v4, q4, q4, k4v8}),
            "# ik_llama.cpp (PR #1599, mixed KV cache: merged 2026-04, no release tag yet): a "
            "build of its main branch.\n"
            "# MODEL.gguf: MODEL converted to GGUF (llama.cpp's convert_hf_to_gguf.py).\n"
            "# A quantized V cache needs flash attention (-fa on).\n"
            "llama-server -m MODEL.gguf -ctk q4_0 -ctv q4_0 -ctk-first q8_0,2 -ctv-last q8_0,1 "
            "-fa on\n"
            "llama-cli -m MODEL.gguf -ctk q4_0 -ctv q4_0 -ctk-first q8_0,2 -ctv-last q8_0,1 "
            "-fa on\n");
  DeployOptions deploy;
  deploy.model = "models/m.gguf";
  // One type per role: the base flags alone; f16 values need no flash attention.
  const PrecisionPair k4f16 = kv("llama.cpp:q4_0", "llama.cpp:f16");
  EXPECT_EQ(ik_llama_cpp_command({k4f16, k4f16}, deploy),
            "# ik_llama.cpp (PR #1599, mixed KV cache: merged 2026-04, no release tag yet): a "
            "build of its main branch.\n"
            "llama-server -m models/m.gguf -ctk q4_0 -ctv f16\n"
            "llama-cli -m models/m.gguf -ctk q4_0 -ctv f16\n");
  // Three runs per role (the first and last types may be equal); two runs:
  // the longer is the base, the second on a tie.
  const PrecisionPair f16 = kv("llama.cpp:f16");
  const std::string three = ik_llama_cpp_command({f16, q4, q4, q4, f16, f16}, deploy);
  EXPECT_NE(three.find("llama-server -m models/m.gguf -ctk q4_0 -ctv q4_0 -ctk-first f16,1 "
                       "-ctk-last f16,2 -ctv-first f16,1 -ctv-last f16,2 -fa on\n"),
            std::string::npos)
      << three;
  const std::string tie = ik_llama_cpp_command({q8, q8, q4, q4}, deploy);
  EXPECT_NE(tie.find("-ctk q4_0 -ctv q4_0 -ctk-first q8_0,2 -ctv-first q8_0,2 -fa on\n"),
            std::string::npos)
      << tie;
  const std::string longer_first = ik_llama_cpp_command({q8, q8, q8, q4}, deploy);
  EXPECT_NE(longer_first.find("-ctk q8_0 -ctv q8_0 -ctk-last q4_0,1 -ctv-last q4_0,1 -fa on\n"),
            std::string::npos)
      << longer_first;
  // Rotation: ik's Hadamard is opt-in; On asks for it, Auto and Off add nothing.
  const std::string automatic = ik_llama_cpp_command({k4f16}, deploy);
  deploy.rotation = Rotation::Off;
  EXPECT_EQ(ik_llama_cpp_command({k4f16}, deploy), automatic);
  deploy.rotation = Rotation::On;
  const std::string on = ik_llama_cpp_command({k4f16}, deploy);
  EXPECT_NE(on.find("llama-server -m models/m.gguf -ctk q4_0 -ctv f16 -khad -vhad\n"),
            std::string::npos)
      << on;
  EXPECT_NE(on.find("(unverified)"), std::string::npos) << on;
  EXPECT_EQ(export_config("ik_llama.cpp", {k8v4, k8v4, q4, q4, k4v8}),
            ik_llama_cpp_command({k8v4, k8v4, q4, q4, k4v8}));
}

TEST(Exports, IkLlamaCppRefusalsNameTheLayerAndTheRule) {
  const PrecisionPair q8 = kv("llama.cpp:q8_0"), q4 = kv("llama.cpp:q4_0");
  const std::string four = error_of([&] { ik_llama_cpp_command({q8, q4, q8, q4}); });
  EXPECT_NE(four.find("ik_llama.cpp flags: layer 3 (KVllama.cpp:q4_0): its key type"),
            std::string::npos)
      << four;
  const std::string kv16 = error_of([&] { ik_llama_cpp_command({q8, kv("16")}); });
  EXPECT_NE(kv16.find("layer 1 (KV16)"), std::string::npos) << kv16;
  const std::string f32 = error_of([&] { ik_llama_cpp_command({kv("llama.cpp:f32")}); });
  EXPECT_NE(f32.find("not a llama.cpp cache dtype of target ik_llama.cpp"), std::string::npos)
      << f32;
  EXPECT_THROW(ik_llama_cpp_command({}), Error);
}

TEST(Exports, DispatchAndDescription) {
  const auto layers = cfg("KVfp8,KVfp8");
  EXPECT_EQ(export_config("trtllm", layers), "0-1:fp8");
  EXPECT_EQ(export_config("sglang", layers), sglang_yaml(layers));
  EXPECT_EQ(export_config("hf_quant_config", layers), hf_quant_config(layers));
  EXPECT_EQ(export_config("hf_config_json", layers), hf_config_json_block(layers));
  EXPECT_EQ(export_config("kvtuner", cfg("KV8")), kvtuner_yaml(cfg("KV8")));
  EXPECT_EQ(export_config("vllm", {kv("vllm:fp8"), kv("16")}),
            "vllm serve MODEL --kv-cache-dtype fp8 --kv-cache-dtype-skip-layers 1\n");
  EXPECT_EQ(export_config("sglang-launch", {kv("sglang:fp4_e2m1")}),
            "python -m sglang.launch_server --model-path MODEL --kv-cache-dtype fp4_e2m1\n");
  EXPECT_EQ(export_config("trtllm-serve", {kv("trtllm:fp8")}), trtllm_serve({kv("trtllm:fp8")}));

  // The deploy options reach the command lines.
  DeployOptions deploy;
  deploy.model = "org/model";
  deploy.kv_scales = KvScales::Calculated;
  EXPECT_EQ(export_config("vllm", {kv("vllm:fp8")}, deploy),
            "vllm serve org/model --kv-cache-dtype fp8 --calculate-kv-scales\n");
  deploy.kv_scales = KvScales::One;
  EXPECT_EQ(export_config("sglang-launch", {kv("sglang:fp4_e2m1")}, deploy),
            "python -m sglang.launch_server --model-path org/model --kv-cache-dtype fp4_e2m1\n");
  EXPECT_NE(export_config("trtllm-serve", {kv("trtllm:fp8")}, deploy)
                .find("# Serve with: trtllm-serve org/model --extra_llm_api_options kv.yaml\n"),
            std::string::npos);
  // Formats without a command line ignore them.
  EXPECT_EQ(export_config("trtllm", layers, deploy), "0-1:fp8");

  const std::string msg = error_of([&] { export_config("onnx", layers); });
  EXPECT_NE(
      msg.find("unknown export format 'onnx' (one of vllm, sglang-launch, trtllm-serve, "
               "llama.cpp, ik_llama.cpp, kvtuner, trtllm, sglang, hf_quant_config, hf_config_json, "
               "kv_scales)"),
      std::string::npos)
      << msg;

  const std::map<std::string, std::vector<PrecisionPair>> sample = {
      {"vllm", {kv("vllm:fp8"), kv("16")}},
      {"sglang-launch", {kv("sglang:fp8_e4m3")}},
      {"trtllm-serve", {kv("trtllm:nvfp4")}},
      {"llama.cpp", {kv("llama.cpp:q8_0", "llama.cpp:q4_0")}},
      {"ik_llama.cpp", {kv("llama.cpp:q8_0"), kv("llama.cpp:q4_0")}},
      {"kvtuner", cfg("KV8")},
      {"trtllm", layers},
      {"sglang", layers},
      {"hf_quant_config", layers},
      {"hf_config_json", layers},
      {"kv_scales", {kv("vllm:fp8")}}};
  DeployOptions calibrated;  // what kv_scales needs
  calibrated.kv_scales = KvScales::Calibrated;
  calibrated.k_scales = calibrated.v_scales = {0.5f};
  const auto formats = describe_formats();
  ASSERT_EQ(formats.size(), sample.size());
  for (const FormatInfo& f : formats) {
    ASSERT_TRUE(sample.contains(f.id)) << f.id;
    EXPECT_NO_THROW(export_config(f.id, sample.at(f.id), calibrated)) << f.id;
    ASSERT_FALSE(f.sources.empty()) << f.id;
    EXPECT_EQ(f.sources[0].rfind("https://github.com/", 0), 0u) << f.id;
    EXPECT_FALSE(f.example.empty() || f.accepts.empty() || f.status.empty()) << f.id;
  }
  EXPECT_EQ(formats[0].id, "vllm");  // released engines first
  const std::string table = describe_formats_text();
  for (const char* url : {"TensorRT-LLM/pull/13695", "sglang/pull/17530",
                          "Model-Optimizer/pull/2272", "vllm/pull/56116", "vllm/pull/33695",
                          "tensorrt_llm/commands/serve.py", "vllm/utils/torch_utils.py"}) {
    EXPECT_NE(table.find(url), std::string::npos) << url;
  }
}

}  // namespace
}  // namespace kvtune::exports
