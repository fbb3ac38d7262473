#include <gtest/gtest.h>

#include "kvtune/common/engine_dtype.h"
#include "kvtune/common/error.h"
#include "kvtune/common/precision.h"
#include "kvtune/common/scheme.h"

namespace kvtune {
namespace {

TEST(PrecisionPair, ParsesKvtunerNames) {
  const PrecisionPair k8v4 = PrecisionPair::parse("K8V4");
  EXPECT_EQ(k8v4.key, KvFormat::integer(8));
  EXPECT_EQ(k8v4.value, KvFormat::integer(4));
  EXPECT_DOUBLE_EQ(k8v4.equivalent_bits(), 6.0);

  const PrecisionPair kv2 = PrecisionPair::parse("KV2");
  EXPECT_EQ(kv2.key, kv2.value);
  EXPECT_EQ(kv2.key.bits, 2);

  const PrecisionPair full = PrecisionPair::parse("KV16");
  EXPECT_EQ(full.key.kind, KvFormat::Kind::Full);
  EXPECT_DOUBLE_EQ(full.equivalent_bits(), 16.0);
}

TEST(PrecisionPair, ParsesHardwareFormats) {
  const PrecisionPair p = PrecisionPair::parse("Kfp8Vnvfp4");
  EXPECT_EQ(p.key.kind, KvFormat::Kind::Fp8);
  EXPECT_EQ(p.value.kind, KvFormat::Kind::Nvfp4);
  EXPECT_DOUBLE_EQ(p.equivalent_bits(), 6.0);
  EXPECT_EQ(PrecisionPair::parse("KVfp8").value.kind, KvFormat::Kind::Fp8);
}

TEST(PrecisionPair, ParsesEngineDtypes) {
  const PrecisionPair p = PrecisionPair::parse("KVvllm:fp8");
  EXPECT_EQ(p.key.kind, KvFormat::Kind::Engine);
  EXPECT_EQ(p.key.engine_dtype().engine, "vllm");
  EXPECT_EQ(p.key.engine_dtype().flag, "fp8");
  EXPECT_EQ(p.key, p.value);
  // vLLM's alias fp8_e4m3 is its fp8.
  EXPECT_EQ(PrecisionPair::parse("KVvllm:fp8_e4m3"), p);
  const PrecisionPair mixed = PrecisionPair::parse("Kvllm:fp8_e5m2Vsglang:fp4_e2m1");
  EXPECT_EQ(mixed.key.name(), "vllm:fp8_e5m2");
  EXPECT_EQ(mixed.value.name(), "sglang:fp4_e2m1");
  EXPECT_DOUBLE_EQ(mixed.equivalent_bits(), 6.0);
  EXPECT_NE(PrecisionPair::parse("KVtrtllm:fp8"), p);  // same arithmetic, another engine
  for (const EngineDtype& d : engine_dtypes()) {
    EXPECT_EQ(KvFormat::parse(d.name).name(), d.name);
  }
  try {
    PrecisionPair::parse("KVvllm:fp4");
    ADD_FAILURE() << "accepted vllm:fp4";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'vllm:fp4' is not an engine dtype: vllm:fp8, "),
              std::string::npos)
        << e.what();
  }
}

TEST(Scheme, LlamaCppRotationFollowsItsRuleUnlessForced) {
  Scheme s;
  const KvFormat q4 = KvFormat::parse("llama.cpp:q4_0"), f16 = KvFormat::parse("llama.cpp:f16"),
                 fp8 = KvFormat::parse("vllm:fp8");
  using kernels::Role;
  // auto (llama.cpp PR #21038): quantized types when head_dim % 64 == 0; keys
  // in the largest power-of-two chunk >= 64 dividing head_dim, values in 64s.
  EXPECT_EQ(s.rotate_chunk(q4, Role::Key, 128), 128);
  EXPECT_EQ(s.rotate_chunk(q4, Role::Key, 192), 64);
  EXPECT_EQ(s.rotate_chunk(q4, Role::Value, 128), 64);
  EXPECT_EQ(s.rotate_chunk(q4, Role::Key, 8), 0);
  EXPECT_EQ(s.rotate_chunk(f16, Role::Key, 128), 0);
  EXPECT_EQ(s.rotate_chunk(fp8, Role::Key, 128), 0);
  EXPECT_EQ(s.engine_spec(q4, Role::Key, 1.0f, 128).rotate_chunk, 128);
  EXPECT_EQ(s.key(), Scheme().key());  // auto keeps the keys of before
  s.rotation = Rotation::On;
  EXPECT_EQ(s.rotate_chunk(f16, Role::Key, 128), 128);
  EXPECT_EQ(s.rotate_chunk(q4, Role::Key, 8), 8);  // forced: the largest chunk dividing 8
  EXPECT_EQ(s.rotate_chunk(q4, Role::Key, 96), 32);
  EXPECT_EQ(s.rotate_chunk(fp8, Role::Key, 128), 0);
  EXPECT_NE(s.key(), Scheme().key());
  s.rotation = Rotation::Off;
  EXPECT_EQ(s.rotate_chunk(q4, Role::Key, 128), 0);
  EXPECT_EQ(parse_rotation("off"), Rotation::Off);
  EXPECT_THROW(parse_rotation("yes"), Error);
}

TEST(Scheme, EngineDtypesTakeTheirScaleSources) {
  Scheme s;
  const KvFormat fp8 = KvFormat::parse("vllm:fp8"), nvfp4 = KvFormat::parse("trtllm:nvfp4"),
                 trt = KvFormat::parse("trtllm:fp8"), sglang = KvFormat::parse("sglang:fp8_e4m3");
  EXPECT_EQ(s.engine_spec(fp8, kernels::Role::Key, 896.0f, 128).scale, 1.0f);
  s.kv_scales = KvScales::Calculated;  // vLLM: max|k| / 200, max|v| / 100
  EXPECT_EQ(s.engine_spec(fp8, kernels::Role::Key, 400.0f, 128).scale, 2.0f);
  EXPECT_EQ(s.engine_spec(fp8, kernels::Role::Value, 400.0f, 128).scale, 4.0f);
  EXPECT_NE(s.refusal(sglang).find("sglang does not have"), std::string::npos) << s.refusal(sglang);
  EXPECT_EQ(s.refusal(fp8), "");
  s.kv_scales = KvScales::Calibrated;  // ModelOpt: amax / 448, nvfp4 amax / (6 * 448)
  EXPECT_EQ(s.engine_spec(fp8, kernels::Role::Key, 896.0f, 128).scale, 2.0f);
  EXPECT_EQ(s.engine_spec(nvfp4, kernels::Role::Value, 2688.0f, 128).scale, 1.0f);
  EXPECT_EQ(s.engine_spec(trt, kernels::Role::Key, 896.0f, 128).scale, 1.0f);  // always 1.0
  EXPECT_EQ(s.engine_spec(fp8, kernels::Role::Key, 0.0f, 128).scale, 1.0f);    // an all-zero layer
  EXPECT_NE(s.key(), Scheme().key());
  EXPECT_NE(Scheme::kvtuner("per-token-asym").refusal(fp8), "");
  EXPECT_THROW(parse_kv_scales("checkpoint"), Error);
}

TEST(PrecisionPair, NameRoundTrips) {
  for (const char* name :
       {"KV8", "K8V4", "K4V2", "KV16", "Kfp8Vnvfp4", "KVnvfp4", "K16V8", "K3V1"}) {
    EXPECT_EQ(PrecisionPair::parse(name).name(), name);
  }
  EXPECT_EQ(PrecisionPair::parse("K4V4").name(), "KV4");
}

TEST(PrecisionPair, RejectsBadNamesWithTheText) {
  for (const char* bad : {"", "K", "KV", "K5V4", "K8", "V4", "K8V", "Kfp16V8", "KV4x", "kv4"}) {
    try {
      PrecisionPair::parse(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("'") + bad + "'"), std::string::npos)
          << e.what();
    }
  }
}

TEST(PrecisionPair, KvtunerCandidatesAreTheNinePairs) {
  const auto pairs = kvtuner_candidates();
  ASSERT_EQ(pairs.size(), 9u);
  EXPECT_EQ(pairs.front().name(), "KV8");
  EXPECT_EQ(pairs[1].name(), "K8V4");
  EXPECT_EQ(pairs.back().name(), "KV2");
}

TEST(LayerConfig, OnePairBroadcastsToEveryLayer) {
  const auto layers = parse_layer_config("K8V4", 5);
  ASSERT_EQ(layers.size(), 5u);
  EXPECT_EQ(format_layer_config(layers), "K8V4,K8V4,K8V4,K8V4,K8V4");
  EXPECT_DOUBLE_EQ(average_bits(layers), 6.0);
}

TEST(LayerConfig, PerLayerPairsAndAverageBits) {
  const auto layers = parse_layer_config("KV8,KV4,KV2", 3);
  EXPECT_DOUBLE_EQ(average_bits(layers), (8.0 + 4.0 + 2.0) / 3.0);
}

TEST(LayerConfig, WrongCountAndBadEntryAreNamed) {
  EXPECT_THROW(parse_layer_config("KV8,KV4", 3), Error);
  try {
    parse_layer_config("KV8,K9V4,KV2", 3);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("entry 1"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'K9V4'"), std::string::npos) << e.what();
  }
}

TEST(Scheme, ParsesAndNamesTheBadOption) {
  const Scheme kivi = Scheme::parse("kivi", 16, 32, "float");
  EXPECT_EQ(kivi.key(), "kivi/G=16/R=32/zp=float");
  EXPECT_EQ(kivi.int_spec(kernels::Role::Value, 2).group_size, 16);
  EXPECT_EQ(kivi.int_spec(kernels::Role::Value, 2).bits, 2);
  EXPECT_EQ(Scheme::parse("per-token-asym", 32, 32, "int").key(), "per-token-asym/zp=int");
  const auto message = [](const char* name, int g, int r, const char* zp) -> std::string {
    try {
      Scheme::parse(name, g, r, zp);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(message("kivi", 32, 48, "int").find("residual 48"), std::string::npos);
  EXPECT_NE(message("awq", 32, 32, "int").find("'awq'"), std::string::npos);
  EXPECT_NE(message("kivi", 32, 32, "half").find("'half'"), std::string::npos);
  EXPECT_NE(message("kivi", 0, 32, "int").find("group size 0"), std::string::npos);
}

}  // namespace
}  // namespace kvtune

namespace kvtune {
namespace {

TEST(Scheme, FromOptionsFillsEachTargetsDefaults) {
  EXPECT_EQ(Scheme::from_options("kvtune", "kivi", std::nullopt, std::nullopt, "int").key(),
            "kivi/G=32/R=32/zp=int");
  EXPECT_EQ(Scheme::from_options("kvtune", "kivi", 16, 0, "float").key(),
            "kivi/G=16/R=16/zp=float");
  EXPECT_EQ(Scheme::from_options("kvtune", "kivi", 16, 64, "int").key(), "kivi/G=16/R=64/zp=int");
  EXPECT_EQ(
      Scheme::from_options("kvtuner", "per-channel-asym", std::nullopt, std::nullopt, "int").key(),
      "kvtuner:per-channel-asym/G=32/R=32");
  EXPECT_EQ(Scheme::from_options("kvtuner", "per-token-asym", -1, 4, "int").key(),
            "kvtuner:per-token-asym/G=0/R=4");
  EXPECT_THROW(Scheme::from_options("kvtuner", "per-token-asym", -7, std::nullopt, "int"), Error);
  EXPECT_THROW(Scheme::from_options("kvtuner", "kivi", std::nullopt, std::nullopt, "int"), Error);
  EXPECT_THROW(Scheme::from_options("vllm", "kivi", std::nullopt, std::nullopt, "int"), Error);
}

}  // namespace
}  // namespace kvtune
