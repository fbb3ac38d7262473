// Exports of per-layer KV configurations: exact texts checked by hand against
// the sources cited in coordinator/exports.h.
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "exports.h"
#include "kvtune/common/config_file.h"
#include "kvtune/common/error.h"

namespace kvtune::exports {
namespace {

std::vector<PrecisionPair> cfg(const std::string& text) {
  return parse_layer_config(text, static_cast<int>(std::count(text.begin(), text.end(), ',')) + 1);
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
}

TEST(Exports, DispatchAndDescription) {
  const auto layers = cfg("KVfp8,KVfp8");
  EXPECT_EQ(export_config("trtllm", layers), "0-1:fp8");
  EXPECT_EQ(export_config("sglang", layers), sglang_yaml(layers));
  EXPECT_EQ(export_config("hf_quant_config", layers), hf_quant_config(layers));
  EXPECT_EQ(export_config("kvtuner", cfg("KV8")), kvtuner_yaml(cfg("KV8")));
  const std::string msg = error_of([&] { export_config("onnx", layers); });
  EXPECT_NE(msg.find("one of kvtuner, trtllm, sglang, hf_quant_config"), std::string::npos);

  const auto formats = describe_formats();
  ASSERT_EQ(formats.size(), 4u);
  for (const FormatInfo& f : formats) {
    EXPECT_NO_THROW(export_config(f.id, f.id == "kvtuner" ? cfg("KV8") : layers)) << f.id;
    ASSERT_FALSE(f.sources.empty()) << f.id;
    EXPECT_EQ(f.sources[0].rfind("https://github.com/", 0), 0u) << f.id;
  }
  const std::string table = describe_formats_text();
  for (const char* url : {"TensorRT-LLM/pull/13695", "sglang/pull/17530",
                          "Model-Optimizer/pull/2272", "vllm/pull/56116"}) {
    EXPECT_NE(table.find(url), std::string::npos) << url;
  }
}

}  // namespace
}  // namespace kvtune::exports
