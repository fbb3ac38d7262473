// Engine targets: the configurations each released engine (or pull request)
// runs, and the reason named for each it does not.
#include <gtest/gtest.h>

#include "kvtune/common/engine_target.h"

namespace kvtune {
namespace {

std::vector<PrecisionPair> layers(const std::string& text, int n) {
  return parse_layer_config(text, n);
}

std::string refusal(std::string_view target, const std::string& config, int n) {
  return find_engine_target(target)->refusal(layers(config, n));
}

TEST(EngineTarget, EveryTargetNamesItsDtypesStructureAndReadRule) {
  ASSERT_NE(find_engine_target("vllm"), nullptr);
  EXPECT_EQ(find_engine_target("kvtune"), nullptr);
  EXPECT_EQ(find_engine_target("kvtuner"), nullptr);
  EXPECT_EQ(target_names(),
            "kvtune, kvtuner, vllm, sglang, trtllm, vllm-per-layer-pr, trtllm-per-layer-pr, "
            "llama.cpp, ik_llama.cpp");
  const EngineTarget& vllm = *find_engine_target("vllm");
  EXPECT_EQ(vllm.structure, EngineTarget::Structure::SkipLayers);
  EXPECT_TRUE(vllm.needs.empty());
  EXPECT_EQ(vllm.read_rule(), ReadRule::parse("cache"));
  ASSERT_EQ(vllm.candidates().size(), 5u);
  EXPECT_EQ(vllm.candidates()[0].name(), "KVvllm:fp8");
  EXPECT_EQ(find_engine_target("sglang")->read_rule(), ReadRule::parse("fresh-prefill"));
  const EngineTarget& pr = *find_engine_target("trtllm-per-layer-pr");
  EXPECT_NE(pr.needs.find("#13695"), std::string_view::npos);
  ASSERT_EQ(pr.candidates().size(), 3u);  // fp8, nvfp4, and a layer left unquantized
  EXPECT_EQ(pr.candidates()[2].name(), "KV16");
  for (const EngineTarget& t : engine_targets()) {
    for (std::string_view d : t.dtypes) {
      const EngineDtype* dtype = find_engine_dtype(d);
      ASSERT_NE(dtype, nullptr) << d;
      EXPECT_EQ(dtype->engine, t.engine) << d;
    }
  }
}

TEST(EngineTarget, VllmRunsOneDtypeWithSkippedLayers) {
  EXPECT_EQ(refusal("vllm", "KVvllm:fp8", 4), "");
  EXPECT_EQ(refusal("vllm", "KV16,KVvllm:fp8,KVvllm:fp8,KV16", 4), "");
  EXPECT_EQ(refusal("vllm", "KVvllm:fp8_e4m3,KVvllm:fp8", 2), "");  // vLLM's alias
  const std::string two = refusal("vllm", "KVvllm:fp8,KV16,KVvllm:nvfp4", 3);
  EXPECT_NE(two.find("layer 2 (KVvllm:nvfp4)"), std::string::npos) << two;
  EXPECT_NE(two.find("layer 0 has KVvllm:fp8"), std::string::npos) << two;
  const std::string mixed = refusal("vllm", "Kvllm:fp8Vvllm:nvfp4", 2);
  EXPECT_NE(mixed.find("keys and values share one of"), std::string::npos) << mixed;
  const std::string other = refusal("vllm", "KVsglang:fp8_e4m3", 2);
  EXPECT_NE(other.find("not a vllm cache dtype"), std::string::npos) << other;
  const std::string integer = refusal("vllm", "KV8", 2);
  EXPECT_NE(integer.find("layer 0 (KV8)"), std::string::npos) << integer;
  EXPECT_NE(refusal("vllm", "KV16", 3).find("every layer is unquantized"), std::string::npos);
}

TEST(EngineTarget, SglangAndTrtllmRunOneDtypeForEveryLayer) {
  EXPECT_EQ(refusal("sglang", "KVsglang:fp4_e2m1", 3), "");
  EXPECT_EQ(refusal("trtllm", "KVtrtllm:nvfp4", 3), "");
  const std::string skip = refusal("sglang", "KVsglang:fp8_e4m3,KV16", 2);
  EXPECT_NE(skip.find("layer 1 (KV16)"), std::string::npos) << skip;
  EXPECT_NE(skip.find("cannot leave a layer unquantized"), std::string::npos) << skip;
  EXPECT_NE(refusal("trtllm", "KVtrtllm:fp8,KVtrtllm:nvfp4", 2).find("layer 1"), std::string::npos);
}

TEST(EngineTarget, PerLayerPullRequestsTakeAnyOfTheirDtypesPerLayer) {
  EXPECT_EQ(refusal("trtllm-per-layer-pr", "KVtrtllm:fp8,KVtrtllm:nvfp4,KV16", 3), "");
  EXPECT_EQ(refusal("vllm-per-layer-pr", "KVvllm:nvfp4,KVvllm:fp8", 2), "");
  EXPECT_NE(refusal("vllm-per-layer-pr", "KVvllm:fp8_e5m2,KVvllm:fp8", 2).find("layer 0"),
            std::string::npos);
  EXPECT_NE(refusal("trtllm-per-layer-pr", "Ktrtllm:fp8Vtrtllm:nvfp4", 1).find("keys and values"),
            std::string::npos);
}

TEST(EngineTarget, LlamaCppRunsOneKeyTypeAndOneValueTypeForEveryLayer) {
  const EngineTarget& llama = *find_engine_target("llama.cpp");
  EXPECT_EQ(llama.structure, EngineTarget::Structure::UniformKV);
  EXPECT_EQ(llama.read_rule(), ReadRule::parse("cache"));
  EXPECT_TRUE(llama.needs.empty());
  // Every (key type, value type) pair of -ctk / -ctv's nine types, keys major.
  const auto candidates = llama.candidates();
  ASSERT_EQ(candidates.size(), 81u);
  EXPECT_EQ(candidates[0].name(), "KVllama.cpp:f32");
  EXPECT_EQ(candidates[1].name(), "Kllama.cpp:f32Vllama.cpp:f16");
  EXPECT_EQ(candidates[80].name(), "KVllama.cpp:q4_0");
  EXPECT_EQ(refusal("llama.cpp", "Kllama.cpp:q8_0Vllama.cpp:q4_0", 3), "");
  const std::string two =
      refusal("llama.cpp",
              "Kllama.cpp:q8_0Vllama.cpp:q4_0,Kllama.cpp:q8_0Vllama.cpp:q4_0,KVllama.cpp:q8_0", 3);
  EXPECT_NE(two.find("layer 2 (KVllama.cpp:q8_0)"), std::string::npos) << two;
  EXPECT_NE(two.find("one key type and one value type"), std::string::npos) << two;
  const std::string unquantized = refusal("llama.cpp", "KVllama.cpp:q8_0,KV16", 2);
  EXPECT_NE(unquantized.find("cannot leave a layer unquantized"), std::string::npos) << unquantized;
  const std::string other = refusal("llama.cpp", "Kllama.cpp:q8_0Vvllm:fp8", 1);
  EXPECT_NE(other.find("keys and values each take one of llama.cpp:f32"), std::string::npos)
      << other;
}

TEST(EngineTarget, IkLlamaCppRunsABaseTypeWithFirstAndLastOverridesPerRole) {
  const EngineTarget& ik = *find_engine_target("ik_llama.cpp");
  EXPECT_EQ(ik.structure, EngineTarget::Structure::FirstLast);
  EXPECT_EQ(structure_name(ik.structure), "first-last");
  EXPECT_EQ(ik.engine, "llama.cpp");
  EXPECT_EQ(ik.deploy, "ik_llama.cpp");
  EXPECT_NE(ik.needs.find("#1599"), std::string_view::npos);
  EXPECT_EQ(ik.read_rule(), ReadRule::parse("cache"));
  const auto candidates = ik.candidates();
  ASSERT_EQ(candidates.size(), 49u);  // 7 key types x 7 value types, keys major
  EXPECT_EQ(candidates[0].name(), "KVllama.cpp:f16");
  EXPECT_EQ(candidates[1].name(), "Kllama.cpp:f16Vllama.cpp:q8_0");
  EXPECT_EQ(candidates[48].name(), "KVllama.cpp:q4_0");
  const std::string q8 = "KVllama.cpp:q8_0", q4 = "KVllama.cpp:q4_0";
  const std::string k8v4 = "Kllama.cpp:q8_0Vllama.cpp:q4_0",
                    k4v8 = "Kllama.cpp:q4_0Vllama.cpp:q8_0";
  // Keys q8 q4 q4 q8 (first, base, last), values q4 q8 q8 q8 (first, base).
  EXPECT_EQ(refusal("ik_llama.cpp", k8v4 + "," + q4 + "," + k4v8 + "," + q8, 4), "");
  EXPECT_EQ(refusal("ik_llama.cpp", q4, 5), "");
  // Keys q8 q4 q8 q4: four runs, the fourth starting at layer 3.
  const std::string four = refusal("ik_llama.cpp", q8 + "," + q4 + "," + q8 + "," + q4, 4);
  EXPECT_NE(four.find("layer 3 (KVllama.cpp:q4_0): its key type"), std::string::npos) << four;
  EXPECT_NE(four.find("-ctk-first T,N"), std::string::npos) << four;
  // Values alone break it: keys q8 everywhere, values q4 q8 q4 q8.
  const std::string values = refusal("ik_llama.cpp", k8v4 + "," + q8 + "," + k8v4 + "," + q8, 4);
  EXPECT_NE(values.find("layer 3 (KVllama.cpp:q8_0): its value type"), std::string::npos) << values;
  const std::string kv16 = refusal("ik_llama.cpp", q8 + ",KV16", 2);
  EXPECT_NE(kv16.find("layer 1 (KV16)"), std::string::npos) << kv16;
  const std::string f32 = refusal("ik_llama.cpp", "KVllama.cpp:f32", 1);
  EXPECT_NE(f32.find("not a llama.cpp cache dtype of target ik_llama.cpp"), std::string::npos)
      << f32;
}

TEST(EngineTarget, ShapesAnEngineDtypeCannotHoldAreNamed) {
  const auto pair = [](const char* name) { return PrecisionPair::parse(name); };
  EXPECT_EQ(shape_refusal(pair("KVvllm:nvfp4"), 8, 128), "");
  EXPECT_EQ(shape_refusal(pair("KVvllm:nvfp4"), 4, 8),
            "KVvllm:nvfp4: nvfp4 blocks are 16 channels of one head: head_dim 8 is not a "
            "multiple of 16");
  EXPECT_EQ(shape_refusal(pair("KVsglang:fp4_e2m1"), 4, 8), "");  // 32 values per token
  EXPECT_NE(shape_refusal(pair("KVsglang:fp4_e2m1"), 1, 8), "");
  EXPECT_EQ(shape_refusal(pair("KV4"), 1, 8), "");
}

}  // namespace
}  // namespace kvtune
